"""The pairwise kernel sums behind KDE's entropy bounds: for every row, the log mean
Gaussian kernel to all rows at two widths, by blocks of rows on any device, with a compiled
fused pass on CPU when numba is installed (:mod:`ibtools.estimators._kde_numba`).
"""

from __future__ import annotations

import contextlib
import math

import torch

from ibtools.estimators import _jit
from ibtools.estimators.base import chunk_rows

#: Fraction of the ln n ceiling above which the kernel no longer resolves any structure.
SATURATION_FRACTION = 0.95


def gaussian_noise_entropy(dim: int, noise_var: float) -> float:
    """Differential entropy of N(0, noise_var * I_dim) in nats: d/2 ln(2 pi e s2)."""
    return 0.5 * dim * math.log(2.0 * math.pi * math.e * noise_var)


#: Exponents (base 2) are clamped here before ``exp2``: 2^-115 ~ 2e-35 is nothing next to the
#: row's own term 2^0 = 1, and arguments below about -126 give float32 denormals, which make
#: the vectorised exponential an order of magnitude slower.
_MIN_EXPONENT = -115.0
#: Error (nats) the float32 distance matmul may add before float64 is used.
_MATMUL_TOLERANCE = 1e-4
#: On CPU, one block of the kernel matrix is sized to stay in cache (about this many bytes):
#: the matmul, exp2, squarings and sums then each read it from cache, not from memory.  But
#: the matmul of a block needs enough rows to run at speed when d is large: d + 2 rows,
#: between _CPU_MIN_ROWS and _CPU_MAX_ROWS, whatever the cache says.  Measured (one thread,
#: seconds by rows per block): n = 20 000, d = 20: 0.73 (16), 0.53 (32), 2.37 (1677, sized to
#: the budget); n = 8 000, d = 1024: 1.89 (32), 1.24 (128), 1.15 (256), 2.27 (4194).
_CPU_BLOCK_BYTES = 2 << 20
_CPU_MIN_ROWS = 32
_CPU_MAX_ROWS = 256


def _block_rows(n: int, per_row: int, budget: int, device: torch.device, dim: int) -> int:
    rows = chunk_rows(n, per_row, budget)
    if device.type == "cpu":
        for_matmul = min(_CPU_MAX_ROWS, max(_CPU_MIN_ROWS, dim + 2))
        rows = min(rows, max(for_matmul, _CPU_BLOCK_BYTES // max(1, per_row)))
    return max(1, min(n, rows))


#: Rows from which "auto" uses the fused numba pass.  Its first use in a fresh install
#: compiles it (a few seconds, then cached on disk); below this size a call takes
#: milliseconds either way.
KDE_NUMBA_MIN_N = 4096
#: Rows per block with the fused pass: it reads a block once, so the block need not fit in
#: cache, and the matmul runs faster on taller blocks.  Measured (2 threads, seconds by rows
#: 32 / 64 / 128 / 256, torch path last): n = 20 000, d = 20: 0.131 / 0.122 / 0.107 / 0.110,
#: 0.218; n = 5000, d = 64: 0.022 / 0.019 / 0.017 / 0.015, 0.026.
_NUMBA_ROWS = 256
#: From this width on the matmul is most of the work, and a (256, d) x (d, m) product runs
#: well below the rate of square shapes: blocks get up to _NUMBA_WIDE_ROWS rows, but no
#: more than n / 8, because the diagonal block of b rows is computed in full and taller
#: blocks add b / n to the pairs (``python -m benchmarks.kde --blocks``, benchmarks/RESULTS.md).
_NUMBA_WIDE_DIM = 256
_NUMBA_WIDE_ROWS = 1024


def _numba_rows(n: int, dim: int) -> int:
    """Rows per block of the fused pass for n rows of width dim (before the memory cap)."""
    if dim < _NUMBA_WIDE_DIM:
        return _NUMBA_ROWS
    return max(_NUMBA_ROWS, min(_NUMBA_WIDE_ROWS, n // 8))
_KERNELS = _jit.Compiled("_kde_numba")


def kde_engine(n: int, dtype: torch.dtype, device: torch.device) -> str:
    """Which code does the elementwise part of the KDE kernel for n float rows.

    ``"numba"``: one fused, compiled pass per block (:mod:`ibtools.estimators._kde_numba`;
    needs numba: ``pip install "ibtools[fast]"``), float32 on CPU only; faster than
    ``"torch"`` (eager torch passes: clamp, exp2, squarings, sums), most at small d
    (``benchmarks/RESULTS.md``).  The two
    agree to about 1e-6 nats (their exponentials differ in the last bits).  The environment
    variable ``IBTOOLS_KDE_ENGINE`` (``auto`` | ``numba`` | ``torch``) overrides the choice;
    ``auto`` takes numba when it is installed, the work is float32 on CPU and
    ``n >= KDE_NUMBA_MIN_N``.  CUDA and float64 always use torch.
    """
    return _jit.choose("IBTOOLS_KDE_ENGINE", "torch", _KERNELS,
                       eligible=device.type == "cpu" and dtype == torch.float32,
                       n=n, min_n=KDE_NUMBA_MIN_N)


def pairwise_log_means(t: torch.Tensor, noise_var: float, budget: int):
    """Row-wise log mean kernels of the KL and Bhattacharyya pairwise-distance bounds.

    Parameters
    ----------
    t : Tensor, shape (n, d)
        Kernel centres, on any device, float32 or float64.
    noise_var : float
        Kernel variance s2.
    budget : int
        Scratch bytes one block of rows may use.

    Returns
    -------
    kl, bd : Tensor, shape (n,), float64
        ``kl[i] = ln 1/n sum_j exp(-||t_i - t_j||^2 / (2 s2))`` and the same with
        ``8 s2`` in place of ``2 s2``.
    info : dict
        ``chunk_rows`` (rows per block), ``pairs`` (kernel entries computed, diagonal
        blocks in full) and ``engine`` (see :func:`kde_engine`).

    Notes
    -----
    The kernel matrix is symmetric, so only its upper triangle is computed: the block of
    rows ``i0:i1`` meets the columns ``i0:n``; its row sums go to rows ``i0:i1`` and the
    column sums of its part right of the diagonal block go to rows ``i1:n``.  That is half
    the pairs of a full pass.  One matmul per block gives the base-2 exponent
    ``-||t_i - t_j||^2 log2(e) / (8 s2)`` directly, from the augmented rows
    ``[2u_i, -|u_i|^2, -1] . [u_j, 1, |u_j|^2]`` with ``u = t sqrt(log2(e) / (8 s2))`` after
    centring (smaller norms, less cancellation); it is clamped to ``[_MIN_EXPONENT, 0]``,
    the diagonal set to exactly 0, and ``exp2`` (measured faster than ``exp`` on CPU)
    gives the Bhattacharyya kernel.  The KL kernel is its fourth power (two in-place
    squarings instead of a second exponential).  Every row sum holds ``2^0 = 1`` and lies
    in ``[1, n]``: no max-shift is needed.  Each block's sums are taken in the working
    dtype and accumulated across blocks in float64.

    Scratch: two blocks of the working dtype, and a float64 one for the matmul when float32
    rounding could exceed ``_MATMUL_TOLERANCE`` (see :func:`_matmul_dtype`).  On CPU a
    block is sized to stay in cache (``_CPU_BLOCK_BYTES``, but with at least ``d + 2`` rows,
    from 32 to 256, for the matmul's sake); elsewhere to ``budget``.  With the ``"numba"``
    engine everything after the matmul is one fused pass (sums in float32 within a tile of
    columns, float64 beyond) and blocks have ``_NUMBA_ROWS`` rows, or up to
    ``_NUMBA_WIDE_ROWS`` from d = ``_NUMBA_WIDE_DIM`` on (see :func:`_numba_rows`), within
    ``budget``.
    """
    n = int(t.shape[0])
    dtype, device = t.dtype, t.device
    u = (t - t.mean(dim=0, keepdim=True)) * math.sqrt(math.log2(math.e) / (8.0 * noise_var))
    sq = (u * u).sum(dim=1, keepdim=True)
    # the cancellation bound of _matmul_dtype is in natural-log units of the KL exponent
    mm_dtype = _matmul_dtype(dtype, device, float(sq.max()) * math.log(2.0) if n else 0.0)
    if mm_dtype != dtype:
        # squared norms in the wide dtype too: equal rows then cancel to ~1e-16, not ~1e-7
        u = u.to(mm_dtype)
        sq = (u * u).sum(dim=1, keepdim=True)
    ones = torch.ones(n, 1, dtype=mm_dtype, device=device)
    left = torch.cat([2.0 * u, -sq, -ones], dim=1)             # (n, d + 2)
    right = torch.cat([u, ones, sq], dim=1).T.contiguous()     # (d + 2, n)
    itemsize = t.element_size()
    engine = kde_engine(n, dtype, device)
    if engine == "numba" and not bool(torch.isfinite(sq).all()):
        engine = "torch"  # the fused pass assumes finite values; torch carries a NaN through
    if engine == "numba":
        per_row = n * (itemsize + (8 if mm_dtype != dtype else 0))
        rows = max(1, min(n, _numba_rows(n, int(t.shape[1])), chunk_rows(n, per_row, budget)))
    else:
        per_row = n * (2 * itemsize + (8 if mm_dtype != dtype else 0))
        rows = _block_rows(n, per_row, budget, device, int(t.shape[1]))
    # flat buffers, viewed as contiguous (b, n - i0) blocks as the triangle narrows
    neg_buf = torch.empty(rows * n, dtype=dtype, device=device)
    ker_buf = torch.empty(rows * n, dtype=dtype, device=device) if engine == "torch" else None
    wide_buf = (torch.empty(rows * n, dtype=mm_dtype, device=device)
                if mm_dtype != dtype else None)
    kl = torch.zeros(n, dtype=torch.float64, device=device)
    bd = torch.zeros(n, dtype=torch.float64, device=device)
    pairs = 0
    with _jit.kernel_call() if engine == "numba" else contextlib.nullcontext():
        if engine == "numba":
            fused = _KERNELS.module().block_sums
            kl_np, bd_np = kl.numpy(), bd.numpy()
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            b, m = r1 - r0, n - r0
            pairs += b * m
            nb = neg_buf[:b * m].view(b, m)
            if wide_buf is None:
                torch.mm(left[r0:r1], right[:, r0:], out=nb)
            else:
                wb = wide_buf[:b * m].view(b, m)
                torch.mm(left[r0:r1], right[:, r0:], out=wb)
                nb.copy_(wb)
            nb.diagonal().fill_(0.0)
            if engine == "numba":
                fused(nb.numpy(), b, bd_np[r0:r1], kl_np[r0:r1], bd_np, kl_np, r0)
                continue
            nb.clamp_(min=_MIN_EXPONENT, max=0.0)
            kb = ker_buf[:b * m].view(b, m)
            torch.exp2(nb, out=kb)                                 # exp(-D / (8 s2))
            # sums in the working dtype (a float64 accumulating sum is much slower on CPU),
            # then accumulated in float64 across blocks
            bd[r0:r1] += kb.sum(dim=1)
            bd[r1:] += kb[:, b:].sum(dim=0)
            kb.square_().square_()                                 # exp(-D / (2 s2))
            kl[r0:r1] += kb.sum(dim=1)
            kl[r1:] += kb[:, b:].sum(dim=0)
    log_n = math.log(n)
    info = {"chunk_rows": rows, "pairs": pairs, "engine": engine}
    return kl.log_().sub_(log_n), bd.log_().sub_(log_n), info


def _matmul_dtype(dtype: torch.dtype, device: torch.device, max_sq: float) -> torch.dtype:
    """float64 for the distance matmul when float32 rounding could move the result.

    ``|a|^2 + |b|^2 - 2 a.b`` loses up to a few ``eps max|u|^2`` to cancellation, and the KL
    exponent is four times the computed one; shifting every exponent of a row by at most
    delta moves its log-sum by at most delta.  The loss only matters for pairs that are
    close (far pairs have kernels near 0 either way), most of all rows that coincide, as a
    deterministic map of repeated inputs produces: measured on such data the KL error is
    1 to 3 ``eps max|u|^2``.  So the matmul is widened when ``4 eps max|u|^2`` exceeds
    ``_MATMUL_TOLERANCE``, which happens when s2 is small next to the spread of T.  A
    reduced-precision float32 matmul (TF32 on CUDA, or any
    ``torch.set_float32_matmul_precision`` other than "highest") is taken at bfloat16's
    unit roundoff.
    """
    if dtype == torch.float64:
        return dtype
    reduced = torch.get_float32_matmul_precision() != "highest" or (
        device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32)
    eps = 2.0 ** -8 if reduced else float(torch.finfo(dtype).eps)
    return torch.float64 if 4.0 * eps * max_sq > _MATMUL_TOLERANCE else dtype
