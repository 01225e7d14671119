"""Brute-force max-norm neighbour statistics compiled with numba: KSG's counts, k-th
neighbour distances and radius counts without building an (n, n) block.

Used by :mod:`ibtools.estimators.neighbours` for the ``"brute"`` backend on CPU when numba is
installed (``pip install "ibtools[fast]"``); the torch path (``torch.cdist`` blocks and
``topk``) gives the same numbers.  Per query row the distances to all points go into one
row buffer, a tile of columns at a time: for each coordinate ``|p_c - q_c|`` and a running
maximum, loops the compiler vectorises.  The k nearest are kept by insertion, entered only
for tiles holding a distance below the current k-th (a vectorised count decides), and the
counts are one more pass over the buffer.  Rows run in parallel over numba's threads.

Every kernel takes ``chunks``: rows are dealt round-robin to that many parallel tasks (a
few per thread; numba's thread count read inside a cached function would stop caching).

Exactness.  Every distance is ``max_c |p_c - q_c|`` in float64, the operation the torch and
tree backends evaluate, so distances, radii and counts are identical.  Among points at
exactly the k-th distance the lowest index is called a neighbour (the torch path leaves
that choice to ``topk``); KSG's default jitter makes such ties practically impossible.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

#: Columns per tile: the tile of the row buffer (8 KiB of float64) stays in L1 while every
#: coordinate passes over it.
TILE = 1024


@njit(inline="always", cache=True)
def _chebyshev_tile(cols, c0, c1, i, j0, j1, out):
    """``out[j - j0] = max_{c0 <= c < c1} |cols[c, j] - cols[c, i]|`` for j0 <= j < j1, and
    inf for j = i (a point is not its own neighbour).  (Through 1-D slices of each
    coordinate's row: the compiler vectorises these, and did not vectorise indexing
    ``cols[c, j]``.)"""
    w = j1 - j0
    q = cols[c0, i]
    row = cols[c0, j0:j1]
    for j in range(w):
        out[j] = abs(row[j] - q)
    for c in range(c0 + 1, c1):
        q = cols[c, i]
        row = cols[c, j0:j1]
        for j in range(w):
            v = abs(row[j] - q)
            m = out[j]
            out[j] = v if v > m else m
    if j0 <= i < j1:
        out[i - j0] = np.inf


@njit(inline="always", cache=True)
def _insert(top_v, top_i, filled, v, j):
    """Insert (v, j) into the ascending top_v[:filled] (capacity len(top_v)); new fill."""
    k = top_v.shape[0]
    pos = filled if filled < k else k - 1
    while pos > 0 and top_v[pos - 1] > v:
        top_v[pos] = top_v[pos - 1]
        top_i[pos] = top_i[pos - 1]
        pos -= 1
    top_v[pos] = v
    top_i[pos] = j
    return filled + 1 if filled < k else k


@njit(inline="always", cache=True)
def _select(z, j0, w, top_v, top_i, filled):
    """Offer z[:w] (columns j0..j0+w) to the k smallest so far; returns the new fill."""
    k = top_v.shape[0]
    bound = top_v[k - 1] if filled == k else np.inf
    below = 0
    for j in range(w):
        below += z[j] < bound
    if below == 0:
        return filled
    for j in range(w):
        if z[j] < bound:
            filled = _insert(top_v, top_i, filled, z[j], j0 + j)
            if filled == k:
                bound = top_v[k - 1]
    return filled


@njit(parallel=True, cache=True)
def ksg_counts(cols, split, k, algorithm, chunks):
    """KSG's statistics over the points ``cols`` (D, n), float64, coordinates ``0:split``
    the x part and ``split:D`` the y part.

    Returns ``(eps, nx, ny)``: the joint k-th neighbour distance (self excluded) and the
    marginal counts, ``#{j != i: d_x(i, j) < eps_i}`` for algorithm 1, and
    ``#{j != i: d_x(i, j) <= max d_x over the k neighbours}`` for algorithm 2 (same for y).
    """
    dims, n = cols.shape
    eps = np.empty(n)
    nx = np.empty(n, np.int64)
    ny = np.empty(n, np.int64)
    for ch in prange(chunks):
        dx = np.empty(n)
        dy = np.empty(n)
        z = np.empty(TILE)
        top_v = np.empty(k)
        top_i = np.empty(k, np.int64)
        for i in range(ch, n, chunks):
            filled = 0
            for j0 in range(0, n, TILE):
                j1 = min(n, j0 + TILE)
                w = j1 - j0
                _chebyshev_tile(cols, 0, split, i, j0, j1, dx[j0:j1])
                _chebyshev_tile(cols, split, dims, i, j0, j1, dy[j0:j1])
                for j in range(w):
                    a = dx[j0 + j]
                    b = dy[j0 + j]
                    z[j] = a if a > b else b
                filled = _select(z, j0, w, top_v, top_i, filled)
            eps[i] = top_v[k - 1]
            cx = 0
            cy = 0
            if algorithm == 1:
                r = top_v[k - 1]
                for j in range(n):
                    cx += dx[j] < r
                    cy += dy[j] < r
            else:
                rx = 0.0
                ry = 0.0
                for m in range(k):
                    rx = max(rx, dx[top_i[m]])
                    ry = max(ry, dy[top_i[m]])
                for j in range(n):
                    cx += dx[j] <= rx
                    cy += dy[j] <= ry
            nx[i] = cx
            ny[i] = cy
    return eps, nx, ny


@njit(parallel=True, cache=True)
def knn(cols, k, chunks):
    """k nearest neighbours (self excluded) of every point of ``cols`` (D, n): distances and
    indices, (n, k) each, ascending."""
    dims, n = cols.shape
    dist = np.empty((n, k))
    index = np.empty((n, k), np.int64)
    for ch in prange(chunks):
        z = np.empty(TILE)
        top_v = np.empty(k)
        top_i = np.empty(k, np.int64)
        for i in range(ch, n, chunks):
            filled = 0
            for j0 in range(0, n, TILE):
                j1 = min(n, j0 + TILE)
                _chebyshev_tile(cols, 0, dims, i, j0, j1, z)
                filled = _select(z, j0, j1 - j0, top_v, top_i, filled)
            dist[i] = top_v
            index[i] = top_i
    return dist, index


@njit(parallel=True, cache=True)
def count_within(cols, radius, strict, chunks):
    """``#{j != i: d(i, j) < radius[i]}`` (``<=`` unless ``strict``) for the points ``cols``
    (D, n); a NaN radius counts nothing."""
    dims, n = cols.shape
    out = np.empty(n, np.int64)
    for ch in prange(chunks):
        z = np.empty(TILE)
        for i in range(ch, n, chunks):
            r = radius[i]
            c = 0
            for j0 in range(0, n, TILE):
                j1 = min(n, j0 + TILE)
                _chebyshev_tile(cols, 0, dims, i, j0, j1, z)
                if strict:
                    for j in range(j1 - j0):
                        c += z[j] < r
                else:
                    for j in range(j1 - j0):
                        c += z[j] <= r
            out[i] = c
    return out
