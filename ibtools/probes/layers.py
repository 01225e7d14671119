"""Choosing which modules of a model to probe.

A layer specification is one of

- a glob over module names, read like a path with dots as separators: ``*`` matches within one
  name (``"blocks.*"`` is each block, ``"blocks.*.ln_1"`` each block's ``ln_1``), ``**`` crosses
  dots (``"blocks.**"`` is every module inside the blocks), ``?`` and ``[...]`` as in fnmatch;
- an exact module name (``"blocks.3"``); naming an ``nn.ModuleList``/``nn.ModuleDict``, which
  is never called itself, selects its items;
- a module class (``nn.LayerNorm``, ``ibtools.norms.IBNorm``) or a tuple of classes, or a class
  named by a string (``"IBNorm"``, ``"nn.LayerNorm"``, ``"LayerNorm"``): every module of that type;
- a group keyword: ``"norms"`` (every normalization layer, the outermost of nested ones),
  ``"blocks"`` (the output of every
  block, i.e. every item of an ``nn.ModuleList``), ``"leaves"`` (every module without children)
  or ``"all"`` (every named module);
- a list of any of these, whose matches are merged without duplicates.

A specification that matches nothing is an error that lists the available names.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ibtools.errors import InputError, InputTypeError

GROUPS = ("norms", "blocks", "leaves", "all")

_NORM_BASES: tuple[type, ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
    nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def is_norm_layer(module: nn.Module) -> bool:
    """True for torch's normalization layers and for any class whose name ends in ``Norm``
    followed by optional digits/letters (``IBNorm``, ``LlamaRMSNorm``, ``IBBatchNorm2d``)."""
    if isinstance(module, _NORM_BASES):
        return True
    name = type(module).__name__
    return "Norm" in name and not isinstance(module, (nn.ModuleList, nn.ModuleDict, nn.Sequential))


def _block_names(model: nn.Module) -> list[str]:
    names = []
    for parent_name, parent in model.named_modules():
        if isinstance(parent, nn.ModuleList):
            prefix = f"{parent_name}." if parent_name else ""
            names.extend(prefix + child for child, _ in parent.named_children())
    return names


def _class_matches(module: nn.Module, class_name: str) -> bool:
    wanted = class_name.split(".")[-1]
    return any(cls.__name__ == wanted for cls in type(module).__mro__)


def _describe_available(names: list[str], limit: int = 80) -> str:
    shown = ", ".join(names[:limit])
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"


def _match_one(model: nn.Module, spec, named: dict[str, nn.Module]) -> list[str]:
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return [n for n, m in named.items() if isinstance(m, spec)]
    if isinstance(spec, tuple) and spec and all(isinstance(s, type) for s in spec):
        return [n for n, m in named.items() if isinstance(m, spec)]
    if not isinstance(spec, str):
        raise InputTypeError(f"layers: {spec!r} ({type(spec).__name__}) is not a layer "
                             f"specification; "
                             f"use a name or glob string, a module class, one of {list(GROUPS)}, "
                             f"or a list of these")
    if spec == "norms":
        found = [n for n, m in named.items() if is_norm_layer(m)]
        # A wrapper norm (e.g. one that moves the channel axis) and the norm inside it give
        # the same values; keep the outermost, whose output has the model's layout.
        return [n for n in found if not any(n.startswith(o + ".") for o in found)]
    if spec == "blocks":
        return _block_names(model)
    if spec == "leaves":
        return [n for n, m in named.items() if not any(True for _ in m.children())]
    if spec == "all":
        return list(named)
    if spec in named:
        if isinstance(named[spec], (nn.ModuleList, nn.ModuleDict)):  # containers never run
            return [f"{spec}.{child}" for child, _ in named[spec].named_children()]
        return [spec]
    if any(c in spec for c in "*?["):
        pattern = _glob_regex(spec)
        return [n for n in named if pattern.fullmatch(n)]
    # A bare class name such as "IBNorm" or "nn.LayerNorm": select by type.
    return [n for n, m in named.items() if _class_matches(m, spec)]


def _glob_regex(spec: str) -> re.Pattern:
    """Dotted-path glob: ``**`` crosses dots; ``*`` and ``?`` stay within one name."""
    out, i = [], 0
    while i < len(spec):
        if spec.startswith("**", i):
            out.append(".*")
            i += 2
        elif spec[i] == "*":
            out.append("[^.]*")
            i += 1
        elif spec[i] == "?":
            out.append("[^.]")
            i += 1
        elif spec[i] == "[" and "]" in spec[i + 2:]:
            end = spec.index("]", i + 2)
            body = spec[i + 1:end]
            out.append("[^" + re.escape(body[1:]) + "]" if body.startswith("!")
                       else "[" + re.escape(body) + "]")
            i = end + 1
        else:
            out.append(re.escape(spec[i]))
            i += 1
    return re.compile("".join(out))


def select_layers(model: nn.Module, layers=None) -> list[str]:
    """Names of the modules of ``model`` chosen by ``layers``, in registration order.

    Parameters
    ----------
    model : nn.Module
        The model to probe.
    layers : str, type, tuple of types, list, or None
        See the module docstring.  ``None`` means ``"blocks"`` when the model has an
        ``nn.ModuleList`` of blocks, otherwise its top-level children.

    Returns
    -------
    list of str
        Module names (as in ``model.named_modules()``), without duplicates.

    Raises
    ------
    ValueError
        When a specification matches no module; the message lists the available names.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    named = {n: m for n, m in model.named_modules() if n}
    if not named:
        raise InputError("model has no submodules to probe; wrap it or probe its output instead")
    if layers is None:
        chosen = _block_names(model) or [n for n, _ in model.named_children()]
        return chosen
    specs = list(layers) if isinstance(layers, list) else [layers]
    if not specs:
        raise InputError("layers=[] selects nothing; give at least one name, glob or class")
    chosen: list[str] = []
    for spec in specs:
        found = _match_one(model, spec, named)
        if not found:
            raise InputError(f"layers: {spec!r} matches no module of {type(model).__name__}; "
                             f"available names: {_describe_available(list(named))}; also "
                             f"accepted: module classes, {list(GROUPS)}")
        chosen.extend(n for n in found if n not in chosen)
    order = {n: i for i, n in enumerate(named)}
    return sorted(chosen, key=order.__getitem__)


def primary_tensor(output, layer: str) -> torch.Tensor:
    """The tensor that represents a module's output.

    A tensor is returned as is; for a tuple/list, a dict (including Hugging Face
    ``ModelOutput``) or a dataclass the first floating-point tensor found depth-first is
    used, which is the hidden state for the usual ``(hidden, attention, cache)`` returns.
    """
    if isinstance(output, torch.Tensor):
        return output
    found = _first_float_tensor(output, depth=0)
    if found is None:
        raise InputTypeError(f"layer {layer!r} returned {type(output).__name__} with no "
                             f"floating-point tensor in it; choose a different layer")
    return found


def _first_float_tensor(obj, depth: int):
    if depth > 4:
        return None
    if isinstance(obj, torch.Tensor):
        return obj if obj.is_floating_point() else None
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (tuple, list)):
        items = list(obj)
    elif hasattr(obj, "__dataclass_fields__"):
        items = [getattr(obj, f) for f in obj.__dataclass_fields__]
    else:
        return None
    for item in items:
        found = _first_float_tensor(item, depth + 1)
        if found is not None:
            return found
    return None
