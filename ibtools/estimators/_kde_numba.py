"""The elementwise half of the KDE kernel, fused and compiled with numba.

:func:`ibtools.estimators.kde.pairwise_log_means` gets each block of base-2 exponents
``-||u_i - u_j||^2`` from one matmul.  In eager torch the rest is about eight passes over
the block (clamp, exp2, two squarings, two row sums, two column sums); at small d those
passes cost more than the matmul.  :func:`block_sums` does them in one read of the block:
per element a clamp, one exponential, two squarings and four additions, in parallel over
tiles of columns (each tile owns its column sums, so no two threads write the same place).

The exponential is our own: numba calls the C library's scalar ``exp2f``, which the
compiler cannot vectorise.  :func:`exp2f` splits ``x = k + f`` with k an integer and
``|f| <= 1/2``, evaluates ``2^f`` by a degree-6 polynomial fitted at import (least squares
on Chebyshev nodes; relative error about 1e-7, the float32 unit roundoff) and multiplies by
``2^k`` built from its IEEE-754 bits.  Its inputs are clamped to ``[-115, 0]``, so ``2^k``
is always a normal float32.

Optional: used when numba is installed (``pip install "ibtools[fast]"``), on CPU, for
float32 work; ``IBTOOLS_KDE_ENGINE`` chooses (see :func:`ibtools.estimators.kde.kde_engine`).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

#: Columns per parallel tile: its float32 column sums (2 x 4 KiB) stay in L1.
TILE = 1024
#: Clamp of the exponent, as in kde._MIN_EXPONENT (below about -126 float32 goes denormal).
MIN_EXPONENT = -115.0


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32's bits as a float32 (an LLVM bitcast: vectorisable)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return sig, codegen


def _fit_exp2(degree: int = 6, nodes: int = 512) -> tuple:
    f = 0.5 * np.cos(np.pi * (np.arange(nodes) + 0.5) / nodes)
    return tuple(np.float32(c) for c in np.polynomial.polynomial.polyfit(f, np.exp2(f), degree))


_C0, _C1, _C2, _C3, _C4, _C5, _C6 = _fit_exp2()


@njit(inline="always", fastmath=True, cache=True)
def exp2f(x):
    """``2**x`` for float32 x in [-126, 127], relative error about 1e-7, branch-free."""
    k = np.floor(x + np.float32(0.5))
    f = x - k
    p = _C6
    p = p * f + _C5
    p = p * f + _C4
    p = p * f + _C3
    p = p * f + _C2
    p = p * f + _C1
    p = p * f + _C0
    return p * _float32_from_bits((np.int32(k) + np.int32(127)) << np.int32(23))


@njit(cache=True)
def exp2_array(x):
    """:func:`exp2f` over a float32 array (for tests)."""
    out = np.empty_like(x)
    for i in range(x.size):
        out[i] = exp2f(x[i])
    return out


@njit(parallel=True, fastmath=True, cache=True)
def block_sums(block, b, row_bd, row_kl, col_bd, col_kl, c0):
    """Add one block's kernel sums.

    ``block`` (b, m) float32 holds base-2 exponents of rows ``r0:r0+b`` against columns
    ``r0:r0+m``, with the diagonal already 0; each is clamped to ``[MIN_EXPONENT, 0]``,
    ``p = 2**e`` is the Bhattacharyya kernel and ``p**4`` the KL one.  All m columns add to
    the rows' sums ``row_bd[i], row_kl[i]`` (i < b); the columns right of the diagonal
    block (``j >= b``) also add to ``col_bd[c0 + j], col_kl[c0 + j]``.  Sums are float32
    within a tile of ``TILE`` columns (or of b rows) and float64 beyond.
    """
    m = block.shape[1]
    ntiles = (m + TILE - 1) // TILE
    lo = np.float32(MIN_EXPONENT)
    zero = np.float32(0.0)
    parts = np.zeros((ntiles, 2, b))
    for t in prange(ntiles):
        j0 = t * TILE
        w = min(m, j0 + TILE) - j0
        cb = np.zeros(w, np.float32)
        ck = np.zeros(w, np.float32)
        for i in range(b):
            row = block[i, j0:j0 + w]
            sb = zero
            sk = zero
            for j in range(w):
                e = row[j]
                e = e if e > lo else lo
                e = e if e < zero else zero
                p = exp2f(e)
                q = p * p
                q = q * q
                sb += p
                sk += q
                cb[j] += p
                ck[j] += q
            parts[t, 0, i] = sb
            parts[t, 1, i] = sk
        for j in range(max(0, b - j0), w):
            col_bd[c0 + j0 + j] += cb[j]
            col_kl[c0 + j0 + j] += ck[j]
    for t in range(ntiles):
        for i in range(b):
            row_bd[i] += parts[t, 0, i]
            row_kl[i] += parts[t, 1, i]
