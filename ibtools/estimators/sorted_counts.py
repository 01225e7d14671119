"""Max-norm radius counts in one dimension, in O(n log n) over the sorted values.

KSG's marginal counts for 1-D variables (the scikit-learn use case) come from here whatever
the neighbour backend: a compiled kernel (:mod:`ibtools.estimators._sorted_numba`) when numba
is installed and the values are float64 on CPU, otherwise vectorised torch searches.  Both
evaluate the same predicate, so the counts are identical.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ibtools.estimators import _jit

#: Points from which "auto" runs the compiled kernel (its first use in a fresh install
#: compiles it, then it loads from numba's cache); below, the torch searches are as fast.
SORTED_NUMBA_MIN_N = 2_000
_SORTED = _jit.Compiled("_sorted_numba")


def sorted_engine(n: int, dtype: torch.dtype, device: torch.device) -> str:
    """``"numba"`` or ``"torch"``: which code counts n one-dimensional points.  The
    environment variable ``IBTOOLS_SORTED_ENGINE`` (``auto`` | ``numba`` | ``torch``)
    overrides the choice, as ``IBTOOLS_BRUTE_ENGINE`` does for the brute-force backend."""
    return _jit.choose("IBTOOLS_SORTED_ENGINE", "torch", _SORTED,
                       eligible=device.type == "cpu" and dtype == torch.float64,
                       n=n, min_n=SORTED_NUMBA_MIN_N)


def count_sorted_1d(values: torch.Tensor, radius: torch.Tensor, strict: bool) -> torch.Tensor:
    """``#{j != i : |v_j - v_i| < r_i}`` (or ``<=``) for 1-D values, in O(n log n).

    ``fl(s_j - v_i)`` is non-decreasing in j over the sorted values s (rounding is monotone),
    so both ends of the window are searches on the exact predicate the other backends
    evaluate; comparing ``s_j`` with ``v_i +- r_i`` instead would round differently at the
    edge, exactly where the k-th neighbour sits.
    """
    v = values.reshape(-1)
    r = radius.reshape(-1).to(v.dtype)
    if sorted_engine(v.shape[0], v.dtype, v.device) == "numba":
        s = np.ascontiguousarray(torch.sort(v).values.detach().numpy())
        with _jit.kernel_call() as threads:
            out = _SORTED.module().count_sorted(s, np.ascontiguousarray(v.detach().numpy()),
                                                np.ascontiguousarray(r.detach().numpy()),
                                                bool(strict), 8 * threads)
        return torch.from_numpy(out)
    return _count_sorted_torch(v, r, strict)


def _count_sorted_torch(v: torch.Tensor, r: torch.Tensor, strict: bool) -> torch.Tensor:
    n = v.shape[0]
    s, _ = torch.sort(v)
    # Bracket each boundary with searchsorted on v +- r widened by a few ulps (outside the
    # bracket the rounded predicate cannot differ from the exact one), then binary-search
    # the exact predicate inside the bracket, usually 0-2 elements wide.
    slack = 8 * torch.finfo(v.dtype).eps * (v.abs() + r.abs()) + torch.finfo(v.dtype).tiny

    def first_index(pred, centre):
        lo = torch.searchsorted(s, centre - slack, side="left")
        hi = torch.searchsorted(s, centre + slack, side="right")
        width = int((hi - lo).max()) if n else 0
        for _ in range(max(1, math.ceil(math.log2(width + 1)) + 1)):
            active = lo < hi
            mid = torch.clamp((lo + hi) // 2, max=n - 1)
            ok = pred(s[mid] - v)
            hi = torch.where(active & ok, mid, hi)
            lo = torch.where(active & ~ok, mid + 1, lo)
        return lo

    if strict:
        upper = first_index(lambda diff: diff >= r, v + r)
        lower = first_index(lambda diff: diff > -r, v - r)
        inside_self = (r > 0).to(torch.int64)
    else:
        upper = first_index(lambda diff: diff > r, v + r)
        lower = first_index(lambda diff: diff >= -r, v - r)
        inside_self = (r >= 0).to(torch.int64)
    # strict with r = 0 gives an empty window (lower > upper)
    return torch.clamp(upper - lower - inside_self, min=0)
