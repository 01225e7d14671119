"""Class-conditional KDE kernel sums for every class in one pass.

KDE's I(T;Y) needs, for each class y, the pairwise-distance bounds on H(T + Z | Y = y):
per row i, the log mean kernel over the rows of its own class.  Token ids give hundreds
or thousands of classes, most of them small, and one pairwise pass per class spends its
time in per-call overhead.  Here the rows, sorted by class, are cut into blocks of
``PACK_ROWS`` rows that hold whole small classes side by side; each block's kernel
matrix comes from one batched matmul, entries between different classes are masked out,
and the row sums of the rest are the class-restricted sums.  A class larger than a block
is reduced by row chunks against its own columns.
"""

from __future__ import annotations

import math

import torch

from ibtools.estimators.base import chunk_rows
from ibtools.estimators.kde import _MIN_EXPONENT, _matmul_dtype

#: Rows per packed block: small classes are packed into blocks of this many rows.
PACK_ROWS = 256
#: Classes up to this many rows get their bounds from the packed pass; larger ones from a
#: symmetric pass each (half the pairs, compiled when numba is there; its call overhead
#: is small next to its work).  Timed against one pass per class in benchmarks/RESULTS.md
#: ("per-class KDE", ``python -m benchmarks.new_paths --only per_class``).
CLASS_PASS_MAX_ROWS = 1024


def packed_class_bounds(t_sorted, counts, starts, present, h_noise: float, noise_var: float,
                        budget: int) -> dict:
    """``{class: (h_upper, h_lower)}`` of H(T + Z | Y = class) for every class of 2 to
    ``CLASS_PASS_MAX_ROWS`` rows, from one :func:`class_log_means` over them all.

    ``t_sorted`` holds T's rows sorted by class; ``counts`` and ``starts`` (CPU tensors
    indexed by class id) locate each class; ``present`` lists the class ids with rows."""
    ids = [c for c in present if 2 <= int(counts[c]) <= CLASS_PASS_MAX_ROWS]
    if not ids:
        return {}
    sizes = [int(counts[c]) for c in ids]
    rows = torch.cat([torch.arange(int(starts[c]), int(starts[c]) + k)
                      for c, k in zip(ids, sizes)]).to(t_sorted.device)
    kl, bd = class_log_means(t_sorted[rows], sizes, noise_var, budget)
    sizes_t = torch.tensor(sizes, device=kl.device)
    seg = torch.repeat_interleave(torch.arange(len(ids), device=kl.device), sizes_t)
    mean_kl = torch.zeros(len(ids), dtype=torch.float64, device=kl.device).index_add_(0, seg, kl)
    mean_bd = torch.zeros_like(mean_kl).index_add_(0, seg, bd)
    mean_kl /= sizes_t.to(torch.float64)
    mean_bd /= sizes_t.to(torch.float64)
    return {c: (h_noise - u, h_noise - lo)
            for c, u, lo in zip(ids, mean_kl.tolist(), mean_bd.tolist())}


def conditional_bounds(t: torch.Tensor, labels: torch.Tensor, h_noise: float,
                       noise_var: float, budget: int, class_bounds) -> dict:
    """The class-conditional bounds ``sum_y p(y) H(T + Z | Y = y)`` (upper and lower) of
    every class of ``labels`` at once.

    A class of one row is one kernel: its entropy is ``h_noise`` exactly, with no kernel
    sum (token ids as X make every class a singleton).  Classes of 2 to
    ``CLASS_PASS_MAX_ROWS`` rows come from one packed pass (:func:`packed_class_bounds`);
    a larger class from ``class_bounds(rows)``, which returns its ``(h_upper, h_lower)``
    (KDE passes its uncached pairwise bounds, so a class never displaces the whole
    sample's bounds that I(X;T) and I(T_prev;T) reuse).

    Returns ``cond_upper``, ``cond_lower``, ``h_labels`` (the plug-in label entropy),
    ``n_classes`` and ``per_class`` (``{id: {"p", "h_upper", "h_lower"}}``, or None above
    64 classes)."""
    n = int(t.shape[0])
    order = torch.argsort(labels, stable=True)
    t_sorted = t[order]
    counts = torch.bincount(labels).cpu()
    starts = torch.cumsum(counts, dim=0) - counts
    present = torch.nonzero(counts).flatten().tolist()
    packed = packed_class_bounds(t_sorted, counts, starts, present, h_noise, noise_var, budget)
    sizes, first = counts.tolist(), starts.tolist()
    cond_upper = cond_lower = 0.0
    per_class = {} if len(present) <= 64 else None
    for cls in present:
        size = sizes[cls]
        if size == 1:  # one kernel: H(T+Z | Y=y) is the noise entropy exactly
            h_up = h_low = h_noise
        elif cls in packed:
            h_up, h_low = packed[cls]
        else:
            h_up, h_low = class_bounds(t_sorted[first[cls]:first[cls] + size])
        p = size / n
        cond_upper += p * h_up
        cond_lower += p * h_low
        if per_class is not None:
            per_class[int(cls)] = {"p": p, "h_upper": h_up, "h_lower": h_low}
    p = counts[counts > 0].to(torch.float64) / n
    return {"cond_upper": cond_upper, "cond_lower": cond_lower,
            "h_labels": float(-(p * p.log()).sum()), "n_classes": len(present),
            "per_class": per_class}


def _augmented(t: torch.Tensor, sizes_t: torch.Tensor, noise_var: float):
    """Rows ``[2u, -|u|^2, -1]`` and ``[u, 1, |u|^2]`` whose products are the base-2 KDE
    exponents ``-||t_i - t_j||^2 log2(e) / (8 s2)``; u is centred on each row's class
    mean (what a pass over that class alone does), plus the class id of each row."""
    n, d = t.shape
    dev = t.device
    seg = torch.repeat_interleave(torch.arange(len(sizes_t), device=dev), sizes_t)
    means = torch.zeros(len(sizes_t), d, dtype=torch.float64, device=dev).index_add_(
        0, seg, t.to(torch.float64))
    means /= sizes_t[:, None].to(torch.float64)
    u = (t - means[seg].to(t.dtype)) * math.sqrt(math.log2(math.e) / (8.0 * noise_var))
    sq = (u * u).sum(dim=1, keepdim=True)
    mm_dtype = _matmul_dtype(t.dtype, dev, float(sq.max()) * math.log(2.0) if n else 0.0)
    if mm_dtype != t.dtype:
        u = u.to(mm_dtype)
        sq = (u * u).sum(dim=1, keepdim=True)
    ones = torch.ones(n, 1, dtype=mm_dtype, device=dev)
    return torch.cat([2.0 * u, -sq, -ones], dim=1), torch.cat([u, ones, sq], dim=1), seg


def _kernel_sums(exponents: torch.Tensor, dtype: torch.dtype, keep=None):
    """Row sums of ``2^E`` (Bhattacharyya) and ``2^(4E)`` (KL) of clamped exponents, over
    the entries ``keep`` marks (all when None)."""
    e = exponents.to(dtype).clamp_(min=_MIN_EXPONENT, max=0.0)
    k = torch.exp2(e)
    if keep is not None:
        k.mul_(keep)
    bd = k.sum(dim=-1, dtype=torch.float64) if dtype == torch.float64 else k.sum(dim=-1)
    k.square_().square_()
    return k.sum(dim=-1).to(torch.float64), bd.to(torch.float64)


def _packs(sizes):
    """Greedy runs of consecutive classes of at most PACK_ROWS rows: (first row, rows)."""
    packs, start, width = [], 0, 0
    for k in sizes:
        if width + k > PACK_ROWS and width:
            packs.append((start, width))
            start, width = start + width, 0
        width += k
    if width:
        packs.append((start, width))
    return packs


def class_log_means(t: torch.Tensor, sizes, noise_var: float, budget: int):
    """Per row, the log mean KL and Bhattacharyya kernels over the rows of its own class.

    Parameters
    ----------
    t : Tensor, shape (n, d)
        Rows sorted by class: class c is the next ``sizes[c]`` rows.
    sizes : sequence of int
        Rows per class, each >= 1.
    noise_var : float
        Kernel variance s2.
    budget : int
        Scratch bytes a batch of blocks may use.

    Returns
    -------
    kl, bd : Tensor, shape (n,), float64
        For row i of class c: ``ln 1/n_c sum_{j in c} exp(-||t_i - t_j||^2 / (2 s2))`` and
        the same with ``8 s2``, the quantities :func:`~ibtools.estimators.kde.
        pairwise_log_means` gives for class c's rows alone (to float rounding).

    Notes
    -----
    Classes of at most ``PACK_ROWS`` rows are packed into blocks of that many rows (padded
    with a row that belongs to no class); a batch of blocks is one ``bmm``, and entries
    between different classes are multiplied by 0 after the exponential.  A larger
    class is reduced by chunks of ``PACK_ROWS`` rows against all of its own columns.
    """
    n = int(t.shape[0])
    dev = t.device
    sizes_t = torch.as_tensor(list(sizes), dtype=torch.long, device=dev)
    left, right, seg = _augmented(t, sizes_t, noise_var)
    kl = torch.empty(n, dtype=torch.float64, device=dev)
    bd = torch.empty(n, dtype=torch.float64, device=dev)
    starts = [0]
    for k in sizes:
        starts.append(starts[-1] + int(k))
    small = [s for s in zip(starts[:-1], sizes) if s[1] <= PACK_ROWS]
    for s0, k in ((s, k) for s, k in zip(starts[:-1], sizes) if k > PACK_ROWS):
        for r0 in range(s0, s0 + k, PACK_ROWS):
            r1 = min(s0 + k, r0 + PACK_ROWS)
            e = left[r0:r1] @ right[s0:s0 + k].T
            e[:, r0 - s0:r1 - s0].diagonal().fill_(0.0)
            kl[r0:r1], bd[r0:r1] = _kernel_sums(e, t.dtype)
    if small:
        _packed(t, small, left, right, seg, kl, bd, budget)
    log_size = torch.log(sizes_t.to(torch.float64))[seg]
    return kl.log_().sub_(log_size), bd.log_().sub_(log_size)


def _packed(t, small, left, right, seg, kl, bd, budget):
    """Fill kl, bd (raw sums) for the rows of the classes in ``small`` ((start, rows))."""
    n, dev = int(t.shape[0]), t.device
    rows = torch.cat([torch.arange(s, s + k, device=dev) for s, k in small])
    packs = _packs([k for _, k in small])
    index = torch.full((len(packs), PACK_ROWS), n, dtype=torch.long, device=dev)
    for b, (p0, width) in enumerate(packs):
        index[b, :width] = rows[p0:p0 + width]
    # the pad row n: zero coordinates, class -1 (it meets no real row)
    left = torch.cat([left, left.new_zeros(1, left.shape[1])])
    right = torch.cat([right, right.new_zeros(1, right.shape[1])])
    seg = torch.cat([seg, seg.new_full((1,), -1)])
    per_block = PACK_ROWS * PACK_ROWS * (left.element_size() + 2 * t.element_size() + 1)
    batch = max(1, chunk_rows(len(packs), per_block, budget))
    eye = torch.eye(PACK_ROWS, dtype=torch.bool, device=dev)
    for b0 in range(0, len(packs), batch):
        idx = index[b0:b0 + batch]
        e = torch.bmm(left[idx], right[idx].transpose(1, 2))       # (B, R, R)
        e.masked_fill_(eye, 0.0)
        s = seg[idx]
        k_kl, k_bd = _kernel_sums(e, t.dtype, keep=s[:, :, None] == s[:, None, :])
        real = idx < n
        kl[idx[real]] = k_kl[real]
        bd[idx[real]] = k_bd[real]
