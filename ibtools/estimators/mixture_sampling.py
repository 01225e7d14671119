"""Monte Carlo draws for the entropy of a Gaussian mixture: exponents, and how many draws.

:class:`~ibtools.estimators.mixture.MixtureEntropy` integrates ``ln p`` of the mixture
``p = 1/n sum_i N(t_i, s2 I)`` over draws ``t_c + z``.  Here: the exponents of one block of
draws against every centre (:class:`MixtureExponents`, one matmul), their log-sum-exp
(:func:`pointwise_mi_`), the control variates that remove most of a draw's spread
(:func:`radial_scores`, :func:`quadratic_control`), and the two-stage design that says which
centres get how many draws and what standard error the mean of the draws has
(:class:`TwoStageDesign`, :func:`run_design`).

Control variates.  A draw's value depends on its noise vector z through the exponents
``e_j = -||t_c - t_j||^2 / (2 s2) + z . (t_j - t_c) / s2``, linear in z.  Antithetic pairs
(``z, -z``) cancel every odd part; what is left is even in z, and two even functions of z
with a mean known exactly carry most of it:

- the radial score ``s = Phi^-1(F_chi2_d(||z||^2 / s2))``, exactly standard normal whatever
  the data, with ``s`` and ``s^2 - 1`` (mean 0): one large noise vector moves every exponent
  away from 0 at once;
- the second-order term of the log-sum-exp around z = 0 over the draw's K nearest centres,
  ``q = 1/2 (sum_k pi_k w_k^2 - (sum_k pi_k w_k)^2)`` with ``w_k = z . (t_k - t_c) / s2`` and
  ``pi`` the softmax of those centres' exponents at z = 0, minus its mean ``1/(2 s2) (sum_k
  pi_k |D_k|^2 - |sum_k pi_k D_k|^2)``, ``D_k = t_k - t_c``: exact for any choice of the K
  centres and weights, since ``E[w_j w_l] = D_j . D_l / s2``.

Their coefficients are fitted by least squares on all draws of the run (per column), and the
value and its standard error are those of the adjusted draws ``v - beta . h``; with thousands
of draws the fit's own error is far below the Monte Carlo error.  Measured (n = 10 000
centres, standard-normal rows, variance of an antithetic pair within a centre, none ->
radial -> both): d = 64, s2 = 5: 0.92 -> 0.31 -> 0.21; d = 512, s2 = 40: 0.67 -> 0.59 ->
0.19; d = 8, s2 = 0.3: 2.0 -> 0.10 -> 0.08.
"""

from __future__ import annotations

import math

import torch

from ibtools.estimators import _jit
from ibtools.estimators.kde import _MATMUL_TOLERANCE, _matmul_dtype
from ibtools.estimators.mixture_design import (  # noqa: F401  (importable from here too)
    LANDMARK_WIDTHS,
    LANDMARKS,
    PILOT_CENTRES,
    TwoStageDesign,
    centre_covariates,
    plan,
    run_design,
)

#: Noise vectors per block on CPU.  Unlike KDE's blocks these are not sized to the cache:
#: the matmul of a block runs faster on taller ones.  Measured (one thread, n = 10 000,
#: 8000 vectors, seconds by rows 66 / 128 / 256 / 512 / 1024): d = 64: 1.39 / 1.20 / 1.15 /
#: 1.29 / 1.85; d = 512: 6.69 / 5.84 / 4.64 / 4.51 / 4.77.
CPU_ROWS = 512
#: Nearest centres (by exponent at z = 0) in the quadratic control variate.
QUAD_NEIGHBOURS = 16
#: Bytes of gathered neighbour rows the quadratic control variate holds at once.
_GATHER_BYTES = 32 << 20


def radial_scores(z: torch.Tensor, noise_var: float) -> torch.Tensor:
    """``Phi^-1(F(||z||^2 / s2))`` per row, F the chi-square CDF with d degrees: exactly
    N(0, 1) for ``z ~ N(0, s2 I_d)`` (float64, either tail computed where it is accurate)."""
    d = int(z.shape[1])
    r2 = (z.to(torch.float64).square().sum(dim=1) / float(noise_var)).mul_(0.5)
    a = torch.full_like(r2, 0.5 * d)
    lower = torch.special.gammainc(a, r2)
    upper = torch.special.gammaincc(a, r2)
    return torch.where(lower < 0.5, torch.special.ndtri(lower), -torch.special.ndtri(upper))


def radial_features(zs) -> list:
    """The radial control variates of the noise vectors ``zs`` (pairs ``(z, s2)``): ``s`` and
    ``s^2 - 1`` of each, all of mean exactly 0."""
    out = []
    for z, s2 in zs:
        r = radial_scores(z, s2)
        out += [r, r * r - 1.0]
    return out


class MixtureExponents:
    """The centres of one mixture, prepared for exponents ``-||u - t_j||^2 / (2 s2)``.

    For a draw ``u = t_c + z`` the row ``u . (t_j / s2) - |t_j|^2 / (2 s2)`` is, up to a
    term that is the same for every j, that exponent; subtracting the entry of the draw's
    own centre c gives ``e_j = (||u - t_c||^2 - ||u - t_j||^2) / (2 s2)``, exactly 0 at
    j = c.  One matmul with the scaled centres ``t_j / s2`` plus the bias ``-|t_j|^2 / (2
    s2)`` (an addmm) gives the rows; the centres are centred first (exponent differences do
    not change, rounding shrinks with the norms), and the matmul runs in float64 when float32 rounding could
    move an exponent by more than ``tolerance`` (a tenth of the Monte Carlo error allowed:
    a systematic error that small is lost in the random one; see :func:`kde._matmul_dtype`).
    """

    def __init__(self, t: torch.Tensor, noise_var: float, tolerance: float):
        self.t = t - t.mean(dim=0, keepdim=True)
        n, d = int(t.shape[0]), int(t.shape[1])
        # an entry u . t_j / s2 - |t_j|^2 / (2 s2) rounds by about eps (|u| |t_j| + |t_j|^2
        # / 2) / s2, and |u| <= |t_c| + |z| with |z| / sqrt(s2) below sqrt(d) + 4 but for
        # one draw in about 10^7; widened when 4 eps times this exceeds ``tolerance``
        # (_matmul_dtype's own tolerance is kde._MATMUL_TOLERANCE, hence the rescaling)
        top = math.sqrt(float((self.t * self.t).sum(dim=1).max()))
        reach = (top + math.sqrt(noise_var) * (math.sqrt(d) + 4.0) + 0.5 * top) * top
        self.mm_dtype = _matmul_dtype(t.dtype, t.device,
                                      reach / noise_var * _MATMUL_TOLERANCE / tolerance)
        tw = self.t.to(self.mm_dtype)
        sq = (tw * tw).sum(dim=1, keepdim=True)
        # the weights (d, n) and the bias row (1, n) apart: one addmm, whose inner size is
        # then d (a multiple of the vector width in the usual cases) rather than d + 1
        self.weights = (tw / noise_var).T.contiguous()
        self.bias = (-sq / (2.0 * noise_var)).T.contiguous()
        self.n, self.d, self.noise_var = n, d, float(noise_var)

    def rows(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The (b, n) matmul rows of draws ``t_c + z``, before the own centre's entry is
        subtracted (float64 if the matmul is)."""
        u = self.t[c].to(self.mm_dtype) + z.to(self.mm_dtype)
        return torch.addmm(self.bias, u, self.weights)                     # (b, n)

    def exponents(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``e`` of shape (b, n) for draws ``t_c + z`` (float64 if the matmul is)."""
        rows = self.rows(c, z)
        return rows.sub_(rows.gather(1, c[:, None]))


def quadratic_control(mix: MixtureExponents, c: torch.Tensor, e: torch.Tensor,
                      k: int = QUAD_NEIGHBOURS) -> torch.Tensor:
    """The quadratic control variate (see the module notes) of antithetic pairs, mean 0.

    ``c`` (2b,) and ``e`` (2b, n): rows ``i`` and ``b + i`` are the draws ``t_c + z`` and
    ``t_c - z`` of one pair (``c[:b] == c[b:]``), ``e`` their exponents relative to the own
    centre, not yet spent.  Their half-sum is ``-||t_c - t_j||^2 / (2 s2)`` (no z), their
    half-difference ``w_j = z . (t_j - t_c) / s2``.  Returns (b,) float64.
    """
    b = int(c.numel()) // 2
    k = max(1, min(int(k), mix.n))
    top, idx = torch.add(e[:b], e[b:]).topk(k, dim=1, sorted=False)
    w = 0.5 * (e[:b].gather(1, idx) - e[b:].gather(1, idx)).to(torch.float64)
    return _quadratic(mix, c[:b], top.to(torch.float64), idx, w)


def _quadratic(mix: MixtureExponents, own: torch.Tensor, top: torch.Tensor, idx: torch.Tensor,
               w: torch.Tensor) -> torch.Tensor:
    """``q - E q`` from the pairs' k nearest centres ``idx`` (b, k), their exponents at z = 0
    times two, ``top = -|D_k|^2 / s2``, and half-differences ``w``."""
    pi = torch.softmax(0.5 * top, dim=1)                                 # (b, k)
    q = 0.5 * ((pi * w * w).sum(dim=1) - (pi * w).sum(dim=1).square())
    # E q = 1/(2 s2) (sum_k pi_k |D_k|^2 - |sum_k pi_k D_k|^2), |D_k|^2 = -s2 top_k
    # sum_k pi_k t_k, gathering at most about _GATHER_BYTES of neighbours at a time
    b, k = int(idx.shape[0]), int(idx.shape[1])
    step = max(1, _GATHER_BYTES // max(1, k * mix.d * mix.t.element_size()))
    weights = pi.to(mix.t.dtype)[:, None, :]
    near = torch.cat([torch.bmm(weights[i:i + step], mix.t[idx[i:i + step]])[:, 0]
                      for i in range(0, b, step)]) if b else mix.t[:0]
    v = (near - mix.t[own]).to(torch.float64)
    mean = 0.5 * (-(pi * top).sum(dim=1) - v.square().sum(dim=1) / mix.noise_var)
    return q - mean


#: Rows from which ``"auto"`` runs the row-wise work on the compiled kernels of
#: :mod:`ibtools.estimators._mixture_numba` (float32 on CPU, numba installed).
MIXTURE_NUMBA_MIN_N = 2048
_KERNELS = _jit.Compiled("_mixture_numba")


def mixture_engine(n: int, dtype: torch.dtype, device: torch.device) -> str:
    """``"numba"`` or ``"torch"`` for the row-wise work of n centres; the environment
    variable ``IBTOOLS_MIXTURE_ENGINE`` (``auto`` | ``numba`` | ``torch``) overrides, as
    ``IBTOOLS_KDE_ENGINE`` does for KDE (see :func:`ibtools.estimators._jit.choose`)."""
    return _jit.choose("IBTOOLS_MIXTURE_ENGINE", "torch", _KERNELS,
                       eligible=device.type == "cpu" and dtype == torch.float32,
                       n=n, min_n=MIXTURE_NUMBA_MIN_N)


def pair_pmi(mix: MixtureExponents, c: torch.Tensor, z: torch.Tensor, log_n: float,
             engine: str, k: int = QUAD_NEIGHBOURS):
    """Pointwise ``ln N(z) - ln p(t_c + z)`` (2b,) of antithetic pairs (``c`` (2b,) with
    ``c[:b] == c[b:]``, ``z`` (2b, d) with ``z[b:] == -z[:b]``) and their quadratic control
    variate (b,), on the torch path or the compiled one (same numbers to float32 rounding)."""
    if engine != "numba" or mix.mm_dtype != torch.float32 or not c.numel():
        e = mix.exponents(c, z)
        quad = quadratic_control(mix, c, e, k)
        return pointwise_mi_(e, log_n), quad
    b = int(c.numel()) // 2
    k = max(1, min(int(k), mix.n))
    raw = mix.rows(c, z).contiguous()
    own = raw.gather(1, c[:, None])[:, 0]
    lse = torch.empty(2 * b, dtype=torch.float64)
    idx = torch.empty(b, k, dtype=torch.int64)
    top = torch.empty(b, k, dtype=torch.float32)
    kernels = _KERNELS.module()
    with _jit.kernel_call():
        kernels.pair_rows(raw.numpy(), b, lse.numpy(), idx.numpy(), top.numpy())
    pmi = log_n - (lse - own.to(torch.float64))
    own_sum = (own[:b].to(torch.float64) + own[b:].to(torch.float64))[:, None]
    w = 0.5 * ((raw[:b].gather(1, idx) - raw[b:].gather(1, idx)).to(torch.float64)
               - (own[:b] - own[b:]).to(torch.float64)[:, None])
    return pmi, _quadratic(mix, c[:b], top.to(torch.float64) - own_sum, idx, w)


#: Shifted exponents are clamped here before ``exp``: e^-85 ~ 1e-37 is nothing next to the
#: row's largest term e^0, and below about -87 float32 goes denormal, which makes the
#: vectorised exponential an order of magnitude slower (see kde._MIN_EXPONENT).
MIN_SHIFTED = -85.0


def shifted_kernel_(e: torch.Tensor):
    """``exp(e - max)`` row-wise, in place, and the (b, 1) maxima."""
    top = e.amax(dim=1, keepdim=True)
    return e.sub_(top).clamp_(min=MIN_SHIFTED).exp_(), top


def pointwise_mi_(e: torch.Tensor, log_n: float) -> torch.Tensor:
    """``ln N(z) - ln p(t_c + z)`` per draw: ln n minus a row's log-sum-exp (e is spent)."""
    k, top = shifted_kernel_(e)
    return log_n - (k.sum(dim=1).to(torch.float64).log_() + top[:, 0].to(torch.float64))


def block_rows(n: int, budget: int, device: torch.device) -> int:
    """Noise vectors per block, each a row of n exponents (and logsumexp's temporaries),
    within ``budget`` bytes, and at most ``CPU_ROWS`` on CPU."""
    rows = max(1, budget // (3 * n * 8))
    return int(min(rows, CPU_ROWS)) if device.type == "cpu" else int(rows)
