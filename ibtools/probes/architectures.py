"""Architectures named by a string: ``ibtools:<reference model>``, ``torchvision:<name>``,
``timm:<name>``, ``package.module:factory``; or given as a callable or a module."""

from __future__ import annotations

import importlib

from torch import nn

ARCH_FORMS = ("'ibtools:<mlp|cnn|vit|gpt|llama>'", "'torchvision:<name>'", "'timm:<name>'",
              "'hf:<dir>'", "'package.module:factory'", "a callable returning a module",
              "an nn.Module instance")


def _optional(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"arch '{module}:...' needs {module}: pip install '{extra}'") from exc


def resolve_callable(spec: str, what: str = "arch"):
    """``"package.module:attr.sub"`` -> the object it names."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what}={spec!r} is not 'package.module:name'")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what}={spec!r}: cannot import {module_name!r} ({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what}={spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def build_architecture(arch, **kwargs) -> nn.Module:
    """An untrained model of ``arch`` (see ``ARCH_FORMS``), built with ``kwargs``."""
    if isinstance(arch, nn.Module):
        if kwargs:
            raise ValueError(f"arch is a module instance; keyword arguments {sorted(kwargs)} "
                             f"cannot apply to it")
        return arch
    if callable(arch) and not isinstance(arch, str):
        model = arch(**kwargs)
    elif isinstance(arch, str) and arch.startswith("ibtools:"):
        from ibtools.models import build_model

        model = build_model(arch[len("ibtools:"):], **kwargs)
    elif isinstance(arch, str) and arch.startswith("torchvision:"):
        tv = _optional("torchvision", "ibtools[vision]")
        model = tv.models.get_model(arch[len("torchvision:"):], weights=None, **kwargs)
    elif isinstance(arch, str) and arch.startswith("timm:"):
        timm = _optional("timm", "ibtools[vision]")
        model = timm.create_model(arch[len("timm:"):], pretrained=False, **kwargs)
    elif isinstance(arch, str) and ":" in arch and not arch.startswith("hf:"):
        factory = resolve_callable(arch)
        if not callable(factory):
            raise TypeError(f"arch={arch!r} names {type(factory).__name__}, not a callable")
        model = factory(**kwargs)
    else:
        raise ValueError(f"arch={arch!r} is not accepted; use one of {', '.join(ARCH_FORMS)}")
    if not isinstance(model, nn.Module):
        raise TypeError(f"arch={arch!r} returned {type(model).__name__}, not an nn.Module")
    return model
