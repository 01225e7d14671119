"""The :class:`Activations` container: captured layers, aligned inputs and targets, settings."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from ibtools.probes.storage import open_npy

FORMAT = "ibtools-activations"
_ALIGNED = ("x", "y", "sample_ids", "positions", "tokens")


def jsonable(obj):
    """Settings as plain JSON types (dtypes and devices as strings)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj).replace("torch.", "")
    if isinstance(obj, type):
        return f"{obj.__module__}.{obj.__qualname__}"
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


class Activations:
    """Captured activations of several layers on the same rows.

    Attributes
    ----------
    layers : list of str
        Layer names in forward order.  A module called ``k > 1`` times per forward pass
        appears as ``name#0`` ... ``name#{k-1}``.
    x : Tensor
        Inputs aligned to rows.  Classification: the flattened input, float (n, D).
        Language without pooling: a context id (n,) int64, ``sample_id * seq_len + position``,
        unique per (sample, position); with pooling: the sample id.
    y : Tensor (n,)
        Targets aligned to rows: class labels, or the next-token id (for pooled sequences, the
        next-token id after the last position).
    sample_ids : Tensor (n,) int64
        Index of each row's sample in the data stream.
    positions, tokens : Tensor (n,) int64 or None
        For per-token sequence rows: the position in the sequence and the token seen there.
    kind : str
        ``"classification"`` or ``"language"``.
    settings : dict
        The capture settings (JSON-able), including how rows were sampled.
    """

    def __init__(self, layers: dict, *, x, y, sample_ids, positions=None, tokens=None,
                 kind: str = "classification", settings: dict | None = None,
                 files: dict | None = None):
        self._data = dict(layers)
        self.layers = list(self._data)
        self.x, self.y, self.sample_ids = x, y, sample_ids
        self.positions, self.tokens = positions, tokens
        self.kind = kind
        self.settings = dict(settings or {})
        self._files = dict(files or {})  # layer -> .npy path for layers backed by a file
        n = len(sample_ids)
        for name, t in self._data.items():
            if t.ndim != 2 or t.shape[0] != n:
                raise ValueError(f"layer {name!r} has shape {tuple(t.shape)}; expected ({n}, d)")

    # ------------------------------------------------------------------ mapping interface
    def __getitem__(self, name: str) -> torch.Tensor:
        if isinstance(name, int):
            name = self.layers[name]
        if name not in self._data:
            raise KeyError(f"no layer {name!r}; captured layers: {self.layers}")
        return self._data[name]

    def __contains__(self, name) -> bool:
        return name in self._data

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        """Number of rows."""
        return len(self.sample_ids)

    def items(self):
        return ((name, self._data[name]) for name in self.layers)

    @property
    def dims(self) -> dict:
        """Layer name -> feature dimension."""
        return {name: int(t.shape[1]) for name, t in self.items()}

    def __repr__(self) -> str:
        spill = ", spilled to disk" if self._files else ""
        return (f"Activations({len(self.layers)} layers, {len(self)} rows, kind={self.kind!r}"
                f"{spill}, layers={self.layers[:4]}{' ...' if len(self.layers) > 4 else ''})")

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> Path:
        """Write to ``path``: a directory of ``.npy`` files plus ``manifest.json`` (loadable
        memory-mapped), or a single ``.safetensors`` file when ``path`` ends in it.

        Returns
        -------
        Path
            Where it was written.
        """
        path = Path(path)
        manifest = {"format": FORMAT, "version": 1, "kind": self.kind, "layers": self.layers,
                    "dtypes": {n: str(t.dtype).replace("torch.", "") for n, t in self.items()},
                    "settings": jsonable(self.settings)}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {f"layer.{i}": _plain(t) for i, (_, t) in enumerate(self.items())}
            tensors.update({k: _plain(getattr(self, k)) for k in _ALIGNED
                            if getattr(self, k) is not None})
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(path), metadata={"ibtools": json.dumps(manifest)})
            return path
        path.mkdir(parents=True, exist_ok=True)
        for i, (name, t) in enumerate(self.items()):
            target = path / f"layer_{i:03d}.npy"
            source = self._files.get(name)
            if source is not None and os.path.abspath(source) != os.path.abspath(target):
                shutil.copyfile(source, target)  # spilled: copy the file, never read it into RAM
            elif source is None:
                np.save(target, _numpy(t))
        for k in _ALIGNED:
            if getattr(self, k) is not None:
                np.save(path / f"{k}.npy", _numpy(getattr(self, k)))
        (path / "manifest.json").write_text(json.dumps(manifest, indent=1))
        return path

    @classmethod
    def load(cls, path) -> "Activations":
        """Read what :meth:`save` wrote.  Directory layers are memory-mapped (copy-on-write)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"path={str(path)!r} does not exist")
        if path.is_file():
            return cls._load_safetensors(path)
        mf = path / "manifest.json"
        if not mf.exists():
            raise ValueError(f"path={str(path)!r} has no manifest.json; not saved by "
                             f"Activations.save")
        manifest = json.loads(mf.read_text())
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{mf} is not an ibtools activations manifest")
        layers, files = {}, {}
        for i, name in enumerate(manifest["layers"]):
            f = path / f"layer_{i:03d}.npy"
            layers[name] = _restore(open_npy(str(f)), manifest["dtypes"][name])
            files[name] = str(f)
        aligned = {k: (torch.from_numpy(np.load(path / f"{k}.npy", allow_pickle=False))
                       if (path / f"{k}.npy").exists() else None) for k in _ALIGNED}
        return cls(layers, kind=manifest["kind"], settings=manifest["settings"], files=files,
                   **aligned)

    @classmethod
    def _load_safetensors(cls, path: Path) -> "Activations":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error type for bad files
            raise ValueError(f"path={str(path)!r} is not a readable safetensors file: {exc}") \
                from exc
        if "ibtools" not in meta:
            raise ValueError(f"path={str(path)!r} is a safetensors file without ibtools "
                             f"activations metadata")
        manifest = json.loads(meta["ibtools"])
        layers = {name: tensors[f"layer.{i}"] for i, name in enumerate(manifest["layers"])}
        aligned = {k: tensors.get(k) for k in _ALIGNED}
        return cls(layers, kind=manifest["kind"], settings=manifest["settings"], **aligned)


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous()


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().to("cpu")
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; widen losslessly
        t = t.float()
    return t.numpy()


def _restore(t: torch.Tensor, dtype_name: str) -> torch.Tensor:
    return t.to(torch.bfloat16) if dtype_name == "bfloat16" else t
