"""Resolution chosen from the data: ``binning:bin_width=auto`` and ``kde:noise_var=auto``.

A layer's output is a deterministic function of the input, so the "information" binning and
KDE read off it is set by their resolution: bins narrower than the gaps between rows, or noise
smaller than them, put every row alone in its bin or kernel and read I(X;T) = ln n and
I(T;Y) = H(Y) whatever the layer does; bins or noise wider than the data's spread read 0.
Fixed defaults (30 bins over the range, noise variance 0.1) land on one side or the other
depending on the layer's scale and dimension, which is why every layer of a real CNN read
ln n with them.

The rule used here ties the resolution to the data's own neighbourhood scale.  With
``k = ceil(sqrt(n))`` (the classic k-nearest-neighbour bandwidth: k grows with n while
k / n shrinks, so the resolution refines as rows are added), ``r_k`` is the median over rows
of the distance to the k-th nearest other row:

- KDE: noise standard deviation ``sigma = r_k / 2`` (``noise_var = r_k^2 / 4``).  The
  kernel weight of a row's k-th neighbour is then ``exp(-r_k^2 / (2 sigma^2)) = e^-2``, so each
  row's kernel overlaps on the order of sqrt(n) others: H(T+Z) - H(Z) sits near
  ``ln(n / sqrt(n)) = ln(n) / 2`` for structureless data, well below the ln n ceiling, and
  above 0 unless the layer collapses rows together.  Clustered layers (a classifier's
  classes) read lower I(X;T) and keep I(T;Y) near H(Y) when clusters hold more than about
  sqrt(n) rows.
- Binning: bin width ``r_k`` measured in the Chebyshev (max-coordinate) distance, the
  distance a grid cell sees, so a cell of that side around a typical row holds on the order
  of its k nearest neighbours.  In many dimensions the occupied cells can still be too many
  (a cell's volume shrinks like 2^-d against the neighbourhood's), so the width is widened to
  the smallest one (doubling, then bisection) at which fewer than half the rows have their own
  bin pattern (the binning saturation flag's threshold); the factor is recorded.  The grid of
  an automatic width starts at the variable's minimum, so a width beyond its spread leaves
  one bin and the widening always ends.
- Binning's I(X;T) with two continuous variables (the input and a layer): the first
  variable is taken at full resolution (each distinct row its own symbol), so for a layer
  T = f(X) the value is H of T's binned patterns, the quantity binning is meant to report
  for a deterministic network; the automatic width applies to the second.

``r_k`` is computed on at most :data:`QUERY_ROWS` seeded query rows against all rows (exact
for the queries), so the cost is O(QUERY_ROWS * n * d).  Rows tied with their neighbours
(post-ReLU zeros) can make ``r_k`` zero; the median of the positive k-th distances is used
then, and a constant layer gets width / noise 1 (any resolution reads 0 there).
"""

from __future__ import annotations

import contextlib
import math

import torch

#: Rows whose k-th neighbour distance is measured (seeded choice when n is larger).
QUERY_ROWS = 256

#: KDE's noise sd as a fraction of the k-th neighbour distance.
KDE_SIGMA_FRACTION = 0.5

#: Most doublings of binning's width while it is still saturated.
MAX_DOUBLINGS = 30

#: Geometric bisection steps between the last saturated and the first unsaturated width.
BISECTIONS = 8

AUTO = "auto"


def is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def neighbour_scale(t: torch.Tensor, p: float = 2.0, k: int | None = None,
                    seed: int = 0) -> float:
    """Median distance (Minkowski ``p``; ``float('inf')`` for Chebyshev) from a row to its
    k-th nearest other row, ``k = ceil(sqrt(n))`` by default; see the module docstring."""
    t = t.reshape(t.shape[0], -1).to(torch.float64)
    n = int(t.shape[0])
    if n < 2:
        return 1.0
    k = min(n - 1, k or math.ceil(math.sqrt(n)))
    if n > QUERY_ROWS:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        rows = torch.randperm(n, generator=gen)[:QUERY_ROWS].to(t.device)
    else:
        rows = torch.arange(n, device=t.device)
    kth = []
    for block in rows.split(64):
        dist = torch.cdist(t[block], t, p=p)
        dist[torch.arange(block.shape[0], device=t.device), block] = float("inf")  # not itself
        kth.append(dist.kthvalue(k, dim=1).values)
    kth = torch.cat(kth)
    scale = float(kth.median())
    if scale <= 0:
        positive = kth[kth > 0]
        scale = float(positive.median()) if positive.numel() else 0.0
    return scale if scale > 0 and math.isfinite(scale) else 1.0


def kde_noise_var(t: torch.Tensor) -> float:
    """KDE's automatic noise variance for layer ``t``: ``(r_k / 2)^2``."""
    return (KDE_SIGMA_FRACTION * neighbour_scale(t, p=2.0)) ** 2


def bin_width(t: torch.Tensor, count_patterns, saturation_fraction: float,
              max_bins: int) -> dict:
    """Binning's automatic width for ``t``: the Chebyshev ``r_k``; while
    ``count_patterns(width)`` (distinct bin patterns at that width) is at least
    ``saturation_fraction * n``, the smallest wider width that is not (doubling, then
    :data:`BISECTIONS` geometric bisections).  Returns the width, the base scale and the
    factor it was widened by."""
    n = int(t.shape[0])
    base = neighbour_scale(t, p=float("inf"))
    span = float(t.max() - t.min()) if t.numel() else 0.0
    width = max(base, span / (max_bins - 2)) if span > 0 else base
    limit = saturation_fraction * n
    start = width
    if n > 1 and count_patterns(width) >= limit:
        low, doublings = width, 0
        while doublings < MAX_DOUBLINGS and count_patterns(width) >= limit:
            low, width = width, width * 2.0
            doublings += 1
        for _ in range(BISECTIONS):  # narrow (low saturated, width not) geometrically
            mid = math.sqrt(low * width)
            if count_patterns(mid) >= limit:
                low = mid
            else:
                width = mid
    return {"bin_width": width, "neighbour_scale": base, "widened": width / start,
            "k": min(n - 1, math.ceil(math.sqrt(n))) if n > 1 else 0}


@contextlib.contextmanager
def kde_auto(estimator, tensors):
    """While an estimate runs, give an ``noise_var="auto"`` KDE the value resolved from the
    layer (the last continuous tensor: T in I(T;Y), I(X;T) and H(T)); yields the record for
    the result's details (``None`` when nothing was automatic)."""
    if not is_auto(estimator.noise_var):
        yield None
        return
    t = [x for x in tensors if x.is_floating_point()][-1]
    value = kde_noise_var(t)
    record = {"noise_var": value, "rule": "(r_k / 2)^2, r_k: median distance to the "
              "ceil(sqrt(n))-th neighbour", "neighbour_scale": math.sqrt(value) /
              KDE_SIGMA_FRACTION}
    estimator.noise_var = value
    try:
        yield record
    finally:
        estimator.noise_var = AUTO


@contextlib.contextmanager
def binning_auto(estimator, tensors, saturation_fraction: float, max_bins: int):
    """While an estimate runs, give a ``bin_width="auto"`` binning estimator one width per
    continuous variable (``estimator._auto_widths``; ``None``, full resolution, for the
    first of two continuous ones); yields the record for the result's details (``None``
    when nothing was automatic)."""
    if not is_auto(estimator.bin_width):
        yield None
        return
    found = {}
    continuous = [t.is_floating_point() for t in tensors]
    for slot, t in zip(("x", "y"), tensors):
        if slot == "x" and len(tensors) == 2 and all(continuous):
            found[slot] = {"bin_width": None, "widened": None}  # exact rows (the input)
        elif t.is_floating_point():
            found[slot] = bin_width(t, lambda w, t=t: estimator._pattern_count(t, w),
                                    saturation_fraction, max_bins)
    estimator._auto_widths = {slot: r["bin_width"] for slot, r in found.items()}
    record = {**{f"bin_width_{slot}": r["bin_width"] for slot, r in found.items()},
              "rule": "Chebyshev distance to the ceil(sqrt(n))-th neighbour (median), widened "
                      "while half the rows or more have their own bin pattern; of two "
                      "continuous variables the first is taken at full resolution",
              "widened": {slot: r["widened"] for slot, r in found.items()}}
    try:
        yield record
    finally:
        estimator._auto_widths = {}


def record_of(result) -> dict | None:
    """The automatic resolution stored in one result's details, if any."""
    if result is None:
        return None
    return (result.details or {}).get("auto_resolution")


def auto_resolution(r_ty, r_xt, r_prev) -> str | None:
    """The automatic resolution of one row's estimates as JSON for the results'
    ``resolution`` column: ``{"noise_var": v}`` or ``{"bin_width": w}`` for the layer T (the
    same in I(T;Y), I(X;T) and I(T_prev;T)), per quantity when they differ, None (an
    empty cell) when every setting was fixed."""
    import json

    out = {}
    for name, result in (("I(T;Y)", r_ty), ("I(X;T)", r_xt), ("I(T_prev;T)", r_prev)):
        rec = record_of(result)
        if not rec:
            continue
        if "noise_var" in rec:
            out[name] = {"noise_var": rec["noise_var"]}
        else:  # the layer's width: T is the second variable, or the only continuous one
            width = rec.get("bin_width_y") or rec.get("bin_width_x")
            out[name] = {"bin_width": width}
    values = {json.dumps(v, sort_keys=True) for v in out.values()}
    if len(values) == 1:
        return values.pop()
    return json.dumps(out, sort_keys=True) if out else None
