r"""The math of IBNorm: bounded compression followed by (re-)standardization.

IBNorm-S, IBNorm-L and IBNorm-T **as defined by ibtools**.  Zou & Zhou (2025) describe a
normalization layer that compresses activations toward their group mean with strength
``lam`` before standardizing them, in three saturating variants; their exact formulas were
not public, so ibtools defines them as follows (``docs/ibnorm.md`` in the repository says
what the paper states and what is ibtools' choice).
Within one normalization group with mean :math:`\mu` and variance :math:`\sigma^2`:

.. math::

    u = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \qquad
    c = \phi_\lambda(u), \qquad
    y = \gamma \, \frac{c - \mathrm{mean}(c)}{\sqrt{\mathrm{var}(c) + \epsilon}} + \beta

with

- IBNorm-S (softsign): :math:`\phi_\lambda(u) = u / (1 + \lambda |u|)`
- IBNorm-L (log):      :math:`\phi_\lambda(u) = \mathrm{sign}(u) \ln(1 + \lambda |u|) / \lambda`
- IBNorm-T (tanh):     :math:`\phi_\lambda(u) = \tanh(\lambda u) / \lambda`

Each :math:`\phi_\lambda` is odd, monotone, has slope 1 at 0, satisfies
:math:`|\phi_\lambda(u)| \le |u|` and tends to the identity as :math:`\lambda \to 0`.
``lam = 0`` calls the baseline function (``F.layer_norm``, ``F.rms_norm``,
``F.batch_norm``) itself, so it reproduces the baseline bit for bit.

``order="standardize_first"`` is the paper's ablation: standardize, compress, and apply the
affine map without re-standardizing.  The RMS flavour drops the centring (no :math:`\mu`, no
mean subtraction of :math:`c`, root-mean-square instead of variance).

Half-precision inputs (float16, bfloat16) are computed in float32 and cast back.

References
----------
.. [1] Zou, X. & Zhou, Y. "IBNorm: Information-Bottleneck Inspired Normalization for
   Representation Learning." arXiv:2510.25262 (2025).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ibtools.errors import InputError, InputTypeError

VARIANTS = ("S", "L", "T")
ORDERS = ("compress_first", "standardize_first")

_HALF_DTYPES = (torch.float16, torch.bfloat16)

# Below this value of lam*|u| the log variant uses its series, because the closed form is
# 0/0 at u = 0 and autograd would then give slope 0 instead of 1 there.
_LOG_SERIES_BELOW = 1e-4


# --------------------------------------------------------------------------- validation


def check_lam(lam) -> float:
    """Return ``lam`` as a float after checking it is a finite number >= 0.

    Raises
    ------
    TypeError
        If ``lam`` is not a real number (booleans and tensors are refused).
    ValueError
        If ``lam`` is negative, NaN or infinite.
    """
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise InputTypeError(f"lam must be a real number >= 0, got {lam!r} of type {type(lam).__name__}")
    value = float(lam)
    if not math.isfinite(value) or value < 0:
        raise InputError(f"lam must be a finite number >= 0 (0 gives the baseline norm), got {lam!r}")
    return value


def check_variant(variant) -> str | Callable:
    """Return the canonical variant: ``"S"``, ``"L"``, ``"T"`` or the callable itself."""
    if callable(variant):
        return variant
    if isinstance(variant, str) and variant.upper() in VARIANTS:
        return variant.upper()
    raise InputError(f"variant must be one of {VARIANTS} or a callable phi(u, lam), got {variant!r}")


def check_order(order) -> str:
    """Return ``order`` after checking it is one of :data:`ORDERS`."""
    if order not in ORDERS:
        raise InputError(f"order must be one of {ORDERS}, got {order!r}")
    return order


def _check_trailing_shape(x: torch.Tensor, normalized_shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    shape = tuple(int(s) for s in normalized_shape)
    k = len(shape)
    if k == 0 or x.dim() < k or tuple(x.shape[-k:]) != shape:
        raise InputError(
            f"normalized_shape {list(shape)} must match the trailing dimensions of the input, "
            f"got input of shape {list(x.shape)}"
        )
    return shape


# --------------------------------------------------------------------------- compression


def compress(u: torch.Tensor, lam: float, variant: str | Callable = "T") -> torch.Tensor:
    r"""Apply the bounded compression :math:`\phi_\lambda` elementwise.

    Parameters
    ----------
    u : torch.Tensor
        Standardized deviations (any shape, floating point).
    lam : float
        Compression strength, >= 0.  ``lam = 0`` returns ``u`` unchanged.
    variant : {"S", "L", "T"} or callable
        ``"S"`` softsign, ``"L"`` log, ``"T"`` tanh (IBNorm-S/L/T as defined by ibtools),
        or a user function ``phi(u, lam) -> tensor`` of the same shape.  A user function
        should be odd, monotone and satisfy ``|phi(u)| <= |u|`` to be a compression; that is
        not checked.

    Returns
    -------
    torch.Tensor
        :math:`\phi_\lambda(u)`, same shape and dtype as ``u``.

    Notes
    -----
    The built-in variants are odd, monotone, 1-Lipschitz with slope 1 at 0 and bounded by
    ``|u|``; S and T saturate at ``1/lam``, L grows logarithmically.  Their gradients are
    finite everywhere, including at ``u = 0``.
    """
    lam = check_lam(lam)
    variant = check_variant(variant)
    if callable(variant):
        out = variant(u, lam)
        if not isinstance(out, torch.Tensor) or out.shape != u.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"variant callable must return a tensor of shape {tuple(u.shape)}, got {got}")
        return out
    if lam == 0.0:
        return u
    if variant == "S":
        return u / (1.0 + lam * u.abs())
    if variant == "T":
        return torch.tanh(lam * u) / lam
    # "L": written as u * g(lam |u|) with g(t) = ln(1 + t) / t, so the slope at 0 is exactly 1.
    t = lam * u.abs()
    small = t < _LOG_SERIES_BELOW
    t_safe = torch.where(small, torch.ones_like(t), t)
    g = torch.where(small, 1.0 - 0.5 * t, torch.log1p(t_safe) / t_safe)
    return u * g


# --------------------------------------------------------------------------- shared core


def _as_compute(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in _HALF_DTYPES else x


def _affine(y: torch.Tensor, weight, bias) -> torch.Tensor:
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y


def _restandardize(c: torch.Tensor, dims: tuple[int, ...], eps: float, centered: bool) -> torch.Tensor:
    if centered:
        var, mean = torch.var_mean(c, dim=dims, unbiased=False, keepdim=True)
        return (c - mean) * torch.rsqrt(var + eps)
    return c * torch.rsqrt(c.pow(2).mean(dim=dims, keepdim=True) + eps)


# --------------------------------------------------------------------------- public functions


def ib_norm(
    x: torch.Tensor,
    normalized_shape: Sequence[int] | int,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
    *,
    lam: float = 1.0,
    variant: str | Callable = "T",
    order: str = "compress_first",
) -> torch.Tensor:
    r"""IBNorm over the trailing ``normalized_shape`` dimensions (the LayerNorm flavour).

    IBNorm-S/L/T as defined by ibtools (module docstring has the formulas).

    Parameters
    ----------
    x : torch.Tensor
        Input whose trailing dimensions equal ``normalized_shape``.
    normalized_shape : int or sequence of int
        Shape of one normalization group, as in :func:`torch.nn.functional.layer_norm`.
    weight, bias : torch.Tensor, optional
        Affine parameters of shape ``normalized_shape``.
    eps : float
        Added to the variances (of ``x`` and of the compressed values).
    lam : float
        Compression strength >= 0; ``0`` is exactly ``F.layer_norm``.
    variant : {"S", "L", "T"} or callable
        The compression ``phi`` (see :func:`compress`).
    order : {"compress_first", "standardize_first"}
        ``"compress_first"`` standardizes, compresses and re-standardizes (IBNorm);
        ``"standardize_first"`` omits the re-standardization (the paper's ablation).

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Notes
    -----
    For ``lam > 0`` and ``order="compress_first"`` the output before the affine step has zero
    mean and variance ``var(c) / (var(c) + eps)`` per group, like LayerNorm's.  A constant
    group gives 0 (no NaN).

    References
    ----------
    .. [1] Zou & Zhou, arXiv:2510.25262 (2025); Ba, Kiros & Hinton, "Layer Normalization",
       arXiv:1607.06450 (2016).
    """
    lam = check_lam(lam)
    variant = check_variant(variant)
    order = check_order(order)
    shape = _check_trailing_shape(x, normalized_shape)
    if lam == 0.0:
        return F.layer_norm(x, shape, weight, bias, eps)
    dims = tuple(range(-len(shape), 0))
    xc = _as_compute(x)
    var, mean = torch.var_mean(xc, dim=dims, unbiased=False, keepdim=True)
    c = compress((xc - mean) * torch.rsqrt(var + eps), lam, variant)
    if order == "compress_first":
        c = _restandardize(c, dims, eps, centered=True)
    return _affine(c, weight, bias).to(x.dtype)


def ib_rms_norm(
    x: torch.Tensor,
    normalized_shape: Sequence[int] | int,
    weight: torch.Tensor | None = None,
    eps: float | None = None,
    *,
    lam: float = 1.0,
    variant: str | Callable = "T",
    order: str = "compress_first",
) -> torch.Tensor:
    r"""IBNorm without centring over the trailing dimensions (the RMSNorm flavour).

    IBNorm-S/L/T as defined by ibtools, with :math:`u = x / \sqrt{\mathrm{mean}(x^2) +
    \epsilon}` and re-scaling :math:`c / \sqrt{\mathrm{mean}(c^2) + \epsilon}`.

    Parameters
    ----------
    x : torch.Tensor
        Input whose trailing dimensions equal ``normalized_shape``.
    normalized_shape : int or sequence of int
        Shape of one normalization group, as in :func:`torch.nn.functional.rms_norm`.
    weight : torch.Tensor, optional
        Scale of shape ``normalized_shape`` (RMSNorm has no bias).
    eps : float, optional
        Added to the mean squares; ``None`` uses ``torch.finfo(x.dtype).eps`` like
        :class:`torch.nn.RMSNorm`.
    lam, variant, order
        As in :func:`ib_norm`; ``lam = 0`` is exactly ``F.rms_norm``.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    References
    ----------
    .. [1] Zou & Zhou, arXiv:2510.25262 (2025); Zhang & Sennrich, "Root Mean Square Layer
       Normalization", NeurIPS (2019).
    """
    lam = check_lam(lam)
    variant = check_variant(variant)
    order = check_order(order)
    shape = _check_trailing_shape(x, normalized_shape)
    if lam == 0.0:
        return F.rms_norm(x, shape, weight, eps)
    eps_value = torch.finfo(x.dtype).eps if eps is None else eps
    dims = tuple(range(-len(shape), 0))
    xc = _as_compute(x)
    c = compress(xc * torch.rsqrt(xc.pow(2).mean(dim=dims, keepdim=True) + eps_value), lam, variant)
    if order == "compress_first":
        c = _restandardize(c, dims, eps_value, centered=False)
    return _affine(c, weight, None).to(x.dtype)


def ib_batch_norm(
    x: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    running_compressed_mean: torch.Tensor | None = None,
    running_compressed_var: torch.Tensor | None = None,
    lam: float = 1.0,
    variant: str | Callable = "T",
    order: str = "compress_first",
) -> torch.Tensor:
    r"""IBNorm with per-channel statistics over batch and space (the BatchNorm flavour).

    IBNorm-S/L/T as defined by ibtools.  Channels are dimension 1, as in
    :func:`torch.nn.functional.batch_norm`; the statistics of ``x`` and of the compressed
    values ``c`` are taken over every other dimension.

    Parameters
    ----------
    x : torch.Tensor
        Input of shape ``(N, C, *)``.
    running_mean, running_var : torch.Tensor or None
        Running estimates of the per-channel mean and variance of ``x``.  Used for
        normalization when ``training`` is False; updated in place when ``training`` is True.
    weight, bias : torch.Tensor, optional
        Per-channel affine parameters, shape ``(C,)``.
    training : bool
        Use batch statistics (and update the running ones) instead of the running ones.
    momentum : float
        Weight of the new batch in the exponential running averages.
    eps : float
        Added to the variances.
    running_compressed_mean, running_compressed_var : torch.Tensor or None
        Running estimates of the mean and variance of ``c``, which the re-standardization
        of ``order="compress_first"`` uses in eval mode (updated in place in training).
    lam, variant, order
        As in :func:`ib_norm`; ``lam = 0`` is exactly ``F.batch_norm``.

    Returns
    -------
    torch.Tensor
        Same shape and dtype as ``x``.

    Notes
    -----
    Running variances are updated with the unbiased batch variance, as BatchNorm does, while
    normalization in training uses the biased one.

    References
    ----------
    .. [1] Zou & Zhou, arXiv:2510.25262 (2025); Ioffe & Szegedy, "Batch Normalization",
       ICML (2015).
    """
    lam = check_lam(lam)
    variant = check_variant(variant)
    order = check_order(order)
    if x.dim() < 2:
        raise InputError(f"ib_batch_norm expects input of shape (N, C, *), got shape {list(x.shape)}")
    if lam == 0.0:
        return F.batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps)
    use_batch = training or running_mean is None or running_var is None
    dims = (0,) + tuple(range(2, x.dim()))
    view = (1, -1) + (1,) * (x.dim() - 2)
    count = x.numel() // x.shape[1]
    if use_batch and count <= 1:
        raise InputError(
            f"expected more than 1 value per channel when training, got input of shape {list(x.shape)}"
        )
    xc = _as_compute(x)
    update = training and running_mean is not None and running_var is not None

    if use_batch:
        var, mean = torch.var_mean(xc, dim=dims, unbiased=False)
        if update:
            _update_running(running_mean, running_var, mean, var, count, momentum)
    else:
        mean, var = running_mean.to(xc.dtype), running_var.to(xc.dtype)
    c = compress((xc - mean.view(view)) * torch.rsqrt(var.view(view) + eps), lam, variant)

    if order == "compress_first":
        have_running_c = running_compressed_mean is not None and running_compressed_var is not None
        if use_batch or not have_running_c:
            c_var, c_mean = torch.var_mean(c, dim=dims, unbiased=False)
            if update and have_running_c:
                _update_running(running_compressed_mean, running_compressed_var, c_mean, c_var, count, momentum)
        else:
            c_mean = running_compressed_mean.to(c.dtype)
            c_var = running_compressed_var.to(c.dtype)
        c = (c - c_mean.view(view)) * torch.rsqrt(c_var.view(view) + eps)
    w = None if weight is None else weight.view(view)
    b = None if bias is None else bias.view(view)
    return _affine(c, w, b).to(x.dtype)


def _update_running(run_mean, run_var, mean, var, count: int, momentum: float) -> None:
    with torch.no_grad():
        unbiased = var * (count / (count - 1))
        run_mean.mul_(1.0 - momentum).add_(mean.detach().to(run_mean.dtype), alpha=momentum)
        run_var.mul_(1.0 - momentum).add_(unbiased.detach().to(run_var.dtype), alpha=momentum)


def gaussian_compressed_moments(lam: float, variant: str | Callable = "T", nodes: int = 64) -> tuple[float, float]:
    r"""Mean and variance of :math:`\phi_\lambda(Z)` for :math:`Z \sim N(0, 1)`.

    Gauss-Hermite quadrature (probabilists' weights) with ``nodes`` points.  The channel
    flavour uses these as the starting running estimates of the compressed values, so a
    BatchNorm checkpoint loaded into an IBBatchNorm module is sensible in eval mode as long
    as its standardized activations are roughly Gaussian.

    Parameters
    ----------
    lam : float
        Compression strength >= 0.
    variant : {"S", "L", "T"} or callable
        The compression (see :func:`compress`).
    nodes : int
        Number of quadrature nodes.

    Returns
    -------
    (float, float)
        ``(E[phi(Z)], Var[phi(Z)])``; ``(0.0, 1.0)`` at ``lam = 0``.
    """
    import numpy as np

    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()
    with torch.no_grad():
        c = compress(torch.as_tensor(z, dtype=torch.float64), lam, variant).double().numpy()
    mean = float((w * c).sum())
    return mean, float((w * (c - mean) ** 2).sum())
