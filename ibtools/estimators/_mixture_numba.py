"""The row-wise half of the mixture estimator's Monte Carlo, fused and compiled with numba.

:class:`~ibtools.estimators.mixture_sampling.MixtureExponents` gets a block of draws'
exponents against every centre from one matmul.  In eager torch the log-sum-exp of a row
then takes four passes over the block (max, shift and clamp, exponential, sum), and the
quadratic control variate a fifth and a top-k.  Here :func:`row_logsumexp` does the first in
two reads of a row (its maximum, then the sum of ``2^((x - max) log2 e)`` with KDE's
vectorisable :func:`~ibtools.estimators._kde_numba.exp2f`), and :func:`pair_top` finds the k
largest half-sums of an antithetic pair's two rows in one read, keeping a small buffer per
row.  Both run in parallel over rows.

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
def _row_max(row):
    top = row[0]
    for j in range(1, row.size):
        top = max(top, row[j])
    return top


@njit(inline="always", fastmath=True, cache=True)
def _shifted_sum(row, top):
    """``sum_j 2^max((row[j] - top) log2 e, MIN_EXPONENT)`` in float32 (one vector loop)."""
    lo = np.float32(MIN_EXPONENT)
    scale = np.float32(_LOG2E)
    part = np.float32(0.0)
    for j in range(row.size):
        part += exp2f(max(lo, (row[j] - top) * scale))
    return part


@njit(parallel=True, fastmath=True, cache=True)
def row_logsumexp(rows, out):
    """``out[i] = ln sum_j exp(rows[i, j])`` (float64) for float32 ``rows`` (b, n): the
    row's maximum, then its shifted sum, float32 within tiles of ``TILE`` columns."""
    b, n = rows.shape
    for i in prange(b):
        row = rows[i]
        top = _row_max(row)
        total = 0.0
        for j0 in range(0, n, TILE):
            total += _shifted_sum(row[j0:min(n, j0 + TILE)], top)
        out[i] = np.log(total) + top


@njit(parallel=True, cache=True)
def pair_top(rows, b, idx, top):
    """For each pair ``i < b`` of rows ``i`` and ``b + i`` of float32 ``rows`` (2b, n), the
    ``k = idx.shape[1]`` columns with the largest ``rows[i, j] + rows[b + i, j]`` (in no
    order) into ``idx[i]`` (int64) and those sums into ``top[i]`` (float32)."""
    n = rows.shape[1]
    k = idx.shape[1]
    for i in prange(b):
        plus = rows[i]
        minus = rows[b + i]
        ids = idx[i]
        vals = top[i]
        for j in range(k):
            vals[j] = plus[j] + minus[j]
            ids[j] = j
        low = 0
        for j in range(1, k):
            if vals[j] < vals[low]:
                low = j
        floor = vals[low]
        for j in range(k, n):
            s = plus[j] + minus[j]
            if s > floor:
                vals[low] = s
                ids[low] = j
                low = 0
                for m in range(1, k):
                    if vals[m] < vals[low]:
                        low = m
                floor = vals[low]
