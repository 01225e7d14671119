"""Intervals from resampled estimates, and the summaries of a permutation null.

Every estimator's interval is built here from the values it gave on resamples (bootstrap
rows, subsets of rows, or other seeds), so they all mean the same thing:

* the centre is the point estimate minus the bias the resamples reveal (the bootstrap bias
  estimate, or the shift between subsets and all rows extrapolated at the 1/n rate);
* the half-width is a Student-t quantile (B - 1 degrees of freedom, B resamples) times the
  sampling spread scaled to the point estimate's rows, widened by the uncertainty of the
  bias estimate itself;
* the interval is the union of that bias-corrected interval and the uncorrected one
  (value +- t x spread), so it always contains the point estimate and stays valid when the
  bias estimate is noise: for KSG, whose bias is small in low dimension, the difference
  between the value and the mean of its half-size subsets varies from data set to data set
  by about half the value's own sd, and the corrected interval alone covered a 1-d truth in
  only 90-92 % of data sets.

Percentile intervals of a biased plug-in estimator miss both the estimate and the truth: a
bootstrap resample duplicates rows, so its histogram has fewer occupied cells and its
plug-in mutual information is biased higher than the estimate it resamples (binning on
independent 1+1-d data: value 0.153, resamples near 0.27).  Subtracting the resample bias
instead of reading percentiles is Efron's bias-corrected bootstrap (Efron & Tibshirani
1993, ch. 10).  Subsets of m of n rows (without replacement) vary around the full-data
value with variance sigma^2 (1/m - 1/n), not sigma^2 / m, which is why the spread of
half-size subsets is scaled by sqrt((1/n) / (1/m - 1/n)) = 1 for m = n/2 (Politis, Romano
& Wolf 1999, ch. 2); their mean shift from the full-data value estimates the bias when the
bias falls like 1/n (plug-in entropies, kNN and matrix estimators at fixed dimension).
Quantiles of 20 resamples are too coarse for a 95% interval, hence the t quantile of the
resample spread.

Each scheme is a small object with one interface (:class:`IntervalScheme`), chosen by the
estimator's ``ci`` setting through :data:`INTERVAL_SCHEMES`: the resampling schemes
(:class:`Bootstrap`, :class:`Subsample`, :class:`Seeds`) rerun the estimator, and the
standard-error schemes (``"heldout"``, ``"mc"``) read a standard error the estimate itself
reported.  The independence checks are objects too: :class:`PermutationNull` (the estimate
under shuffled pairs) and :class:`HsicNull` (the HSIC statistic of two Gram matrices).
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import numpy as np
import torch

from ibtools.errors import EstimatorRefused, InputError
from scipy import stats

#: The bias is said to dominate an interval when it exceeds this many sampling sds.
BIAS_DOMINATES = 1.0
#: Offsets added to the estimator's seed for the draws of resamples and of shuffles, so
#: every estimator resamples the same rows and shuffles the same pairs for one seed.
RESAMPLE_SEED_OFFSET = 7919
PERMUTATION_SEED_OFFSET = 104729


class IntervalScheme:
    """One kind of interval.  :meth:`interval` gets the estimator, ``run(*tensors, offset)``
    (the estimate on other rows or with another seed offset), the prepared tensors, the
    point result and the device, and returns ``(low, high, samples, info)``: the ends, the
    values behind them (``details["resample_values"]``) and details such as ``ci_method``.
    """

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def interval(self, estimator, run, tensors, result, device):
        raise NotImplementedError(f"{type(self).__name__} must define interval()")


class ResamplingScheme(IntervalScheme):
    """Intervals from ``n_resamples`` reruns of the estimator (subclasses say how rows are
    drawn and how the spread and bias of the reruns are read)."""

    def check(self, n: int, m: int) -> None:
        """Refuse data too small for this scheme (``m``: rows of a subset)."""

    def draw(self, tensors, n: int, m: int, g: torch.Generator, device):
        """The tensors of one resample."""
        raise NotImplementedError

    def spread(self, value, arr, n, rows_point, rows_resample):
        """``(sd, bias, bias_se)`` of the point estimate from the resampled values ``arr``:
        the sampling sd at the point estimate's rows and the bias estimate with its standard
        error (None: no bias estimate)."""
        raise NotImplementedError

    def interval(self, estimator, run, tensors, result, device):
        g = torch.Generator(device="cpu")
        g.manual_seed(int(estimator.seed) + RESAMPLE_SEED_OFFSET)
        n = result.n
        m = max(estimator._min_samples() + 1, n // 2)
        self.check(n, m)
        samples, rows = [], []
        for b in range(1, estimator.n_resamples + 1):
            parts = self.draw(tensors, n, m, g, device)
            out = run(*parts, b)
            samples.append(float(out[0]))
            rows.append(int(out[1].get("rows_used", parts[0].shape[0])))
        low, high, info = self.summarize(
            result.value, samples, float(estimator.confidence), n=n,
            rows_point=int(result.details.get("rows_used", n)), rows_resample=min(rows))
        return low, high, samples, info

    def summarize(self, value: float, samples, confidence: float, *, n: int,
                  rows_point: int | None = None, rows_resample: int | None = None):
        """``(low, high, info)`` of ``value`` from the resampled estimates (see the module
        docstring and :func:`resample_interval`)."""
        arr = np.asarray(samples, dtype=float)
        b = len(arr)
        if b < 2:
            raise InputError(f"an interval needs at least 2 resamples; got {b}")
        sd, bias, bias_se = self.spread(value, arr, n, rows_point, rows_resample)
        center = value - (bias or 0.0)
        t = float(stats.t.ppf(0.5 + confidence / 2.0, b - 1))
        half = t * math.sqrt(sd * sd + (bias_se or 0.0) ** 2)
        # the union with the uncorrected interval: the bias estimate also carries the data's
        # noise (for KSG, sd(value - mean of subsets) is about half the value's own sd), so
        # the corrected interval alone under-covers where the bias is small (KSG 1-d: 90-92 %)
        low, high = min(center - half, value - t * sd), max(center + half, value + t * sd)
        info = {"ci_method": self.description, "ci_center": center, "ci_bias": bias,
                "ci_sd": sd, "ci_bias_se": bias_se}
        return float(low), float(high), info


class Bootstrap(ResamplingScheme):
    """n rows drawn with replacement; the bias is the mean shift of the resamples."""

    kind = "bootstrap"
    description = ("bias-corrected bootstrap: union of value - (mean of resamples - value) "
                   "+- t(B-1) x resample sd and value +- t(B-1) x resample sd")

    def draw(self, tensors, n, m, g, device):
        idx = torch.randint(0, n, (n,), generator=g).to(device)
        return [t[idx] for t in tensors]

    def spread(self, value, arr, n, rows_point, rows_resample):
        sd = float(arr.std(ddof=1))
        return sd, float(arr.mean()) - value, sd / math.sqrt(len(arr))


class Subsample(ResamplingScheme):
    """Half-size subsets without replacement; the spread is rescaled to n rows and the bias
    extrapolated at the 1/n rate."""

    kind = "subsample"
    description = ("half-size subsampling without replacement: union of value - bias (subset "
                   "shift extrapolated at the 1/n rate) +- t(B-1) x sd and value +- t(B-1) x "
                   "sd, sd = subset sd x sqrt((1/n)/(1/m - 1/n))")

    def check(self, n, m):
        if m >= n:
            raise EstimatorRefused(f"n={n} is too small for a subsampling interval")

    def draw(self, tensors, n, m, g, device):
        idx = torch.randperm(n, generator=g)[:m].to(device)
        return [t[idx] for t in tensors]

    def spread(self, value, arr, n, rows_point, rows_resample):
        n_point = int(rows_point or n)
        m = int(rows_resample or n // 2)
        excess = 1.0 / m - 1.0 / n
        if excess <= 0:
            raise EstimatorRefused(f"subsets of {m} rows of n={n} cannot give an interval")
        scale = math.sqrt((1.0 / n_point) / excess)
        sd = float(arr.std(ddof=1)) * scale
        # bias(r) = c / r: subsets of m rows are off by c (1/m - 1/n_point) from the value
        gap = 1.0 / m - 1.0 / n_point
        if gap <= 0:  # the point estimate used as few rows as a subset: no bias information
            return sd, 0.0, 0.0
        ratio = (1.0 / n_point) / gap
        return sd, (float(arr.mean()) - value) * ratio, sd / scale / math.sqrt(len(arr)) * ratio


class Seeds(ResamplingScheme):
    """All rows, other seeds: the spread of seed randomness only, no bias estimate."""

    kind = "seeds"
    description = "value +- t(B-1) x sd over seeds (seed randomness only)"

    def draw(self, tensors, n, m, g, device):
        return tensors

    def spread(self, value, arr, n, rows_point, rows_resample):
        return float(arr.std(ddof=1)), None, None


class StandardErrorScheme(IntervalScheme):
    """value +- z x a standard error the estimate reported in ``details[se_key]`` (no
    reruns); the values behind it, if any, are ``details[values_key]``."""

    def __init__(self, kind: str, se_key: str, values_key: str | None, description: str):
        self.kind, self.se_key, self.values_key = kind, se_key, values_key
        self.description = description

    def interval(self, estimator, run, tensors, result, device):
        se = result.details[self.se_key]
        z = NormalDist().inv_cdf(0.5 + float(estimator.confidence) / 2.0)
        samples = list(result.details.get(self.values_key, [])) if self.values_key else []
        return (float(result.value - z * se), float(result.value + z * se), samples,
                {"ci_method": self.description})


#: Every interval kind by its ``ci`` name; an estimator offers some in ``interval_kinds``.
INTERVAL_SCHEMES: dict[str, IntervalScheme] = {
    scheme.kind: scheme for scheme in (
        Bootstrap(), Subsample(), Seeds(),
        StandardErrorScheme("heldout", "heldout_se", "heldout_values",
                            "value +- z x standard error of the held-out mean, stretched to "
                            "contain it"),
        StandardErrorScheme("mc", "mc_se", None,
                            "value +- z x Monte Carlo standard error, stretched to contain it"),
    )}

#: How each interval kind is made (``details["ci_method"]``).
CI_METHODS = {kind: scheme.description for kind, scheme in INTERVAL_SCHEMES.items()}


def interval_scheme(kind: str) -> IntervalScheme:
    """The scheme of interval kind ``kind``."""
    if kind not in INTERVAL_SCHEMES:
        raise InputError(f"unknown interval kind {kind!r}; use one of {list(INTERVAL_SCHEMES)}")
    return INTERVAL_SCHEMES[kind]


def resample_interval(kind: str, value: float, samples, confidence: float, *, n: int,
                      rows_point: int | None = None, rows_resample: int | None = None):
    """Interval of ``value`` from the estimates ``samples`` on resamples.

    Parameters
    ----------
    kind : {"bootstrap", "subsample", "seeds"}
        How the resamples were drawn: n rows with replacement, subsets of rows without
        replacement, or all rows with other seeds.
    value : float
        The point estimate.
    samples : sequence of float
        The resampled estimates (at least 2).
    confidence : float
        Nominal coverage in (0, 1).
    n : int
        Rows of the data.
    rows_point, rows_resample : int, optional
        Rows the estimator actually used for the point estimate and for one subset (an
        estimator that subsamples internally uses fewer than it was given); default n and
        n // 2.

    Returns
    -------
    (low, high, info)
        ``info`` holds ``ci_method``, ``ci_center`` (the bias-corrected value),
        ``ci_bias`` (the bias estimate, None for seeds), ``ci_sd`` (the sampling sd at the
        point estimate's rows) and ``ci_bias_se`` (the standard error of the bias estimate).
    """
    if kind not in ("bootstrap", "subsample", "seeds"):
        raise InputError(f"unknown interval kind {kind!r}")
    return INTERVAL_SCHEMES[kind].summarize(value, samples, confidence, n=n, rows_point=rows_point,
                            rows_resample=rows_resample)


def bias_dominates(info: dict) -> bool:
    """Whether the estimated bias exceeds the sampling spread (``BIAS_DOMINATES`` sds)."""
    bias, sd = info.get("ci_bias"), info.get("ci_sd")
    return bias is not None and sd is not None and abs(bias) > BIAS_DOMINATES * sd


def bias_flag(info: dict, n: int, quantity: str = "mutual_information") -> str:
    """The flag of an interval whose bias dominates its spread."""
    what = "MI" if quantity == "mutual_information" else "entropy"
    return (f"interval of the estimator's value, not of the true {what}: the resamples put this "
            f"estimator's bias near {info['ci_bias']:+.4f} nats, more than its sampling sd "
            f"({info['ci_sd']:.4f}); the interval runs from the bias-corrected value "
            f"{info['ci_center']:.4f} to the estimate, and the bias correction is itself a "
            f"first-order estimate at n={n}")


def null_summary(values, observed: float) -> dict:
    """Mean, sd, 95% quantile and permutation p-value ``(1 + #{null >= observed}) / (1 + P)``
    of the values under shuffled pairs."""
    arr = np.asarray(values, dtype=float)
    p = (1 + int((arr >= observed).sum())) / (1 + len(arr))
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "q95": float(np.quantile(arr, 0.95)), "values": [float(v) for v in arr],
            "p_value": float(p)}


def independence_flag(null: dict, what: str = "the value under shuffled pairs") -> str:
    """The flag of a value that a permutation null cannot tell from independence."""
    return (f"not distinguishable from independence: {what} averages {null['mean']:.4f} "
            f"(95% quantile {null['q95']:.4f}, sd {null['std']:.4f}); permutation "
            f"p = {null['p_value']:.3f}, so the estimate is within what independent data give")


def shuffles(seed: int, n: int, count: int, device) -> list:
    """``count`` permutations of ``n`` rows, the same for every estimator with this seed."""
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) + PERMUTATION_SEED_OFFSET)
    return [torch.randperm(n, generator=g).to(device) for _ in range(count)]


class PermutationNull:
    """The estimate under shuffled pairs: :meth:`run` reruns the estimator on ``(x, y[p])``
    for ``count`` shuffles ``p`` (through ``estimator._null_values``, which estimators that
    reuse work across shuffles override) and summarises them with :func:`null_summary`."""

    def run(self, estimator, run, tensors, value: float, device, count: int) -> dict:
        x, y = tensors
        perms = shuffles(estimator.seed, int(y.shape[0]), count, device)
        return null_summary(estimator._null_values(run, x, y, perms), value)


class HsicNull:
    """HSIC permutation test of two Gram matrices of the same rows (Gretton et al. 2008).

    ``a`` and ``b`` (m, m) are kernel (or normalized Gram) matrices; the statistic is
    ``sum(H a H o b)`` (the biased HSIC up to a constant), and each shuffle ``p`` of the
    rows of the second variable gives ``sum(H a H o b[p][:, p])``.  With characteristic
    kernels (Gaussian, delta) HSIC is 0 only under independence, so the p-value tests the
    same dependence the matrix-based Renyi MI measures, at O(m^2) per shuffle instead of an
    O(m^3) eigendecomposition.
    """

    def run(self, a, b, perms) -> dict:
        """:func:`null_summary` of the shuffled statistics plus ``hsic`` (the observed one)."""
        ac = a - a.mean(dim=0, keepdim=True) - a.mean(dim=1, keepdim=True) + a.mean()
        observed = float((ac * b).sum())
        values = [float((ac * b[p][:, p]).sum()) for p in perms]
        out = null_summary(values, observed)
        out["hsic"] = observed
        return out


def hsic_null(a, b, perms) -> dict:
    """:meth:`HsicNull.run`: the HSIC permutation test of Gram matrices ``a`` and ``b``."""
    return HsicNull().run(a, b, perms)


def wilks_reach(df: float, n: int, sds: float = 4.0) -> float:
    """The largest MI (nats) that independence plausibly gives a plug-in or maximum-
    likelihood estimate with ``df`` free parameters: Wilks' theorem (the G-test) makes
    ``2n I`` about chi-square with df degrees of freedom, so its mean plus ``sds`` sds is
    ``(df + sds sqrt(2 df)) / (2n)``.  A value above it needs no permutation null."""
    df = max(1.0, float(df))
    return (df + sds * math.sqrt(2.0 * df)) / (2.0 * n)
