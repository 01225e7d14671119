"""Which normalization layers a model has: family and kind of each, and a model summary.

A *family* is the kind of statistics a layer uses: ``"layer"`` (centred, per token over
features), ``"rms"`` (uncentred, per token) or ``"batch"`` (per channel over batch and
space).  A *kind* is what the analysis table records: the family name for a baseline layer,
``"ib-S"``/``"ib-L"``/``"ib-T"`` for IBNorm layers (``"ib-custom"`` for a user phi).
"""

from __future__ import annotations

from torch import nn

from ibtools.errors import InputTypeError
from ibtools.norms.modules import IBNorm, IBNormMixin, IBRMSNorm, _IBBatchNorm

__all__ = ["HF_RMS_NORM_CLASSES", "norm_family", "norm_kind", "describe_norms", "find_norms"]

#: Hugging Face classes that compute LLaMA's RMSNorm, ``w * x / sqrt(mean(x^2) + eps)``
#: with the weight in ``weight`` and eps in ``variance_epsilon``.  Matched by class name
#: and module (``transformers.*``) so transformers need not be imported.  Gemma's
#: ``(1 + w)`` variant is deliberately absent: copying its weight would change the output.
HF_RMS_NORM_CLASSES = frozenset({
    "LlamaRMSNorm", "MistralRMSNorm", "MixtralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm",
    "T5LayerNorm",
})


def is_hf_rms_norm(module: nn.Module) -> bool:
    """True for a Hugging Face LLaMA-style RMSNorm module (see :data:`HF_RMS_NORM_CLASSES`)."""
    cls = type(module)
    return (cls.__name__ in HF_RMS_NORM_CLASSES and cls.__module__.startswith("transformers.")
            and isinstance(getattr(module, "weight", None), nn.Parameter)
            and hasattr(module, "variance_epsilon"))


def norm_family(module: nn.Module) -> str | None:
    """Return ``"layer"``, ``"rms"``, ``"batch"`` or ``None`` (not a normalization layer)."""
    if isinstance(module, (IBNorm, nn.LayerNorm)):
        return "layer"
    if isinstance(module, (IBRMSNorm, nn.RMSNorm)) or is_hf_rms_norm(module):
        return "rms"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return "batch"
    return None


def norm_kind(module: nn.Module) -> str | None:
    """Return the family of a baseline layer, ``"ib-<variant>"`` of an IBNorm layer, or None."""
    if isinstance(module, IBNormMixin):
        variant = module.variant
        return f"ib-{variant}" if isinstance(variant, str) else "ib-custom"
    return norm_family(module)


def find_norms(model: nn.Module) -> list[tuple[list[str], nn.Module]]:
    """Every distinct normalization module of ``model`` with all the names it is reachable by.

    A module registered in several places (shared) appears once, with each of its names.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen: dict[int, tuple[list[str], nn.Module]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        if norm_family(module) is None:
            continue
        seen.setdefault(id(module), ([], module))[0].append(name)
    return list(seen.values())


def describe_norms(model: nn.Module) -> dict:
    """Summarise a model's normalization as ``{"norm": kind, "lam": float | None}``.

    Parameters
    ----------
    model : torch.nn.Module
        Any model.

    Returns
    -------
    dict
        ``norm`` is the common kind of all its normalization layers (``"layer"``,
        ``"rms"``, ``"batch"``, ``"ib-S"``, ``"ib-L"``, ``"ib-T"``, ``"ib-custom"``),
        ``"mixed"`` when they differ, or ``"none"`` when it has none.  ``lam`` is the lam
        shared by all its IBNorm layers, or ``None`` when there are none or their lams differ.
    """
    norms = find_norms(model)
    kinds = {norm_kind(module) for _, module in norms}
    lams = {module.lam for _, module in norms if isinstance(module, IBNormMixin)}
    if not kinds:
        kind = "none"
    elif len(kinds) == 1:
        kind = kinds.pop()
    else:
        kind = "mixed"
    return {"norm": kind, "lam": lams.pop() if len(lams) == 1 else None}


def is_ib_batch_norm(module: nn.Module) -> bool:
    """True for the channel flavour of IBNorm (IBBatchNorm1d/2d/3d)."""
    return isinstance(module, _IBBatchNorm)
