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

#: Centres (with two draws each) of the first round of ``n_mc="auto"``.
PILOT_CENTRES = 512
#: Rounds of ``n_mc="auto"``: a pilot, then at most this many corrections of the design.
_MAX_ROUNDS = 6
#: Share of the planned extra centres drawn before the design is replanned (all of them
#: in the last round).
_STEP_SHARE = 0.75
#: Noise vectors per block on CPU.  Unlike KDE's blocks these are not sized to the cache:
#: the matmul of a block runs faster on taller ones.  Measured (one thread, n = 10 000,
#: 8000 vectors, seconds by rows 66 / 128 / 256 / 512 / 1024): d = 64: 1.39 / 1.20 / 1.15 /
#: 1.29 / 1.85; d = 512: 6.69 / 5.84 / 4.64 / 4.51 / 4.77.
CPU_ROWS = 512
#: Margin on the planned number of draws (the pilot's variances are themselves estimates).
_PLAN_MARGIN = 1.05
#: Nearest centres (by exponent at z = 0) in the quadratic control variate.
QUAD_NEIGHBOURS = 16
#: Fewest draws, per control variate, before their coefficients are fitted (else none).
_CV_MIN_DRAWS = 40
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


#: Landmark rows of the crowding covariate (:func:`centre_covariates`).
LANDMARKS = 256


#: Widths of the crowding covariates, as multiples of the noise variance: the widest, then
#: halvings (each kernel the square of the one before).  Measured on the benchmark's
#: clustered rows (n = 10 000, d = 64, s2 = 5; spread of the centres' means left after the
#: regression, of 2.9 before): widths 1 and 4: 0.14; 1, 2 and 4: 0.09.
LANDMARK_WIDTHS = (4.0, 2.0, 1.0)


def _landmark_density(t: torch.Tensor, noise_var: float, landmarks: torch.Tensor) -> list:
    """``ln sum_l exp(-|t_c - t_l|^2 / (2 width s2))`` over the landmark rows l other than
    c itself, for every row c and each of ``LANDMARK_WIDTHS`` (float64 (n,) tensors, one
    per width).  One exponential per distance: the kernel at the widest width, shifted by
    the row's nearest landmark, squared for each halving."""
    u = t - t.mean(dim=0, keepdim=True)
    marks = u[landmarks]
    sq_marks = marks.square().sum(dim=1)
    out = [[] for _ in LANDMARK_WIDTHS]
    step = max(1, (16 << 20) // max(1, 4 * int(landmarks.numel())))
    for i0 in range(0, int(u.shape[0]), step):
        rows = u[i0:i0 + step]
        d2 = (rows.square().sum(dim=1, keepdim=True) + sq_marks - 2.0 * rows @ marks.T)
        d2 = d2.clamp_(min=0.0)
        own = landmarks[None, :] == torch.arange(i0, i0 + int(rows.shape[0]),
                                                 device=t.device)[:, None]
        d2.masked_fill_(own, math.inf)
        near = d2.amin(dim=1, keepdim=True)
        near = torch.where(torch.isfinite(near), near, torch.zeros_like(near))
        kernel = d2.sub_(near).div_(-2.0 * LANDMARK_WIDTHS[0] * noise_var).exp_()
        near = near[:, 0].to(torch.float64)
        for i, (col, width) in enumerate(zip(out, LANDMARK_WIDTHS)):
            if i:
                kernel.square_()
            col.append(kernel.sum(dim=1).to(torch.float64).log_()
                       - near / (2.0 * width * noise_var))
    columns = []
    for col in out:
        density = torch.cat(col)
        # a row with every landmark at -inf (one landmark, itself) gets the others' lowest
        finite = torch.isfinite(density)
        low = float(density[finite].min()) if bool(finite.any()) else 0.0
        columns.append(torch.where(finite, density, torch.full_like(density, low)))
    return columns


def centre_covariates(*ts: torch.Tensor, noise_var: float | None = None,
                      rng: torch.Generator | None = None) -> torch.Tensor:
    """Cheap per-centre predictors of a centre's mean draw, known at every centre (n, q).

    How much a draw at centre c scores depends mostly on how crowded the mixture is around
    t_c.  Per mixture: ``|t_c - mean|^2`` and its square, and the same distance with each
    coordinate scaled by its spread (in a roughly elliptical cloud crowding follows the
    distance from the middle); and, given ``noise_var`` and ``rng``, the log kernel density
    at t_c of ``LANDMARKS`` random rows, at the variances ``LANDMARK_WIDTHS`` times s2
    (clusters, holes: crowding that does not follow the distance from the middle).  O(n d)
    and O(n LANDMARKS d): about what ``LANDMARKS`` noise draws cost.  Their mean over all n
    centres is known exactly, so they serve as control variates of the centre sampling (a
    regression estimator; see :class:`TwoStageDesign`); they need not predict well to be
    valid, only to help.
    """
    cols = []
    for t in ts:
        n = int(t.shape[0])
        if noise_var is not None and rng is not None and n > 2:
            # a generator of their own: the draws' stream is the same with or without them
            own = torch.Generator(device=rng.device).manual_seed(rng.initial_seed() + 1)
            marks = torch.randperm(n, generator=own, device=rng.device)[:min(LANDMARKS, n)]
            marks = marks.to(t.device)
            cols += _landmark_density(t, noise_var, marks)
        u = (t - t.mean(dim=0, keepdim=True)).square_()
        spread = u.mean(dim=0)
        r = u.sum(dim=1).to(torch.float64)
        scaled = (u / torch.where(spread > 0, spread, 1.0)).sum(dim=1).to(torch.float64)
        scale = float(r.mean()) or 1.0
        cols += [r / scale, (r / scale).square(), scaled / max(1, int(t.shape[1]))]
    return torch.stack(cols, dim=1)


class TwoStageDesign:
    """Which centres were drawn how often, each draw's values and control variates.

    Centres are taken in a random ``order``: the first m, centre c with ``counts[c]`` draws
    (r_c; two on the pilot centres, one, two or more on the others).  The value is the mean
    of the centres' means; with ``f = m / n``, ``s_b^2`` the spread of the centres' means and
    ``s_w^2`` the mean within-centre variance (from the centres drawn at least twice, at
    least the first ``min(n, PILOT_CENTRES)``, a random subset), its standard error is
    (Cochran, two-stage sampling) ``se^2 = ((1 - f) s_b^2 + f s_w^2 mean(1 / r_c)) / m``.
    Part of the centres at two draws each gives ``(1 - f) s_b^2 / m + f s_w^2 / (2 m)``;
    every centre (f = 1): the spread between centres costs nothing, ``s_w^2 sum_c (1 / r_c)
    / n^2``.

    The draws are kept (a few numbers each), so :meth:`stats` can first subtract the
    control variates (mean exactly 0; see the module notes) with coefficients fitted on all
    draws, then apply these formulas to the adjusted values.  With ``covariates`` (n, q),
    known at every centre, the centres' means are then adjusted too (the regression
    estimator of survey sampling): ``ybar_c - g . (x_c - X)``, X the mean over all n
    centres, g fitted by least squares on the drawn centres; what ``s_b^2`` then measures is
    the spread the covariates leave.  With every centre drawn the adjustment is 0.
    """

    def __init__(self, n: int, columns: int, order: torch.Tensor, covariates=None):
        self.n, self.m, self.order, self.columns = n, 0, order, columns
        #: (n, q) tensor, or a function giving it (called when first needed), or None
        self.covariates = covariates
        #: whether :meth:`stats` adjusts the centres' means (run_design turns it off while
        #: the pilot alone may do, so the covariates are not computed for nothing)
        self.adjust_centres = True
        self.counts = torch.zeros(n, dtype=torch.int64, device=order.device)
        self._centres, self._values, self._features = [], [], []
        self._stats = None

    @property
    def draws(self) -> int:
        return int(self.counts.sum())

    def add(self, centres: torch.Tensor, values: torch.Tensor,
            features: torch.Tensor | None = None) -> None:
        """Add (columns, b) per-draw values of draws made at ``centres`` (b,), and their
        (p, b) control variates (mean 0 at every centre), if any."""
        self._centres.append(centres)
        self._values.append(values.to(torch.float64))
        self._features.append(None if features is None else features.to(torch.float64))
        self.counts.index_add_(0, centres, torch.ones_like(centres))
        self._stats = None

    def extend(self, m: int, r: int, block: int, draw) -> None:
        """Bring each of the first m centres of the order to at least r draws, drawing in
        blocks of ``block`` (``draw(c)`` gives the (columns, b) values at centres c, or
        ``(values, features)``)."""
        centres = self.order[:max(m, self.m)]
        more = (r - self.counts[centres]).clamp_(min=0)
        self.m = max(m, self.m)
        c_all = centres.repeat_interleave(more)
        for i0 in range(0, int(c_all.numel()), block):
            c = c_all[i0:i0 + block]
            out = draw(c)
            self.add(c, *out) if isinstance(out, tuple) else self.add(c, out)

    def adjusted(self):
        """(centres (N,), values (columns, N)): every draw, less its control variates times
        coefficients fitted by least squares per column (none with too few draws)."""
        centres = torch.cat(self._centres)
        values = torch.cat(self._values, dim=1)
        if any(f is None for f in self._features) or not self._features:
            return centres, values
        feats = torch.cat(self._features, dim=1)                       # (p, N)
        p, n_draws = int(feats.shape[0]), int(feats.shape[1])
        if n_draws < _CV_MIN_DRAWS * p:
            return centres, values
        x = (feats - feats.mean(dim=1, keepdim=True)).T               # (N, p)
        y = (values - values.mean(dim=1, keepdim=True)).T              # (N, columns)
        gram = x.T @ x
        gram.diagonal().add_(1e-12 * float(gram.diagonal().max()) + 1e-300)
        beta = torch.linalg.solve(gram, x.T @ y)                       # (p, columns)
        return centres, values - beta.T @ feats

    def _centre_adjusted(self, centres: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``values`` less ``g . (x_c - X)`` per draw (see the class notes)."""
        if self.covariates is None or not self.adjust_centres or self.m >= self.n:
            return values
        if callable(self.covariates):
            self.covariates = self.covariates()
        cov = self.covariates
        used = self.order[:self.m]
        if self.m < _CV_MIN_DRAWS * int(cov.shape[1]):
            return values
        r = self.counts[used].to(torch.float64)
        sums = torch.zeros(self.columns, self.n, dtype=torch.float64, device=values.device)
        sums.index_add_(1, centres, values)
        means = sums[:, used] / r                                        # (columns, m)
        x = cov[used].to(torch.float64)
        xc = x - x.mean(dim=0, keepdim=True)
        gram = xc.T @ xc
        gram.diagonal().add_(1e-12 * float(gram.diagonal().max()) + 1e-300)
        g = torch.linalg.solve(gram, xc.T @ (means - means.mean(dim=1, keepdim=True)).T)
        shift = (cov.to(torch.float64) - cov.to(torch.float64).mean(dim=0)) @ g  # (n, cols)
        return values - shift[centres].T

    def stats(self):
        """(mean, se, s_b^2, s_w^2) per column, as float64 tensors of shape (columns,)."""
        if self._stats is not None:
            return self._stats
        centres, values = self.adjusted()
        values = self._centre_adjusted(centres, values)
        sums = torch.zeros(self.columns, self.n, dtype=torch.float64, device=self.order.device)
        squares = torch.zeros_like(sums)
        sums.index_add_(1, centres, values)
        squares.index_add_(1, centres, values * values)
        used = self.order[:self.m]
        r = self.counts[used].to(torch.float64)
        sums, squares = sums[:, used], squares[:, used]
        means = sums / r
        multi = r >= 2
        within = ((squares[:, multi] - sums[:, multi] * means[:, multi]) / (r[multi] - 1))
        within = within.clamp_(min=0.0).mean(dim=1)
        between = means.var(dim=1) if self.m > 1 else torch.zeros_like(within)
        # (1 - f) s_b^2 / m + f s_w^2 mean(1/r_c) / m: Cochran's two-stage formula with r_c
        # draws on centre c; with every centre drawn (f = 1) only the within part is left
        f = self.m / self.n
        var = ((1.0 - f) * between + f * within * float((1.0 / r).mean())) / self.m
        self._stats = (means.mean(dim=1), var.sqrt(), between, within)
        return self._stats


def run_design(n: int, columns: int, draw, *, rng: torch.Generator, device: torch.device,
               n_mc, tolerance: float, max_mc: int, block: int,
               watch: tuple = (0,), covariates=None) -> TwoStageDesign:
    """Draw per ``n_mc`` (an int, or ``"auto"``: to a standard error of ``tolerance`` on
    each column in ``watch``).

    ``draw(c)`` gives the (columns, b) per-draw values of draws at centres c (b,), making its
    own noise, or ``(values, features)`` with (p, b) control variates of mean 0; blocks of
    at most ``block`` draws.  ``covariates``: the centres' (n, q) covariates, or a function
    giving them (see :class:`TwoStageDesign`).  ``"auto"``: 2 draws on each of ``min(n,
    PILOT_CENTRES)`` centres; if that is not enough, :func:`plan` from the measured spreads
    (centre covariates now used), at most ``_MAX_ROUNDS`` times, within ``max_mc`` draws.
    An int: below n, 2 draws on each of ``n_mc // 2`` centres; from n on, ``n_mc // n`` on
    every centre and 2 on the pilot ones.
    """
    design = TwoStageDesign(n, columns, torch.randperm(n, generator=rng, device=device),
                            covariates)
    pilot = max(2, min(n, PILOT_CENTRES))
    if n_mc != "auto":
        total = int(n_mc)
        if total < n:
            design.extend(min(n, max(2, total // 2)), 2, block, draw)
        else:  # every centre; two draws on the pilot centres to measure their spread
            design.extend(pilot, max(2, total // n), block, draw)
            design.extend(n, total // n, block, draw)
        return design
    design.extend(max(2, min(pilot, max_mc // 2)), 2, block, draw)
    design.adjust_centres = False
    stats = design.stats()
    if max(float(stats[1][col]) for col in watch) <= tolerance:
        return design  # the pilot is enough: no centre covariates needed
    design.adjust_centres, design._stats = True, None
    for step in range(_MAX_ROUNDS):
        stats = design.stats()
        k = max(watch, key=lambda col: float(stats[1][col]))  # the column furthest off
        _, se, between, within = (float(v[k]) for v in stats)
        if se <= tolerance:
            break
        m, r = plan(design, between, within, tolerance, max_mc)
        if m <= design.m and r <= int(design.counts[design.order[:design.m]].min()):
            break
        if step < _MAX_ROUNDS - 1 and design.m < m < n:
            # a planned size from the pilot alone tends to overshoot (the covariates' and
            # control variates' fits improve with the draws): go part of the way, replan
            m = design.m + math.ceil(_STEP_SHARE * (m - design.m))
        design.extend(m, r, block, draw)
    return design


def plan(design: TwoStageDesign, between: float, within: float, tolerance: float, cap: int):
    """(m, r): centres, and least draws per centre, that should bring the se to
    ``tolerance`` at the fewest draws (see :class:`TwoStageDesign` for the se).

    With ``S^2 = s_b^2 - s_w^2 mean(1/r_c)`` the spread of the centres' own means, r draws
    on each of m centres give ``se^2 = (1 - f) S^2 / m + s_w^2 / (r m)``, so ``m = (S^2 +
    s_w^2 / r) / (tol^2 + S^2 / n)``; r = 1 (the pilot centres keep their two) costs m draws,
    r = 2 costs 2m; every centre at r draws needs ``r = s_w^2 / (n tol^2)``.  The cheapest
    wins.  Once the control variates have taken most of the spread within a centre, one draw
    per centre on more centres is usually cheapest.
    """
    n, tol2 = design.n, tolerance ** 2
    used = design.order[:design.m]
    inv_r = float((1.0 / design.counts[used].clamp(min=1).to(torch.float64)).mean()) \
        if design.m else 0.5
    spread = max(0.0, between - within * inv_r)
    full = max(1, math.ceil(_PLAN_MARGIN * within / (n * tol2)))
    options = [(n * full, n, full)]
    if design.m < n:
        for r in (1, 2):
            m = math.ceil(_PLAN_MARGIN * (spread + within / r) / (tol2 + spread / n))
            if m < n:
                options.append((r * m, max(m, design.m + 1), r))
    _, m, r = min(options)
    if m == n:
        floor = int(design.counts.min()) if design.m == n else 0
        return n, max(floor + (design.m == n), min(r, max(1, cap // n)))
    return min(m, max(design.m, cap // r)), r


def block_rows(n: int, budget: int, device: torch.device) -> int:
    """Noise vectors per block, each a row of n exponents (and logsumexp's temporaries),
    within ``budget`` bytes, and at most ``CPU_ROWS`` on CPU."""
    rows = max(1, budget // (3 * n * 8))
    return int(min(rows, CPU_ROWS)) if device.type == "cpu" else int(rows)
