"""Exact nearest-neighbour search and radius counting in the max-norm (Chebyshev distance).

The kNN estimators (KSG, Kozachenko-Leonenko, Ross's mixed estimator) need two things of a
point cloud: the distance from every point to its k-th nearest neighbour, and how many
points lie within a given per-point radius.  Both are done here exactly, by two backends
that return identical numbers:

``"brute"``
    O(n^2 d); the choice on CUDA, in high dimension, and (compiled) for moderate n.  With
    numba installed (``ibtools[fast]``), float64 points on CPU and n >= ``BRUTE_NUMBA_MIN_N``,
    compiled per-row kernels (:mod:`ibtools.estimators._brute_numba`: one row of distances
    at a time, no block in memory, rows in parallel).  Otherwise torch, on the device of the inputs: blocks of query rows against
    all rows, sized to the estimator's memory budget, ``torch.cdist(p=inf)`` on CPU (one
    fused pass per pair, faster there than a per-coordinate running maximum over broadcast
    differences), the running maximum on CUDA (see ``_chebyshev``).
``"tree"``
    CPU k-d trees.  With numba installed (``ibtools[fast]``) and n >= ``NUMBA_MIN_N``, a
    compiled max-norm tree of our own (:mod:`ibtools.estimators._kdtree_numba`: leaf-ordered
    points, whole nodes added when their box lies inside the radius, queries in parallel;
    timed against a cKDTree KSG in ``benchmarks/RESULTS.md``).  Otherwise
    :class:`scipy.spatial.cKDTree` (``p=inf``, all cores) for the k-th
    neighbour, and scikit-learn's :class:`~sklearn.neighbors.KDTree` for counts, because its
    ``count_only`` adds a node's size when the node lies wholly inside the radius whereas
    cKDTree's ``return_length`` still walks every point inside.  Both trees are queried in
    their own leaf order on data stored in that order (cache locality), which is what lets
    KSG run on 10^5 points in seconds rather than minutes.  Measured timings of every
    engine are in ``benchmarks/RESULTS.md`` (``python -m benchmarks``).

One-dimensional counts use neither: a sorted copy and a vectorised binary search on the
exact predicate ``|v_j - v_i| < r_i`` (or ``<=``), O(n log n) on any device.

Distances are computed as ``|a - b|`` in the dtype of the inputs (callers pass float64), the
same floating-point operation in every backend, so the strict and non-strict comparisons
the estimators depend on give the same answer whichever backend runs them.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from ibtools.errors import InputError
from ibtools.estimators import _jit
from ibtools.estimators.base import chunk_rows
from ibtools.estimators.sorted_counts import count_sorted_1d

BACKENDS = ("auto", "brute", "tree")

#: Joint dimension up to which "auto" uses the trees on CPU when brute force runs on torch
#: blocks.  Measured on a shared 2-core CPU (KSG, n = 5000, k = 3, Gaussian data; CPU
#: seconds tree / torch brute): d = 10: 0.46 / 1.8, d = 16: 1.45 / 1.9, d = 20: 1.96 / 2.2,
#: d = 40: 3.9 / 2.7.  Beyond d of about 20 a k-d tree prunes almost nothing.
TREE_MAX_DIM = 20

#: Below this many points brute force beats building trees even in low dimension.
TREE_MIN_N = 1_000

#: With the compiled brute-force kernels (engine "numba") the trees start at
#: TREE_CROSSOVER_N * 2^(d / TREE_DIMS_PER_DOUBLING) points instead: a tree's cost grows more
#: slowly with n than brute force's n^2 but faster with d.  Set from the measured crossover
#: (KSG, k = 3, Gaussian data, one thread, interleaved, min of 2-3 runs, CPU seconds brute /
#: compiled tree; benchmarks/new_paths.py --only crossover): 2+2 d, n = 3000: 0.025 / 0.030,
#: n = 10 000: 0.22 / 0.11; 3+3 d, n = 10 000: 0.27 / 0.24, n = 30 000: 2.6 / 0.44; 5+5 d,
#: n = 10 000: 0.32 / 0.66, n = 30 000: 3.0 / 1.2, n = 10^5: 62 / 7.5; 8+8 d, n = 10 000:
#: 0.45 / 1.7.  Crossovers near 4000 (d = 4), 9000 (d = 6) and 16 000 (d = 10) points.
TREE_CROSSOVER_N = 1_600
TREE_DIMS_PER_DOUBLING = 3

_INF = float("inf")

#: On CUDA, dimensions up to which the running-maximum distance kernel is used (see
#: ``_chebyshev``); above it ``torch.cdist``'s per-pair reduction has enough work per pair.
CUDA_LOOP_MAX_DIM = 64


def enough_points(n: int, dim: int, base: float, per_doubling: float = 2) -> bool:
    """Whether ``n >= base * 2^(dim / per_doubling)``, in logarithms: ``2.0 ** (dim / 2)``
    overflows a float from about 2046 dimensions (a conv layer's flattened map)."""
    return n > 0 and dim / per_doubling <= math.log2(n / base)


def choose_backend(backend: str, device: torch.device, dim: int, n: int) -> str:
    """Resolve ``"auto"`` for n points of joint dimension ``dim``: brute force on CUDA, where
    the O(n^2) blocks are cheap.  On CPU, when brute force would run compiled (see
    :func:`brute_engine`; the points are float64), trees from
    ``TREE_CROSSOVER_N * 2^(dim / TREE_DIMS_PER_DOUBLING)`` points (the measured crossover);
    otherwise trees for ``dim <= TREE_MAX_DIM`` and ``n >= TREE_MIN_N``."""
    if backend not in BACKENDS:
        raise InputError(f"neighbours={backend!r} is not accepted; use one of {list(BACKENDS)}")
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "brute"
    # whether brute force runs compiled at scale: asked at BRUTE_NUMBA_MIN_N at least, so the
    # rule does not flip at that threshold (below it torch's blocks are as fast as trees)
    if brute_engine(max(n, BRUTE_NUMBA_MIN_N), torch.float64, device) == "numba":
        return "tree" if enough_points(n, dim, TREE_CROSSOVER_N, TREE_DIMS_PER_DOUBLING) else "brute"
    return "tree" if dim <= TREE_MAX_DIM and n >= TREE_MIN_N else "brute"


# --------------------------------------------------------------------------- brute force


def _block_rows(n: int, n_matrices: int, itemsize: int, budget: int) -> int:
    # each query row holds n_matrices (row, n) distance rows plus a boolean/compare row
    return chunk_rows(n, n * (itemsize * n_matrices + 2), budget)


def _chebyshev(queries: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Max-norm distances (b, n) between ``queries`` (b, d) and points given as ``columns``
    (d, n), i.e. the points transposed and contiguous.

    On CPU, ``torch.cdist(p=inf)`` (one fused pass per pair) is the fastest measured.  On
    CUDA its kernel spends one thread block per output pair, so its time grows with the
    number of pairs whatever d is; a running maximum over coordinates, each step a coalesced
    (b, n) pass, is far cheaper there for the d a kNN estimator sees.
    Both compute ``|a - b|`` in the same dtype, so the numbers are identical.
    """
    if queries.device.type != "cuda" or queries.shape[1] > CUDA_LOOP_MAX_DIM:
        return torch.cdist(queries, columns.T, p=_INF)
    out = (queries[:, :1] - columns[0]).abs_()
    tmp = torch.empty_like(out)
    for c in range(1, queries.shape[1]):
        torch.sub(queries[:, c:c + 1], columns[c], out=tmp)
        torch.maximum(out, tmp.abs_(), out=out)
    return out


def _blocked_distances(parts, columns, start, stop):
    """Max-norm distances of rows ``start:stop`` to all rows, per part, self set to inf."""
    rows = torch.arange(stop - start, device=parts[0].device)
    out = []
    for p, cols in zip(parts, columns):
        d = _chebyshev(p[start:stop], cols)  # (b, n)
        d[rows, rows + start] = _INF
        out.append(d)
    return out


def _columns(parts):
    return [p.T.contiguous() for p in parts]


#: Points from which "auto" runs the brute-force backend through the compiled kernels of
#: :mod:`ibtools.estimators._brute_numba` (a fresh install first compiles them, a few
#: seconds, then cached on disk).  The crossover where the kernels beat torch's blocks was
#: tuned with ``benchmarks/scaling.py``; its measurements are in ``benchmarks/RESULTS.md``.
BRUTE_NUMBA_MIN_N = 2_000
_BRUTE = _jit.Compiled("_brute_numba")


def brute_engine(n: int, dtype: torch.dtype, device: torch.device) -> str:
    """Which code runs the ``"brute"`` backend for n points.

    ``"numba"``: compiled per-row kernels (:mod:`ibtools.estimators._brute_numba`; needs
    numba: ``pip install "ibtools[fast]"``), float64 on CPU, no (rows, n) block in memory;
    ``"torch"``: ``torch.cdist`` blocks and ``topk``.  Both give
    identical distances and counts, except that among points at exactly the k-th distance the
    compiled kernels call the lowest index a neighbour and ``topk`` any of them, which can
    change KSG algorithm 2's counts on tied data (KSG's default jitter makes ties
    practically impossible).  The environment variable ``IBTOOLS_BRUTE_ENGINE`` (``auto`` |
    ``numba`` | ``torch``) overrides the choice; ``auto`` takes numba when it is installed,
    the points are float64 on CPU and ``n >= BRUTE_NUMBA_MIN_N``.
    """
    return _jit.choose("IBTOOLS_BRUTE_ENGINE", "torch", _BRUTE,
                       eligible=device.type == "cpu" and dtype == torch.float64,
                       n=n, min_n=BRUTE_NUMBA_MIN_N)


def _numba_columns(parts) -> np.ndarray:
    """The parts side by side, transposed: (sum of dims, n) float64, C-contiguous."""
    cat = parts[0] if len(parts) == 1 else torch.cat(list(parts), dim=1)
    return np.ascontiguousarray(cat.detach().numpy().T)


def _run_brute_numba(kernel: str, *args):
    with _jit.kernel_call() as threads:
        return getattr(_BRUTE.module(), kernel)(*args, 8 * threads)


def joint_neighbour_counts_brute(parts, k: int, algorithm: int, budget: int):
    """KSG's statistics in one brute-force pass over blocks of rows.

    Parameters
    ----------
    parts : list of Tensor, each (n, d_p)
        The marginal spaces; the joint distance is the maximum over parts.
    k : int
        Neighbour order.
    algorithm : {1, 2}
        1: counts ``n_p(i) = #{j != i : d_p(i, j) < eps(i)}`` with eps the joint k-th
        neighbour distance.  2: counts ``#{j != i : d_p(i, j) <= eps_p(i)}`` with eps_p the
        largest part-distance among the k joint neighbours.
    budget : int
        Scratch bytes per block.

    Returns
    -------
    eps : Tensor (n,)
        Joint k-th neighbour distance.
    counts : list of Tensor (n,), int64
        One per part.
    """
    n = parts[0].shape[0]
    if (len(parts) == 2 and n > k and min(p.shape[1] for p in parts) > 0
            and brute_engine(n, parts[0].dtype, parts[0].device) == "numba"):
        eps, nx, ny = _run_brute_numba("ksg_counts", _numba_columns(parts),
                                       int(parts[0].shape[1]), int(k), int(algorithm))
        return torch.from_numpy(eps), [torch.from_numpy(nx), torch.from_numpy(ny)]
    block = _block_rows(n, len(parts) + 2, parts[0].element_size(), budget)
    eps = torch.empty(n, dtype=parts[0].dtype, device=parts[0].device)
    counts = [torch.empty(n, dtype=torch.int64, device=parts[0].device) for _ in parts]
    columns = _columns(parts)
    for start in range(0, n, block):
        stop = min(n, start + block)
        dist = _blocked_distances(parts, columns, start, stop)
        joint = dist[0]
        for d in dist[1:]:
            joint = torch.maximum(joint, d)
        vals, idx = torch.topk(joint, k, dim=1, largest=False, sorted=True)
        eps[start:stop] = vals[:, k - 1]
        for p, d in enumerate(dist):
            if algorithm == 1:
                counts[p][start:stop] = (d < vals[:, k - 1:k]).sum(dim=1)
            else:
                radius = torch.gather(d, 1, idx).amax(dim=1, keepdim=True)
                counts[p][start:stop] = (d <= radius).sum(dim=1)
    return eps, counts


def knn_brute(points: torch.Tensor, k: int, budget: int, return_indices: bool = False):
    """k-th neighbour distance (self excluded) and, optionally, the k neighbours' indices."""
    n = points.shape[0]
    if n > k and points.shape[1] > 0 and brute_engine(n, points.dtype, points.device) == "numba":
        dist, idx = _run_brute_numba("knn", _numba_columns([points]), int(k))
        return (torch.from_numpy(dist[:, k - 1].copy()),
                torch.from_numpy(idx) if return_indices else None)
    block = _block_rows(n, 2, points.element_size(), budget)
    eps = torch.empty(n, dtype=points.dtype, device=points.device)
    index = torch.empty((n, k), dtype=torch.int64, device=points.device) if return_indices else None
    columns = _columns([points])
    for start in range(0, n, block):
        stop = min(n, start + block)
        (d,) = _blocked_distances([points], columns, start, stop)
        vals, idx = torch.topk(d, k, dim=1, largest=False, sorted=True)
        eps[start:stop] = vals[:, k - 1]
        if return_indices:
            index[start:stop] = idx
    return eps, index


def count_brute(points: torch.Tensor, radius: torch.Tensor, strict: bool,
                budget: int) -> torch.Tensor:
    """``#{j != i : d(i, j) < radius[i]}`` (``<=`` unless ``strict``) by blocks of rows."""
    n = points.shape[0]
    if points.shape[1] > 0 and brute_engine(n, points.dtype, points.device) == "numba":
        r = np.ascontiguousarray(radius.detach().numpy(), dtype=np.float64)
        return torch.from_numpy(_run_brute_numba("count_within", _numba_columns([points]), r,
                                                 bool(strict)))
    block = _block_rows(n, 2, points.element_size(), budget)
    out = torch.empty(n, dtype=torch.int64, device=points.device)
    columns = _columns([points])
    for start in range(0, n, block):
        stop = min(n, start + block)
        (d,) = _blocked_distances([points], columns, start, stop)
        r = radius[start:stop].unsqueeze(1)
        out[start:stop] = (d < r).sum(dim=1) if strict else (d <= r).sum(dim=1)
    return out


# --------------------------------------------------------------------------- trees

#: Leaf size of the numba tree (8, 16 and 32 measured alike on KSG's 5-d marginal counts
#: at n = 10^5).
NUMBA_LEAF_SIZE = 16
#: Points from which "auto" uses the numba tree.  Its first use in a fresh install compiles
#: it (then cached on disk); below this size the scipy / scikit-learn trees are fast enough
#: that compiling would not pay.
NUMBA_MIN_N = 20_000
_TREE = _jit.Compiled("_kdtree_numba")


def tree_engine(n: int | None = None) -> str:
    """Which k-d tree the ``"tree"`` backend uses for ``n`` points.

    ``"numba"``: the compiled max-norm tree of :mod:`ibtools.estimators._kdtree_numba`
    (needs numba: ``pip install "ibtools[fast]"``; KSG at n = 10^5 is timed against a
    cKDTree KSG in ``benchmarks/RESULTS.md``).  ``"scipy"``: scipy's
    cKDTree for the k-th
    neighbour and scikit-learn's KDTree for counts.  Both give identical distances and
    counts; which of several equidistant points is called a neighbour may differ (KSG's
    default jitter makes such ties practically impossible).  The environment
    variable ``IBTOOLS_TREE_ENGINE`` (``auto`` | ``numba`` | ``scipy``) overrides the
    choice; ``auto`` takes numba when it is installed and ``n >= NUMBA_MIN_N``.
    """
    return _jit.choose("IBTOOLS_TREE_ENGINE", "scipy", _TREE, n=n, min_n=NUMBA_MIN_N)


def _numba_tree(points: np.ndarray):
    """(tree arrays, points in leaf order, the order) of a numba tree over ``points`` (call
    inside :func:`ibtools.estimators._jit.kernel_call`)."""
    pts = np.ascontiguousarray(points, dtype=np.float64)
    order, start, end, left, lo, hi = _TREE.module().build(pts, NUMBA_LEAF_SIZE)
    return (start, end, left, lo, hi), np.ascontiguousarray(pts[order]), order


def _knn_numba(points: np.ndarray, k: int, return_indices: bool):
    with _jit.kernel_call():
        tree, local, order = _numba_tree(points)
        dist, idx = _TREE.module().knn(local, k, *tree)
    eps = np.empty(len(points))
    eps[order] = dist[:, k - 1]
    if not return_indices:
        return eps, None
    index = np.empty((len(points), k), dtype=np.int64)
    index[order] = order[idx]
    return eps, index


def _count_numba(points: np.ndarray, radius: np.ndarray, strict: bool) -> np.ndarray:
    with _jit.kernel_call():
        tree, local, order = _numba_tree(points)
        r = np.ascontiguousarray(np.asarray(radius, dtype=np.float64)[order])
        counted = _TREE.module().count_within(local, r, bool(strict), *tree)
    out = np.empty(len(points), dtype=np.int64)
    # the point itself is inside whenever the radius admits distance 0 (r > 0 strict, r >= 0
    # otherwise); otherwise, NaN included, nothing is counted, as in the scikit-learn path
    valid = r > 0 if strict else r >= 0
    out[order] = np.where(valid, counted - 1, 0)
    return out


def _tree_order(data: np.ndarray) -> np.ndarray:
    """A permutation that stores nearby points next to each other (cKDTree leaf order)."""
    from scipy.spatial import cKDTree

    return np.asarray(cKDTree(data, leafsize=16, balanced_tree=False).indices)


def knn_tree(points: np.ndarray, k: int, return_indices: bool = False):
    """k-th neighbour distance (self excluded) with a k-d tree (see :func:`tree_engine`);
    numpy in, numpy out."""
    if len(points) > k and tree_engine(len(points)) == "numba":
        return _knn_numba(points, k, return_indices)
    from scipy.spatial import cKDTree

    n = points.shape[0]
    order = _tree_order(points)
    local = np.ascontiguousarray(points[order])
    tree = cKDTree(local, leafsize=16, balanced_tree=False)
    # k + 1 because the query point is in the tree; with exact duplicates self may come
    # after a twin, which changes nothing for the (k+1)-th distance.
    dist, idx = tree.query(local, k=k + 1, p=np.inf, workers=-1)
    eps = np.empty(n)
    eps[order] = dist[:, k]
    if not return_indices:
        return eps, None
    own = idx == np.arange(n)[:, None]
    # move self (if present) to the end, keep the rest in distance order, take k
    pick = np.argsort(own, axis=1, kind="stable")[:, :k]
    neigh_local = np.take_along_axis(idx, pick, axis=1)
    index = np.empty((n, k), dtype=np.int64)
    index[order] = order[neigh_local]
    return eps, index


def count_tree(points: np.ndarray, radius: np.ndarray, strict: bool) -> np.ndarray:
    """``#{j != i : d(i, j) < radius[i]}`` (``<=`` unless ``strict``), max-norm, with a
    k-d tree (see :func:`tree_engine`; scikit-learn's KDTree and ``count_only`` without
    numba); numpy in, numpy out."""
    if len(points) and tree_engine(len(points)) == "numba":
        return _count_numba(points, radius, strict)
    from sklearn.neighbors import KDTree

    order = _tree_order(points)
    queries = np.ascontiguousarray(points[order])
    tree = KDTree(queries, leaf_size=40, metric="chebyshev")
    r = np.asarray(radius, dtype=np.float64)
    if strict:
        # KDTree counts d <= r; the next float below r turns that into d < r exactly
        r = np.nextafter(r, -np.inf)
    valid = r >= 0
    rq = np.where(valid, r, 0.0)[order]
    workers = _jit.workers()
    pieces = [p for p in np.array_split(np.arange(len(queries)), max(1, 4 * workers)) if len(p)]

    def run(ix):
        return tree.query_radius(queries[ix], rq[ix], count_only=True)

    if workers > 1:
        # KDTree.query_radius releases the GIL, so threads share the cores
        with ThreadPoolExecutor(max_workers=workers) as pool:
            parts = list(pool.map(run, pieces))
    else:
        parts = [run(ix) for ix in pieces]
    counted = np.concatenate(parts).astype(np.int64)
    out = np.empty(len(points), dtype=np.int64)
    out[order] = counted
    # the point itself lies at distance 0 <= r; a negative radius (strict, r = 0) counts none
    return np.where(valid, out - 1, 0)


# --------------------------------------------------------------------------- dispatch


def knn_distance(points: torch.Tensor, k: int, backend: str, budget: int,
                 return_indices: bool = False):
    """k-th neighbour max-norm distance (self excluded), computed with ``backend``.

    Returns tensors on the device of ``points``: ``(eps (n,), indices (n, k) or None)``.
    """
    if backend == "tree":
        eps, idx = knn_tree(points.detach().cpu().numpy(), k, return_indices)
        eps_t = torch.as_tensor(eps, dtype=points.dtype).to(points.device)
        idx_t = None if idx is None else torch.as_tensor(idx).to(points.device)
        return eps_t, idx_t
    return knn_brute(points, k, budget, return_indices)


def count_within(points: torch.Tensor, radius: torch.Tensor, strict: bool, backend: str,
                 budget: int) -> torch.Tensor:
    """``#{j != i : d(i, j) < radius[i]}`` (``<=`` unless ``strict``), max-norm.  1-D inputs
    use the sorted search whatever the backend."""
    if points.shape[1] == 1:
        return count_sorted_1d(points[:, 0], radius, strict)
    if backend == "tree":
        out = count_tree(points.detach().cpu().numpy(), radius.detach().cpu().numpy(), strict)
        return torch.as_tensor(out).to(points.device)
    return count_brute(points, radius, strict, budget)
