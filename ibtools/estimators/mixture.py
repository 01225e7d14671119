"""Monte Carlo entropy of a Gaussian mixture: the sample-propagation estimator.

A layer read through a noisy channel, ``T + Z`` with ``Z ~ N(0, s2 I)``, has on a sample
of n rows the distribution ``p(u) = 1/n sum_i N(u; t_i, s2 I)``.  KDE
(:mod:`ibtools.estimators.kde`) brackets its entropy between two pairwise-distance
bounds; Goldfeld et al. (2019) estimate it instead by Monte Carlo integration, ``h =
-E[ln p(U)]`` over draws ``U = t_c + Z`` (a centre c, then noise), which converges to the
mixture's entropy with an error that the draws themselves measure.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ibtools.errors import EstimatorRefused, InputTypeError
from ibtools.estimators.base import Estimator, check_int, check_positive
from ibtools.estimators.kde import SATURATION_FRACTION, gaussian_noise_entropy
from ibtools.estimators.mixture_sampling import (
    MIN_SHIFTED,
    MixtureExponents,
    TwoStageDesign,
    block_rows,
    centre_covariates,
    mixture_engine,
    pair_pmi,
    pointwise_mi_,
    quadratic_control,
    radial_features,
    run_design,
    shifted_kernel_,
)


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
        on each of ``min(n, 512)`` centres, then plans from the measured spreads the
        cheapest of more centres at 1 or 2 draws or every centre at r draws that brings
        the standard error to ``mc_tolerance``, and replans at most six times, within
        ``max_mc`` draws.  Control variates with exactly known means (the noise's radius,
        the second-order term of each draw's log-sum-exp over its nearest centres, and
        per-centre distances from the middle of T for the choice of centres) are fitted
        on the draws and subtracted, which cuts the draws a tolerance needs severalfold
        where the components overlap (see :mod:`ibtools.estimators.mixture_sampling`).
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
        ``ceiling`` (ln n); for discrete Y also ``h_cond`` (sum_y p(y) H(T+Z|Y=y)),
        ``mi_xt`` and ``mi_xt_se`` (I(X; T+Z) of the same draws) and ``h_labels``; for the
        chain ``mi_x``, ``mi_t``, ``mi_joint`` (each mixture's ``H - h_Z``).

    Notes
    -----
    Bias and assumptions.  Given the n rows, the estimate is unbiased for the mixture's
    entropy and its interval (``ci="mc"``) covers the Monte Carlo error only: the mixture
    treats the rows as the whole distribution, and how far that is from the population's
    ``T + Z`` is what ``ci="subsample"`` shows.  The value depends on ``s2`` by
    construction; when every row is its own component it nears ln n whatever the data,
    and is flagged as saturated.  Cost O(evaluations n d): a noise vector costs about what
    a row of KDE's kernel matrix costs, and KDE computes half of its n rows, so about n/2
    ``evaluations`` take KDE's time.  How many the tolerance needs depends on the spread of
    the draws left after the control variates, not on n or d: few when the components
    barely overlap or nearly coincide, most in between (``benchmarks/mixture.py`` times the
    three regimes; its table is in ``benchmarks/RESULTS.md``).  On CPU in float32 the
    row-wise work runs in compiled kernels when numba is installed
    (``IBTOOLS_MIXTURE_ENGINE`` = ``auto`` | ``numba`` | ``torch``).  Memory: one block of
    draws by n, sized to ``memory_budget`` (on CPU at most 512 rows), and a few numbers per
    draw; nothing n x n.

    References
    ----------
    .. [1] Z. Goldfeld, E. van den Berg, K. Greenewald, I. Melnyk, N. Nguyen, B. Kingsbury
       and Y. Polyanskiy, "Estimating information flow in deep neural networks", ICML 2019.
    .. [2] W. G. Cochran, "Sampling Techniques", 3rd ed., Wiley 1977, section 10.2.
    """

    name = "mixture"
    limitations = (
        "Monte Carlo entropy of the mixture T + N(0, noise_var I) (Goldfeld et al. 2019): "
        "unbiased for that mixture; on a deterministic layer it saturates at ln n when "
        "noise_var is small next to the spread of T.")
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
                raise InputTypeError(f"{flag} must be True or False; got {getattr(self, flag)!r}")

    def _rounding(self) -> float:
        """Float32 rounding an exponent may carry: a tenth of ``mc_tolerance``."""
        return 0.1 * float(self.mc_tolerance)

    def chain_information(self, t_prev, t):
        """I(T_prev + Z'; T + Z) of the noisy chain (``noisy_x=True``; see the class)."""
        settings = dict(self.settings, noisy_x=True)
        return type(self)(**settings).mutual_information(t_prev, t, discrete_x=False,
                                                         discrete_y=False)

    # -- the Monte Carlo -------------------------------------------------------------------

    def _run(self, t: torch.Tensor, dims: tuple, columns: int, draw, rng,
             watch: tuple = (0,), centres: tuple = ()) -> TwoStageDesign:
        """Draw per the settings; ``draw(c, zs)`` gives the (columns, b) per-draw values of
        draws at centres c (b,) with noise ``zs``, one (b, d_k) tensor for each of the
        mixtures' dimensions ``dims`` (or ``(values, features)``, features a list of (b/2,)
        control variates of antithetic pairs); ``"auto"`` draws until every column in
        ``watch`` meets ``mc_tolerance``.  ``centres``: the mixtures' centre tensors, whose
        :func:`~ibtools.estimators.mixture_sampling.centre_covariates` adjust the sampling
        of centres (default: t)."""
        rows = block_rows(int(t.shape[0]), self._budget(t.device), t.device)
        block = max(1, rows // (2 if self.antithetic else 1))
        return run_design(int(t.shape[0]), columns, self._noise_maker(draw, dims, t, rng),
                          rng=rng, device=t.device, n_mc=self.n_mc,
                          tolerance=float(self.mc_tolerance), max_mc=int(self.max_mc),
                          block=block, watch=watch,
                          covariates=lambda: centre_covariates(*(centres or (t,)),
                                                               noise_var=float(self.noise_var),
                                                               rng=rng))

    def _noise_maker(self, draw, dims: tuple, t: torch.Tensor, rng):
        """``draw`` with its noise made here: ``c -> ((columns, b), (p, b))``, values and
        control variates.

        With ``antithetic``, a draw is the mean over ``z`` and ``-z``: the part of a
        per-draw value odd in z (in many dimensions the largest, ``(t_c - t_j) . z / s2``
        in every exponent) cancels, at twice the cost of a draw.  Every draw carries the
        radial control variates of its noise, and ``draw`` may add its own (the quadratic
        one of :func:`~ibtools.estimators.mixture_sampling.quadratic_control`).
        """
        s2 = float(self.noise_var)
        sigma = math.sqrt(s2)

        def noisy(c):
            b = int(c.numel())
            zs = [sigma * torch.randn((b, d), generator=rng, dtype=t.dtype, device=t.device)
                  for d in dims]
            if self.antithetic:
                out = draw(torch.cat([c, c]), [torch.cat([z, -z]) for z in zs])
            else:
                out = draw(c, zs)
            values, extra = out if isinstance(out, tuple) else (out, [])
            if self.antithetic:
                values = 0.5 * (values[:, :b] + values[:, b:])
            features = radial_features([(z, s2) for z in zs]) + list(extra)
            return values, torch.stack(features)
        return noisy

    # -- estimator hooks ----------------------------------------------------------------

    def layer_information(self, x, t, t_prev, y, *, chain=None):
        """The analysis seam (see :meth:`Estimator.layer_information`): I(T;Y) is computed
        first and I(X;T) comes from its draws (``details["shared_draws"]``), so the layer pays
        for one Monte Carlo run instead of two."""
        with self._reuse_draws():
            return super().layer_information(x, t, t_prev, y, chain=chain)

    @contextlib.contextmanager
    def _reuse_draws(self):
        """Within this block, I(X;T) and H(T) of a T whose I(T;Y) was just estimated come
        from that estimate's draws.

        Every draw of I(T;Y) also gives T's pointwise ``ln N(z) / p(t_c + z)``, whose mean is
        I(X; T+Z).  Inside the block I(T;Y)'s draws continue until I(X; T+Z) meets
        ``mc_tolerance`` too, which costs what I(X;T) alone would.  Shared only when it did
        (or ``n_mc`` is fixed), for the same T (the same tensor, unchanged, as KDE's bounds
        check it), noise and seed.  Outside such a block nothing is kept.
        """
        self._reuse_depth = getattr(self, "_reuse_depth", 0) + 1
        try:
            yield self
        finally:
            self._reuse_depth -= 1
            if not self._reuse_depth:
                self._shared = None

    def _share_key(self, t, rng):
        return (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t._version,
                float(self.noise_var), rng.initial_seed())

    def _whole(self, t, rng):
        """(mean, se, details) of the per-draw pmi of T's mixture, whose mean is I(X; T+Z)."""
        shared = getattr(self, "_shared", None) if getattr(self, "_reuse_depth", 0) else None
        if shared is not None and shared[0] == self._share_key(t, rng):
            mean, se, details = shared[2]
            return mean, se, dict(details, shared_draws=True)
        mix = MixtureExponents(t, float(self.noise_var), self._rounding())
        log_n = math.log(mix.n)

        engine = mixture_engine(mix.n, t.dtype, t.device)

        def draw(c, zs):
            if self.antithetic:
                pmi, quad = pair_pmi(mix, c, zs[0], log_n, engine)
                return pmi[None], [quad]
            return pointwise_mi_(mix.exponents(c, zs[0]), log_n)[None], []
        design = self._run(t, (mix.d,), 1, draw, rng)
        mean, se, _, _ = (float(v[0]) for v in design.stats())
        h_noise = gaussian_noise_entropy(mix.d, float(self.noise_var))
        return mean, se, self._details(design, mix.n, mean, se, h_noise)

    def _entropy(self, x, discrete, rng):
        mean, se, details = self._whole(x, rng)
        details["quantity"] = "H(T + N(0, noise_var I)), not H(T)"
        return details["h_noise"] + mean, details, self._flags(mean, se, int(x.shape[0]))

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if y_discrete:
            return self._mi_labels(x, y, rng)
        if self.noisy_x:
            return self._mi_chain(x, y, rng)
        if not self.deterministic:
            raise EstimatorRefused(
                "method='mixture' on two continuous arrays measures I(X; T+Z) only when T (the "
                "second argument) is a deterministic function of X, such as a layer's output "
                "for input X: it returns H(T+Z) - H(Z) and uses X only to pair the rows. Pass "
                "deterministic=True if T = f(X), or noisy_x=True for the noisy chain "
                "I(X+Z'; T+Z) (CLI: --set deterministic=true); if y holds class labels, pass "
                "discrete_y=True; otherwise use method='ksg' or method='auto'")
        mean, se, details = self._whole(y, rng)
        details["assumes"] = ("T (the second argument) is a deterministic function of X, so "
                              "H(T+Z|X) = d/2 ln(2 pi e noise_var); X enters only through the "
                              "pairing of rows")
        return mean, details, self._flags(mean, se, int(y.shape[0]))

    def _mi_labels(self, t, labels, rng):
        s2 = float(self.noise_var)
        mix = MixtureExponents(t, s2, self._rounding())
        counts = torch.bincount(labels, minlength=int(labels.max()) + 1)
        log_counts = counts.to(torch.float64).clamp(min=1).log()
        log_n = math.log(mix.n)

        def draw(c, zs):
            e = mix.exponents(c, zs[0])
            extra = [quadratic_control(mix, c, e)] if self.antithetic else []
            own = labels[c]
            other = labels[None, :] != own[:, None]
            far = e.amax(dim=1) > -MIN_SHIFTED / 2  # the own term e = 0 could be clamped
            exact = torch.logsumexp(e[far].masked_fill(other[far], -math.inf), dim=1)
            k, top = shifted_kernel_(e)
            top = top[:, 0].to(torch.float64)
            pmi = log_n - (k.sum(dim=1).to(torch.float64).log_() + top)
            log_class = k.masked_fill_(other, 0.0).sum(dim=1).to(torch.float64).log_() + top
            log_class[far] = exact.to(torch.float64)
            return torch.stack([pmi - (log_counts[own] - log_class), pmi]), extra

        # inside _reuse_draws, I(X; T+Z) (column 1) is drawn to the tolerance as well
        design = self._run(t, (mix.d,), 2, draw, rng,
                           watch=(0, 1) if getattr(self, "_reuse_depth", 0) else (0,))
        mean, se, _, _ = design.stats()
        p = counts[counts > 0].to(torch.float64) / mix.n
        h_noise = gaussian_noise_entropy(mix.d, s2)
        if getattr(self, "_reuse_depth", 0) and (self.n_mc != "auto"
                                                 or float(se[1]) <= float(self.mc_tolerance)):
            whole = self._details(design, mix.n, float(mean[1]), float(se[1]), h_noise)
            self._shared = (self._share_key(t, rng), t, (float(mean[1]), float(se[1]), whole))
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
        first = MixtureExponents(s, s2, self._rounding())
        second = MixtureExponents(t, s2, self._rounding())
        log_n = math.log(first.n)

        def draw(c, zs):
            e1, e2 = first.exponents(c, zs[0]), second.exponents(c, zs[1])
            extra = ([quadratic_control(first, c, e1), quadratic_control(second, c, e2)]
                     if self.antithetic else [])
            joint = pointwise_mi_(torch.add(e1, e2.to(e1.dtype)) if e1.dtype == torch.float64 else
                          torch.add(e1.to(e2.dtype), e2), log_n)
            p1, p2 = pointwise_mi_(e1, log_n), pointwise_mi_(e2, log_n)
            return torch.stack([p1 + p2 - joint, p1, p2, joint]), extra

        design = self._run(t, (first.d, second.d), 4, draw, rng, centres=(s, t))
        mean, se, _, _ = design.stats()
        h_noise = gaussian_noise_entropy(second.d, s2)
        details = self._details(design, first.n, float(mean[0]), float(se[0]), h_noise)
        details.update({"mi_x": float(mean[1]), "mi_t": float(mean[2]),
                        "mi_joint": float(mean[3]), "h": h_noise + float(mean[2]),
                        "assumes": "both arguments are read through independent Gaussian "
                                   "channels of variance noise_var: I(S+Z'; T+Z)"})
        return float(mean[0]), details, self._flags(float(mean[0]), float(se[0]), None)

    # -- results ---------------------------------------------------------------------------

    def _details(self, design: TwoStageDesign, n: int, mean: float, se: float,
                 h_noise: float) -> dict:
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

