"""A max-norm k-d tree compiled with numba: exact k-th neighbour distances and radius counts.

Used by :mod:`ibtools.estimators.neighbours` for the ``"tree"`` backend when numba is
installed (``pip install "ibtools[fast]"``); without it the same numbers come from scipy's
cKDTree and scikit-learn's KDTree.  Why a tree of our own: KSG's marginal counts on 10^5
points spend most of their time in per-node overhead of the general-purpose trees (generic
metric objects, Python-level thread pools); this tree knows only the max-norm, stores the
points in leaf order, adds a whole node's size when its box lies inside the radius, and
runs the queries in parallel over numba's threads.

Exactness.  Every point distance is ``max_c |p_c - q_c|`` in float64, the operation the
other backends evaluate.  A box is pruned or taken whole by the same subtraction on its
bounds: ``fl(lo_c - q_c) <= fl(p_c - q_c)`` for every point p of the box because rounding
is monotone, so a box test never disagrees with the test of any point inside it.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True)
def build(points, leaf_size):
    """Median-split tree.  Returns (order, start, end, left, lo, hi): the points in
    ``order`` are stored leaf by leaf; node k covers rows ``start[k]:end[k]`` of the
    reordered points, its children are ``left[k]`` and ``left[k] + 1`` (-1 for a leaf), and
    ``lo[k], hi[k]`` bound its box."""
    n, d = points.shape
    order = np.arange(n)
    max_nodes = 2 * (n // max(1, leaf_size // 2) + 1) + 1
    start = np.empty(max_nodes, np.int64)
    end = np.empty(max_nodes, np.int64)
    left = np.full(max_nodes, -1, np.int64)
    lo = np.empty((max_nodes, d))
    hi = np.empty((max_nodes, d))
    start[0], end[0] = 0, n
    count = 1
    stack = np.empty(128, np.int64)
    stack[0] = 0
    sp = 1
    while sp > 0:
        sp -= 1
        k = stack[sp]
        s, e = start[k], end[k]
        for c in range(d):
            a = points[order[s], c]
            b = a
            for i in range(s + 1, e):
                v = points[order[i], c]
                if v < a:
                    a = v
                elif v > b:
                    b = v
            lo[k, c] = a
            hi[k, c] = b
        if e - s <= leaf_size:
            continue
        split = 0
        widest = -1.0
        for c in range(d):
            w = hi[k, c] - lo[k, c]
            if w > widest:
                widest = w
                split = c
        vals = np.empty(e - s)
        for i in range(s, e):
            vals[i - s] = points[order[i], split]
        o = np.argsort(vals)
        seg = order[s:e].copy()
        for i in range(e - s):
            order[s + i] = seg[o[i]]
        mid = s + (e - s) // 2
        left[k] = count
        start[count], end[count] = s, mid
        start[count + 1], end[count + 1] = mid, e
        stack[sp] = count
        stack[sp + 1] = count + 1
        sp += 2
        count += 2
    return order, start[:count], end[:count], left[:count], lo[:count], hi[:count]


# The box tests are inlined into the traversals (inline="always"): as ordinary compiled
# calls they were measurably slower in the hot loops.  In the leaves, a point's distance is
# taken over every coordinate without an early exit: a branch-free loop the compiler
# vectorises, faster than breaking out early on KSG's kNN and counts
# (``benchmarks/scaling.py``).
@njit(cache=True, inline="always")
def _gap(lo, hi, node, pts, i):
    """Nearest max-norm distance from ``pts[i]`` to the box of ``node`` (0 inside it)."""
    near = 0.0
    for c in range(pts.shape[1]):
        q = pts[i, c]
        a = lo[node, c] - q
        b = q - hi[node, c]
        g = a if a > b else b
        if g > near:
            near = g
    return near


@njit(cache=True, inline="always")
def _reach(lo, hi, node, pts, i):
    """Farthest max-norm distance from ``pts[i]`` to a point of the box of ``node``."""
    far = 0.0
    for c in range(pts.shape[1]):
        q = pts[i, c]
        f1 = q - lo[node, c]
        f2 = hi[node, c] - q
        f = f1 if f1 > f2 else f2
        if f > far:
            far = f
    return far


@njit(parallel=True, cache=True)
def count_within(pts, radius, strict, start, end, left, lo, hi):
    """For each row i of ``pts`` (already in tree order): the number of rows j (itself
    included) with ``max_c |pts[j] - pts[i]| < radius[i]`` (``<=`` unless ``strict``)."""
    n, d = pts.shape
    out = np.zeros(n, np.int64)
    for i in prange(n):
        r = radius[i]
        total = 0
        stack = np.empty(128, np.int64)
        stack[0] = 0
        sp = 1
        while sp > 0:
            sp -= 1
            k = stack[sp]
            near = _gap(lo, hi, k, pts, i)
            far = _reach(lo, hi, k, pts, i)
            if strict:
                if near >= r:
                    continue
                if far < r:
                    total += end[k] - start[k]
                    continue
            else:
                if near > r:
                    continue
                if far <= r:
                    total += end[k] - start[k]
                    continue
            if left[k] < 0:
                # no early exit: a branch-free scan (vectorised) measured faster
                for j in range(start[k], end[k]):
                    v = 0.0
                    for c in range(d):
                        w = abs(pts[j, c] - pts[i, c])
                        v = w if w > v else v
                    total += (v < r) if strict else (v <= r)
            else:
                stack[sp] = left[k]
                stack[sp + 1] = left[k] + 1
                sp += 2
        out[i] = total
    return out


@njit(parallel=True, cache=True)
def knn(pts, k, start, end, left, lo, hi):
    """For each row i of ``pts`` (in tree order): the distances and tree-order indices of
    its k nearest other rows, nearest first (ties by the order in which they are met)."""
    n, d = pts.shape
    dist = np.empty((n, k))
    index = np.empty((n, k), np.int64)
    for i in prange(n):
        best = np.full(k, np.inf)
        best_i = np.full(k, -1, np.int64)
        stack = np.empty(128, np.int64)
        gaps = np.empty(128)  # each stacked node's box distance, computed when pushed
        stack[0] = 0
        gaps[0] = 0.0
        sp = 1
        while sp > 0:
            sp -= 1
            node = stack[sp]
            if gaps[sp] > best[k - 1]:
                continue
            if left[node] < 0:
                for j in range(start[node], end[node]):
                    # the whole distance, no early exit: measured faster than breaking
                    # off once it exceeds the k-th best
                    v = 0.0
                    for c in range(d):
                        w = abs(pts[j, c] - pts[i, c])
                        v = w if w > v else v
                    if j != i and (v < best[k - 1] or (v == best[k - 1] and best_i[k - 1] < 0)):
                        p = k - 1
                        while p > 0 and best[p - 1] > v:
                            best[p] = best[p - 1]
                            best_i[p] = best_i[p - 1]
                            p -= 1
                        best[p] = v
                        best_i[p] = j
            else:
                # visit the nearer child first: push it last
                a_child = left[node]
                b_child = a_child + 1
                da = _gap(lo, hi, a_child, pts, i)
                db = _gap(lo, hi, b_child, pts, i)
                if da <= db:
                    stack[sp], gaps[sp] = b_child, db
                    stack[sp + 1], gaps[sp + 1] = a_child, da
                else:
                    stack[sp], gaps[sp] = a_child, da
                    stack[sp + 1], gaps[sp + 1] = b_child, db
                sp += 2
        for p in range(k):
            dist[i, p] = best[p]
            index[i, p] = best_i[p]
    return dist, index
