"""Closed-form Gaussian estimates of entropy and mutual information from covariances.

A fast baseline: fit a Gaussian to the rows and use its log-determinants, each corrected
for its finite-sample bias (Misra, Singh & Demchuk 2005).  With ``transform="copula"``
each column is first mapped to normal scores, which gives the Gaussian-copula MI (Ince et
al. 2017).  What it measures is the MI of the Gaussian with the data's second moments,
not the MI of the data in general.
"""

from __future__ import annotations


import torch

from ibtools.errors import InputTypeError
from ibtools.estimators.base import Estimator, check_positive
from ibtools.estimators.intervals import wilks_reach

from ibtools.estimators.gaussian_algebra import (  # noqa: F401  (importable from here too)
    HIGH_DIM_FRACTION,
    LOG_2PI_E,
    RIDGE_ATOL,
    RIDGE_RTOL,
    SINGULAR_RTOL,
    _mattered,
    class_covariances,
    class_logdets,
    covariance,
    effective_dim,
    gaussian_entropy,
    logdet,
    logdet_bias,
)


class Gaussian(Estimator):
    """Mutual information and entropy of the Gaussian with the data's covariance.

    Continuous X, Y: I = 1/2 ln(det S_xx det S_yy / det S).  Entropy:
    h = 1/2 ln((2 pi e)^d det S).  Discrete Y (class ids): the class-conditional form
    I = h(T) - sum_y p(y) h(T | Y=y), each h Gaussian with that class's covariance.
    Each ``ln det S`` is corrected for its finite-sample bias (see ``bias_correction``).

    This is the Gaussian (second-moment) MI: the MI the data would have if they were
    jointly Gaussian with the same covariance.  It equals the true MI for jointly Gaussian
    data, and is a lower bound on it only in Gaussian-copula-like cases (see Notes); for
    heavy-tailed or non-linearly dependent data (a Student-t pair, spirals) it can read far
    below the truth, even 0.

    Parameters
    ----------
    ridge : float, default 1e-6
        Added to the diagonal as ``ridge * trace(S) / d``, so singular covariances (constant
        or duplicate columns, d near n) give a finite value; ``details["ridge_mattered"]``
        and a flag say when it changed the value.  For MI the covariance is first scaled to
        a correlation matrix (MI is scale-free), so the ridge means the same for every
        column.  0 disables it (singular data then raises).
    bias_correction : bool, default True
        Subtract from each log-determinant its expected finite-sample bias for Gaussian
        data, ``d ln(2/(n-1)) + sum_{i=1..d} psi((n-i)/2)`` with d that determinant's own
        dimension and n its own rows (each class its own n_c), which makes every log-det,
        and so the MI and the entropy, unbiased for Gaussian data.  The plug-in MI reads
        high by about ``d_x d_y / (2n)`` nats (0.125 at 50 + 50 dimensions and n = 10 000);
        ``False`` returns that plug-in value.  ``details["bias_correction"]`` is the shift
        applied (nats).  Covariances with no more rows than dimensions are left uncorrected
        (they are singular and flagged).
    transform : None, "standardize" or "copula"
        ``"copula"`` maps each column to normal scores first: the Gaussian-copula MI.
    **common
        seed, device, dtype, memory_budget, ci ("bootstrap"), n_resamples, confidence,
        n_permutations (see :class:`~ibtools.estimators.base.Estimator`).

    Notes
    -----
    Assumptions and bias.  Exact (up to sampling) for jointly Gaussian data.  It sees only
    second-order (linear) dependence: uncorrelated but dependent variables give 0, and for
    non-Gaussian data it is no bound in general.  With ``transform="copula"`` it is exact
    when the copula is Gaussian, invariant under strictly monotone maps of each column, and
    for one-dimensional X and Y a lower bound on the true MI under any copula (the normal
    scores have Gaussian marginals and the Gaussian maximises the joint entropy; Ince et al.
    2017) -- in several dimensions that bound needs each side to be jointly Gaussian after
    the marginal transform.  The entropy is an upper bound on h(X) (the Gaussian has the
    largest entropy for its covariance).  For discrete Y with Gaussian classes, h(T) of the
    mixture is over-estimated by the Gaussian with the mixture's covariance, so I(T;Y) is
    biased high.  Finite samples: ln det of a d-dim sample covariance is biased low by about
    d(d+1)/(2n), so the plug-in MI is biased high by about d_x d_y / (2n) and the entropy
    low; the default correction removes this in expectation (Misra et al. 2005, exact for
    Gaussian rows), and ``details["expected_bias"]`` is the bias left (0 when corrected).
    The correction does not shrink the spread, which grows with d/n: dimensions above a
    tenth of n are flagged.
    Deterministic; the interval is a bootstrap.  Covariances are accumulated in float64
    over row blocks; cost O(n d^2 + d^3).

    References
    ----------
    Cover & Thomas, "Elements of Information Theory", 2nd ed., ch. 8-9 (2006).
    Ince et al., "A statistical framework for neuroimaging data analysis based on mutual
    information estimated via a Gaussian copula", Human Brain Mapping 38 (2017).
    Misra, Singh & Demchuk, "Estimation of the entropy of a multivariate normal
    distribution", J. Multivariate Analysis 92 (2005).
    """

    name = "gaussian"
    limitations = (
        "Closed form under a Gaussian assumption: a lower bound under the Gaussian copula, "
        "blind to non-linear dependence.")
    defaults = {"ridge": 1e-6, "bias_correction": True}
    interval_kinds = ("bootstrap",)
    supports_transform = True
    auto_permutations = 30  # covariances are cheap to refit: base Estimator's automatic null

    def _null_needed(self, result) -> bool:
        """Whether independence could give this value (Wilks): ``2n I`` is about chi-square
        with ``d_x d_y`` degrees of freedom for two continuous variables and
        ``(K - 1)(d + d(d + 1)/2)`` for K classes (means and covariances); above its mean
        plus four sds the 30 refits of the automatic null are skipped.  They are skipped too
        when a class has no more rows than dimensions: its covariance is singular, the value
        is already flagged as set by the ridge, and each refit would cost one factorisation
        per class (token ids give hundreds of classes; the refits then took nearly all of an
        analysis's time)."""
        counts = result.details.get("class_counts")
        dx, dy = result.dims
        if counts is None:
            df = dx * dy
        else:
            d = dy if result.details.get("swapped_arguments") else dx
            if any(0 < k <= d for k in counts):
                return False
            df = (len(counts) - 1) * (d + d * (d + 1) / 2)
        return result.value <= wilks_reach(df, result.n)

    def _check_settings(self) -> None:
        check_positive(self.ridge, "ridge", allow_zero=True)
        if not isinstance(self.bias_correction, bool):
            raise InputTypeError(f"bias_correction must be True or False; got "
                                 f"{self.bias_correction!r}")

    def _min_samples(self) -> int:
        return 3

    # -- shared pieces --------------------------------------------------------------------

    def _biases(self, dims, n: int):
        """The log-det biases to subtract for these dimensions (:func:`logdet_bias`), or
        ``None`` when the correction is off or some covariance is singular (n <= d)."""
        if not self.bias_correction:
            return None
        biases = [logdet_bias(d, n) for d in dims]
        return None if None in biases else biases

    def _dimension_flag(self, dim: int, n: int, what: str) -> list:
        if dim >= n:
            return [f"{what} has {dim} dimensions but only n={n} rows: the sample covariance is "
                    f"singular and the value is set by the ridge, not the data"]
        if dim > HIGH_DIM_FRACTION * n:
            size = dim * (dim + 1) / (2 * n)
            bias = (f"the log-determinant's finite-sample bias (about {size:.3f} nats) is "
                    f"corrected for Gaussian data, but its sampling spread is large"
                    if self.bias_correction else
                    f"the log-determinant of the sample covariance is biased low by about "
                    f"{size:.3f} nats")
            return [f"{what} has {dim} dimensions for n={n} rows: {bias}; use more rows or "
                    f"fewer dimensions"]
        return []

    def _ridge_flag(self, lam: float, value: float, raw) -> str:
        change = ("without it the covariance is singular (the value would be infinite)"
                  if raw is None else f"it moved the value by {value - raw:+.4g} nats")
        return (f"the covariance is singular or nearly so (constant or duplicate columns, or few "
                f"rows): a ridge of {lam:.3g} on the diagonal keeps the value finite; {change}")

    # -- estimates ------------------------------------------------------------------------

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        if y_discrete:
            return self._mi_classes(x, y)
        n, dx, dy = x.shape[0], x.shape[1], y.shape[1]
        budget = self._budget(x.device)
        s = covariance([x, y], budget)
        std = torch.sqrt(torch.diagonal(s))
        constant = std <= 0
        inv = torch.where(constant, torch.ones_like(std), 1.0 / std)
        r = s * inv[:, None] * inv[None, :]  # correlation matrix; constant columns are 0
        trace = float(torch.diagonal(r).sum())
        details = {"dims": [dx, dy], "constant_columns": int(constant.sum())}
        flags = self._dimension_flag(dx + dy, n, "the joint (x, y)")
        if trace == 0:  # every column constant: no dependence to measure
            details.update(ridge_value=0.0, ridge_mattered=False, bias_correction=0.0,
                           expected_bias=0.0)
            return 0.0, details, flags + ["every column is constant; the value is 0 by definition"]
        lam = float(self.ridge) * trace / (dx + dy)
        ld_x, raw_x = logdet(r[:dx, :dx], lam)
        ld_y, raw_y = logdet(r[dx:, dx:], lam)
        ld_j, raw_j = logdet(r, lam)
        value = 0.5 * float(ld_x + ld_y - ld_j)
        raw = None if None in (raw_x, raw_y, raw_j) else 0.5 * float(raw_x + raw_y - raw_j)
        mattered = _mattered(value, raw)
        # the correlation scaling cancels between the three terms, so each log-det is
        # corrected as that of a covariance of its own (effective) dimension
        biases = None if dx + dy >= n else self._biases(
            [effective_dim(r[:dx, :dx], raw_x), effective_dim(r[dx:, dx:], raw_y),
             effective_dim(r, raw_j)], n)
        shift = 0.0 if biases is None else -0.5 * (biases[0] + biases[1] - biases[2])
        details.update(logdet_x=float(ld_x), logdet_y=float(ld_y), logdet_joint=float(ld_j),
                       ridge_value=lam, ridge_mattered=mattered, bias_correction=shift,
                       expected_bias=0.0 if biases is not None else dx * dy / (2.0 * n))
        if mattered:
            flags.append(self._ridge_flag(lam, value, raw))
        return value + shift, details, flags

    def _class_logdets(self, x, y, inv, lam, budget):
        """The classes present (ids), their rows, and per class the ln det of its covariance
        + ridge and the same without the ridge (or None when some class is singular).  The
        rows are sorted by class once and every class's log-dets come from
        :func:`class_logdets` (a few batched calls for all classes)."""
        counts = torch.bincount(y)
        present = (counts > 0).nonzero().squeeze(1)
        order = torch.argsort(y, stable=True)
        sizes = counts[present].tolist()
        scaled = x[order].to(torch.float64) * inv
        ld, raw = class_logdets(scaled, sizes, lam, budget)
        return present.tolist(), sizes, ld, raw, counts

    def _mi_classes(self, x, y):
        n, d = x.shape
        budget = self._budget(x.device)
        s = covariance([x], budget)
        std = torch.sqrt(torch.diagonal(s))
        # scale-free: every entropy below shifts by the same ln|det| of this scaling
        inv = torch.where(std > 0, 1.0 / std, torch.ones_like(std))
        s = s * inv[:, None] * inv[None, :]
        trace = float(torch.diagonal(s).sum())
        lam = float(self.ridge) * (trace / d if trace > 0 else 1.0)
        ld_total, raw_total = logdet(s, lam)
        ids, sizes, ld, raw_c, counts = self._class_logdets(x, y, inv, lam, budget)
        weights = torch.as_tensor(sizes, dtype=torch.float64, device=ld.device) / n
        cond = float((weights * ld).sum())
        cond_raw = None if raw_total is None or raw_c is None else float((weights * raw_c).sum())
        value = gaussian_entropy(d, ld_total) - gaussian_entropy(d, cond)
        raw = None if cond_raw is None else 0.5 * float(raw_total) - 0.5 * cond_raw
        mattered = _mattered(value, raw)
        # each entropy corrected with its own rows; classes with n_c <= d are singular
        # (flagged below) and keep their plug-in value
        dim = effective_dim(s, raw_total)
        b_total = self._biases([dim], n)
        by_size = {k: (self._biases([dim], k) or [0.0])[0] for k in set(sizes)}
        b_class = torch.tensor([by_size[k] for k in sizes], dtype=torch.float64,
                               device=ld.device)
        b_total = 0.0 if b_total is None else b_total[0]
        h_total = gaussian_entropy(d, float(ld_total) - b_total)
        h_class = 0.5 * (d * LOG_2PI_E + (ld - b_class))
        per_class = dict(zip(ids, h_class.tolist()))
        shift = -0.5 * b_total + 0.5 * float((weights * b_class).sum())
        small = [(c, k) for c, k in zip(ids, sizes) if k <= d]
        flags = self._dimension_flag(d, n, "x")
        if small:
            listed = ", ".join(f"class {c}: {k} rows" for c, k in small[:5])
            more = f" and {len(small) - 5} more" if len(small) > 5 else ""
            flags.append(f"{len(small)} class(es) have no more rows than the {d} dimensions "
                         f"({listed}{more}): their covariance is singular, the ridge sets their "
                         f"entropy and the value is unreliable")
        if mattered:
            flags.append(self._ridge_flag(lam, value, raw))
        value += shift
        corrected = self.bias_correction and not small and n > d
        details = {"entropy": h_total, "conditional_entropy": h_total - value,
                   "class_entropies": per_class, "class_counts": counts.tolist(),
                   "ridge_value": lam, "ridge_mattered": mattered, "bias_correction": shift,
                   "expected_bias": 0.0 if corrected else
                   (len(ids) - 1) * d * (d + 1) / (4.0 * n)}
        return value, details, flags

    def _entropy(self, x, discrete, rng):
        n, d = x.shape
        s = covariance([x], self._budget(x.device))
        trace = float(torch.diagonal(s).sum())
        lam = float(self.ridge) * (trace / d if trace > 0 else 1.0)
        ld, raw = logdet(s, lam)
        value = gaussian_entropy(d, ld)
        raw_value = None if raw is None else gaussian_entropy(d, raw)
        mattered = _mattered(value, raw_value)
        flags = self._dimension_flag(d, n, "x")
        if mattered:
            flags.append(self._ridge_flag(lam, value, raw_value))
        biases = self._biases([effective_dim(s, raw)], n)
        shift = 0.0 if biases is None else -0.5 * biases[0]
        details = {"logdet": float(ld), "ridge_value": lam, "ridge_mattered": mattered,
                   "bias_correction": shift,
                   "expected_bias": 0.0 if biases is not None else -d * (d + 1) / (4.0 * n)}
        return value + shift, details, flags
