"""IBNorm (as defined by ibtools), its functional form, and tools to swap and describe norms.

IBNorm (Zou & Zhou, arXiv:2510.25262, 2025) compresses activations toward their group mean
with a bounded function of strength ``lam`` before standardizing them.  The paper's exact
formulas were not public: IBNorm-S/L/T here are ibtools' definition (see
:mod:`ibtools.norms.functional`), with ``lam = 0`` equal to the baseline norm.

- :class:`IBNorm`, :class:`IBRMSNorm`, :class:`IBBatchNorm1d`/``2d``/``3d``: drop-in
  replacements for ``nn.LayerNorm``, ``nn.RMSNorm``, ``nn.BatchNorm1d``/``2d``/``3d``.
- :func:`swap_norms`: replace a model's norms in place (and back).
- :func:`describe_norms`: ``{"norm": kind, "lam": lam}`` of a model.
- :func:`adapt_norm_state_dict`: load an IBNorm model's state dict into a baseline model.
"""

from ibtools.norms.functional import ORDERS, VARIANTS, compress, ib_batch_norm, ib_norm, ib_rms_norm
from ibtools.norms.inventory import describe_norms, find_norms, norm_family, norm_kind
from ibtools.norms.modules import IBBatchNorm1d, IBBatchNorm2d, IBBatchNorm3d, IBNorm, IBNormMixin, IBRMSNorm
from ibtools.norms.state import IB_ONLY_KEYS, adapt_norm_state_dict
from ibtools.norms.swap import SWAP_TARGETS, swap_norms

__all__ = [
    "IBNorm", "IBRMSNorm", "IBBatchNorm1d", "IBBatchNorm2d", "IBBatchNorm3d", "IBNormMixin",
    "compress", "ib_norm", "ib_rms_norm", "ib_batch_norm", "VARIANTS", "ORDERS",
    "swap_norms", "SWAP_TARGETS", "describe_norms", "find_norms", "norm_family", "norm_kind",
    "adapt_norm_state_dict", "IB_ONLY_KEYS",
]
