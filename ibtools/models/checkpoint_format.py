"""The ibtools checkpoint: one ``torch.save`` dict of plain types and tensors.

``{"format": "ibtools-checkpoint", "version": 1, "arch": "ibtools:<name>", "config": {...},
"state_dict": {...}, "meta": {"norm", "lam", "seed", "step", "epoch", metrics...}}``

Only plain Python values and tensors, so ``torch.load(path, weights_only=True)`` reads it.
"""

from __future__ import annotations

import io
import os
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ibtools.norms import describe_norms
from ibtools.results import write_atomic

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "checkpoint_dict", "save_checkpoint",
           "load_checkpoint_dict"]

CHECKPOINT_FORMAT = "ibtools-checkpoint"
CHECKPOINT_VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


def _check_plain(value, where: str):
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else value
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_check_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"{where} keys must be strings, got {k!r}")
            out[k] = _check_plain(v, f"{where}[{k!r}]")
        return out
    raise TypeError(f"{where} must hold only str/int/float/bool/None, lists and dicts, "
                    f"got {type(value).__name__}")


def _model_name(model: nn.Module, name: str | None) -> str:
    from ibtools.models import REFERENCE_MODELS

    if name is None:
        name = getattr(model, "name", None)
    if name not in REFERENCE_MODELS:
        raise ValueError(f"name must be one of {sorted(REFERENCE_MODELS)}, got {name!r}")
    if type(model) is not REFERENCE_MODELS[name]:
        raise ValueError(f"name={name!r} is {REFERENCE_MODELS[name].__name__}, but the model is "
                         f"{type(model).__name__}")
    return name


def checkpoint_dict(model: nn.Module, *, name: str | None = None, meta: Mapping | None = None) -> dict:
    """The checkpoint of a reference model as a dict (see the module docstring).

    ``meta`` gets ``norm`` and ``lam`` from :func:`ibtools.norms.describe_norms` unless it
    has them; NaN metrics become ``None``.  Tensors are moved to the CPU.
    """
    name = _model_name(model, name)
    info = describe_norms(model)
    meta = _check_plain(dict(meta or {}), "meta")
    meta.setdefault("norm", info["norm"])
    meta.setdefault("lam", info["lam"])
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "arch": f"ibtools:{name}",
        "config": _check_plain(model.config, "model.config"),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, name: str | None = None,
                    meta: Mapping | None = None) -> Path:
    """Write :func:`checkpoint_dict` to ``path`` atomically (temporary file, then rename).

    Parameters
    ----------
    model : ReferenceModel
        A model from :data:`ibtools.models.REFERENCE_MODELS`.
    path : str or PathLike
        Destination file; its folder is created if needed.
    name : str, optional
        The model's registry name (``"mlp"``, ...); defaults to ``model.name``.
    meta : Mapping, optional
        Plain values: seed, step, epoch, metrics (``train_loss``, ``test_accuracy``, ...).

    Returns
    -------
    pathlib.Path
        The written path.
    """
    obj = checkpoint_dict(model, name=name, meta=meta)
    buffer = io.BytesIO()  # reference models are small; serialise first, then one rename
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getvalue())


def load_checkpoint_dict(obj: Mapping, *, strict: bool = True) -> nn.Module:
    """Rebuild a reference model from a checkpoint dict and load its weights.

    Parameters
    ----------
    obj : Mapping
        What ``torch.load(path, weights_only=True)`` returned for an ibtools checkpoint.
    strict : bool
        Passed to ``load_state_dict``.

    Returns
    -------
    ReferenceModel
        The model, in eval mode, on the CPU.

    Raises
    ------
    ValueError
        If ``obj`` is not an ibtools checkpoint (wrong format, version or architecture).
    """
    from ibtools.models import REFERENCE_MODELS, build_model

    if not isinstance(obj, Mapping) or obj.get("format") != CHECKPOINT_FORMAT:
        got = obj.get("format") if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"not an ibtools checkpoint: expected format {CHECKPOINT_FORMAT!r}, got {got!r}")
    if obj.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"unsupported ibtools checkpoint version {obj.get('version')!r}; "
                         f"this ibtools reads version {CHECKPOINT_VERSION}")
    arch = obj.get("arch")
    name = arch[len("ibtools:"):] if isinstance(arch, str) and arch.startswith("ibtools:") else None
    if name not in REFERENCE_MODELS:
        raise ValueError(f"checkpoint arch must be 'ibtools:<name>' with name in {sorted(REFERENCE_MODELS)}, "
                         f"got {arch!r}")
    config, state = obj.get("config"), obj.get("state_dict")
    if not isinstance(config, Mapping) or not isinstance(state, Mapping):
        raise ValueError("checkpoint must hold a 'config' dict and a 'state_dict' mapping")
    model = build_model(name, **config)
    model.load_state_dict(state, strict=strict)
    return model.eval()
