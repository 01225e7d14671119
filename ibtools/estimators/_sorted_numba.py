"""One-dimensional max-norm radius counts compiled with numba: two binary searches per point
over the sorted values, rows in parallel.

Used by :mod:`ibtools.estimators.sorted_counts` on CPU when numba is installed
(``pip install "ibtools[fast]"``); the torch path gives identical counts.  Each search runs
on the exact predicate the other backends evaluate, ``fl(s_j - v_i)`` against ``r_i``, which
is non-decreasing in j over the sorted values s because rounding is monotone.  No fastmath:
a NaN radius must compare false, so it counts nothing, as on the other paths.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(inline="always", cache=True)
def _first_above(s, v, r, strict):
    """First j with ``s[j] - v >= r`` (strict) or ``> r``; len(s) when none."""
    lo, hi = 0, s.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        d = s[mid] - v
        if (d >= r) if strict else (d > r):
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(inline="always", cache=True)
def _first_inside(s, v, r, strict):
    """First j with ``s[j] - v > -r`` (strict) or ``>= -r``; len(s) when none."""
    lo, hi = 0, s.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        d = s[mid] - v
        if (d > -r) if strict else (d >= -r):
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(parallel=True, cache=True)
def count_sorted(s, v, r, strict, chunks):
    """``#{j != i : |v_j - v_i| < r_i}`` (``<=`` unless ``strict``); ``s`` is ``v`` sorted.
    Rows are dealt round-robin to ``chunks`` parallel tasks."""
    n = v.shape[0]
    out = np.empty(n, dtype=np.int64)
    for c in prange(chunks):
        for i in range(c, n, chunks):
            ri = r[i]
            inside_self = 1 if ((ri > 0) if strict else (ri >= 0)) else 0
            width = _first_above(s, v[i], ri, strict) - _first_inside(s, v[i], ri, strict)
            out[i] = max(width - inside_self, 0)
    return out
