"""Loading models from the checkpoint formats people have.

``load_model(checkpoint, arch=...)`` reads

- ibtools checkpoints (``torch.save`` of ``{"format": "ibtools-checkpoint", "arch", "config",
  "state_dict", "meta"}``), which carry their own architecture, norm and lambda;
- plain state dicts (``.pt``/``.pth``/``.bin``/``.ckpt``), always with
  ``torch.load(weights_only=True)``; wrappers (``state_dict``, ``model``, ``ema``, ...) are
  unwrapped and ``module.`` / ``_orig_mod.`` prefixes stripped;
- safetensors files (with ibtools metadata ``format``/``arch``/``config``/``meta`` when
  saved by ibtools);
- Hugging Face model directories (``config.json`` + weights) through transformers;
- a full pickled module, only with ``trust_pickle=True``.

Keys that did not match are returned in ``info`` and raise (``strict=True``) or warn
(``strict=False``); nothing is ignored silently.

Loading a file runs no code the user did not name.  Pickles that need more than tensors
and containers are refused without ``trust_pickle=True``; an architecture string stored in
a file may name only ibtools' own models unless the user names it too (``arch=``) or passes
``trust_code=True``; a stored config is checked against the factory's signature and a
parameter budget before anything is built.  Bytes that are no checkpoint are reported as
such.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
import warnings
import zipfile

import torch
from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.models.checkpoint_format import MAX_PARAMETERS
from ibtools.probes.architectures import UntrustedCodeError

__all__ = ["UnsafePickleError", "UntrustedCodeError", "load_model", "read_checkpoint",
           "pickle_globals", "unwrap_state_dict"]


def __getattr__(name):  # moved to readers.py with the other format readers
    if name == "load_hf_directory":
        from ibtools.probes.readers import load_hf_directory

        return load_hf_directory
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "ema", "model_ema",
                "state_dict_ema", "net", "network", "params")
PREFIXES = ("module.", "_orig_mod.")
_SCHEMES = ("ibtools:", "torchvision:", "timm:", "hf:")


class UnsafePickleError(InputError):
    """A checkpoint needs arbitrary pickled objects, which are refused without trust."""


def _corrupt(path, exc) -> InputError:
    return InputError(f"checkpoint={str(path)!r} cannot be read; the file is truncated, corrupt "
                      f"or not a checkpoint ({type(exc).__name__}: {str(exc)[:200]})")


_DOTTED = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def _scan_pickle(blob: bytes) -> tuple[list[str], bool]:
    """The globals one pickle stream imports, and whether it reads to its STOP opcode."""
    found: list[str] = []
    strings: list[str] = []
    try:
        for op, arg, _ in pickletools.genops(blob):
            if op.name in ("GLOBAL", "INST"):
                found.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if op.name == "STOP":
                return found, True
    except Exception:  # a damaged stream: report what was read before the damage
        pass
    return found, False


def _pickle_blobs(path) -> list[bytes]:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
    with open(path, "rb") as f:
        return [f.read()]


def pickle_globals(path) -> list[str]:
    """The ``module.name`` globals a pickle (or a torch zip checkpoint) would import, found
    by reading its opcodes without executing anything.  Names that are not dotted Python
    identifiers (what random bytes decode to) are left out."""
    found: list[str] = []
    for blob in _pickle_blobs(path):
        found += _scan_pickle(blob)[0]
    return sorted({g for g in found if _DOTTED.match(g)})


def _is_pickle(path) -> bool:
    """Whether the file holds pickle streams that read to their end, or names real globals
    before damage: what separates a pickle from random bytes."""
    try:
        scans = [_scan_pickle(blob) for blob in _pickle_blobs(path)]
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return False
    return bool(scans) and all(complete or any(_DOTTED.match(g) for g in found)
                               for found, complete in scans)


def _unsafe_globals(path) -> list[str]:
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) pickles: read the opcodes ourselves
        safe = ("torch.", "collections.OrderedDict", "builtins.set", "builtins.dict")
        return [g for g in pickle_globals(path) if not g.startswith(safe)]


def _head(path: str, n: int = 8) -> str:
    with open(path, "rb") as f:
        return repr(f.read(n))


def _is_safetensors(path: str) -> bool:
    if path.endswith(".safetensors"):
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 10**8


def read_checkpoint(path, *, trust_pickle: bool = False, map_location="cpu"):
    """Read a checkpoint file without building anything.

    Returns
    -------
    obj : dict or nn.Module
        What the file holds.
    fmt : str
        ``"safetensors"``, ``"torch"`` or ``"pickle"`` (trusted full pickle).
    metadata : dict
        Safetensors header metadata (empty otherwise).

    Raises
    ------
    UnsafePickleError
        The file needs globals beyond tensors and containers and ``trust_pickle`` is False.
    ValueError
        The file is truncated or corrupt.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint={path!r}: no such file")
    if os.path.getsize(path) == 0:
        raise InputError(f"checkpoint={path!r} is empty (0 bytes); the file is truncated")
    if _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt", device=str(map_location)) as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # SafetensorError is not importable under a stable name
            raise _corrupt(path, exc) from exc
        return tensors, "safetensors", metadata
    try:
        return torch.load(path, map_location=map_location, weights_only=True), "torch", {}
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise _corrupt(path, exc) from exc
        refused = exc
    except Exception as exc:  # torch.load fails on damaged files with many exception types
        raise _corrupt(path, exc) from exc
    wanted = _unsafe_globals(path)
    if not wanted and not _is_pickle(path):
        raise InputError(f"checkpoint={path!r} is not a checkpoint: it is neither a torch or "
                         f"pickle file, a safetensors file nor a Hugging Face directory (it "
                         f"starts with bytes {_head(path)}); the file is corrupt or of another "
                         f"kind.  Nothing from it was executed.") from refused
    if not trust_pickle:
        raise UnsafePickleError(
            f"checkpoint={path!r} is a pickle that needs the globals {wanted or ['(unknown)']}, "
            f"which weights_only loading refuses because unpickling them can run arbitrary "
            f"code.  Nothing from it was executed.  If you trust where the file came from, "
            f"pass trust_pickle=True (CLI: --trust-pickle).") from refused
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, pickle.UnpicklingError):  # a plain pickle, not written by torch.save
        with open(path, "rb") as f:
            obj = pickle.load(f)  # noqa: S301 - the caller vouched for this file
    return obj, "pickle", {}


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and any(isinstance(v, torch.Tensor) for v in obj.values())
            and not any(isinstance(obj.get(k), (dict, nn.Module)) for k in WRAPPER_KEYS))


def unwrap_state_dict(obj, state_key: str | None = None):
    """Find the state dict inside a checkpoint dict.

    Returns
    -------
    state_dict : dict of str -> Tensor
    path : list of str
        The wrapper keys walked through (``["state_dict"]``, ``["model", "ema"]``, ...).
    """
    path: list[str] = []
    if state_key is not None:
        if not isinstance(obj, dict) or state_key not in obj:
            keys = list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__
            raise InputError(f"state_key={state_key!r} is not in the checkpoint; its keys: {keys}")
        obj, path = obj[state_key], [state_key]
    for _ in range(4):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if _is_state_dict(obj):
            return obj, path
        if not isinstance(obj, dict):
            break
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
        if key is None:
            break
        obj, path = obj[key], path + [key]
    keys = list(obj)[:20] if isinstance(obj, dict) else type(obj).__name__
    raise InputError(f"no state dict found in the checkpoint (walked {path or 'nothing'}); "
                     f"its keys: {keys}; pass state_key= to name the entry that holds it")


def strip_prefixes(state_dict: dict, model_keys) -> tuple[dict, list[str]]:
    """Remove ``module.`` / ``_orig_mod.`` (DataParallel, torch.compile) prefixes, and a
    common first component (``model.`` of Lightning) when that is what makes keys match."""
    stripped: list[str] = []
    out = dict(state_dict)
    changed = True
    while changed:
        changed = False
        for p in PREFIXES:
            if any(k.startswith(p) for k in out):
                out = {(k[len(p):] if k.startswith(p) else k): v for k, v in out.items()}
                stripped.append(p)
                changed = True
    own = set(model_keys)
    if own and out and not (own & set(out)):
        firsts = {k.split(".", 1)[0] for k in out}
        if len(firsts) == 1 and all("." in k for k in out):
            p = firsts.pop() + "."
            candidate = {k[len(p):]: v for k, v in out.items()}
            if own & set(candidate):
                out, stripped = candidate, stripped + [p]
    return out, stripped


def load_state_dict_reported(model: nn.Module, state_dict: dict, strict: bool) -> dict:
    """Load matching tensors and report the rest: missing, unexpected, shape-mismatched.

    Missing and unexpected keys come from ``model.load_state_dict`` itself, so a model's own
    loading hooks (such as the reference models' cross-norm adaptation) have their say.  As
    with torch, a strict failure comes after the matching tensors were copied in.
    """
    own = model.state_dict()
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    skipped = sorted(k for k in state_dict if k not in tensors)
    tensors, stripped = strip_prefixes(tensors, own)
    mismatched = [(k, list(v.shape), list(own[k].shape)) for k, v in tensors.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    bad = {k for k, _, _ in mismatched}
    loadable = {k: v for k, v in tensors.items() if k not in bad}
    result = model.load_state_dict(loadable, strict=False)
    missing = sorted(k for k in result.missing_keys if k not in bad)
    unexpected = sorted(result.unexpected_keys)
    report = {"missing_keys": missing, "unexpected_keys": unexpected,
              "mismatched_keys": mismatched, "skipped_non_tensor": skipped,
              "stripped_prefixes": stripped,
              "loaded_keys": len(loadable) - len(unexpected)}
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:5]})")
    if mismatched:
        problems.append(f"{len(mismatched)} with other shapes (e.g. {mismatched[:3]})")
    if problems and strict:
        raise InputError(f"the checkpoint does not match {type(model).__name__}: "
                         f"{'; '.join(problems)}; pass strict=False to load what matches")
    if problems:
        warnings.warn(f"loaded {report['loaded_keys']} tensors into {type(model).__name__}; "
                      f"{'; '.join(problems)}", stacklevel=3)
    return report


def load_model(checkpoint=None, arch=None, *, trust_pickle: bool = False,
               trust_code: bool = False, strict: bool = True, map_location="cpu",
               state_key: str | None = None, max_parameters: int | None = MAX_PARAMETERS,
               **arch_kwargs):
    """Build a model and load a checkpoint into it.

    Parameters
    ----------
    checkpoint : str, Path, dict, nn.Module or None
        A file (ibtools checkpoint, state dict, safetensors, pickled module), a Hugging Face
        directory, an already-loaded dict, or ``None`` (an untrained model of ``arch``).  A
        string such as ``"ibtools:gpt"`` that is no existing path is read as ``arch``.
    arch : str, callable, nn.Module or None
        ``"ibtools:<name>"``, ``"torchvision:<name>"``, ``"timm:<name>"``, ``"hf:<dir>"``,
        ``"package.module:factory"``, a callable returning a module, or a module instance to
        load into.  ``None``: taken from the checkpoint (ibtools checkpoints, ibtools
        safetensors metadata, Hugging Face directories, trusted pickled modules); a stored
        string may then name only ibtools' own models unless ``trust_code`` is set.  Naming
        the same string here is the user's choice and allowed.
    trust_pickle : bool
        Allow unpickling arbitrary objects (a full pickled module).  Never set it for files
        from an untrusted source: unpickling can run code.
    trust_code : bool
        Let an architecture string stored in the file name any importable factory
        (``"package.module:factory"``, ``"torchvision:..."``); without it such a file is
        refused before anything is imported.  Like ``trust_pickle``, only for files you trust.
    strict : bool
        Raise when keys are missing, unexpected or of another shape; ``False`` loads what
        matches and warns.
    map_location : str or torch.device
        Where tensors (and the model) go.
    state_key : str, optional
        The checkpoint entry holding the state dict, when the default search
        (``state_dict``, ``model``, ``module``, ``ema``, ...) picks the wrong one.
    max_parameters : int or None
        Refuse a stored config that would build more parameters than this (checked by
        arithmetic before anything is allocated); ``None`` lifts the limit.
    **arch_kwargs
        Keyword arguments of the architecture factory (they override a stored config).

    Returns
    -------
    model : nn.Module
        In eval mode, on ``map_location``.
    info : dict
        ``checkpoint``, ``format``, ``arch``, ``config``, ``meta`` and, hoisted from meta or
        config, ``norm``, ``lam``, ``seed``, ``step``; plus ``missing_keys``,
        ``unexpected_keys``, ``mismatched_keys``, ``stripped_prefixes``, ``wrapper``.
    """
    from ibtools.probes.readers import LoadRequest, find_reader

    if (isinstance(checkpoint, str) and checkpoint.startswith(_SCHEMES) and arch is None
            and not os.path.exists(checkpoint)):
        checkpoint, arch = None, checkpoint
    if isinstance(arch, str) and arch.startswith("hf:"):
        hf_dir = arch[3:]
        if checkpoint is not None and os.fspath(checkpoint) != hf_dir:
            raise InputError(f"arch={arch!r} loads its own weights; give checkpoint=None or the "
                             f"same directory, not {checkpoint!r}")
        checkpoint, arch = hf_dir, None
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike, dict, nn.Module)):
        raise InputTypeError(f"checkpoint: {type(checkpoint).__name__} is not accepted; give a "
                             f"path, a loaded dict, a module or None")
    if isinstance(checkpoint, (str, os.PathLike)) and not os.path.exists(checkpoint):
        raise FileNotFoundError(f"checkpoint={os.fspath(checkpoint)!r}: no such file")
    request = LoadRequest(checkpoint, arch, trust_pickle=trust_pickle, trust_code=trust_code,
                          strict=strict, map_location=map_location, state_key=state_key,
                          max_parameters=max_parameters, arch_kwargs=dict(arch_kwargs))
    return find_reader(request).read(request)
