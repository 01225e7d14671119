"""Per-coordinate marginal transforms applied before an estimate.

``"standardize"`` rescales each column to zero mean and unit variance (kNN and kernel
estimators then weigh every coordinate alike).  ``"copula"`` maps each column through its
ranks to a standard normal (the empirical copula, with Gaussian marginals): every strictly
monotone per-coordinate map (tanh, x**3, IBNorm's compression) then leaves the estimate
unchanged, because ranks are invariant under such maps.  Mutual information itself is
invariant under them, so neither transform changes the quantity being estimated; they only
change the estimator's finite-sample behaviour.
"""

from __future__ import annotations

import torch

from ibtools.errors import InputError

TRANSFORMS = (None, "standardize", "copula")


def standardize(t: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance per column; constant columns become zeros."""
    mean = t.mean(dim=0, keepdim=True)
    std = t.std(dim=0, unbiased=False, keepdim=True)
    return (t - mean) / torch.where(std > 0, std, torch.ones_like(std))


def copula(t: torch.Tensor) -> torch.Tensor:
    """Rank-based normal scores Phi^{-1}(rank / (n + 1)) per column.

    Ties get their average rank, so a constant column maps to zeros and duplicated rows stay
    duplicated.
    """
    n = t.shape[0]
    work = t.to(torch.float64)
    order = torch.argsort(work, dim=0, stable=True)
    sorted_vals = torch.gather(work, 0, order)
    ranks_sorted = torch.arange(1, n + 1, dtype=torch.float64, device=t.device)
    ranks_sorted = ranks_sorted.unsqueeze(1).expand_as(work).clone()
    # average ranks over runs of ties, column by column (vectorised via segment means)
    new_run = torch.ones_like(sorted_vals, dtype=torch.bool)
    new_run[1:] = sorted_vals[1:] != sorted_vals[:-1]
    run_id = torch.cumsum(new_run.to(torch.int64), dim=0) - 1  # (n, d)
    d = work.shape[1]
    offset = torch.arange(d, device=t.device) * n
    flat_id = (run_id + offset).reshape(-1)
    sums = torch.zeros(n * d, dtype=torch.float64, device=t.device).index_add_(
        0, flat_id, ranks_sorted.reshape(-1))
    counts = torch.zeros(n * d, dtype=torch.float64, device=t.device).index_add_(
        0, flat_id, torch.ones_like(flat_id, dtype=torch.float64))
    avg = (sums[flat_id] / counts[flat_id]).reshape(n, d)
    ranks = torch.empty_like(work)
    ranks.scatter_(0, order, avg)
    u = ranks / (n + 1)
    z = torch.special.ndtri(u)
    return z.to(t.dtype)


def apply_transform(t: torch.Tensor, name) -> torch.Tensor:
    if name is None:
        return t
    if name == "standardize":
        return standardize(t)
    if name == "copula":
        return copula(t)
    raise InputError(f"transform={name!r} is not accepted; use one of {list(TRANSFORMS)}")
