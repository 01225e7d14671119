"""Saving any model, including one whose norms :func:`ibtools.norms.swap_norms` replaced, so
that ``ibtools analyze FILE`` (and :func:`load_saved_model`) rebuild it as it was.

A state dict alone cannot say that a GPT-2's LayerNorms became IBNorm-S: loaded into the
architecture it came from, it would run LayerNorm.  :func:`save_model` writes one
``torch.save`` dict of plain values and tensors (``torch.load(..., weights_only=True)``
reads it)::

    {"format": "ibtools-model", "version": 1, "arch": "hf:gpt2tiny", "arch_kwargs": {...},
     "norm_swap": {"to": "ib-S", "order": "compress_first"} or None,
     "state_dict": {...}, "meta": {"norm": "ib-S", "lam": 1.0, ...}}

Loading builds ``arch`` with ``arch_kwargs`` (untrained), replays the swap, then loads the
state dict, which carries every IBNorm module's own ``lam``.  The architecture string is
read from the file under the same rule as every checkpoint (``docs/security.md``): a file
may name ibtools' own models or a Hugging Face directory; any other factory only when the
user names it too (``arch=`` / ``--arch``) or trusts the file (``trust_code``).
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.models.checkpoint_format import MAX_PARAMETERS
from ibtools.models.checkpoint_format import _check_plain as check_plain
from ibtools.results import write_atomic

SAVED_FORMAT = "ibtools-model"
SAVED_VERSION = 1
def norm_swap(model: nn.Module) -> dict | None:
    """The :func:`~ibtools.norms.swap_norms` call that turns a freshly built ``model``'s norms
    into the ones it has: ``{"to": "ib-S", "order": ...}``, or ``None`` when it has no
    IBNorm layer.

    Raises
    ------
    ValueError
        When only some norms are IBNorm, or they differ in variant or order, or a variant is
        a Python callable: one swap cannot rebuild that, so it cannot be saved faithfully.
    """
    from ibtools.norms.inventory import find_norms
    from ibtools.norms.modules import IBNormMixin

    norms = find_norms(model)
    ib = [(names, m) for names, m in norms if isinstance(m, IBNormMixin)]
    if not ib:
        return None
    plain = [names[0] for names, m in norms if not isinstance(m, IBNormMixin)]
    if plain:
        raise InputError(f"model: {len(ib)} norm(s) are IBNorm but {len(plain)} are not (e.g. "
                         f"{plain[:3]}); save_model can rebuild only a model whose norms "
                         f"swap_norms replaced all together")
    custom = [names[0] for names, m in ib if not isinstance(m.variant, str)]
    if custom:
        raise InputError(f"model: the IBNorm layer(s) {custom[:3]} use a Python callable as "
                         f"variant, which cannot be stored as data; use 'S', 'L' or 'T'")
    kinds = {(m.variant, m.order) for _, m in ib}
    if len(kinds) > 1:
        raise InputError(f"model: its IBNorm layers differ in (variant, order): "
                         f"{sorted(kinds)}; save_model can rebuild only one swap")
    variant, order = kinds.pop()
    return {"to": f"ib-{variant}", "order": order}


def save_model(model: nn.Module, path, *, arch: str, arch_kwargs: Mapping | None = None,
               meta: Mapping | None = None) -> Path:
    """Save ``model`` so that ``ibtools analyze PATH`` rebuilds it, swapped norms included.

    Parameters
    ----------
    model : nn.Module
        Any model ``arch`` builds, possibly after :func:`ibtools.norms.swap_norms`.
    path : str or os.PathLike
        Destination file (``.pt``); written atomically.
    arch : str
        How to build the model untrained: ``"ibtools:<name>"``, ``"hf:DIR"`` (the directory
        ``save_pretrained`` wrote), ``"torchvision:<name>"``, ``"timm:<name>"`` or
        ``"package.module:factory"``.
    arch_kwargs : Mapping, optional
        Keyword arguments of the factory (plain values: they are stored as data).
    meta : Mapping, optional
        Plain values recorded with the model (seed, step, metrics); ``norm`` and ``lam``
        come from :func:`ibtools.norms.describe_norms` unless given.

    Returns
    -------
    pathlib.Path
    """
    from ibtools.norms import describe_norms

    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not isinstance(arch, str) or ":" not in arch:
        raise InputError(f"arch={arch!r} is not accepted; give the string that builds the model: "
                         f"'ibtools:<name>', 'hf:DIR', 'torchvision:<name>', 'timm:<name>' or "
                         f"'package.module:factory'")
    swap = norm_swap(model)
    info = describe_norms(model)
    meta = check_plain(dict(meta or {}), "meta")
    meta.setdefault("norm", info["norm"])
    meta.setdefault("lam", info["lam"])
    obj = {"format": SAVED_FORMAT, "version": SAVED_VERSION, "arch": arch,
           "arch_kwargs": check_plain(dict(arch_kwargs or {}), "arch_kwargs"), "norm_swap": swap,
           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
           "meta": meta}
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_atomic(path, buffer.getvalue())


def read_saved_model(path) -> dict | None:
    """The dict :func:`save_model` wrote, or ``None`` for any other file (read with
    ``weights_only=True``: nothing in the file runs)."""
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        return None
    if not zipfile.is_zipfile(path):  # torch.save's format; anything else is not ours
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # another checkpoint kind; its own loader gives the error
        return None
    if isinstance(obj, dict) and obj.get("format") == SAVED_FORMAT:
        return obj
    return None


def load_saved_model(path, *, arch=None, trust_code: bool = False, strict: bool = True,
                     map_location="cpu", max_parameters: int | None = MAX_PARAMETERS,
                     **arch_kwargs):
    """Rebuild a model :func:`save_model` wrote: ``(model, info)`` as
    :func:`ibtools.probes.load_model` returns them.

    Parameters
    ----------
    path : str or os.PathLike
    arch : str, optional
        The architecture, overriding the stored one (naming it yourself allows a factory
        the file alone may not choose).
    trust_code : bool
        Let the stored architecture name any importable factory.
    strict : bool
        Refuse keys that do not match; ``False`` loads what matches and warns.
    max_parameters : int or None
        Refuse stored arguments that would build more parameters than this (``None``: no
        limit), as :func:`ibtools.probes.load_model`.
    **arch_kwargs
        Override stored factory arguments.
    """
    from ibtools.norms import swap_norms
    from ibtools.probes.architectures import stored_arch
    from ibtools.probes.checkpoints import load_model, load_state_dict_reported

    obj = read_saved_model(path)
    where = f"checkpoint={os.fspath(path)!r}"
    if obj is None:
        raise InputError(f"{where} is not a file ibtools.save_model wrote")
    if obj.get("version") != SAVED_VERSION:
        raise InputError(f"{where} has format version {obj.get('version')!r}; this ibtools "
                         f"reads version {SAVED_VERSION}")
    if arch is None:
        arch = stored_arch(obj.get("arch"), where=where, trust_code=trust_code)
    kwargs = {**(obj.get("arch_kwargs") or {}), **arch_kwargs}
    model, info = load_model(None, arch=arch, trust_code=trust_code, map_location="cpu",
                             max_parameters=max_parameters, **kwargs)
    swap = obj.get("norm_swap")
    if swap:
        swap_norms(model, to=swap["to"], order=swap.get("order", "compress_first"))
    report = load_state_dict_reported(model, obj["state_dict"], strict)
    info = dict(info, **report, checkpoint=os.fspath(path), format=SAVED_FORMAT,
                arch=arch if isinstance(arch, str) else info.get("arch"),
                meta=dict(obj.get("meta") or {}), norm_swap=swap)
    for key in ("norm", "lam", "seed", "step", "epoch"):
        info[key] = info["meta"].get(key)
    return model.to(map_location).eval(), info
