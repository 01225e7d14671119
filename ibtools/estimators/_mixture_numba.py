"""The row-wise half of the mixture estimator's Monte Carlo, fused and compiled with numba.

:class:`~ibtools.estimators.mixture_sampling.MixtureExponents` gets a block of antithetic
pairs' exponents against every centre from one matmul.  In eager torch the log-sum-exp of a
row then takes four passes over the block (max, shift and clamp, exponential, sum), and the
quadratic control variate a fifth and a top-k.  Here :func:`pair_rows` takes the two rows of
a pair together: one read finds both maxima and the k largest half-sums (a small buffer per
pair), a second sums ``2^((x - max) log2 e)`` with KDE's vectorisable
:func:`~ibtools.estimators._kde_numba.exp2f`.  It runs in parallel over pairs.

Optional, as KDE's fused pass: used when numba is installed, on CPU, for float32 work.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ibtools.estimators._kde_numba import exp2f

#: Columns whose float32 partial sum is taken before it is added in float64.
TILE = 1024
#: Clamp of the base-2 exponent after the shift (as KDE's: float32 denormals are slow).
MIN_EXPONENT = -115.0
_LOG2E = 1.4426950408889634


@njit(inline="always", fastmath=True, cache=True)
def _shifted_sum(row, top):
    """``sum_j 2^max((row[j] - top) log2 e, MIN_EXPONENT)`` in float32 (one vector loop)."""
    lo = np.float32(MIN_EXPONENT)
    scale = np.float32(_LOG2E)
    part = np.float32(0.0)
    for j in range(row.size):
        part += exp2f(max(lo, (row[j] - top) * scale))
    return part


@njit(inline="always", cache=True)
def _lowest(vals):
    low = 0
    for m in range(1, vals.size):
        if vals[m] < vals[low]:
            low = m
    return low


@njit(parallel=True, fastmath=True, cache=True)
def pair_rows(rows, b, out, idx, top):
    """For float32 ``rows`` (2b, n), rows ``i`` and ``b + i`` a pair: ``out[i] = ln sum_j
    exp(rows[i, j])`` (float64) for all 2b rows, and for each pair ``i < b`` the ``k =
    idx.shape[1]`` columns with the largest ``rows[i, j] + rows[b + i, j]`` (in no order)
    into ``idx[i]`` (int64) and those sums into ``top[i]`` (float32).  Per pair one pass
    finds both maxima and the k largest sums, a second the two shifted sums (float32 within
    tiles of ``TILE`` columns)."""
    n = rows.shape[1]
    k = idx.shape[1]
    for i in prange(b):
        plus = rows[i]
        minus = rows[b + i]
        ids = idx[i]
        vals = top[i]
        top_p = plus[0]
        top_m = minus[0]
        for j in range(k):
            vals[j] = plus[j] + minus[j]
            ids[j] = j
            top_p = max(top_p, plus[j])
            top_m = max(top_m, minus[j])
        low = _lowest(vals)
        floor = vals[low]
        for j in range(k, n):
            p = plus[j]
            q = minus[j]
            top_p = max(top_p, p)
            top_m = max(top_m, q)
            s = p + q
            if s > floor:
                vals[low] = s
                ids[low] = j
                low = _lowest(vals)
                floor = vals[low]
        total_p = 0.0
        total_m = 0.0
        for j0 in range(0, n, TILE):
            j1 = min(n, j0 + TILE)
            total_p += _shifted_sum(plus[j0:j1], top_p)
            total_m += _shifted_sum(minus[j0:j1], top_m)
        out[i] = np.log(total_p) + top_p
        out[b + i] = np.log(total_m) + top_m
