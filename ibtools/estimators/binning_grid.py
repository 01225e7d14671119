"""Bin grids and the grouping of binned rows into symbols, for the binning estimators.

A grid per unit (equal-width bins over the data's or a given range, a fixed bin width, or
equal-mass quantile edges) maps activations to bin ids; a row's ids are packed into int64
words, hashed to one key, and keys are grouped with one sort, checked word by word against
the rows so a hash collision can never merge two different rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ibtools.errors import EstimatorRefused, InputError, InputTypeError
from ibtools.estimators.base import chunk_rows, default_memory_budget

# Odd 64-bit multiplier (the golden-ratio constant) of the polynomial row hash, as int64.
_MULTIPLIER = 0x9E3779B97F4A7C15 - 2**64

#: More bins per unit than this only splits rows apart (the estimate saturates at ln n);
#: the cap also bounds the width of the stored bin ids.
MAX_BINS = 65536

STRATEGIES = ("uniform", "width", "quantile")

# --------------------------------------------------------------------------- grids


@dataclass
class BinGrid:
    """How one variable's values become bin ids (the same grid for every unit, except the
    per-unit edges of the quantile strategy)."""

    strategy: str
    n_codes: int                  # bins per unit
    low: float | None = None      # left end of bin 0 (uniform, width)
    high: float | None = None
    width: float | None = None    # bin width (uniform, width)
    offset: float = 0.0           # width grid anchored at 0: code = floor(v / w) - offset
    edges: torch.Tensor | None = None  # (d, n_codes - 1) inner edges per unit (quantile)
    fixed_range: bool = False     # user range: values outside are clipped and counted

    def describe(self) -> dict:
        out = {"strategy": self.strategy, "bins_per_unit": self.n_codes}
        if self.strategy != "quantile":
            out.update(range=[self.low, self.high], bin_width=self.width,
                       range_source="user" if self.fixed_range else "data")
        return out


def _check_range(value_range) -> tuple[float, float]:
    ok = isinstance(value_range, (tuple, list)) and len(value_range) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range)
    if not ok:
        raise InputTypeError(f"range={value_range!r} must be None (derive from the data) or a pair "
                             f"(low, high) of numbers")
    low, high = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise InputError(f"range={value_range!r} needs finite low < high")
    return low, high


def _width_bins(low: float, high: float, width: float) -> int:
    count = max(1, math.ceil((high - low) / width - 1e-9))
    if count > MAX_BINS:
        raise InputError(f"bin_width={width!r} gives {count} bins over [{low}, {high}]; at most "
                         f"{MAX_BINS} bins per unit are supported. Use a larger bin_width")
    return count


def quantile_edges(t: torch.Tensor, n_bins: int, budget: int | None = None) -> torch.Tensor:
    """Inner edges of ``n_bins`` equal-mass bins for each unit (column) of ``t``.

    Parameters
    ----------
    t : Tensor, shape (n, d)
        Reference activations.
    n_bins : int
        Bins per unit.
    budget : int, optional
        Scratch bytes for sorting; columns are sorted in groups that fit.

    Returns
    -------
    Tensor, shape (d, n_bins - 1), float64
        Row j holds unit j's edges: the order statistics at ranks ``floor(k n / n_bins)``,
        k = 1..n_bins-1.  A value v lands in bin ``#(edges <= v)``, so with distinct values
        bin k holds ``floor((k+1) n / m) - floor(k n / m)`` rows (equal when m divides n);
        ties stay together in one bin.
    """
    n, d = t.shape
    budget = budget or default_memory_budget(t.device)
    ranks = [min(n - 1, (k * n) // n_bins) for k in range(1, n_bins)]
    out = torch.empty((d, n_bins - 1), dtype=torch.float64, device=t.device)
    cols = chunk_rows(d, n * 24, budget)  # a float64 copy plus sort scratch per column
    for c0 in range(0, d, cols):
        block = t[:, c0:c0 + cols].T.to(torch.float64, memory_format=torch.contiguous_format)
        if t.device.type == "cpu":
            # selecting the order statistics is several times faster than sorting on CPU
            chosen = np.partition(block.numpy(), ranks, axis=1)[:, ranks]
            out[c0:c0 + cols] = torch.from_numpy(chosen)
        else:
            out[c0:c0 + cols] = torch.sort(block, dim=1).values[:, ranks]
    return out


def make_grid(t: torch.Tensor, strategy: str, n_bins: int, bin_width, value_range,
              budget: int) -> BinGrid:
    """The grid of one variable ``t`` (n, d): from the settings, and from the data where the
    settings leave it open (range of the whole variable; per-unit quantiles)."""
    if strategy == "quantile":
        return BinGrid("quantile", n_bins, edges=quantile_edges(t, n_bins, budget))
    if value_range is not None:
        low, high = value_range
        if strategy == "width":
            return BinGrid("width", _width_bins(low, high, bin_width), low, high, bin_width,
                           fixed_range=True)
        return BinGrid("uniform", n_bins, low, high, (high - low) / n_bins, fixed_range=True)
    lo, hi = torch.aminmax(t)
    low, high = float(lo), float(hi)
    if strategy == "width":
        # anchored at 0, so bins are comparable across layers, checkpoints and batches
        first, last = math.floor(low / bin_width), math.floor(high / bin_width)
        count = last - first + 1
        if count > MAX_BINS:
            raise EstimatorRefused(f"bin_width={bin_width!r} gives {count} bins over the data range "
                             f"[{low:.6g}, {high:.6g}]; at most {MAX_BINS} bins per unit are "
                             f"supported. Use a larger bin_width")
        return BinGrid("width", count, first * bin_width, (last + 1) * bin_width, bin_width,
                       offset=float(first))
    return BinGrid("uniform", n_bins, low, high, (high - low) / n_bins if high > low else None)


# --------------------------------------------------------------------------- symbols


def _code_dtype(n_codes: int) -> torch.dtype:
    if n_codes <= 256:
        return torch.uint8
    return torch.int16 if n_codes <= 32767 else torch.int32


def row_keys(words: torch.Tensor) -> torch.Tensor:
    """int64 key of each row of ``words`` (n, w) int64: the row itself when w == 1 (exact),
    else a polynomial hash modulo 2**64 (int64 arithmetic wraps)."""
    key = words[:, 0].clone()
    for j in range(1, words.shape[1]):
        key.mul_(_MULTIPLIER).add_(words[:, j])
    return key


def bin_rows(t: torch.Tensor, grid: BinGrid, budget: int):
    """Bin ids of ``t`` (n, d) on ``grid``, packed as int64 words, and the clipped count.

    Bin ids are stored in the smallest integer type that holds them, each row padded to a
    multiple of 8 bytes, so a row is read as a few int64 words (8 units per word at <= 256
    bins): rows can then be hashed and compared word by word.  Works in row blocks sized to
    ``budget``, in the dtype of ``t``.  Returns ``(words (n, w) int64, clipped int)``.
    """
    n, d = t.shape
    dtype = _code_dtype(grid.n_codes)
    per_word = 8 // dtype.itemsize
    width = -(-d // per_word) * per_word
    codes = torch.empty((n, width), dtype=dtype, device=t.device)
    codes[:, d:] = 0
    rows = chunk_rows(n, d * (t.element_size() + 8), budget, minimum=256)
    buffer = torch.empty((rows, d), dtype=t.dtype, device=t.device)
    clipped = torch.zeros((), dtype=torch.int64, device=t.device)
    for r0 in range(0, n, rows):
        block = t[r0:r0 + rows]
        if grid.fixed_range:
            lo, hi = torch.aminmax(block)  # cheap; counting is only needed when it clips
            if float(lo) < grid.low or float(hi) > grid.high:
                clipped += torch.count_nonzero(block < grid.low) + torch.count_nonzero(
                    block > grid.high)
        codes[r0:r0 + rows, :d] = _codes(block, buffer[: block.shape[0]], grid)
    return codes.view(torch.int64), int(clipped)


def _codes(block: torch.Tensor, out: torch.Tensor, grid: BinGrid) -> torch.Tensor:
    """Bin ids of ``block`` (rows, d), integer-valued, computed in ``out`` where possible."""
    top = grid.n_codes - 1
    if grid.strategy == "quantile":
        if block.device.type == "cpu":  # numpy's per-column search is much faster on CPU
            values, edges = block.numpy(), grid.edges.numpy()
            ids = np.empty(values.shape, dtype=np.int64)
            for j in range(values.shape[1]):
                ids[:, j] = np.searchsorted(edges[j], values[:, j], side="right")
            return torch.from_numpy(ids)
        queries = block.T.to(torch.float64, memory_format=torch.contiguous_format)
        return torch.searchsorted(grid.edges, queries, right=True).T
    if grid.strategy == "width" and not grid.fixed_range:
        return torch.div(block, grid.width, out=out).floor_().sub_(grid.offset).clamp_(0, top)
    if grid.width is None:  # constant variable: one bin
        return out.zero_()
    if grid.strategy == "width":
        return torch.sub(block, grid.low, out=out).div_(grid.width).floor_().clamp_(0, top)
    scale = grid.n_codes / (grid.high - grid.low)
    return torch.sub(block, grid.low, out=out).mul_(scale).floor_().clamp_(0, top)


def group_rows(words: torch.Tensor, budget: int | None = None):
    """Group identical rows of ``words`` (n, w) int64.

    Returns ``(labels (n,) in 0..K-1, counts (K,), representatives (K,), collisions)``.
    Rows are grouped by :func:`row_keys`, then every row is compared with its group's
    representative.  Rows that differ (a hash collision) are split off exactly with
    ``torch.unique(dim=0)`` on just those rows: rows with equal words have equal keys, so a
    collision only ever merges rows inside one key group.  ``collisions`` counts the extra
    groups found that way (0 in practice; always 0 when a row fits one word).
    """
    n = words.shape[0]
    _, labels, counts = torch.unique(row_keys(words), return_inverse=True, return_counts=True)
    reps = _representatives(labels, counts.shape[0])
    if words.shape[1] == 1:
        return labels, counts, reps, 0
    rows = chunk_rows(n, words.shape[1] * 24, budget or default_memory_budget(words.device))
    bad = torch.cat([(words[r0:r0 + rows] != words[reps[labels[r0:r0 + rows]]]).any(dim=1)
                     for r0 in range(0, n, rows)])
    if not bool(bad.any()):
        return labels, counts, reps, 0
    idx = bad.nonzero().squeeze(1)
    _, extra = torch.unique(words[idx], dim=0, return_inverse=True)
    labels = labels.clone()
    labels[idx] = counts.shape[0] + extra
    counts = torch.bincount(labels)
    return labels, counts, _representatives(labels, counts.shape[0]), int(extra.max()) + 1


def _representatives(labels: torch.Tensor, k: int) -> torch.Tensor:
    """One row index per label (any of its rows: they are identical)."""
    reps = torch.empty(k, dtype=torch.int64, device=labels.device)
    return reps.scatter_(0, labels, torch.arange(labels.shape[0], device=labels.device))
