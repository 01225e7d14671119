"""The ibtools checkpoint: one ``torch.save`` dict of plain types and tensors.

``{"format": "ibtools-checkpoint", "version": 1, "arch": "ibtools:<name>", "config": {...},
"state_dict": {...}, "meta": {"norm", "lam", "seed", "step", "epoch", metrics...}}``

Only plain Python values and tensors, so ``torch.load(path, weights_only=True)`` reads it.
The same fields may travel as the string metadata of a ``.safetensors`` file (``config`` and
``meta`` JSON-encoded).  :func:`read_checkpoint_fields` is the one reader of both forms; it
checks the format and version.  A config read from a file is data, not a program: before a
model is built, :func:`check_config` checks its keys and value types against the factory's
signature and :func:`check_size` refuses sizes beyond a parameter budget, so a hostile or
damaged file cannot make ibtools allocate terabytes.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.norms import describe_norms
from ibtools.results import write_atomic

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "MAX_PARAMETERS", "MAX_BLOCKS",
           "checkpoint_dict", "save_checkpoint", "load_checkpoint_dict", "is_ibtools_checkpoint",
           "read_checkpoint_fields", "check_config", "check_size", "estimate_parameters"]

CHECKPOINT_FORMAT = "ibtools-checkpoint"
CHECKPOINT_VERSION = 1
# Parameter budget for a model built from a config read from a file: 10^9 parameters are
# 4 GB in float32, far beyond the reference models (10^4-10^5) and still loadable on a
# workstation; a 10^6 x 10^6 layer (10^12) is refused before anything is allocated.
MAX_PARAMETERS = 10**9
# Blocks (layers) a stored config may ask for: each is a handful of Python modules, so 10^8
# blocks of width 1 fit the parameter budget yet would take hours and many GB to build.
MAX_BLOCKS = 10**4
_BLOCK_KEYS = {"mlp": "widths", "cnn": "blocks_per_stage", "vit": "depth", "gpt": "n_layer",
               "llama": "n_layer"}
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
                raise InputTypeError(f"{where} keys must be strings, got {k!r}")
            out[k] = _check_plain(v, f"{where}[{k!r}]")
        return out
    raise InputTypeError(f"{where} must hold only str/int/float/bool/None, lists and dicts, "
                         f"got {type(value).__name__}")


def _model_name(model: nn.Module, name: str | None) -> str:
    from ibtools.models import REFERENCE_MODELS

    if name is None:
        name = getattr(model, "name", None)
    if name not in REFERENCE_MODELS:
        raise InputError(f"name must be one of {sorted(REFERENCE_MODELS)}, got {name!r}")
    if type(model) is not REFERENCE_MODELS[name]:
        raise InputError(f"name={name!r} is {REFERENCE_MODELS[name].__name__}, but the model is "
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


def _expected(param: inspect.Parameter) -> tuple[str, bool]:
    """(kind, may be None) of a factory argument: from its annotation, else its default."""
    ann = param.annotation
    text = "" if ann is inspect.Parameter.empty else (
        ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann)))
    optional = "None" in text or "Optional" in text or param.default is None
    base = text.replace("typing.", "").split("|")[0].strip()
    if base.startswith(("Sequence", "list", "tuple", "Iterable")):
        return ("int list" if "[int]" in base else "list"), optional
    if base in ("int", "float", "str", "bool"):
        return base, optional
    default = param.default
    if isinstance(default, bool):
        return "bool", optional
    for kind, types in (("int", int), ("float", float), ("str", str), ("list", (list, tuple))):
        if isinstance(default, types):
            return kind, optional
    return "any", True


def _fits(value, kind: str, optional: bool) -> bool:
    if value is None:
        return optional
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "bool":
        return isinstance(value, bool)
    if kind in ("list", "int list"):
        item = "int" if kind == "int list" else "any"
        return isinstance(value, (list, tuple)) and all(_fits(v, item, False) for v in value)
    return True


def _plain(value) -> bool:
    if isinstance(value, (list, tuple)):
        return all(isinstance(v, _PLAIN) for v in value)
    return isinstance(value, _PLAIN)


def check_config(factory, config: Mapping, *, arch: str, where: str) -> dict:
    """Check a config read from a file against ``factory``'s signature, calling nothing.

    Every key must be an argument of ``factory`` (unless it takes ``**kwargs``), every value
    a plain scalar or a flat list of them, of the kind the argument's annotation (or, without
    one, its default) says.

    Parameters
    ----------
    factory : callable
        What would be called with the config (a model class or function).
    config : Mapping
        The stored keyword arguments.
    arch, where : str
        Named in errors: the architecture string and the file.

    Returns
    -------
    dict
        ``config`` as a plain dict.

    Raises
    ------
    ValueError
        An unknown key, a nested or non-plain value, or a value of the wrong kind; the
        message names the key, the value and what is accepted.
    """
    if not isinstance(config, Mapping):
        raise InputError(f"{where}: the stored config of {arch!r} must be a dict, got "
                         f"{type(config).__name__}")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: keys cannot be checked
        params = {}
    named = {k: p for k, p in params.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    open_ended = not params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(str(k) for k in config if k not in named)
    if unknown and not open_ended:
        raise InputError(f"{where}: the stored config has key(s) {unknown} that {arch!r} does "
                         f"not take; accepted: {sorted(named)}")
    for key, value in config.items():
        if not _plain(value):
            raise InputError(f"{where}: stored config {key}={value!r} is not accepted; a "
                             f"config from a file holds only numbers, strings, booleans, None "
                             f"and flat lists of them")
        if key in named:
            kind, optional = _expected(named[key])
            if not _fits(value, kind, optional):
                accepted = kind + (" or None" if optional else "")
                raise InputError(f"{where}: stored config {key}={value!r} "
                                 f"({type(value).__name__}) does not fit {arch!r}: "
                                 f"{key} takes {accepted}")
    return dict(config)


def _norms(width: int, count: int = 1) -> int:
    return 2 * width * count  # weight and bias, the most any norm here keeps as parameters


def estimate_parameters(name: str, config: Mapping) -> int:
    """Parameters of reference model ``name`` built with ``config``, from arithmetic alone.

    Exact for LayerNorm models; norms are counted as two vectors per layer, so for other
    norms it is an upper bound.  Nothing is built.
    """
    from ibtools.models import REFERENCE_MODELS

    params = inspect.signature(REFERENCE_MODELS[name]).parameters
    defaults = {k: p.default for k, p in params.items()}
    c = {**defaults, **config}
    ints = lambda v: [int(x) for x in v]  # noqa: E731
    if name == "mlp":
        sizes = [int(c["in_features"])] + ints(c["widths"])
        body = sum(a * b + b + _norms(b) for a, b in zip(sizes[:-1], sizes[1:]))
        return body + sizes[-1] * int(c["n_classes"]) + int(c["n_classes"])
    if name == "cnn":
        channels = ints(c["channels"])
        width, total = channels[0], 9 * int(c["in_channels"]) * channels[0] + _norms(channels[0])
        for stage, ch in enumerate(channels):
            for b in range(int(c["blocks_per_stage"])):
                total += 9 * width * ch + 9 * ch * ch + _norms(ch, 2)
                if (stage > 0 and b == 0) or width != ch:
                    total += width * ch + _norms(ch)
                width = ch
        return total + width * int(c["n_classes"]) + int(c["n_classes"])
    if name == "vit":
        d, p, h = int(c["dim"]), int(c["patch_size"]), int(int(c["dim"]) * float(c["mlp_ratio"]))
        patches = (int(c["image_size"]) // max(p, 1)) ** 2
        block = _norms(d, 2) + 3 * d * d + 3 * d + d * d + d + 2 * d * h + h + d
        return (int(c["in_channels"]) * d * p * p + d + d + (patches + 1) * d
                + int(c["depth"]) * block + _norms(d) + (d + 1) * int(c["n_classes"]))
    if name == "gpt":
        d, v = int(c["n_embd"]), int(c["vocab_size"])
        block = _norms(d, 2) + 3 * d * d + 3 * d + d * d + d + 8 * d * d + 5 * d
        return v * d + int(c["block_size"]) * d + int(c["n_layer"]) * block + _norms(d)
    d, v = int(c["dim"]), int(c["vocab_size"])
    h = int(c["hidden_dim"]) if c.get("hidden_dim") is not None else 8 * ((8 * d // 3 + 7) // 8)
    block = _norms(d, 2) + 4 * d * d + 3 * d * h
    return 2 * v * d + int(c["n_layer"]) * block + _norms(d)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _largest_pair(config: Mapping) -> tuple[float, list[str]]:
    """The product of the two largest numbers in ``config`` (lists included), and their keys
    as ``key=value`` labels."""
    sizes = []
    for key, value in config.items():
        items = value if isinstance(value, (list, tuple)) else [value]
        numbers = [abs(x) for x in items
                   if isinstance(x, (int, float)) and not isinstance(x, bool)]
        sizes += [(n, key) for n in sorted(numbers, reverse=True)[:2]]
    top = sorted(sizes, key=lambda t: t[0], reverse=True)[:2]
    product = math.prod(n for n, _ in top) if top else 0
    return product, [f"{key}={_short(config[key])}" for key in dict.fromkeys(k for _, k in top)]


def check_size(arch: str, config: Mapping, *, where: str,
               max_parameters: int | None = MAX_PARAMETERS) -> int:
    """Refuse a config that would build more than ``max_parameters`` parameters.

    For ibtools models the count is :func:`estimate_parameters`; for other factories, whose
    layout ibtools cannot know, it is the product of the two largest integer settings (the
    size of one dense layer between them), a lower bound on what they would allocate.

    Returns
    -------
    int
        The estimate.

    Raises
    ------
    ValueError
        The estimate exceeds ``max_parameters``; nothing has been allocated.  The message
        names the largest settings and how to raise the budget.
    """
    from ibtools.models import REFERENCE_MODELS

    name = arch[len("ibtools:"):] if arch.startswith("ibtools:") else None
    count, labels = _largest_pair(config)
    if name in REFERENCE_MODELS:
        try:
            count = estimate_parameters(name, config)
        except OverflowError:  # an infinite size
            count = math.inf
        except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError):
            pass  # a malformed config: the model's own checks name the problem
        key = _BLOCK_KEYS[name]
        value = config.get(key)
        blocks = len(value) if isinstance(value, (list, tuple)) else value
        if isinstance(blocks, int) and blocks > MAX_BLOCKS:
            raise InputError(f"{where}: stored config {key}={_short(value)} asks {arch!r} for "
                             f"{blocks} blocks, more than the {MAX_BLOCKS} a config from a file "
                             f"may ask for.  Nothing was built.")
    if max_parameters is not None and count > max_parameters:
        raise InputError(f"{where}: the stored config of {arch!r} would build about "
                         f"{count:.3g} parameters ({4 * count / 2**30:.3g} GiB in float32), more "
                         f"than the budget of {max_parameters:.3g}; its largest sizes: "
                         f"{', '.join(labels)}.  Nothing was allocated.  If the file is right, "
                         f"pass max_parameters= a larger number (or None) to load_model")
    return count


def is_ibtools_checkpoint(obj) -> bool:
    """Whether ``obj`` (a loaded dict or safetensors metadata) says it is an ibtools checkpoint."""
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def _json_field(metadata: Mapping, key: str, where: str) -> dict:
    text = metadata.get(key)
    if text is None:
        return {}
    try:
        value = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: metadata {key!r} is not valid JSON ({exc}); the file is "
                         f"damaged or was not written by ibtools") from None
    if not isinstance(value, Mapping):
        raise InputError(f"{where}: metadata {key!r} must be a JSON object, got "
                         f"{type(value).__name__}")
    return dict(value)


def read_checkpoint_fields(obj: Mapping, *, where: str = "checkpoint") -> dict:
    """The fields of an ibtools checkpoint, checked: the one reader of the format.

    Parameters
    ----------
    obj : Mapping
        What ``torch.load(path, weights_only=True)`` returned, or the string metadata of a
        ``.safetensors`` file (whose ``config``/``meta`` are JSON and whose tensors are the
        file's own, so ``state_dict`` is ``None`` here).
    where : str
        How errors name the file, e.g. ``"checkpoint='run/a.pt'"``.

    Returns
    -------
    dict
        ``arch`` (the stored string, unchecked: see
        :func:`ibtools.probes.architectures.stored_arch`), ``config``, ``meta``,
        ``state_dict`` and ``version``.

    Raises
    ------
    ValueError
        Not an ibtools checkpoint, another version, or fields of the wrong kind.
    """
    if not is_ibtools_checkpoint(obj):
        got = obj.get("format") if isinstance(obj, Mapping) else type(obj).__name__
        raise InputError(f"{where}: not an ibtools checkpoint: expected format "
                         f"{CHECKPOINT_FORMAT!r}, got {got!r}")
    text_form = all(isinstance(v, str) for v in obj.values())  # safetensors metadata
    version = obj.get("version", CHECKPOINT_VERSION if text_form else None)
    if str(version) != str(CHECKPOINT_VERSION):
        raise InputError(f"{where}: unsupported ibtools checkpoint version {version!r}; this "
                         f"ibtools reads version {CHECKPOINT_VERSION}")
    arch = obj.get("arch")
    if not isinstance(arch, str) or not arch:
        raise InputError(f"{where}: the checkpoint's 'arch' must be a non-empty string such as "
                         f"'ibtools:mlp', got {arch!r}")
    if text_form:
        config, meta = _json_field(obj, "config", where), _json_field(obj, "meta", where)
        state = None
    else:
        config, meta, state = obj.get("config") or {}, obj.get("meta") or {}, obj.get("state_dict")
        if not isinstance(config, Mapping) or not isinstance(meta, Mapping) \
                or not isinstance(state, Mapping):
            raise InputError(f"{where}: an ibtools checkpoint holds a 'config' dict, a 'meta' "
                             f"dict and a 'state_dict' mapping; got {type(config).__name__}, "
                             f"{type(meta).__name__} and {type(state).__name__}")
    return {"arch": arch, "config": dict(config), "meta": dict(meta), "state_dict": state,
            "version": CHECKPOINT_VERSION}


def load_checkpoint_dict(obj: Mapping, *, strict: bool = True,
                         max_parameters: int | None = MAX_PARAMETERS) -> nn.Module:
    """Rebuild a reference model from a checkpoint dict and load its weights.

    Parameters
    ----------
    obj : Mapping
        What ``torch.load(path, weights_only=True)`` returned for an ibtools checkpoint.
    strict : bool
        Passed to ``load_state_dict``.
    max_parameters : int or None
        Refuse a stored config that would build more parameters (see :func:`check_size`).

    Returns
    -------
    ReferenceModel
        The model, in eval mode, on the CPU.

    Raises
    ------
    ValueError
        If ``obj`` is not an ibtools checkpoint (wrong format, version or architecture), or
        its config does not fit the model (see :func:`check_config`, :func:`check_size`).
    """
    from ibtools.models import REFERENCE_MODELS, build_model

    arch = obj.get("arch") if is_ibtools_checkpoint(obj) else None
    name = arch[len("ibtools:"):] if isinstance(arch, str) and arch.startswith("ibtools:") else None
    if is_ibtools_checkpoint(obj) and name not in REFERENCE_MODELS:
        raise InputError(f"checkpoint arch must be 'ibtools:<name>' with name in "
                         f"{sorted(REFERENCE_MODELS)}, got {arch!r}")
    fields = read_checkpoint_fields(obj)
    config = check_config(REFERENCE_MODELS[name], fields["config"], arch=arch,
                          where="checkpoint")
    check_size(arch, config, where="checkpoint", max_parameters=max_parameters)
    model = build_model(name, **config)
    model.load_state_dict(fields["state_dict"], strict=strict)
    return model.eval()
