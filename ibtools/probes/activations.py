"""The :class:`Activations` container: captured layers, aligned inputs and targets, settings.

Layers spilled to disk (and layers of a saved directory) are kept as :class:`FileStamp`
records and memory-mapped on first use, after checking that the file is still what was
written; every later access re-checks it (one ``stat``), so a file that something else
changed is reported instead of read.
"""

from __future__ import annotations

import json
import os
import shutil
import weakref
from pathlib import Path

import numpy as np
import torch

from ibtools.errors import InputError
from ibtools.probes.storage import FileStamp

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


def _shape(value) -> tuple:
    if isinstance(value, FileStamp):
        return tuple(value.shape)
    return tuple(value.stamp.shape if isinstance(value, _Mapped) else value.shape)


class _Mapped:
    """A memory-mapped tensor and the stamp of the file under it."""

    __slots__ = ("stamp", "tensor")

    def __init__(self, stamp: FileStamp, tensor: torch.Tensor):
        self.stamp, self.tensor = stamp, tensor


def _column(key: str, doc: str) -> property:
    def get(self):
        return self._resolve(self._aligned, key, f"column {key!r}")

    def set(self, value):
        self._aligned[key] = value

    return property(get, set, doc=doc)


class Activations:
    """Captured activations of several layers on the same rows.

    Use it as a context manager, or call :meth:`close`, to release the rows and remove the
    spill directory it owns (a temporary one, unless ``keep_spill`` of
    :func:`~ibtools.probes.capture_activations` says otherwise); an owned directory is
    otherwise removed when the object is garbage-collected or the process exits.

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

    Parameters
    ----------
    layers : dict
        Layer name -> (n, d) tensor, or :class:`~ibtools.probes.storage.FileStamp` of a
        ``.npy`` file to memory-map on first use.
    x, y, sample_ids, positions, tokens
        Aligned columns (``x`` may also be a ``FileStamp``).
    spill_dir : str or None
        Directory holding this object's files, if it owns one.
    remove_spill : bool
        Remove ``spill_dir`` (recursively) on :meth:`close`, on garbage collection or at
        process exit.  Tensors already taken from a spilled object stay readable on POSIX
        systems (an open memory map keeps a deleted file's data).
    """

    def __init__(self, layers: dict, *, x, y, sample_ids, positions=None, tokens=None,
                 kind: str = "classification", settings: dict | None = None,
                 spill_dir: str | None = None, remove_spill: bool = False):
        self._data = dict(layers)
        self.layers = list(self._data)
        self._aligned = {"x": x, "y": y, "sample_ids": sample_ids, "positions": positions,
                         "tokens": tokens}
        self.kind = kind
        self.settings = dict(settings or {})
        self._n = n = int(_shape(sample_ids)[0])
        self._closed = False
        self.spill_dir = spill_dir
        self._cleanup = (weakref.finalize(self, shutil.rmtree, spill_dir, True)
                         if spill_dir is not None and remove_spill else None)
        self._dims = {}
        for name, t in self._data.items():
            shape = _shape(t)
            if len(shape) != 2 or shape[0] != n:
                raise InputError(f"layer {name!r} has shape {shape}; expected ({n}, d)")
            self._dims[name] = int(shape[1])

    x = _column("x", "Inputs aligned to rows (see the class docstring).")
    y = _column("y", "Targets aligned to rows.")
    sample_ids = _column("sample_ids", "Index of each row's sample in the data stream.")
    positions = _column("positions", "Position of each per-token row in its sequence.")
    tokens = _column("tokens", "Token seen at each per-token row.")

    # ------------------------------------------------------------------ lifetime
    def close(self) -> None:
        """Release the rows and remove the spill directory if this object owns it.

        Afterwards every access to a layer or an aligned column raises ValueError.  Closing
        twice is harmless.
        """
        self._closed = True
        self._data = dict.fromkeys(self.layers)
        self._aligned = dict.fromkeys(self._aligned)
        if self._cleanup is not None:
            self._cleanup()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "Activations":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _resolve(self, store: dict, key: str, what: str):
        if self._closed:
            raise InputError(f"{what}: these Activations were closed; capture or load again")
        value = store[key]
        if isinstance(value, FileStamp):
            value = store[key] = _Mapped(value, value.open(what))
        if isinstance(value, _Mapped):
            value.stamp.check(what)  # a map over a truncated file would crash on reading
            return value.tensor
        return value

    def _stamp(self, store: dict, key: str):
        value = store[key]
        return value if isinstance(value, FileStamp) else getattr(value, "stamp", None)

    # ------------------------------------------------------------------ mapping interface
    def __getitem__(self, name: str) -> torch.Tensor:
        if isinstance(name, int):
            name = self.layers[name]
        if name not in self._data:
            raise KeyError(f"no layer {name!r}; captured layers: {self.layers}")
        return self._resolve(self._data, name, f"layer {name!r}")

    def __contains__(self, name) -> bool:
        return name in self._data

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        """Number of rows."""
        return self._n

    def items(self):
        return ((name, self[name]) for name in self.layers)

    @property
    def dims(self) -> dict:
        """Layer name -> feature dimension (read without touching spilled data)."""
        return dict(self._dims)

    def __repr__(self) -> str:
        spill = ", spilled to disk" if self.spill_dir is not None else ""
        closed = ", closed" if self._closed else ""
        return (f"Activations({len(self.layers)} layers, {len(self)} rows, kind={self.kind!r}"
                f"{spill}{closed}, layers={self.layers[:4]}"
                f"{' ...' if len(self.layers) > 4 else ''})")

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
                    "shapes": {n: [len(self), d] for n, d in self.dims.items()},
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
        for i, (name, t) in enumerate(self.items()):  # items() checks spilled files
            target = path / f"layer_{i:03d}.npy"
            stamp = self._stamp(self._data, name)
            if stamp is not None and os.path.abspath(stamp.path) != os.path.abspath(target):
                shutil.copyfile(stamp.path, target)  # copy the file, never read it into RAM
            elif stamp is None:
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
            raise InputError(f"path={str(path)!r} has no manifest.json; not saved by "
                             f"Activations.save")
        manifest = json.loads(mf.read_text())
        if manifest.get("format") != FORMAT:
            raise InputError(f"{mf} is not an ibtools activations manifest")
        shapes = manifest.get("shapes", {})  # absent in directories saved before shapes
        layers = {}
        for i, name in enumerate(manifest["layers"]):
            stamp = _saved_file(path / f"layer_{i:03d}.npy", shapes.get(name), mf)
            if manifest["dtypes"][name] == "bfloat16":  # stored widened; narrow in memory
                layers[name] = stamp.open(f"layer {name!r}").to(torch.bfloat16)
            else:
                layers[name] = stamp  # memory-mapped on first use
        aligned = {}
        for k in _ALIGNED:
            f = path / f"{k}.npy"
            aligned[k] = (torch.from_numpy(np.load(_saved_file(f, None, mf).path,
                                                   allow_pickle=False))
                          if f.exists() else None)
        return cls(layers, kind=manifest["kind"], settings=manifest["settings"], **aligned)

    @classmethod
    def _load_safetensors(cls, path: Path) -> "Activations":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error type for bad files
            raise InputError(f"path={str(path)!r} is not a readable safetensors file: {exc}") \
                from exc
        if "ibtools" not in meta:
            raise InputError(f"path={str(path)!r} is a safetensors file without ibtools "
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


def _saved_file(f: Path, shape, manifest: Path) -> FileStamp:
    """Stamp a file of a saved directory, checking it is whole and has the recorded shape."""
    if not f.exists():
        raise InputError(f"{f} is missing: the activations saved at {f.parent} are incomplete")
    stamp = FileStamp.of(str(f))
    if shape is not None and list(stamp.shape) != list(shape):
        raise InputError(f"{f} holds shape {stamp.shape} but {manifest} records {tuple(shape)}"
                         f": the file was replaced after it was saved")
    return stamp
