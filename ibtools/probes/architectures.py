"""Architectures named by a string: ``ibtools:<reference model>``, ``torchvision:<name>``,
``timm:<name>``, ``package.module:factory``; or given as a callable or a module.

Who names the architecture matters.  A string the user passes (``arch=``, ``--arch``) may
name any importable factory: that is the user's own choice of code.  A string read from a
file (an ibtools checkpoint, safetensors metadata, a ``--config`` file) is data from
whoever wrote the file, and :func:`stored_arch` lets it name only ibtools' own models (or a
Hugging Face directory, whose class transformers picks from its own registry) unless the
user opts in with ``trust_code=True``.  The check reads the string only: nothing is
imported before it passes.
"""

from __future__ import annotations

import importlib

from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.models.checkpoint_format import MAX_PARAMETERS, check_config, check_size

ARCH_FORMS = ("'ibtools:<mlp|cnn|vit|gpt|llama>'", "'torchvision:<name>'", "'timm:<name>'",
              "'hf:<dir>'", "'package.module:factory'", "a callable returning a module",
              "an nn.Module instance")


class UntrustedCodeError(InputError):
    """A file names code (an architecture factory) that the user did not name."""


def _optional(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"arch '{module}:...' needs {module}: pip install '{extra}'") from exc


def resolve_callable(spec: str, what: str = "arch"):
    """``"package.module:attr.sub"`` -> the object it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise InputError(f"{what}={spec!r} is not 'package.module:name'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"{what}={spec!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"{what}={spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def registry_name(arch) -> str | None:
    """``"mlp"`` for ``"ibtools:mlp"`` or ``"mlp"``; ``None`` for anything else."""
    from ibtools.models import REFERENCE_MODELS

    if not isinstance(arch, str):
        return None
    name = arch[len("ibtools:"):] if arch.startswith("ibtools:") else arch
    return name if name in REFERENCE_MODELS else None


def stored_arch(arch, *, where: str, trust_code: bool = False, what: str = "architecture") -> str:
    """Check an architecture string read from a file before anything is imported.

    Parameters
    ----------
    arch : str
        The string as the file holds it.
    where : str
        How the message names the file, e.g. ``"checkpoint='run/a.pt'"``.
    trust_code : bool
        Let the file name any factory (the user vouches for the file).
    what : str
        What the string is, for the message.

    Returns
    -------
    str
        ``"ibtools:<name>"`` for ibtools' own models (a plain registry name is accepted),
        ``arch`` itself for a Hugging Face directory or when ``trust_code`` is set.

    Raises
    ------
    UntrustedCodeError
        Anything else, such as ``"os:system"`` or ``"some.module:factory"``; the message
        shows the string and the two ways to allow it.
    """
    name = registry_name(arch)
    if name is not None:
        return f"ibtools:{name}"
    if isinstance(arch, str) and (arch.startswith("hf:") or trust_code):
        return arch
    from ibtools.models import REFERENCE_MODELS

    shown = arch if isinstance(arch, str) else repr(arch)
    raise UntrustedCodeError(
        f"{where} names the {what} {arch!r}, which is not one of ibtools' own models "
        f"({', '.join('ibtools:' + n for n in REFERENCE_MODELS)}).  A file may not choose code "
        f"to import and run, so nothing from {arch!r} was imported or called.  If you know "
        f"this architecture and trust it, name it yourself: arch={arch!r} (CLI: --arch "
        f"'{shown}'), or pass trust_code=True (CLI: --trust-code) to let the file name it.")


def architecture_factory(arch):
    """What :func:`build_architecture` calls for ``arch``: a class or function, or ``None``
    for a module instance.  Importing an external factory happens here."""
    if isinstance(arch, nn.Module):
        return None
    if callable(arch) and not isinstance(arch, str):
        return arch
    if isinstance(arch, str) and arch.startswith("ibtools:"):
        from ibtools.models import REFERENCE_MODELS

        name = arch[len("ibtools:"):]
        if name not in REFERENCE_MODELS:
            raise InputError(f"arch={arch!r}: no ibtools model {name!r}; use one of "
                             f"{sorted(REFERENCE_MODELS)}")
        return REFERENCE_MODELS[name]
    if isinstance(arch, str) and arch.startswith("torchvision:"):
        tv = _optional("torchvision", "ibtools[vision]")
        name = arch[len("torchvision:"):]
        return lambda **kw: tv.models.get_model(name, weights=None, **kw)
    if isinstance(arch, str) and arch.startswith("timm:"):
        timm = _optional("timm", "ibtools[vision]")
        name = arch[len("timm:"):]
        return lambda **kw: timm.create_model(name, pretrained=False, **kw)
    if isinstance(arch, str) and ":" in arch and not arch.startswith("hf:"):
        factory = resolve_callable(arch)
        if not callable(factory):
            raise InputTypeError(f"arch={arch!r} names {type(factory).__name__}, not a callable")
        return factory
    raise InputError(f"arch={arch!r} is not accepted; use one of {', '.join(ARCH_FORMS)}")


def choose_architecture(arch, stored: dict | None, arch_kwargs: dict, *, where: str,
                        trust_code: bool = False, max_parameters: int | None = MAX_PARAMETERS):
    """The architecture to build and its keyword arguments, for a checkpoint whose ibtools
    fields (:func:`ibtools.models.checkpoint_format.read_checkpoint_fields`) are ``stored``
    (``None`` when the file has none).

    A stored architecture is used only after :func:`stored_arch` accepts it (before any
    import); a stored config only for the same architecture, after :func:`check_config` and
    :func:`check_size`.  Keyword arguments the caller gives win over the stored config.
    """
    if arch is None:
        if stored is None:
            raise InputError(f"the checkpoint does not say its architecture; pass arch= as one "
                             f"of {ARCH_FORMS}")
        arch = stored_arch(stored["arch"], where=where, trust_code=trust_code)
    if stored is None or not isinstance(arch, str):
        return arch, arch_kwargs
    same = arch == stored["arch"] or (registry_name(arch) is not None
                                      and registry_name(arch) == registry_name(stored["arch"]))
    if not same:
        return arch, arch_kwargs
    if registry_name(arch) is not None:
        arch = f"ibtools:{registry_name(arch)}"
    from_file = {k: v for k, v in stored["config"].items() if k not in arch_kwargs}
    check_config(architecture_factory(arch), from_file, arch=arch, where=where)
    merged = {**stored["config"], **arch_kwargs}
    check_size(arch, merged, where=where, max_parameters=max_parameters)
    return arch, merged


def build_architecture(arch, **kwargs) -> nn.Module:
    """An untrained model of ``arch`` (see ``ARCH_FORMS``), built with ``kwargs``.

    ``arch`` is taken as the caller's own choice; check strings read from a file with
    :func:`stored_arch` first.
    """
    if isinstance(arch, nn.Module):
        if kwargs:
            raise InputError(f"arch is a module instance; keyword arguments {sorted(kwargs)} "
                             f"cannot apply to it")
        return arch
    factory = architecture_factory(arch)
    if isinstance(arch, str) and arch.startswith("ibtools:"):
        from ibtools.models import build_model

        model = build_model(arch[len("ibtools:"):], **kwargs)
    else:
        model = factory(**kwargs)
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"arch={arch!r} returned {type(model).__name__}, not an nn.Module")
    return model
