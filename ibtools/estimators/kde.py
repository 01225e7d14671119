"""Pairwise-distance (KDE) bounds on the entropy of T + Gaussian noise.

A deterministic network maps distinct inputs to distinct activations, so the mutual
information between its input and a continuous layer is infinite (or equals ln n on a finite
sample).  Saxe et al. (2018) make it finite by reading the layer as ``T + Z`` with
``Z ~ N(0, s2 I)``: on a sample of n rows, ``T + Z`` is an equal-weight mixture of n
Gaussians centred on the rows, whose entropy Kolchinsky & Tracey (2017) bound from both
sides with pairwise divergences between the components.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ibtools.errors import EstimatorRefused, InputTypeError
from ibtools.estimators import resolution
from ibtools.estimators.base import Estimator, check_choice, check_positive
from ibtools.estimators.determinism import not_a_function_flag

from ibtools.estimators.kde_kernel import (  # noqa: F401 - importable from here too
    _MATMUL_TOLERANCE,
    _MIN_EXPONENT,
    KDE_NUMBA_MIN_N,
    SATURATION_FRACTION,
    _matmul_dtype,
    gaussian_noise_entropy,
    kde_engine,
    pairwise_log_means,
)


#: Rows up to which ``n_permutations="auto"`` runs KDE's label-shuffle check.
AUTO_NULL_MAX_ROWS = 4096


class KDE(Estimator):
    r"""Kolchinsky-Tracey pairwise-distance bounds on H(T + noise), and the MI built on them.

    The sample ``t_1..t_n`` of T (rows; trailing dimensions flattened to d) is read as the
    mixture ``p(u) = 1/n sum_i N(u; t_i, s2 I)``, i.e. the distribution of ``T + Z`` with
    ``Z ~ N(0, s2 I)`` independent noise of variance ``s2 = noise_var``.  With
    ``h_Z = d/2 ln(2 pi e s2)`` the entropy of one component:

    .. math::

        H_{KL} = h_Z - \frac1n \sum_i \ln \frac1n \sum_j e^{-\|t_i-t_j\|^2/(2 s_2)}
        \;\ge\; H(T+Z) \;\ge\;
        H_{BD} = h_Z - \frac1n \sum_i \ln \frac1n \sum_j e^{-\|t_i-t_j\|^2/(8 s_2)}

    (the pairwise KL divergence between two components is ``||t_i-t_j||^2 / (2 s2)``, the
    Bhattacharyya distance ``||t_i-t_j||^2 / (8 s2)``).  ``bound`` picks which one is the
    value; ``details`` carries both.

    What each call computes:

    - ``entropy(T)``: the bound on H(T + Z).
    - ``mutual_information(T, Y)`` with Y discrete (labels, token ids):
      ``I = H(T+Z) - sum_y p(y) H(T+Z | Y=y)``, each term bounded the same way on the rows of
      class y.  The difference of two upper (or two lower) bounds is not itself a bound; it is
      the estimator of Saxe et al. and Kolchinsky et al. (2019).
    - ``mutual_information(X, T, ...)`` with both continuous, only with
      ``deterministic=True``: the deterministic-map reading of Saxe et al. (2018).  **T is
      the second argument** and is a deterministic function of X (a layer's output for input
      X), so ``H(T+Z | X) = h_Z`` exactly and ``I(X; T+Z) = H(T+Z) - h_Z``.  X itself is not
      used beyond pairing the rows; here the KL and BD values are true upper and lower
      bounds on ``I(X; T+Z)``.  Equal rows of X with different rows of T are flagged.
      Otherwise two continuous arrays raise a ValueError: for other pairs ``H(T+Z) - h_Z``
      is not their MI (independent 2 + 2-dim Gaussians read 3.3 nats); use "ksg"/"auto".

    Parameters
    ----------
    noise_var : float, default 0.1
        Variance s2 of the added Gaussian noise (per coordinate), in the units of T squared.
        It sets the resolution: the value changes with it, and a sweep over several values
        belongs in the analysis layer.  ``"auto"``: chosen from T's own scale, (r_k / 2)^2
        with r_k the median distance to the ceil(sqrt(n))-th neighbour, so the value is
        neither saturated at ln n nor 0 (:mod:`ibtools.estimators.resolution`).
    bound : {"upper", "lower"}, default "upper"
        ``"upper"``: the KL bound (the number Saxe et al. report); ``"lower"``: the
        Bhattacharyya bound.
    deterministic : bool, default False
        Declare that the second of two continuous arguments (T) is a deterministic function
        of the first (X); required for them (the analysis sets it for I(X;T), I(T_prev;T)).
        CLI: ``ibtools estimate X T --method kde --set deterministic=true``.
    transform : None, "standardize" or "copula"
        Marginal transform of continuous inputs before estimating (see
        :mod:`ibtools.estimators.transforms`); s2 is then in standardized units.
    **common
        ``seed``, ``device``, ``dtype``, ``memory_budget``, ``ci`` (``"subsample"`` first:
        a bootstrap duplicates rows, which doubles kernel weights), ``n_resamples``,
        ``confidence``, ``n_permutations``; see :class:`~ibtools.estimators.base.Estimator`.

    Returns
    -------
    EstimateResult
        ``details`` holds ``h_upper``, ``h_lower`` (H(T+Z) bounds), ``h_noise`` (h_Z), for MI
        ``mi_upper``, ``mi_lower`` and, with discrete Y, the per-class conditional bounds;
        ``resolved_upper`` (``H_KL - h_Z``), its ceiling ``ln n``, ``mean_self_weight`` (the
        average share of a row's own kernel in its mixture density), ``chunk_rows``, ``pairs``
        (kernel entries computed) and ``engine`` (``"torch"`` or ``"numba"``, see
        :func:`kde_engine`).

    Notes
    -----
    Bias and assumptions.  The estimate is of ``T + Z``, not of T: it depends on ``s2`` by
    construction, and the empirical mixture treats the n rows as the whole distribution (no
    correction for unseen points).  ``H_KL`` is exact when the components do not overlap
    and when they coincide, and in between the gap can be sizeable, so report the pair.
    When s2 is small next to the spacing of the
    rows, every row is its own kernel and ``H - h_Z`` reaches its ceiling ``ln n`` whatever
    the data: the result is then flagged as saturated.  When s2 is large next to the spread
    of T, everything merges into one kernel and the MI goes to 0.  Cost O(n^2 d), in blocks of
    rows sized to ``memory_budget``; no n x n matrix is built.

    References
    ----------
    .. [1] A. Kolchinsky and B. D. Tracey, "Estimating mixture entropy with pairwise
       distances", Entropy 19(7):361, 2017.
    .. [2] A. Kolchinsky, B. D. Tracey and D. H. Wolpert, "Nonlinear information
       bottleneck", Entropy 21(12):1181, 2019.
    .. [3] A. M. Saxe et al., "On the information bottleneck theory of deep learning",
       ICLR 2018.
    """

    name = "kde"
    limitations = (
        "Pairwise-distance bounds on T + N(0, noise_var I): the value depends on noise_var "
        "and saturates at ln n when noise_var is small next to the spread of T.")
    bounded_by_sample_size = True
    #: Label shuffles of the automatic independence check (I(T;Y) with class labels only).
    auto_permutations = 20
    defaults = {"noise_var": 0.1, "bound": "upper", "deterministic": False}
    interval_kinds = ("subsample", "bootstrap")
    supports_transform = True
    handles_discrete_x = False
    handles_entropy_of_discrete = False
    stochastic = False

    def _check_settings(self) -> None:
        if resolution.is_auto(self.noise_var):
            self.noise_var = resolution.AUTO
        elif isinstance(self.noise_var, str):
            raise InputTypeError(f"noise_var={self.noise_var!r} is not accepted; use a number > 0 "
                             f"or 'auto' (chosen from the data's scale)")
        else:
            check_positive(self.noise_var, "noise_var")
        check_choice(self.bound, "bound", ("upper", "lower"))
        if not isinstance(self.deterministic, bool):
            raise InputTypeError(f"deterministic must be True or False; got {self.deterministic!r}")

    # -- the pairwise bounds -------------------------------------------------------------------

    def layer_information(self, x, t, t_prev, y, *, chain=None):
        """The analysis seam (see :meth:`Estimator.layer_information`), with T's whole-sample
        H(T+Z) bounds computed once for I(T;Y), I(X;T) and I(T_prev;T): this O(n^2 d) term
        is the same in all three."""
        with self._reuse_bounds():
            return super().layer_information(x, t, t_prev, y, chain=chain)

    @contextlib.contextmanager
    def _reuse_bounds(self):
        """Within this block, compute the whole-sample H(T+Z) bounds of a T once.

        The last T's result is kept with a reference to T itself (so its memory cannot be
        reused by another tensor while the entry lives) and its version counter, so an
        in-place torch change is seen.  Changes torch cannot see, such as writing into a
        NumPy array whose memory T shares, are not: do not change the inputs inside the
        block.  Outside such a block nothing is cached.
        """
        self._reuse_depth = getattr(self, "_reuse_depth", 0) + 1
        try:
            yield self
        finally:
            self._reuse_depth -= 1
            if not self._reuse_depth:
                self._last_bounds = None

    def _bounds(self, t: torch.Tensor) -> dict:
        """H(T+Z) bounds of one sample, with the saturation diagnostics (cached inside
        :meth:`_reuse_bounds` only)."""
        if not getattr(self, "_reuse_depth", 0) or t.shape[0] < 1024:
            # per-class slices and small samples are not worth keeping
            return self._compute_bounds(t)
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, t.device, t._version,
               float(self.noise_var), self._budget(t.device))
        cached = getattr(self, "_last_bounds", None)
        if cached is not None and cached[0] == key:
            return dict(cached[2])
        result = self._compute_bounds(t)
        self._last_bounds = (key, t, result)  # t held: its address stays its own
        return dict(result)

    def _compute_bounds(self, t: torch.Tensor) -> dict:
        s2 = float(self.noise_var)
        n, d = int(t.shape[0]), int(t.shape[1])
        log_kl, log_bd, info = pairwise_log_means(t, s2, self._budget(t.device))
        h_noise = gaussian_noise_entropy(d, s2)
        resolved_kl = -float(log_kl.mean())
        resolved_bd = -float(log_bd.mean())
        # exp(-ln n - L_i) = 1 / sum_j k_ij: the weight of row i's own kernel at t_i
        self_weight = float(torch.exp(-math.log(n) - log_kl).mean())
        return {"h_upper": h_noise + resolved_kl, "h_lower": h_noise + resolved_bd,
                "h_noise": h_noise, "resolved_upper": resolved_kl, "resolved_lower": resolved_bd,
                "ceiling": math.log(n), "mean_self_weight": self_weight, **info, "n": n}

    def _saturation_flags(self, b: dict) -> list:
        if b["n"] < 2 or b["resolved_upper"] < SATURATION_FRACTION * b["ceiling"]:
            return []
        return [f"saturated: with noise_var={self.noise_var:g} every sample is nearly its own "
                f"kernel (H_KL - h_noise = {b['resolved_upper']:.4f} nats of the ceiling "
                f"ln n = {b['ceiling']:.4f}; mean self-weight {b['mean_self_weight']:.3f}), so "
                f"the value reflects n, not the data; use noise_var=auto (a variance from the "
                f"data's neighbour distances), raise noise_var or add samples"]

    def _finish(self, quantity, run, tensors, n, dims, device, extra=None):
        """With ``noise_var='auto'`` the variance comes from the layer's whole sample
        (:func:`ibtools.estimators.resolution.kde_noise_var`) before any resample, and is
        recorded in ``details['auto_resolution']`` and the result's params."""
        with resolution.kde_auto(self, tensors) as record:
            result = super()._finish(quantity, run, tensors, n, dims, device, extra)
        if record is not None:
            result.details["auto_resolution"] = record
        return result

    def _pick(self, upper: float, lower: float) -> float:
        return upper if self.bound == "upper" else lower

    # -- estimator hooks -------------------------------------------------------------------------

    _SHARED_DETAILS = ("h_upper", "h_lower", "h_noise", "resolved_upper", "ceiling",
                       "mean_self_weight", "chunk_rows", "engine", "pairs")

    def _details(self, b: dict, **more) -> dict:
        """The whole-sample bounds and diagnostics every result carries, plus ``more``."""
        return {**{k: b[k] for k in self._SHARED_DETAILS},
                "noise_var": float(self.noise_var), **more}

    def _entropy(self, x, discrete, rng):
        b = self._bounds(x)
        details = self._details(b, quantity="H(T + N(0, noise_var I)), not H(T)")
        return self._pick(b["h_upper"], b["h_lower"]), details, self._saturation_flags(b)

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if y_discrete:
            return self._mi_discrete(x, y)
        if not self.deterministic:
            raise EstimatorRefused(
                "method='kde' on two continuous arrays measures I(X;T) only when T (the second "
                "argument) is a deterministic function of X, such as a layer's output for input "
                "X: it returns H(T+Z) - H(Z) and uses X only to pair the rows, so for any other "
                "pair (independent or noisy variables) the number is not their MI. Pass "
                "deterministic=True if T = f(X) (CLI: --set deterministic=true); if y holds "
                "class labels, pass discrete_y=True; otherwise use method='ksg' or "
                "method='auto'")
        # both continuous: I(X; T+Z) with T = y a deterministic function of X
        b = self._bounds(y)
        details = self._details(
            b, mi_upper=b["resolved_upper"], mi_lower=b["resolved_lower"],
            assumes="T (the second argument) is a deterministic function of X, so "
                    "H(T+Z|X) = d/2 ln(2 pi e noise_var); X enters only through the pairing "
                    "of rows")
        value = self._pick(b["resolved_upper"], b["resolved_lower"])
        return value, details, self._saturation_flags(b) + not_a_function_flag(x, y)

    def _null_needed(self, result) -> bool:
        """The automatic check runs for I(T;Y) with class labels, when the value is below
        half the label entropy: the class-conditional mixtures have fewer kernels than the
        whole one, so KDE reads above 0 at independence, the more so the more classes and
        the smaller the noise (0.075 nats at n = 500 with 10 classes on 1-d T), and only
        shuffling the labels tells that from dependence.  T's whole-sample bounds do not
        change under a shuffle and are computed once.  Two continuous variables (a
        deterministic map, ``deterministic=True``) have no null: every pairing reads the
        same.  Above ``AUTO_NULL_MAX_ROWS`` rows the shuffles' class passes cost several
        times the estimate (token labels put large classes through whole pairwise passes),
        so the check is left to an explicit ``n_permutations``."""
        d = result.details
        return ("h_labels" in d and result.value < 0.5 * d["h_labels"]
                and result.n <= AUTO_NULL_MAX_ROWS)

    def _null_values(self, run, x, y, perms) -> list:
        with self._reuse_bounds():
            return super()._null_values(run, x, y, perms)

    def _mi_discrete(self, t, labels):
        from ibtools.estimators.kde_classes import conditional_bounds

        whole = self._bounds(t)

        def class_bounds(rows):  # uncached: the whole sample's bounds stay in the cache
            b = self._compute_bounds(rows)
            return b["h_upper"], b["h_lower"]

        cond = conditional_bounds(t, labels, whole["h_noise"], float(self.noise_var),
                                  self._budget(t.device), class_bounds)
        mi_upper = whole["h_upper"] - cond["cond_upper"]
        mi_lower = whole["h_lower"] - cond["cond_lower"]
        h_labels = cond["h_labels"]
        details = self._details(whole, mi_upper=mi_upper, mi_lower=mi_lower,
                                h_cond_upper=cond["cond_upper"],
                                h_cond_lower=cond["cond_lower"], h_labels=h_labels,
                                n_classes=cond["n_classes"])
        if cond["per_class"] is not None:
            details["per_class"] = cond["per_class"]
        flags = self._saturation_flags(whole)
        if flags:
            # the discrete side is Y for I(T;Y) and X for I(X;T) on token ids: name neither
            flags.append(f"with every sample its own kernel, the MI goes to the plug-in "
                         f"entropy of the discrete variable ({h_labels:.4f} nats) whatever T "
                         f"holds")
        return self._pick(mi_upper, mi_lower), details, flags

