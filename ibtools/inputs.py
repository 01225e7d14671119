"""What :func:`ibtools.analyze` accepts as models and data, made uniform.

Models
    One checkpoint path or ``nn.Module``, a list of them, or a dict ``{name: model or path}``.
    Every model passed in memory gets a name, the one the dict gives or its class name made
    unique in order (``GPT2LMHeadModel``, ``GPT2LMHeadModel-2``), and that name is the row's
    ``checkpoint`` and ``model``: two models of one class are two models, never one.  Paths
    keep their own label (the path as given) unless a dict names them.
Data
    A spec string (``"digits"``, ``"npz:PATH"``, ...), a tuple ``(inputs, targets)`` of
    tensors or arrays, a DataLoader or any re-iterable of ``(inputs, targets)`` batches, or
    what :func:`ibtools.probes.load_dataset` returns: the forms
    :func:`ibtools.capture_activations` takes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ibtools import run_directory
from ibtools.errors import InputError, InputTypeError


@dataclass(frozen=True)
class NamedCheckpoint:
    """A model (in memory) or a checkpoint path under the name its rows will carry."""

    name: str
    source: object  # nn.Module, str or os.PathLike

    def __str__(self) -> str:  # what config.json lists
        return self.name

    @property
    def in_memory(self) -> bool:
        return isinstance(self.source, nn.Module)


def _check_name(name) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InputTypeError(f"checkpoints: a dict's keys name the models and must be non-empty "
                             f"strings; got {name!r}")
    return name


def _check_item(item, where: str):
    if isinstance(item, (nn.Module, str, os.PathLike)):
        return item
    raise InputTypeError(f"checkpoints: {where} is a {type(item).__name__}; give a checkpoint "
                         f"path, an nn.Module, a list of them or a dict {{name: model or path}}")


def normalize_checkpoints(checkpoints) -> list:
    """The checkpoints as a list of paths and :class:`NamedCheckpoint`.

    Raises
    ------
    ValueError
        When there are none.
    TypeError
        For an item that is neither a path nor a module, or a dict key that is no string.
    """
    if isinstance(checkpoints, dict):
        out = [NamedCheckpoint(_check_name(k), _check_item(v, f"the entry {k!r}"))
               for k, v in checkpoints.items()]
    elif isinstance(checkpoints, (nn.Module, str, os.PathLike)):
        # a module is one model even when it is iterable (nn.Sequential, nn.ModuleList)
        out = [_check_item(checkpoints, "the value")]
    else:
        try:
            items = list(checkpoints)
        except TypeError:
            raise InputTypeError(f"checkpoints must be a path, an nn.Module, a list of them or a "
                                 f"dict {{name: model or path}}; got a "
                                 f"{type(checkpoints).__name__}") from None
        out = [_check_item(c, f"item {i}") for i, c in enumerate(items)]
        taken = {str(c) for c in out if not isinstance(c, nn.Module)}
        counts: dict[str, int] = {}
        for i, c in enumerate(out):
            if isinstance(c, nn.Module):
                base = type(c).__name__
                name = base
                while name in taken:
                    counts[base] = counts.get(base, 1) + 1
                    name = f"{base}-{counts[base]}"
                taken.add(name)
                out[i] = NamedCheckpoint(name, c)
    if not out:
        raise InputError("checkpoints is empty; give at least one checkpoint path or model")
    return out


def checkpoint_source(ckpt) -> tuple[str, str | None]:
    """``(identity, fingerprint)`` as :func:`ibtools.run_directory.checkpoint_source`; a model
    in memory is identified by its name."""
    if isinstance(ckpt, NamedCheckpoint):
        if ckpt.in_memory:
            return ckpt.name, None
        return run_directory.checkpoint_source(ckpt.source)
    return run_directory.checkpoint_source(ckpt)


def checkpoint_label(ckpt) -> str:
    return ckpt.name if isinstance(ckpt, NamedCheckpoint) else str(ckpt)


def open_checkpoint(ckpt, load_model, **load_kwargs):
    """``(model, info)``: the module itself for a model in memory (``info["arch"]`` is its
    name, so rows of two models of one class stay apart), else ``load_model``'s."""
    if isinstance(ckpt, NamedCheckpoint) and ckpt.in_memory:
        return ckpt.source, {"arch": ckpt.name, "meta": {}}
    path = ckpt.source if isinstance(ckpt, NamedCheckpoint) else ckpt
    model, info = load_model(path, **load_kwargs)  # any registered reader, save_model's too
    if isinstance(ckpt, NamedCheckpoint):
        info = dict(info, arch=ckpt.name)
    return model, info


# --- data ---------------------------------------------------------------------------------------

def _array_digest(value) -> str:
    arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    digest = hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).reshape(-1)[:2**26])
    return digest.hexdigest()[:12]


def describe_data(data) -> str:
    """A short, stable description of ``data`` for ``config.json`` and resume checks: the
    spec string itself, or shapes, dtypes and a content digest of in-memory arrays (so a
    resume with other arrays is refused), or the class of a batch iterable."""
    if isinstance(data, str):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        parts = []
        for name, value in zip(("X", "Y"), data):
            shape = tuple(getattr(value, "shape", np.shape(value)))
            dtype = str(getattr(value, "dtype", np.asarray(value).dtype)).replace("torch.", "")
            parts.append(f"{name} {shape} {dtype} #{_array_digest(value)}")
        return f"arrays({', '.join(parts)})"
    name = getattr(data, "name", None)
    if isinstance(name, str) and hasattr(data, "batches"):
        return name
    return f"batches({type(data).__name__})"


def resolve_data(data, *, model, split: str, seed: int):
    """The data source for one model: a spec string through ``load_dataset`` (which may shape
    inputs for the model), anything else through ``as_analysis_data`` (``split`` does not
    apply to data you give yourself)."""
    from ibtools.probes.datasets import as_analysis_data, load_dataset

    if isinstance(data, str):
        return load_dataset(data, model=model, split=split, seed=seed)
    if isinstance(data, (Path, os.PathLike)):
        raise InputTypeError(f"data={os.fspath(data)!r} is a path; give a spec such as "
                             f"'npz:{os.fspath(data)}'")
    _warn_if_shuffled(data)
    try:
        return as_analysis_data(data, model=model)
    except TypeError as exc:
        raise InputTypeError(f"data: {type(data).__name__} is not accepted; give a spec string, a "
                             f"tuple (inputs, targets) of tensors or arrays, or a DataLoader / "
                             f"iterable of (inputs, targets) batches") from exc


def _warn_if_shuffled(data) -> None:
    """A DataLoader that shuffles yields other rows on every pass, so each model (each pass)
    would be measured on a different sample: say so, once per model."""
    import warnings

    sampler = getattr(data, "sampler", None)
    if isinstance(data, torch.utils.data.DataLoader) and isinstance(
            sampler, torch.utils.data.RandomSampler):
        warnings.warn("data: the DataLoader shuffles (shuffle=True), so each model is "
                      "measured on other rows and their numbers are not comparable row for "
                      "row; give a DataLoader with shuffle=False", UserWarning, stacklevel=4)


def physical_memory() -> int | None:
    """Bytes of RAM on this machine, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def capture_budget(memory_budget) -> int | str | None:
    """``memory_budget`` for the capture: ``"auto"`` is a quarter of the machine's RAM, so a
    model with wide layers spills its activations to disk (memory-mapped) instead of holding
    them all; ``None`` keeps every activation in memory."""
    if memory_budget == "auto":
        total = physical_memory()
        return None if total is None else max(256 * 2**20, total // 4)
    return memory_budget


def in_notebook() -> bool:
    """Whether this process is a Jupyter (IPython) kernel, where stderr is no terminal yet
    progress bars display (tqdm.auto draws them as notebook widgets)."""
    import sys

    shell = sys.modules.get("IPython")
    if shell is None or "ipykernel" not in sys.modules:
        return False
    try:
        ip = shell.get_ipython()
    except AttributeError:
        return False
    return ip is not None and getattr(ip, "kernel", None) is not None


def show_progress(progress) -> bool:
    """``progress`` of analyze: ``None`` shows bars on a terminal and in a notebook."""
    if progress is None:
        import sys

        return bool(getattr(sys.stderr, "isatty", lambda: False)()) or in_notebook()
    return bool(progress)
