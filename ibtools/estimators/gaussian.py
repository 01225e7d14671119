"""Closed-form Gaussian estimates of entropy and mutual information from covariances.

A fast baseline: fit a Gaussian to the rows and use its log-determinants, each corrected
for its finite-sample bias (Misra, Singh & Demchuk 2005).  With ``transform="copula"``
each column is first mapped to normal scores, which gives the Gaussian-copula MI (Ince et
al. 2017).  What it measures is the MI of the Gaussian with the data's second moments,
not the MI of the data in general.
"""

from __future__ import annotations

import math

import torch

from ibtools.errors import InputTypeError
from ibtools.estimators.base import Estimator, check_positive, chunk_rows
from ibtools.estimators.intervals import wilks_reach

LOG_2PI_E = math.log(2 * math.pi * math.e)

#: The ridge "mattered" when it moves the value by more than this (absolute + relative).
RIDGE_ATOL, RIDGE_RTOL = 1e-4, 1e-3

#: A squared Cholesky pivot below this fraction of the largest variance means "singular".
SINGULAR_RTOL = 1e-12

#: Flag a joint dimension D above this fraction of n (the log-det bias is ~D(D+1)/(2n)).
HIGH_DIM_FRACTION = 0.1


def covariance(blocks, budget: int) -> torch.Tensor:
    """Unbiased covariance in float64 of the columns of ``blocks`` (tensors (n, d_i), side by
    side), accumulated over row blocks so that neither a float64 copy nor a concatenation
    of all rows is made."""
    n = blocks[0].shape[0]
    d = sum(b.shape[1] for b in blocks)
    rows = chunk_rows(n, d * 24, budget)

    def chunk(r0):
        return torch.cat([b[r0:r0 + rows].to(torch.float64) for b in blocks], dim=1)

    mean = torch.zeros(d, dtype=torch.float64, device=blocks[0].device)
    for r0 in range(0, n, rows):
        mean += chunk(r0).sum(dim=0)
    mean /= n
    cov = torch.zeros((d, d), dtype=torch.float64, device=blocks[0].device)
    for r0 in range(0, n, rows):
        c = chunk(r0) - mean
        cov += c.T @ c
    return cov / max(n - 1, 1)


#: Classes with at most this many rows are zero-padded to a power of two and reduced by
#: batched matmuls, many classes per call; larger classes get one matmul each (at most
#: n / _PACKED_MAX_ROWS of them, each with enough rows to amortise the call).
_PACKED_MAX_ROWS = 256


def _centred_by_class(rows: torch.Tensor, sizes_t: torch.Tensor):
    """Rows minus their class mean, with one zero row appended (the padding row), and the
    first row of each class.  All class means come from one ``index_add_``."""
    d = rows.shape[1]
    seg = torch.repeat_interleave(torch.arange(len(sizes_t), device=rows.device), sizes_t)
    means = torch.zeros(len(sizes_t), d, dtype=rows.dtype, device=rows.device)
    means.index_add_(0, seg, rows)
    means /= sizes_t[:, None].to(rows.dtype)
    centred = torch.cat([rows - means[seg], rows.new_zeros(1, d)])
    return centred, torch.cumsum(sizes_t, 0) - sizes_t


def _padded_blocks(centred, starts, sizes_t, members, width: int, per_class: int, budget: int):
    """Yield ``(classes, blocks)``: the rows of the classes in ``members`` (ids into
    ``sizes_t``, each with at most ``width`` rows) gathered as (B, width, d), short classes
    filled with the zero row, in batches sized to ``budget`` (``per_class`` bytes each)."""
    n = centred.shape[0] - 1
    dev = centred.device
    cls = torch.as_tensor(members, dtype=torch.long, device=dev)
    offs = torch.arange(width, device=dev)
    index = torch.where(offs < sizes_t[cls, None], starts[cls, None] + offs, n)
    batch = max(1, chunk_rows(len(members), per_class, budget))
    for b0 in range(0, len(members), batch):
        yield cls[b0:b0 + batch], centred[index[b0:b0 + batch]]


def _by_width(sizes, members, cap=None) -> dict:
    """Class ids of ``members`` grouped by their row count rounded up to a power of two
    (at most ``cap``)."""
    groups: dict[int, list[int]] = {}
    for c in members:
        p = 1 << max(0, (sizes[c] - 1).bit_length())
        groups.setdefault(p if cap is None else min(p, cap), []).append(c)
    return groups


def _scatter_products(centred, starts, sizes, sizes_t, members, out, budget):
    """``out[i] = X_c^T X_c`` (unnormalised) for class ``c = members[i]``: one matmul per class
    above ``_PACKED_MAX_ROWS`` rows, batched matmuls over zero-padded blocks for the rest (a
    zero row adds nothing to ``X^T X``), grouped by padded size."""
    d = centred.shape[1]
    where = {c: i for i, c in enumerate(members)}
    small = []
    for c in members:
        if sizes[c] > _PACKED_MAX_ROWS:
            s0 = int(starts[c])
            block = centred[s0:s0 + sizes[c]]
            out[where[c]] = block.T @ block
        else:
            small.append(c)
    for p, group in _by_width(sizes, small).items():
        for cls, g in _padded_blocks(centred, starts, sizes_t, group, p, (p + d) * d * 8,
                                     budget):
            out[[where[c] for c in cls.tolist()]] = g.transpose(1, 2) @ g


def class_covariances(rows: torch.Tensor, sizes, budget: int) -> torch.Tensor:
    """Unbiased covariances, shape (C, d, d), of consecutive segments of ``rows``.

    ``rows`` (float64, sorted by class) holds C classes one after another, class c with
    ``sizes[c]`` rows.  All class means come from one ``index_add_`` and one gather centres
    every row; the cross-products of small classes come from batched matmuls over
    zero-padded segments (a zero row adds nothing to ``X^T X``), grouped by padded size, so
    the cost is a few calls however many classes there are rather than one Python step per
    class.  A class of one row has a zero covariance (divided by max(n_c - 1, 1)), as before.
    """
    d = rows.shape[1]
    sizes = [int(k) for k in sizes]
    sizes_t = torch.as_tensor(sizes, dtype=torch.long, device=rows.device)
    centred, starts = _centred_by_class(rows, sizes_t)
    covs = rows.new_empty(len(sizes), d, d)
    _scatter_products(centred, starts, sizes, sizes_t, list(range(len(sizes))), covs, budget)
    covs /= (sizes_t - 1).clamp_min(1).to(rows.dtype)[:, None, None]
    return covs


def _singular_error(ridge: float) -> ValueError:
    return ValueError(f"the covariance is singular even with ridge={ridge:.3g} (constant or "
                      f"duplicate columns, or fewer rows than dimensions); set ridge > 0 "
                      f"(the default 1e-6 of the mean variance keeps it finite)")


def logdet(m: torch.Tensor, ridge: float, raw: bool = True):
    """``(ln det(m + ridge I), ln det(m) or None)`` by Cholesky; ``m`` may be batched.

    The second is ``None`` when ``m`` is singular to working precision: Cholesky fails, or
    a squared pivot falls below ``SINGULAR_RTOL`` times the largest diagonal entry (rounding
    can let an exactly singular matrix, such as a duplicated column, pass Cholesky with a
    pivot of 1e-16, whose log would be meaningless); it is also ``None``, without being
    computed, when ``raw`` is False (the caller already knows ``m`` is singular)."""
    eye = torch.eye(m.shape[-1], dtype=m.dtype, device=m.device)
    scale = torch.diagonal(m, dim1=-2, dim2=-1).amax(dim=-1).clamp_min(torch.finfo(m.dtype).tiny)
    out = []
    for shift in (ridge, 0.0) if raw else (ridge,):
        chol, info = torch.linalg.cholesky_ex(m + shift * eye)
        diag = torch.diagonal(chol, dim1=-2, dim2=-1)
        ok = bool((info == 0).all()) and bool(
            (diag.amin(dim=-1) ** 2 > SINGULAR_RTOL * (scale + shift)).all())
        out.append(2.0 * torch.log(diag).sum(dim=-1) if ok else None)
    if out[0] is None:
        raise _singular_error(ridge)
    return out[0], out[1] if raw else None


def class_logdets(rows: torch.Tensor, sizes, ridge: float, budget: int):
    """``(ln det(S_c + ridge I) for every class, ln det S_c for every class or None)``.

    ``rows`` (float64, sorted by class) holds the classes one after another, class c with
    ``sizes[c]`` rows; ``S_c`` is its unbiased covariance (:func:`class_covariances`).  The
    second is ``None`` when some ``S_c`` is singular (a class with no more rows than
    dimensions always is), as :func:`logdet` of the stacked covariances would say.

    A class of n_c <= d rows has a covariance of rank below n_c, so its determinant needs no
    d x d matrix: with ``A`` its centred rows over ``sqrt(n_c - 1)`` (n_c x d), Sylvester's
    identity gives ``det(ridge I_d + A^T A) = ridge^(d - n_c) det(ridge I_{n_c} + A A^T)``,
    an n_c x n_c Cholesky (padded with zero rows to a power of two, which adds ``ln ridge``
    per padding row on both sides); a class of one row is ``d ln ridge`` exactly.  Token
    labels put thousands of such classes in one analysis, and a d x d factorisation each
    was most of its time.  Classes above d rows get their d x d covariances and one stacked
    Cholesky, in groups sized to ``budget``."""
    d = rows.shape[1]
    dev = rows.device
    sizes = [int(k) for k in sizes]
    sizes_t = torch.as_tensor(sizes, dtype=torch.long, device=dev)
    small = [c for c, k in enumerate(sizes) if k <= d]
    if small and not ridge > 0:
        raise _singular_error(ridge)
    centred, starts = _centred_by_class(rows, sizes_t)
    ld = rows.new_empty(len(sizes))
    log_ridge = math.log(ridge) if ridge > 0 else 0.0
    ld[[c for c in small if sizes[c] == 1]] = d * log_ridge
    gram = [c for c in small if sizes[c] > 1]
    for p, group in _by_width(sizes, gram, cap=d).items():
        eye = torch.eye(p, dtype=rows.dtype, device=dev)
        for cls, g in _padded_blocks(centred, starts, sizes_t, group, p, (p + 2 * d) * p * 8,
                                     budget):
            m = g @ g.transpose(1, 2)
            m /= (sizes_t[cls] - 1).to(rows.dtype)[:, None, None]
            chol, info = torch.linalg.cholesky_ex(m + ridge * eye)
            if bool((info != 0).any()):
                raise _singular_error(ridge)
            diag = torch.diagonal(chol, dim1=-2, dim2=-1)
            ld[cls] = 2.0 * torch.log(diag).sum(dim=-1) + (d - p) * log_ridge
    large = [c for c, k in enumerate(sizes) if k > d]
    raw = None if small else rows.new_empty(len(sizes))
    group = max(1, chunk_rows(len(large), d * d * 8 * 3, budget))
    for g0 in range(0, len(large), group):
        members = large[g0:g0 + group]
        covs = rows.new_empty(len(members), d, d)
        _scatter_products(centred, starts, sizes, sizes_t, members, covs, budget)
        covs /= (sizes_t[members] - 1).to(rows.dtype)[:, None, None]
        ld_g, raw_g = logdet(covs, ridge, raw=raw is not None)
        ld[members] = ld_g
        if raw is not None:
            if raw_g is None:
                raw = None
            else:
                raw[members] = raw_g
    return ld, raw


def logdet_bias(d: int, n: int) -> float | None:
    """Expected bias of ``ln det S`` for the unbiased (n - 1 dof) sample covariance S of n
    Gaussian rows in d dimensions, or ``None`` when ``n <= d`` (S is singular).

    ``E[ln det S] - ln det Sigma = d ln(2 / (n - 1)) + sum_{i=1..d} psi((n - i) / 2)``
    (Misra, Singh & Demchuk 2005), from ``(n - 1) S`` being Wishart with n - 1 degrees of
    freedom.  It is negative, about ``-d (d + 1) / (2 n)``; subtracting it from ``ln det S``
    makes the log-determinant, and every entropy and MI linear in log-determinants,
    unbiased for Gaussian data.
    """
    if d == 0:  # no dimension left (a constant block): nothing to correct, even at n = 1
        return 0.0
    if n <= d:
        return None
    terms = (n - torch.arange(1, d + 1, dtype=torch.float64)) / 2.0
    return d * math.log(2.0 / (n - 1)) + float(torch.special.digamma(terms).sum())


def effective_dim(m: torch.Tensor, raw) -> int:
    """Dimension a covariance block really has: its size, or, when it is singular
    (``raw`` is None: constant or duplicate columns), its numerical rank.  A duplicated
    column adds no dimension to correct for."""
    if raw is not None:
        return int(m.shape[-1])
    return int(torch.linalg.matrix_rank(m, hermitian=True, rtol=SINGULAR_RTOL))


def gaussian_entropy(d: int, log_det: float) -> float:
    """h = 1/2 ln((2 pi e)^d det S) in nats."""
    return 0.5 * (d * LOG_2PI_E + float(log_det))


def _mattered(value: float, raw) -> bool:
    return raw is None or abs(value - raw) > RIDGE_ATOL + RIDGE_RTOL * abs(value)


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
