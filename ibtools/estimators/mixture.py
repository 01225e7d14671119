"""Monte Carlo entropy of a Gaussian mixture: the sample-propagation estimator.

A layer read through a noisy channel, ``T + Z`` with ``Z ~ N(0, s2 I)``, has on a sample
of n rows the distribution ``p(u) = 1/n sum_i N(u; t_i, s2 I)``.  KDE
(:mod:`ibtools.estimators.kde`) brackets its entropy between two pairwise-distance
bounds; Goldfeld et al. (2019) estimate it instead by Monte Carlo integration, ``h =
-E[ln p(U)]`` over draws ``U = t_c + Z`` (a centre c, then noise), which converges to the
mixture's entropy with an error that the draws themselves measure.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from ibtools.estimators.base import Estimator, check_int, check_positive
from ibtools.estimators.kde import (_MATMUL_TOLERANCE, SATURATION_FRACTION, _matmul_dtype,
                                    gaussian_noise_entropy)

#: Centres (with two draws each) of the first round of ``n_mc="auto"``.
PILOT_CENTRES = 512
#: Rounds of ``n_mc="auto"``: a pilot, then at most this many corrections of the design.
_MAX_ROUNDS = 4
#: Noise vectors per block on CPU.  Unlike KDE's blocks these are not sized to the cache:
#: the matmul of a block runs faster on taller ones.  Measured (one thread, n = 10 000,
#: 8000 vectors, seconds by rows 66 / 128 / 256 / 512 / 1024): d = 64: 1.39 / 1.20 / 1.15 /
#: 1.29 / 1.85; d = 512: 6.69 / 5.84 / 4.64 / 4.51 / 4.77.
_CPU_ROWS = 512
#: Margin on the planned number of draws (the pilot's variances are themselves estimates).
_PLAN_MARGIN = 1.15


class _Mixture:
    """The centres of one mixture, prepared for exponents ``-||u - t_j||^2 / (2 s2)``.

    For a draw ``u = t_c + z`` the row ``u . (t_j / s2) - |t_j|^2 / (2 s2)`` is, up to a
    term that is the same for every j, that exponent; subtracting the entry of the draw's
    own centre c gives ``e_j = (||u - t_c||^2 - ||u - t_j||^2) / (2 s2)``, exactly 0 at
    j = c.  One matmul with the augmented centres ``[t_j / s2, -|t_j|^2 / (2 s2)]`` gives
    the rows; the centres are centred first (exponent differences do not change, rounding
    shrinks with the norms), and the matmul runs in float64 when float32 rounding could
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
        self.right = torch.cat([tw / noise_var, -sq / (2.0 * noise_var)], dim=1).T.contiguous()
        self.n, self.d = n, d

    def exponents(self, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``e`` of shape (b, n) for draws ``t_c + z`` (float64 if the matmul is)."""
        u = self.t[c].to(self.mm_dtype) + z.to(self.mm_dtype)
        ones = torch.ones(u.shape[0], 1, dtype=self.mm_dtype, device=u.device)
        rows = torch.cat([u, ones], dim=1) @ self.right                   # (b, n)
        return rows.sub_(rows.gather(1, c[:, None]))


#: Shifted exponents are clamped here before ``exp``: e^-85 ~ 1e-37 is nothing next to the
#: row's largest term e^0, and below about -87 float32 goes denormal, which makes the
#: vectorised exponential an order of magnitude slower (see kde._MIN_EXPONENT).
_MIN_SHIFTED = -85.0


def _kernel_(e: torch.Tensor):
    """``exp(e - max)`` row-wise, in place, and the (b, 1) maxima."""
    top = e.amax(dim=1, keepdim=True)
    return e.sub_(top).clamp_(min=_MIN_SHIFTED).exp_(), top


def _pmi_(e: torch.Tensor, log_n: float) -> torch.Tensor:
    """``ln N(z) - ln p(t_c + z)`` per draw: ln n minus a row's log-sum-exp (e is spent)."""
    k, top = _kernel_(e)
    return log_n - (k.sum(dim=1).to(torch.float64).log_() + top[:, 0].to(torch.float64))


class _Design:
    """Which centres were drawn how often, and the per-centre sums of each column.

    Centres are taken in a random ``order``: the first m, each with ``counts[c]`` draws.
    Two designs occur.  Part of the centres (m < n), two draws each: with ``f = m / n``,
    ``s_b^2`` the spread of the centres' means and ``s_w^2`` the mean within-centre
    variance, the standard error of the grand mean is (Cochran, two-stage sampling)
    ``se^2 = (1 - f) s_b^2 / m + f s_w^2 / (2 m)``, unbiased.  Every centre (m = n), r_c
    draws on centre c: the spread between centres costs nothing, ``se^2 = s_w^2 sum_c
    (1 / r_c) / n^2``, with ``s_w^2`` from the centres drawn at least twice (at least the
    first ``min(n, PILOT_CENTRES)``, a random subset).
    """

    def __init__(self, n: int, columns: int, order: torch.Tensor):
        self.n, self.m, self.order = n, 0, order
        self.sums = torch.zeros(columns, n, dtype=torch.float64, device=order.device)
        self.squares = torch.zeros_like(self.sums)
        self.counts = torch.zeros(n, dtype=torch.int64, device=order.device)

    @property
    def draws(self) -> int:
        return int(self.counts.sum())

    def add(self, centres: torch.Tensor, values: torch.Tensor) -> None:
        """Add (columns, b) per-draw values of draws made at ``centres`` (b,)."""
        self.sums.index_add_(1, centres, values)
        self.squares.index_add_(1, centres, values * values)
        self.counts.index_add_(0, centres, torch.ones_like(centres))

    def stats(self):
        """(mean, se, s_b^2, s_w^2) per column, as float64 tensors of shape (columns,)."""
        used = self.order[:self.m]
        r = self.counts[used].to(torch.float64)
        sums, squares = self.sums[:, used], self.squares[:, used]
        means = sums / r
        multi = r >= 2
        within = ((squares[:, multi] - sums[:, multi] * means[:, multi]) / (r[multi] - 1))
        within = within.clamp_(min=0.0).mean(dim=1)
        between = means.var(dim=1) if self.m > 1 else torch.zeros_like(within)
        if self.m < self.n:
            f = self.m / self.n
            var = (1.0 - f) * between / self.m + f * within / (2.0 * self.m)
        else:
            var = within * float((1.0 / r).sum()) / self.n ** 2
        return means.mean(dim=1), var.sqrt(), between, within


class MixtureEntropy(Estimator):
    r"""Sample-propagation (Monte Carlo) estimate of H(T + noise), and the MI built on it.

    The sample ``t_1..t_n`` (rows; trailing dimensions flattened to d) is read, as in
    :class:`~ibtools.estimators.kde.KDE`, as the mixture ``p = 1/n sum_i N(t_i, s2 I)``:
    the law of ``T + Z``, ``Z ~ N(0, s2 I)``, ``s2 = noise_var``.  Its entropy is written
    as the noise's own plus a pointwise mutual information,

    .. math::

        H(T+Z) = h_Z + E_{c, z}\left[\ln \frac{N(z; 0, s_2 I)}{p(t_c + z)}\right],
        \qquad h_Z = \tfrac d2 \ln(2 \pi e s_2),

    with c uniform on the rows and z drawn from the noise: the same integral as
    ``-E[ln p(U)]`` (Goldfeld et al. 2019), minus the known mean of ``||z||^2 / (2 s2)``.
    That control variate removes the ``d / 2`` variance the noise's own log-density would
    add, so the Monte Carlo error depends on how the components overlap, not on d.  Each
    ``ln p`` is a log-sum-exp over all n centres, in blocks of draws.

    What each call computes:

    - ``entropy(T)``: H(T + Z).
    - ``mutual_information(X, T)``, both continuous, ``deterministic=True``: **T is the
      second argument** and a deterministic function of X (a layer's output for input X),
      so ``H(T+Z | X) = h_Z`` and ``I(X; T+Z) = H(T+Z) - h_Z`` (at most ln n).  X only
      pairs the rows; ``details["assumes"]`` records this.  With neither this nor
      ``noisy_x``, two continuous arrays raise a ValueError (as KDE's).
    - ``mutual_information(S, T)``, both continuous, ``noisy_x=True``: the noisy chain.
      Both are read through independent channels of the same ``s2``, ``S + Z'`` and
      ``T + Z``, of one row each (``S = T_prev``, T the next layer of the same input):
      ``I(S+Z'; T+Z) = H(S+Z') + H(T+Z) - H([S, T] + [Z', Z])``, three mixtures over the
      same rows, estimated on the same draws (``pmi_S + pmi_T - pmi_joint`` per draw).
      :meth:`chain_information` is this call.
    - ``mutual_information(T, Y)``, Y discrete: ``I(T+Z; Y) = H(T+Z) - sum_y p(y)
      H(T+Z | Y=y)``, the class mixtures taken on the rows of each class, estimated as
      ``E[ln p_y(U) - ln p(U)]`` on the same draws (the per-draw value lies in
      ``(-inf, ln 1/p(y)]``, so its spread is small).

    Parameters
    ----------
    noise_var : float, default 0.1
        Variance s2 of the Gaussian noise per coordinate, in the units of T squared (KDE's
        name and meaning).
    n_mc : int or "auto", default "auto"
        Noise draws.  An int fixes them: below n, 2 draws on each of ``n_mc // 2`` centres
        taken without replacement; from n on, ``n_mc // n`` on every centre (and 2 on the
        first ``min(n, 512)``, to measure the spread within a centre).  ``"auto"`` draws 2
        on each of ``min(n, 512)`` centres, then plans from the measured spreads (see
        :class:`_Design`) the cheaper of more centres at 2 draws or every centre at r
        draws that brings the standard error to ``mc_tolerance``, and replans at most four
        times, within ``max_mc`` draws.
    mc_tolerance : float, default 0.01
        Target Monte Carlo standard error, in nats; a result whose error is larger is
        flagged.
    max_mc : int, default 262144
        Most draws ``"auto"`` may make.
    antithetic : bool, default True
        Draw noise in pairs ``z, -z`` and count their mean as one draw (twice the cost of
        a single one).  The per-draw value's part odd in z cancels; in many dimensions
        that is most of it (the term ``(t_c - t_j) . z / s2`` of every exponent), and
        its variance can fall tenfold, while in one or two dimensions the pair can vary
        more than two independent draws would.
    deterministic : bool, default False
        Declare that the second of two continuous arguments (T) is a deterministic function
        of the first (X), as for KDE; the analysis sets it.
    noisy_x : bool, default False
        With both arguments continuous, read X through the channel too (the noisy chain,
        above); takes precedence over ``deterministic``.
    transform : None, "standardize" or "copula"
        Marginal transform before estimating; s2 is then in transformed units.
    **common
        ``seed`` (the draws), ``device``, ``dtype``, ``memory_budget``, ``ci`` (default
        ``"mc"``: value +- z * Monte Carlo se; ``"subsample"`` adds the spread over rows;
        ``"seeds"`` reruns the draws), ``n_resamples``, ``confidence``,
        ``n_permutations``; see :class:`~ibtools.estimators.base.Estimator`.

    Returns
    -------
    EstimateResult
        ``details``: ``mc_se`` (standard error of the value), ``n_mc`` (draws made),
        ``evaluations`` (noise vectors: twice ``n_mc`` with ``antithetic``),
        ``centres_drawn``, ``draws_per_centre`` (least, most), ``h`` (H(T+Z)), ``h_noise``,
        ``ceiling`` (ln n); for discrete Y also ``h_cond`` (sum_y p(y) H(T+Z|Y=y)), ``mi_xt`` (I(X;
        T+Z) of the same draws) and ``h_labels``; for the chain ``mi_x``, ``mi_t``,
        ``mi_joint`` (each mixture's ``H - h_Z``).

    Notes
    -----
    Bias and assumptions.  Given the n rows, the estimate is unbiased for the mixture's
    entropy and its interval (``ci="mc"``) covers the Monte Carlo error only: the mixture
    treats the rows as the whole distribution, and how far that is from the population's
    ``T + Z`` is what ``ci="subsample"`` shows.  The value depends on ``s2`` by
    construction; when every row is its own component it nears ln n whatever the data,
    and is flagged as saturated.  Cost O(n_mc n d): at the same n, ``n_mc`` of about n
    costs about what KDE's two bounds cost.  Memory: one block of draws by n, sized to
    ``memory_budget`` (on CPU at most 512 rows); nothing n x n.

    References
    ----------
    .. [1] Z. Goldfeld, E. van den Berg, K. Greenewald, I. Melnyk, N. Nguyen, B. Kingsbury
       and Y. Polyanskiy, "Estimating information flow in deep neural networks", ICML 2019.
    .. [2] W. G. Cochran, "Sampling Techniques", 3rd ed., Wiley 1977, section 10.2.
    """

    name = "mixture"
    defaults = {"noise_var": 0.1, "n_mc": "auto", "mc_tolerance": 0.01, "max_mc": 262144,
                "antithetic": True, "deterministic": False, "noisy_x": False, "ci": "mc"}
    interval_kinds = ("mc", "subsample", "seeds")
    supports_transform = True
    handles_discrete_x = False
    handles_entropy_of_discrete = False
    stochastic = True

    def _check_settings(self) -> None:
        check_positive(self.noise_var, "noise_var")
        if self.n_mc != "auto":
            check_int(self.n_mc, "n_mc", minimum=4)
        check_positive(self.mc_tolerance, "mc_tolerance")
        check_int(self.max_mc, "max_mc", minimum=4)
        for flag in ("deterministic", "noisy_x", "antithetic"):
            if not isinstance(getattr(self, flag), bool):
                raise TypeError(f"{flag} must be True or False; got {getattr(self, flag)!r}")

    def _rounding(self) -> float:
        """Float32 rounding an exponent may carry: a tenth of ``mc_tolerance``."""
        return 0.1 * float(self.mc_tolerance)

    def chain_information(self, t_prev, t):
        """I(T_prev + Z'; T + Z) of the noisy chain (``noisy_x=True``; see the class)."""
        settings = dict(self.settings, noisy_x=True)
        return type(self)(**settings).mutual_information(t_prev, t, discrete_x=False,
                                                         discrete_y=False)

    # -- the Monte Carlo -------------------------------------------------------------------

    def _run(self, t: torch.Tensor, dims: tuple, columns: int, draw, rng) -> _Design:
        """Draw per the ``n_mc`` setting.

        ``draw(c, zs)`` gives the (columns, b) per-draw values of draws at centres c (b,)
        with noise ``zs``, one (b, d_k) tensor for each of the mixtures' dimensions ``dims``.
        """
        n = int(t.shape[0])
        design = _Design(n, columns, torch.randperm(n, generator=rng, device=t.device))
        block = max(1, self._block(sum(dims), t) // (2 if self.antithetic else 1))
        noisy = self._noise_maker(draw, dims, t, rng)

        def grow(m: int, r: int) -> None:
            self._extend(design, m, r, block, noisy)

        pilot = max(2, min(n, PILOT_CENTRES))
        if self.n_mc != "auto":
            total = int(self.n_mc)
            if total < n:
                grow(min(n, max(2, total // 2)), 2)
            else:  # every centre; two draws on the pilot centres to measure their spread
                grow(pilot, max(2, total // n))
                grow(n, total // n)
            return design
        cap = int(self.max_mc)
        grow(max(2, min(pilot, cap // 2)), 2)
        for _ in range(_MAX_ROUNDS):
            _, se, between, within = (float(v[0]) for v in design.stats())
            if se <= float(self.mc_tolerance):
                break
            m, r = self._plan(design, between, within, cap)
            if m <= design.m and r <= int(design.counts[design.order[:design.m]].min()):
                break
            grow(m, r)
        return design

    def _plan(self, design: _Design, between: float, within: float, cap: int):
        """(m, r): centres, and least draws per centre, that should bring the se to
        ``mc_tolerance`` at the fewest draws (see :class:`_Design` for the se).

        Part of the centres at two draws each needs ``m = s_b^2 / (tol^2 + s_b^2 / n -
        s_w^2 / (2 n))``; every centre, ``r = s_w^2 / (n tol^2)`` draws each (at least one).
        """
        n, tol2 = design.n, float(self.mc_tolerance) ** 2
        full = max(1, math.ceil(_PLAN_MARGIN * within / (n * tol2)))
        if design.m < n:
            room = tol2 + between / n - within / (2.0 * n)
            part = math.ceil(_PLAN_MARGIN * between / room) if room > 0 else n
            if 2 * part < n * full or cap < n:
                return min(max(part, design.m + 1), n, max(design.m, cap // 2)), 2
        floor = int(design.counts.min()) if design.m == n else 0
        return n, max(floor + (design.m == n), min(full, cap // n))

    def _extend(self, design: _Design, m: int, r: int, block: int, draw) -> None:
        """Bring each of the first m centres of the order to at least r draws."""
        centres = design.order[:max(m, design.m)]
        more = (r - design.counts[centres]).clamp_(min=0)
        design.m = max(m, design.m)
        c_all = centres.repeat_interleave(more)
        for i0 in range(0, int(c_all.numel()), block):
            c = c_all[i0:i0 + block]
            design.add(c, draw(c))

    def _noise_maker(self, draw, dims: tuple, t: torch.Tensor, rng):
        """``draw`` with its noise made here: ``c -> (columns, b)``.

        With ``antithetic``, a draw is the mean over ``z`` and ``-z``: the part of a
        per-draw value odd in z (in many dimensions the largest, ``(t_c - t_j) . z / s2``
        in every exponent) cancels, at twice the cost of a draw.
        """
        sigma = math.sqrt(float(self.noise_var))

        def noisy(c):
            b = int(c.numel())
            zs = [sigma * torch.randn((b, d), generator=rng, dtype=t.dtype, device=t.device)
                  for d in dims]
            if not self.antithetic:
                return draw(c, zs)
            values = draw(torch.cat([c, c]), [torch.cat([z, -z]) for z in zs])
            return 0.5 * (values[:, :b] + values[:, b:])
        return noisy

    def _block(self, d: int, t: torch.Tensor) -> int:
        """Noise vectors per block, each a row of n exponents (and logsumexp's temporaries),
        within ``memory_budget``, and at most ``_CPU_ROWS`` on CPU."""
        rows = max(1, self._budget(t.device) // (3 * int(t.shape[0]) * 8))
        return int(min(rows, _CPU_ROWS)) if t.device.type == "cpu" else int(rows)

    # -- estimator hooks ----------------------------------------------------------------

    def _single(self, t, rng):
        """Design over the one mixture of T, column 0: the per-draw pmi."""
        mix = _Mixture(t, float(self.noise_var), self._rounding())
        log_n = math.log(mix.n)

        def draw(c, zs):
            return _pmi_(mix.exponents(c, zs[0]), log_n)[None]
        return mix, self._run(t, (mix.d,), 1, draw, rng)

    def _entropy(self, x, discrete, rng):
        mix, design = self._single(x, rng)
        mean, se, _, _ = (float(v[0]) for v in design.stats())
        h_noise = gaussian_noise_entropy(mix.d, float(self.noise_var))
        details = self._details(design, mix.n, mean, se, h_noise)
        details["quantity"] = "H(T + N(0, noise_var I)), not H(T)"
        return h_noise + mean, details, self._flags(mean, se, mix.n)

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if y_discrete:
            return self._mi_labels(x, y, rng)
        if self.noisy_x:
            return self._mi_chain(x, y, rng)
        if not self.deterministic:
            raise ValueError(
                "method='mixture' on two continuous arrays measures I(X; T+Z) only when T (the "
                "second argument) is a deterministic function of X, such as a layer's output "
                "for input X: it returns H(T+Z) - H(Z) and uses X only to pair the rows. Pass "
                "deterministic=True if T = f(X), or noisy_x=True for the noisy chain "
                "I(X+Z'; T+Z) (CLI: --set deterministic=true); if y holds class labels, pass "
                "discrete_y=True; otherwise use method='ksg' or method='auto'")
        mix, design = self._single(y, rng)
        mean, se, _, _ = (float(v[0]) for v in design.stats())
        h_noise = gaussian_noise_entropy(mix.d, float(self.noise_var))
        details = self._details(design, mix.n, mean, se, h_noise)
        details["assumes"] = ("T (the second argument) is a deterministic function of X, so "
                              "H(T+Z|X) = d/2 ln(2 pi e noise_var); X enters only through the "
                              "pairing of rows")
        return mean, details, self._flags(mean, se, mix.n)

    def _mi_labels(self, t, labels, rng):
        s2 = float(self.noise_var)
        mix = _Mixture(t, s2, self._rounding())
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
        log_counts = counts.to(torch.float64).clamp(min=1).log()
        log_n = math.log(mix.n)

        def draw(c, zs):
            e = mix.exponents(c, zs[0])
            own = labels[c]
            other = labels[None, :] != own[:, None]
            far = e.amax(dim=1) > -_MIN_SHIFTED / 2  # the own term e = 0 could be clamped
            exact = torch.logsumexp(e[far].masked_fill(other[far], -math.inf), dim=1)
            k, top = _kernel_(e)
            top = top[:, 0].to(torch.float64)
            pmi = log_n - (k.sum(dim=1).to(torch.float64).log_() + top)
            log_class = k.masked_fill_(other, 0.0).sum(dim=1).to(torch.float64).log_() + top
            log_class[far] = exact.to(torch.float64)
            return torch.stack([pmi - (log_counts[own] - log_class), pmi])

        design = self._run(t, (mix.d,), 2, draw, rng)
        mean, se, _, _ = design.stats()
        p = counts[counts > 0].to(torch.float64) / mix.n
        h_noise = gaussian_noise_entropy(mix.d, s2)
        details = self._details(design, mix.n, float(mean[0]), float(se[0]), h_noise)
        details.update({"h": h_noise + float(mean[1]), "mi_xt": float(mean[1]),
                        "mi_xt_se": float(se[1]),
                        "h_cond": h_noise + float(mean[1]) - float(mean[0]),
                        "h_labels": float(-(p * p.log()).sum()),
                        "n_classes": int((counts > 0).sum())})
        flags = self._flags(float(mean[0]), float(se[0]), None)
        flags += self._flags(float(mean[1]), 0.0, mix.n)
        return float(mean[0]), details, flags

    def _mi_chain(self, s, t, rng):
        s2 = float(self.noise_var)
        first, second = _Mixture(s, s2, self._rounding()), _Mixture(t, s2, self._rounding())
        log_n = math.log(first.n)

        def draw(c, zs):
            e1, e2 = first.exponents(c, zs[0]), second.exponents(c, zs[1])
            joint = _pmi_(torch.add(e1, e2.to(e1.dtype)) if e1.dtype == torch.float64 else
                          torch.add(e1.to(e2.dtype), e2), log_n)
            p1, p2 = _pmi_(e1, log_n), _pmi_(e2, log_n)
            return torch.stack([p1 + p2 - joint, p1, p2, joint])

        design = self._run(t, (first.d, second.d), 4, draw, rng)
        mean, se, _, _ = design.stats()
        h_noise = gaussian_noise_entropy(second.d, s2)
        details = self._details(design, first.n, float(mean[0]), float(se[0]), h_noise)
        details.update({"mi_x": float(mean[1]), "mi_t": float(mean[2]),
                        "mi_joint": float(mean[3]), "h": h_noise + float(mean[2]),
                        "assumes": "both arguments are read through independent Gaussian "
                                   "channels of variance noise_var: I(S+Z'; T+Z)"})
        return float(mean[0]), details, self._flags(float(mean[0]), float(se[0]), None)

    # -- results ---------------------------------------------------------------------------

    def _details(self, design: _Design, n: int, mean: float, se: float, h_noise: float) -> dict:
        self._last_mc = se
        draws = design.draws
        counts = design.counts[design.order[:design.m]]
        return {"mc_se": se, "n_mc": draws, "evaluations": draws * (2 if self.antithetic else 1),
                "centres_drawn": design.m,
                "draws_per_centre": (int(counts.min()), int(counts.max())),
                "h": h_noise + mean, "h_noise": h_noise, "ceiling": math.log(n),
                "noise_var": float(self.noise_var), "mc_tolerance": float(self.mc_tolerance)}

    def _flags(self, value: float, se: float, n: int | None) -> list:
        flags = []
        if se > float(self.mc_tolerance):
            flags.append(f"Monte Carlo error: standard error {se:.4f} nats exceeds "
                         f"mc_tolerance={float(self.mc_tolerance):g} (value {value:.4f}); "
                         f"raise n_mc or max_mc")
        if n is not None and n > 1 and value >= SATURATION_FRACTION * math.log(n):
            flags.append(f"saturated: with noise_var={float(self.noise_var):g} every sample is "
                         f"nearly its own component (H - h_noise = {value:.4f} nats of the "
                         f"ceiling ln n = {math.log(n):.4f}), so the value reflects n, not the "
                         f"data; raise noise_var or add samples")
        return flags

    def _interval(self, kind, run, tensors, n, value, device):
        if kind != "mc":
            return super()._interval(kind, run, tensors, n, value, device)
        z = NormalDist().inv_cdf(0.5 + float(self.confidence) / 2.0)
        return float(value - z * self._last_mc), float(value + z * self._last_mc), []
