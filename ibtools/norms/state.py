"""Moving state dicts between a model with IBNorm layers and the same model with baselines.

An IBNorm layer stores everything its baseline stores under the same names, plus ``lam``
(and, for the channel flavour, running statistics of the compressed values).  Loading a
baseline state dict into an IBNorm model therefore works as is; the other direction must
drop those extra entries, which :func:`adapt_norm_state_dict` does.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from torch import nn

from ibtools.errors import InputTypeError
from ibtools.norms.inventory import find_norms
from ibtools.norms.modules import IBNormMixin, _IBBatchNorm

__all__ = ["IB_ONLY_KEYS", "adapt_norm_state_dict"]

#: State-dict entries (last name component) that only IBNorm layers have.
IB_ONLY_KEYS = ("lam",) + _IBBatchNorm.ib_only_state


def adapt_norm_state_dict(model: nn.Module, state_dict: Mapping, *, prefix: str = "",
                          inplace: bool = False) -> Mapping:
    """Drop IBNorm-only entries that ``model``'s baseline norm layers would reject.

    Parameters
    ----------
    model : torch.nn.Module
        The model the state dict will be loaded into.
    state_dict : Mapping
        A state dict saved from the same architecture with any norm kind.
    prefix : str
        Prefix of ``model``'s keys inside ``state_dict`` (as in ``_load_from_state_dict``).
    inplace : bool
        Remove the entries from ``state_dict`` itself instead of returning a copy.

    Returns
    -------
    Mapping
        The state dict without ``<norm>.lam`` / ``<norm>.running_compressed_*`` entries for
        norm layers of ``model`` that are baselines.  Entries of other modules are untouched,
        so genuine mismatches still fail a strict load.
    """
    if not isinstance(state_dict, Mapping):
        raise InputTypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
    out = state_dict if inplace else OrderedDict(state_dict)
    for names, module in find_norms(model):
        if isinstance(module, IBNormMixin):
            continue
        for name in names:
            base = prefix + (f"{name}." if name else "")
            for key in IB_ONLY_KEYS:
                out.pop(base + key, None)
    return out
