r"""IBNorm modules: drop-in replacements for LayerNorm, RMSNorm and BatchNorm1d/2d/3d.

IBNorm-S/L/T as defined by ibtools (formulas in :mod:`ibtools.norms.functional`).  Each
class subclasses the layer it replaces, keeps its constructor arguments, parameter names
and shapes (``weight``, ``bias``, running statistics), and adds three keyword-only
settings: ``lam`` (compression strength, ``0`` = the baseline exactly), ``variant``
(``"S"``, ``"L"``, ``"T"`` or a callable ``phi(u, lam)``) and ``order``
(``"compress_first"`` or the ablation ``"standardize_first"``).

``lam`` is saved in the module's ``state_dict`` under the key ``"lam"`` (a float64 scalar),
so a checkpoint says its lam; loading a state dict that has it sets ``module.lam``.  A
baseline state dict (no ``lam``) loads with ``strict=True``; the reverse direction needs
:func:`ibtools.norms.adapt_norm_state_dict`, which the reference models apply themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ibtools.errors import InputError
from ibtools.norms import functional as IBF

__all__ = ["IBNorm", "IBRMSNorm", "IBBatchNorm1d", "IBBatchNorm2d", "IBBatchNorm3d", "IBNormMixin"]


class IBNormMixin:
    """Holds ``lam``, ``variant`` and ``order`` and keeps ``lam`` in the state dict.

    Mixed in front of the baseline class (``class IBNorm(IBNormMixin, nn.LayerNorm)``), so
    ``isinstance(m, nn.LayerNorm)`` stays true and weight-decay or init rules written for the
    baseline still apply.
    """

    #: Buffers an IB module has that its baseline lacks; missing ones are tolerated on load.
    ib_only_state: tuple[str, ...] = ()

    def _init_ib(self, lam, variant, order) -> None:
        self._variant = IBF.check_variant(variant)
        self._order = IBF.check_order(order)
        self._lam = IBF.check_lam(lam)

    @property
    def lam(self) -> float:
        """Compression strength (float >= 0); 0 makes the module its baseline."""
        return self._lam

    @lam.setter
    def lam(self, value) -> None:
        self._lam = IBF.check_lam(value)

    @property
    def variant(self) -> str | Callable:
        """``"S"``, ``"L"``, ``"T"`` or the user's callable ``phi(u, lam)``."""
        return self._variant

    @property
    def order(self) -> str:
        """``"compress_first"`` (IBNorm) or ``"standardize_first"`` (ablation)."""
        return self._order

    def _ib_repr(self) -> str:
        variant = self._variant if isinstance(self._variant, str) else getattr(
            self._variant, "__name__", type(self._variant).__name__)
        return f"lam={self._lam:g}, variant={variant}, order={self._order}"

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # float64 on the CPU: exact for any Python float and immune to model.half() / .to(mps).
        destination[prefix + "lam"] = torch.tensor(self._lam, dtype=torch.float64)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        key = prefix + "lam"
        if key in state_dict:
            value = state_dict[key]
            try:
                if not isinstance(value, torch.Tensor) or value.numel() != 1:
                    raise InputError(f"expected a scalar tensor, got {value!r}")
                self._set_lam_from_state(float(value.item()))
            except (TypeError, ValueError) as err:
                error_msgs.append(f"invalid {key!r} in state dict: {err}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        if key in unexpected_keys:
            unexpected_keys.remove(key)
        for name in self.ib_only_state:
            # A baseline checkpoint lacks these; keep the module's own values.
            if prefix + name in missing_keys:
                missing_keys.remove(prefix + name)

    def _set_lam_from_state(self, value: float) -> None:
        self.lam = value


class IBNorm(IBNormMixin, nn.LayerNorm):
    r"""IBNorm, LayerNorm flavour: compress toward the mean of each group, then standardize.

    IBNorm-S/L/T as defined by ibtools.  Over the last ``len(normalized_shape)`` dimensions:

    .. math::

        u = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}},\quad
        c = \phi_\lambda(u),\quad
        y = \frac{c - \mathrm{E}[c]}{\sqrt{\mathrm{Var}[c] + \epsilon}} * \gamma + \beta

    with :math:`\phi_\lambda` = ``u/(1+lam|u|)`` (S), ``sign(u)ln(1+lam|u|)/lam`` (L) or
    ``tanh(lam u)/lam`` (T).  ``lam = 0`` is :class:`torch.nn.LayerNorm` exactly.

    Parameters
    ----------
    normalized_shape, eps, elementwise_affine, bias, device, dtype
        As in :class:`torch.nn.LayerNorm`; ``weight`` and ``bias`` have the same names and
        shapes, so LayerNorm state dicts load into it.
    lam : float
        Compression strength >= 0 (keyword-only; default 1.0).
    variant : {"S", "L", "T"} or callable
        Compression function (keyword-only; default ``"T"``).
    order : {"compress_first", "standardize_first"}
        ``"standardize_first"`` skips the re-standardization (the paper's ablation).

    References
    ----------
    .. [1] Zou & Zhou, "IBNorm: Information-Bottleneck Inspired Normalization for
       Representation Learning", arXiv:2510.25262 (2025).
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None, *, lam: float = 1.0,
                 variant: str | Callable = "T", order: str = "compress_first") -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine, bias=bias,
                         device=device, dtype=dtype)
        self._init_ib(lam, variant, order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return IBF.ib_norm(x, self.normalized_shape, self.weight, self.bias, self.eps,
                           lam=self._lam, variant=self._variant, order=self._order)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._ib_repr()}"


class IBRMSNorm(IBNormMixin, nn.RMSNorm):
    r"""IBNorm, RMSNorm flavour: no centring.

    IBNorm-S/L/T as defined by ibtools.  Over the last ``len(normalized_shape)`` dimensions:

    .. math::

        u = \frac{x}{\sqrt{\mathrm{E}[x^2] + \epsilon}},\quad
        c = \phi_\lambda(u),\quad
        y = \frac{c}{\sqrt{\mathrm{E}[c^2] + \epsilon}} * \gamma

    ``lam = 0`` is :class:`torch.nn.RMSNorm` exactly.

    Parameters
    ----------
    normalized_shape, eps, elementwise_affine, device, dtype
        As in :class:`torch.nn.RMSNorm` (``eps=None`` means ``torch.finfo(x.dtype).eps``).
    lam, variant, order
        As in :class:`IBNorm`.

    References
    ----------
    .. [1] Zou & Zhou, arXiv:2510.25262 (2025).
    """

    def __init__(self, normalized_shape, eps: float | None = None, elementwise_affine: bool = True,
                 device=None, dtype=None, *, lam: float = 1.0, variant: str | Callable = "T",
                 order: str = "compress_first") -> None:
        super().__init__(normalized_shape, eps=eps, elementwise_affine=elementwise_affine,
                         device=device, dtype=dtype)
        self._init_ib(lam, variant, order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return IBF.ib_rms_norm(x, self.normalized_shape, self.weight, self.eps,
                               lam=self._lam, variant=self._variant, order=self._order)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._ib_repr()}"


class _IBBatchNorm(IBNormMixin, nn.modules.batchnorm._BatchNorm):
    r"""IBNorm, BatchNorm flavour: per-channel statistics over batch and space.

    IBNorm-S/L/T as defined by ibtools.  For channel ``k`` (dimension 1), with statistics over
    every other dimension:

    .. math::

        u = \frac{x - \mu_k}{\sqrt{\sigma_k^2 + \epsilon}},\quad
        c = \phi_\lambda(u),\quad
        y = \frac{c - m_k}{\sqrt{s_k^2 + \epsilon}} * \gamma_k + \beta_k

    In training :math:`\mu, \sigma^2, m, s^2` are batch statistics and the running estimates
    are updated (``momentum``; ``None`` = cumulative average); in eval mode the running
    estimates are used, so the output of one sample does not depend on the others.  The
    running estimates of ``c`` (``running_compressed_mean``/``_var``) start at the moments of
    :math:`\phi_\lambda(Z)`, :math:`Z \sim N(0, 1)`, and are reset to them when ``lam``
    changes.  ``lam = 0`` is the BatchNorm layer exactly.

    Parameters
    ----------
    num_features, eps, momentum, affine, track_running_stats, device, dtype
        As in :class:`torch.nn.BatchNorm2d`; parameter and buffer names match it.
    lam, variant, order
        As in :class:`IBNorm`.

    References
    ----------
    .. [1] Zou & Zhou, arXiv:2510.25262 (2025).
    """

    ib_only_state = ("running_compressed_mean", "running_compressed_var")

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, device=None, dtype=None,
                 *, lam: float = 1.0, variant: str | Callable = "T",
                 order: str = "compress_first") -> None:
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, device=device, dtype=dtype)
        self._init_ib(lam, variant, order)
        if self.track_running_stats:
            factory = {"device": device, "dtype": dtype}
            self.register_buffer("running_compressed_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_compressed_var", torch.ones(num_features, **factory))
        else:
            self.register_buffer("running_compressed_mean", None)
            self.register_buffer("running_compressed_var", None)
        self._reset_compressed_stats()

    @IBNormMixin.lam.setter
    def lam(self, value) -> None:
        value = IBF.check_lam(value)
        changed = value != getattr(self, "_lam", None)
        self._lam = value
        if changed:
            self._reset_compressed_stats()

    def _set_lam_from_state(self, value: float) -> None:
        # The state dict's own running_compressed_* (if any) are loaded right after this.
        self.lam = value

    def _reset_compressed_stats(self) -> None:
        if getattr(self, "running_compressed_mean", None) is None:
            return
        mean, var = IBF.gaussian_compressed_moments(self._lam, self._variant)
        with torch.no_grad():
            self.running_compressed_mean.fill_(mean)
            self.running_compressed_var.fill_(var)

    def reset_running_stats(self) -> None:
        super().reset_running_stats()
        if hasattr(self, "_lam"):
            self._reset_compressed_stats()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        # Same bookkeeping as torch's _BatchNorm.forward, so lam = 0 matches it exactly.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_buffers = not self.training or self.track_running_stats
        return IBF.ib_batch_norm(
            x,
            self.running_mean if use_buffers else None,
            self.running_var if use_buffers else None,
            self.weight, self.bias,
            self.training or (self.running_mean is None and self.running_var is None),
            factor, self.eps,
            running_compressed_mean=self.running_compressed_mean if use_buffers else None,
            running_compressed_var=self.running_compressed_var if use_buffers else None,
            lam=self._lam, variant=self._variant, order=self._order,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self._ib_repr()}"


class IBBatchNorm1d(_IBBatchNorm, nn.BatchNorm1d):
    __doc__ = _IBBatchNorm.__doc__.replace("BatchNorm2d", "BatchNorm1d") + """
    Input: ``(N, C)`` or ``(N, C, L)``.
    """


class IBBatchNorm2d(_IBBatchNorm, nn.BatchNorm2d):
    __doc__ = _IBBatchNorm.__doc__ + """
    Input: ``(N, C, H, W)``.
    """


class IBBatchNorm3d(_IBBatchNorm, nn.BatchNorm3d):
    __doc__ = _IBBatchNorm.__doc__.replace("BatchNorm2d", "BatchNorm3d") + """
    Input: ``(N, C, D, H, W)``.
    """
