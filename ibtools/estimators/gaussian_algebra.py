"""The linear algebra behind the Gaussian estimator: covariances (of all rows, and of
every class in one pass), log-determinants with a ridge and a singularity check, the
per-class log-determinants (Sylvester's identity for classes with no more rows than
dimensions), and the finite-sample bias of a log-determinant (Misra, Singh & Demchuk 2005).

Kept apart from :mod:`ibtools.estimators.gaussian` (the estimator: settings, flags, the MI
and entropy forms), which imports everything here; the names stay importable from there.
"""

from __future__ import annotations

import math

import torch

from ibtools.estimators.memory import chunk_rows

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
