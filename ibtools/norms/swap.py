"""Replace the normalization layers of any model in place: baselines to IBNorm and back."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.norms import functional as IBF
from ibtools.norms.inventory import find_norms, is_hf_rms_norm, norm_family, norm_kind
from ibtools.norms.modules import (
    IBBatchNorm1d, IBBatchNorm2d, IBBatchNorm3d, IBNorm, IBNormMixin, IBRMSNorm,
)

__all__ = ["SWAP_TARGETS", "swap_norms"]

SWAP_TARGETS = ("ib-S", "ib-L", "ib-T", "layer", "rms", "batch", "baseline")

_BATCH_CLASSES = (  # (baseline, IB flavour); most derived first for isinstance
    (nn.BatchNorm3d, IBBatchNorm3d), (nn.BatchNorm2d, IBBatchNorm2d), (nn.BatchNorm1d, IBBatchNorm1d),
)
_PARAMETERS = ("weight", "bias")
_BUFFERS = ("running_mean", "running_var", "num_batches_tracked",
            "running_compressed_mean", "running_compressed_var")


def swap_norms(model: nn.Module, to: str = "ib-T", lam: float = 1.0, *,
               variant: str | Callable | None = None, order: str = "compress_first") -> list[dict]:
    """Replace every BatchNorm, LayerNorm and RMSNorm of ``model`` in place.

    Parameters
    ----------
    model : torch.nn.Module
        Modified in place.  Handles ``nn.LayerNorm``, ``nn.RMSNorm``,
        ``nn.BatchNorm1d/2d/3d``, the IBNorm modules and the Hugging Face LLaMA-style RMSNorm
        classes (:data:`ibtools.norms.inventory.HF_RMS_NORM_CLASSES`; GPT-2 uses
        ``nn.LayerNorm``).  ``SyncBatchNorm``, GroupNorm and InstanceNorm are left alone.
    to : {"ib-S", "ib-L", "ib-T", "layer", "rms", "batch", "baseline"}
        ``"ib-*"``: every norm becomes the IBNorm flavour of its own family (LayerNorm ->
        IBNorm, RMSNorm -> IBRMSNorm, BatchNormNd -> IBBatchNormNd), IBNorm layers are
        rebuilt with the new settings.  ``"layer"``, ``"rms"``, ``"batch"``: IBNorm layers of
        that family go back to the torch baseline.  ``"baseline"``: all IBNorm layers do.
        Families never change (a LayerNorm never becomes an RMSNorm).
    lam : float
        Compression strength of the new IBNorm layers (>= 0; 0 is the baseline exactly).
    variant : {"S", "L", "T"} or callable, optional
        Overrides the variant named by ``to`` (e.g. a custom ``phi(u, lam)``); only with
        ``to="ib-*"``.
    order : {"compress_first", "standardize_first"}
        Order of the new IBNorm layers.

    Returns
    -------
    list of dict
        One entry per replaced module: ``names`` (every place it was registered), ``from``
        and ``to`` (class names), ``family``.

    Notes
    -----
    The new module holds the *same* Parameter objects as the old one (so tied weights stay
    tied and an optimizer built earlier keeps working) and copies of its buffers; it keeps
    the old module's train/eval mode.  A module registered in several places is replaced
    by one new module in all of them.
    """
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if to not in SWAP_TARGETS:
        raise InputError(f"to must be one of {SWAP_TARGETS}, got {to!r}")
    to_ib = to.startswith("ib-")
    if variant is not None and not to_ib:
        raise InputError(f"variant is only used with to='ib-*', got variant={variant!r} with to={to!r}")
    ib_settings = {}
    if to_ib:
        ib_settings = {"lam": IBF.check_lam(lam), "order": IBF.check_order(order),
                       "variant": IBF.check_variant(to[3:] if variant is None else variant)}
    if norm_family(model) is not None:
        raise InputError(f"model is itself a normalization layer ({type(model).__name__}); "
                         "swap_norms replaces submodules in place, so wrap it in a container")

    replacements: dict[int, nn.Module] = {}
    record = []
    for names, old in find_norms(model):
        new = _replacement(old, to, ib_settings)
        if new is None:
            continue
        replacements[id(old)] = new
        record.append({"names": names, "from": type(old).__name__, "to": type(new).__name__,
                       "family": norm_family(old), "kind": norm_kind(new)})
    sites = [(parent, child_name, child)
             for _, parent in model.named_modules(remove_duplicate=False)
             for child_name, child in parent._modules.items()
             if child is not None and id(child) in replacements]
    for parent, child_name, child in sites:
        setattr(parent, child_name, replacements[id(child)])
    return record


def _replacement(old: nn.Module, to: str, ib: dict) -> nn.Module | None:
    family = norm_family(old)
    is_ib = isinstance(old, IBNormMixin)
    if to.startswith("ib-"):
        make_ib = True
    elif is_ib and (to == "baseline" or to == family):
        make_ib = False
    else:
        return None
    factory = _factory_kwargs(old)
    if family == "layer":
        cls = IBNorm if make_ib else nn.LayerNorm
        new = cls(old.normalized_shape, eps=old.eps, elementwise_affine=old.elementwise_affine,
                  bias=old.bias is not None, **factory, **ib)
    elif family == "rms":
        if is_hf_rms_norm(old):
            shape, eps, affine = tuple(old.weight.shape), float(old.variance_epsilon), True
        else:
            shape, eps, affine = old.normalized_shape, old.eps, old.elementwise_affine
        cls = IBRMSNorm if make_ib else nn.RMSNorm
        new = cls(shape, eps=eps, elementwise_affine=affine, **factory, **ib)
    else:
        pair = next((p for p in _BATCH_CLASSES if isinstance(old, p)), None)
        if pair is None:  # SyncBatchNorm and other _BatchNorm subclasses
            return None
        cls = pair[1] if make_ib else pair[0]
        new = cls(old.num_features, eps=old.eps, momentum=old.momentum, affine=old.affine,
                  track_running_stats=old.track_running_stats, **factory, **ib)
    _transfer_state(old, new)
    new.train(old.training)
    return new


def _factory_kwargs(module: nn.Module) -> dict:
    for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    return {}


def _transfer_state(old: nn.Module, new: nn.Module) -> None:
    for name in _PARAMETERS:
        param = getattr(old, name, None)
        if isinstance(param, nn.Parameter) and getattr(new, name, None) is not None:
            setattr(new, name, param)
    # Compressed-value statistics only carry over when the compression is the same.
    same_phi = (isinstance(old, IBNormMixin) and isinstance(new, IBNormMixin)
                and old.lam == new.lam and old.variant == new.variant)
    with torch.no_grad():
        for name in _BUFFERS:
            if name.startswith("running_compressed") and not same_phi:
                continue
            src, dst = getattr(old, name, None), getattr(new, name, None)
            if isinstance(src, torch.Tensor) and isinstance(dst, torch.Tensor):
                dst.copy_(src)
