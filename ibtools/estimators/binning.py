"""Binning (plug-in) estimates of entropy and mutual information, in batch and streaming form.

Each unit's activation is put in a bin; the bin ids of one row form a discrete symbol, and
plug-in entropies of the symbol histograms give H(T), I(X;T) = H(X) + H(T) - H(X,T) and
I(T;Y) = H(T) - H(T|Y).  Rows are never looked up in an m**d table: a row's bin ids are
packed into a few int64 words, hashed to one int64 key, and keys are grouped with one sort;
the grouping is then checked word by word against the rows themselves, so a hash collision
can never merge two different rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from ibtools.estimators.base import (
    EstimateResult,
    Estimator,
    _jsonable,
    check_choice,
    check_int,
    check_positive,
    chunk_rows,
    default_memory_budget,
    entropy_from_counts,
    prepare,
    resolve_device,
    resolve_dtype,
    to_numpy_or_tensor,
)

STRATEGIES = ("uniform", "width", "quantile")

#: More bins per unit than this only splits rows apart (the estimate saturates at ln n);
#: the cap also bounds the width of the stored bin ids.
MAX_BINS = 65536

#: A binned variable whose distinct symbols reach this fraction of n is saturated.
SATURATION_FRACTION = 0.5

#: Shuffles of the automatic permutation null (p-values down to 1/31).
AUTO_PERMUTATIONS = 30

#: The automatic null runs when the value is below the G-test null mean plus this many sds.
NULL_REACH_SDS = 4.0

# Odd 64-bit multiplier (the golden-ratio constant) of the polynomial row hash, as int64.
_MULTIPLIER = 0x9E3779B97F4A7C15 - 2**64


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
        raise TypeError(f"range={value_range!r} must be None (derive from the data) or a pair "
                        f"(low, high) of numbers")
    low, high = float(value_range[0]), float(value_range[1])
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"range={value_range!r} needs finite low < high")
    return low, high


def _width_bins(low: float, high: float, width: float) -> int:
    count = max(1, math.ceil((high - low) / width - 1e-9))
    if count > MAX_BINS:
        raise ValueError(f"bin_width={width!r} gives {count} bins over [{low}, {high}]; at most "
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
            raise ValueError(f"bin_width={bin_width!r} gives {count} bins over the data range "
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


# --------------------------------------------------------------------------- plug-in MI


def _saturation_flag(name: str, symbols: int, n: int) -> str | None:
    if symbols < SATURATION_FRACTION * n:
        return None
    return (f"{name}: {symbols} distinct bin patterns among n={n} rows ({symbols / n:.0%}); "
            f"most rows sit alone in their bin, so the plug-in value is saturated near its "
            f"ceiling (an entropy <= ln n = {math.log(n):.3f} nats, I(T;Y) -> H(Y)) and measures "
            f"the bin resolution, not the data. Use fewer bins or more rows")


def _clip_flag(name: str, clipped: int, total: int, grid: BinGrid) -> str | None:
    if not clipped:
        return None
    return (f"{name}: {clipped} of {total} values ({clipped / total:.2%}) lie outside the fixed "
            f"range [{grid.low:.6g}, {grid.high:.6g}] and were clipped into the edge bins "
            f"(the trap of a fixed [-1, 1] range on ReLU/LayerNorm outputs); use range=None to "
            f"derive the range from the data")


def plugin_mi(counts_x, counts_y, counts_joint, n: int, miller_madow: bool):
    """I = H(X) + H(Y) - H(X,Y) from the three histograms; returns (value, details)."""
    hx = entropy_from_counts(counts_x, miller_madow)
    hy = entropy_from_counts(counts_y, miller_madow)
    hxy = entropy_from_counts(counts_joint, miller_madow)
    kx, ky, kxy = (int((c > 0).sum()) for c in (counts_x, counts_y, counts_joint))
    details = {"entropy_x": hx, "entropy_y": hy, "entropy_joint": hxy, "symbols_x": kx,
               "symbols_y": ky, "symbols_joint": kxy, "ceiling": min(hx, hy)}
    return hx + hy - hxy, details


# --------------------------------------------------------------------------- estimator


class Binning(Estimator):
    """Plug-in entropy and mutual information of binned activations.

    Each unit's value is put in a bin; a row's bin ids form one discrete symbol, and the
    plug-in (maximum-likelihood) entropies of the symbol histograms give
    H(T), I(X;T) = H(X) + H(T) - H(X,T) and, for discrete Y, I(T;Y) = H(T) - H(T|Y).
    For a deterministic network on distinct inputs (x given as distinct ids), I(X;T) = H(T).
    Two discrete variables give the plain plug-in MI.

    Parameters
    ----------
    n_bins : int, default 30
        Bins per unit for ``strategy="uniform"`` (equal width over the range) and
        ``"quantile"`` (equal mass per unit).  2..65536.
    bin_width : float or None
        Fixed bin width; overrides ``n_bins`` (``strategy="uniform"`` then acts as
        ``"width"``).  Without a range the grid is anchored at 0 (edges at multiples of the
        width), so bins mean the same in every layer and batch.
    strategy : {"uniform", "width", "quantile"}
        ``"quantile"`` is the adaptive binning of Chelombiev et al. (2019): per-unit edges at
        the data's quantiles, so every bin of a unit holds about n / n_bins rows.
    range : None or (low, high)
        ``None`` derives the range from the data, per variable (min and max over all its
        units).  A fixed range clips values outside it into the edge bins; their count is
        reported in ``details`` and flagged.  Not used by ``"quantile"``.
    miller_madow : bool, default False
        Add (K - 1) / (2n) to each plug-in entropy (K: occupied bins), which removes the
        first-order bias of the plug-in entropy (Miller 1955).
    **common
        seed, device, dtype, memory_budget, ci ("bootstrap"), n_resamples, confidence,
        n_permutations (see :class:`~ibtools.estimators.base.Estimator`).

    Notes
    -----
    Bias: the plug-in entropy is biased low by about (K - 1) / (2n), so the plug-in MI is
    biased high (about (K_xy - K_x - K_y + 1) / (2n) at independence; it shrinks with n).
    Continuous values give a discrete entropy of the binned symbol, which depends on the
    bin size: the "entropy" of a continuous T is H of its bins, not a differential entropy
    (``details["differential_entropy_approx"]`` adds d ln(width) for fixed-width grids).
    When the bins are fine enough that every row is its own symbol the value saturates at
    ln n (flagged).  Assumptions: rows are i.i.d.; discrete variables are exact class ids.
    ``entropy`` of continuous data returns that discrete entropy.  Deterministic.  Large
    inputs stream through row blocks sized to ``memory_budget``; for activations that do not
    fit in memory at all, use :class:`BinningAccumulator`.

    Interval (``ci="bootstrap"``): Efron's bias-corrected bootstrap.  A resample duplicates
    rows, so its histogram has fewer occupied cells and a larger plug-in bias than the
    estimate; percentile intervals of the resamples therefore sit above the estimate (and
    the reflected "basic" interval below it).  The interval is centred on the value minus
    the bootstrap bias estimate (mean of resamples - value), has half-width t(B - 1) times
    the resample sd (widened by the error of the bias estimate), and is stretched to contain
    the value (:mod:`ibtools.estimators.intervals`; ``details["ci_method"]``,
    ``"ci_bias"``, ``"ci_center"``).  With a continuous variable the interval is of the MI
    of the binned variables, and when the bias exceeds the spread of the resamples it is an
    interval of this estimator's value, not of the true MI; both are flagged.

    Independence (``n_permutations="auto"``, the default): when the value is within reach
    of the plug-in bias at independence -- below the G-test's null mean plus four null sds,
    ``(df + 4 sqrt(2 df)) / (2n)`` with ``df = (K_x - 1)(K_y - 1)`` occupied symbols (Wilks:
    ``2n I`` is chi-square with df degrees of freedom) -- 30 shuffles of y's symbols give a
    permutation null (each costs one regrouping of n pairs, not a re-binning); a p-value
    above 0.05 is flagged "not distinguishable from independence" and ``details["null"]``
    holds the null's mean, sd, 95% quantile and p-value.

    References
    ----------
    Shwartz-Ziv & Tishby, "Opening the black box of deep neural networks via information",
    arXiv:1703.00810 (2017).  Saxe et al., "On the information bottleneck theory of deep
    learning", ICLR (2018).  Chelombiev, Houghton & O'Donnell, "Adaptive estimators show
    information compression in deep neural networks", ICLR (2019).  Miller, "Note on the
    bias of information estimates" (1955).
    """

    name = "binning"
    bounded_by_sample_size = True
    defaults = {"n_bins": 30, "bin_width": None, "strategy": "uniform", "range": None,
                "miller_madow": False}
    interval_kinds = ("bootstrap",)
    handles_discrete_x = True
    handles_entropy_of_discrete = True
    auto_permutations = AUTO_PERMUTATIONS

    def _check_settings(self) -> None:
        check_int(self.n_bins, "n_bins", minimum=2, maximum=MAX_BINS)
        check_choice(self.strategy, "strategy", STRATEGIES)
        if self.bin_width is not None:
            check_positive(self.bin_width, "bin_width")
            if self.strategy == "quantile":
                raise ValueError(f"bin_width={self.bin_width!r} cannot be combined with "
                                 f"strategy='quantile' (equal-mass bins have no fixed width); "
                                 f"use n_bins, or strategy='width'")
        elif self.strategy == "width":
            raise ValueError("strategy='width' needs bin_width (a number > 0); got None")
        if self.range is not None:
            low, high = _check_range(self.range)
            if self.strategy == "quantile":
                raise ValueError(f"range={self.range!r} cannot be combined with "
                                 f"strategy='quantile' (its edges come from the data per unit)")
            if self.bin_width is not None:
                _width_bins(low, high, float(self.bin_width))
        if not isinstance(self.miller_madow, bool):
            raise TypeError(f"miller_madow must be True or False; got {self.miller_madow!r}")

    @property
    def effective_strategy(self) -> str:
        return "width" if self.bin_width is not None else self.strategy

    def _grid(self, t: torch.Tensor) -> BinGrid:
        value_range = None if self.range is None else _check_range(self.range)
        width = None if self.bin_width is None else float(self.bin_width)
        return make_grid(t, self.effective_strategy, self.n_bins, width, value_range,
                         self._budget(t.device))

    def _symbols(self, t, discrete: bool, name: str, details: dict, flags: list):
        """Labels (n,) and histogram of one variable."""
        n = t.shape[0]
        if discrete:
            return t, torch.bincount(t)
        grid = self._grid(t)
        words, clipped = bin_rows(t, grid, self._budget(t.device))
        labels, counts, _, collisions = group_rows(words, self._budget(t.device))
        info = grid.describe()
        info.update(clipped_values=clipped, clipped_fraction=clipped / t.numel(),
                    hash_collisions=collisions)
        details[f"bins_{name}"] = info
        details["clipped_values"] = details.get("clipped_values", 0) + clipped
        details["_values"] = details.get("_values", 0) + t.numel()
        for flag in (_clip_flag(name, clipped, t.numel(), grid),
                     _saturation_flag(name, int(counts.shape[0]), n)):
            if flag:
                flags.append(flag)
        return labels, counts

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        n = x.shape[0]
        details, flags = {}, []
        lx, cx = self._symbols(x, x_discrete, "x", details, flags)
        ly, cy = self._symbols(y, y_discrete, "y", details, flags)
        joint = lx * cy.shape[0] + ly
        cxy = torch.unique(joint, return_counts=True)[1]
        value, info = plugin_mi(cx, cy, cxy, n, self.miller_madow)
        details.update(info)
        if not (x_discrete or y_discrete):
            flag = _saturation_flag("joint (x, y)", info["symbols_joint"], n)
            if flag and not any("saturated" in f for f in flags):
                flags.append(flag)
        _finish_clip_details(details)
        return value, details, flags

    # -- intervals and the independence check -----------------------------------------------

    def _interval_flags(self, result, info) -> list:
        flags = super()._interval_flags(result, info)
        binned = "bins_x" in result.details or "bins_y" in result.details
        if binned and not flags:
            flags.append("interval of the estimator's value, not of the true "
                         f"{'MI' if result.quantity == 'mutual_information' else 'entropy'}: "
                         "with continuous data it covers the plug-in value of the binned "
                         "variables at these bins, which depends on the bins (information "
                         "lost in a bin reads low, sparse bins read high)")
        return flags

    def _null_needed(self, result) -> bool:
        """Whether the value is within the G-test's reach of the plug-in bias at
        independence: ``2n I`` is about chi-square with ``(K_x - 1)(K_y - 1)`` degrees of
        freedom there, so a value above its mean plus ``NULL_REACH_SDS`` sds cannot come
        from independent data and needs no permutations."""
        d = result.details
        df = max(1, (d["symbols_x"] - 1) * (d["symbols_y"] - 1))
        return result.value <= (df + NULL_REACH_SDS * math.sqrt(2.0 * df)) / (2.0 * result.n)

    def _null_values(self, run, x, y, perms) -> list:
        """The plug-in MI of each shuffle from the symbols binned once (binning a shuffled
        variable gives the same grid and the same symbols, shuffled)."""
        n = x.shape[0]
        lx, cx = self._symbols(x, x.ndim == 1, "x", {}, [])
        ly, cy = self._symbols(y, y.ndim == 1, "y", {}, [])
        ky = int(cy.shape[0])
        dense = int(cx.shape[0]) * ky <= 4 * n
        out = []
        for perm in perms:
            joint = lx * ky + ly[perm]
            cxy = torch.bincount(joint) if dense else torch.unique(joint, return_counts=True)[1]
            out.append(float(plugin_mi(cx, cy, cxy, n, self.miller_madow)[0]))
        return out

    def _entropy(self, x, discrete, rng):
        details, flags = {}, []
        _, counts = self._symbols(x, discrete, "x", details, flags)
        value = entropy_from_counts(counts, self.miller_madow)
        details["symbols"] = int((counts > 0).sum())
        details["ceiling"] = math.log(x.shape[0])
        width = details.get("bins_x", {}).get("bin_width")
        details["differential_entropy_approx"] = (
            None if width is None else value + x.shape[1] * math.log(width))
        _finish_clip_details(details)
        return value, details, flags


def _finish_clip_details(details: dict) -> None:
    total = details.pop("_values", 0)
    details.setdefault("clipped_values", 0)
    details["clipped_fraction"] = details["clipped_values"] / total if total else 0.0


# --------------------------------------------------------------------------- streaming


class BinningAccumulator:
    """Streaming binning estimate: ``update`` accumulates symbol counts batch by batch,
    ``compute`` returns the same numbers :class:`Binning` gives on all rows at once.

    Streaming needs a grid fixed before the first batch: a ``range`` (with ``n_bins`` or
    ``bin_width``) or per-unit ``edges`` (for example ``quantile_edges`` of a reference
    batch).  A range derived from the data would change with every batch.

    Parameters
    ----------
    range : (low, high), optional
        Fixed range; values outside are clipped into the edge bins and counted.
    n_bins : int, default 30
        Equal-width bins over ``range``.
    bin_width : float, optional
        Bins of this width starting at ``low`` (overrides ``n_bins``).
    edges : Tensor or array, shape (d, n_bins - 1) or (n_bins - 1,), optional
        Inner bin edges per unit (one row per unit, or one row for all units), nondecreasing.
    miller_madow : bool, default False
        Miller-Madow correction of each entropy.
    device, dtype, memory_budget
        As for :class:`Binning`; inputs are cast to ``dtype`` first so that the bins match
        the batch estimator's.

    Notes
    -----
    The state is the histogram itself: one row of bin ids per distinct symbol and one count
    per (symbol, label) pair, so memory grows with the number of distinct symbols, not
    with n.  ``update(t, y)`` takes integer labels ``y``; with labels ``compute`` returns
    I(T;Y), without them H(T).  No interval (the rows are not kept).
    """

    def __init__(self, range=None, n_bins=30, bin_width=None, edges=None, miller_madow=False,
                 device=None, dtype="float32", memory_budget=None):
        if (range is None) == (edges is None):
            raise ValueError("BinningAccumulator needs a fixed grid: give range=(low, high) "
                             "(with n_bins or bin_width) or edges=, not both and not neither")
        settings = {"n_bins": n_bins, "bin_width": bin_width, "range": range,
                    "miller_madow": miller_madow, "dtype": dtype, "memory_budget": memory_budget,
                    "strategy": "uniform" if edges is None else "quantile"}
        if edges is not None:
            if bin_width is not None:
                raise ValueError("bin_width cannot be combined with edges=")
            settings["range"], settings["n_bins"] = None, 2
        self._checker = Binning(**settings)  # validates the settings the same way
        self.params = {k: v for k, v in settings.items() if k != "strategy"}
        self.miller_madow = miller_madow
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self._edges = None if edges is None else self._check_edges(edges)
        self.reset()

    def _check_edges(self, edges) -> torch.Tensor:
        e = torch.as_tensor(to_numpy_or_tensor(edges, "edges")).to(self.device, torch.float64)
        if e.ndim == 1:
            e = e.unsqueeze(0)
        if e.ndim != 2 or e.shape[1] < 1 or not bool(torch.isfinite(e).all()):
            raise ValueError(f"edges must be finite, shape (d, n_bins - 1) or (n_bins - 1,); got "
                             f"shape {tuple(e.shape)}")
        if bool((e[:, 1:] < e[:, :-1]).any()):
            raise ValueError("edges must be nondecreasing along each unit's row")
        if e.shape[1] + 1 > MAX_BINS:
            raise ValueError(f"edges give {e.shape[1] + 1} bins; at most {MAX_BINS} are supported")
        return e.contiguous()

    def reset(self) -> None:
        """Forget every batch seen."""
        self._grid = self._d = self._has_y = None
        self._n = self._clipped = self._collisions = 0
        self._seconds = 0.0
        empty = torch.empty(0, dtype=torch.int64, device=self.device)
        # Symbols and labels get ids in order of first appearance, which never change; each
        # table keeps a key-sorted index next to it, so a batch is matched by binary search
        # and merged in linear time instead of regrouping every row seen so far.
        self._storage, self._k = None, 0             # (>= K, w) packed bin ids, by symbol id
        self._symbol_keys, self._symbol_ids = empty, empty    # sorted row keys -> symbol id
        self._label_values, self._label_ids = empty, empty    # sorted raw labels -> label id
        self._pair_keys, self._pair_counts = empty, empty     # sorted (symbol id << 32 | label id)

    @property
    def n(self) -> int:
        """Rows accumulated so far."""
        return self._n

    def _make_grid(self, d: int) -> BinGrid:
        b = self._checker
        if self._edges is not None:
            edges = self._edges
            if edges.shape[0] == 1:  # one row of edges shared by every unit
                edges = edges.expand(d, -1).contiguous()
            if edges.shape[0] != d:
                raise ValueError(f"edges has {edges.shape[0]} rows but t has {d} units")
            return BinGrid("quantile", edges.shape[1] + 1, edges=edges)
        low, high = _check_range(b.range)
        if b.bin_width is not None:
            w = float(b.bin_width)
            return BinGrid("width", _width_bins(low, high, w), low, high, w, fixed_range=True)
        return BinGrid("uniform", b.n_bins, low, high, (high - low) / b.n_bins, fixed_range=True)

    def _labels(self, y, n: int) -> torch.Tensor:
        a = to_numpy_or_tensor(y, "y")
        a = torch.as_tensor(a)
        if a.dtype.is_floating_point or a.dtype.is_complex:
            raise TypeError(f"y must hold integer class ids for streaming; got dtype {a.dtype}")
        a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a
        if a.ndim != 1 and a.shape[1] != 1:
            raise ValueError(f"y must be one label per row, shape ({n},); got {tuple(a.shape)}")
        a = a.reshape(-1).to(self.device, torch.int64)
        if a.shape[0] != n:
            raise ValueError(f"t and y must have the same number of rows; got t: {n} and "
                             f"y: {a.shape[0]}")
        return a

    def update(self, t, y=None) -> None:
        """Add a batch: activations ``t`` (b, ...) and optional integer labels ``y`` (b,)."""
        start = time.perf_counter()
        tt = self._rows(t)
        n, d = tt.shape
        if self._d is None:
            self._d, self._grid = d, self._make_grid(d)
        elif d != self._d:
            raise ValueError(f"t has {d} units per row but earlier batches had {self._d}")
        if self._has_y is None:
            self._has_y = y is not None
        elif self._has_y != (y is not None):
            raise ValueError("give labels y with every batch or with none")
        labels = self._labels(y, n) if y is not None else torch.zeros(n, dtype=torch.int64,
                                                                      device=self.device)
        budget = self._checker._budget(self.device)
        words, clipped = bin_rows(tt, self._grid, budget)
        local, _, reps, collisions = group_rows(words, budget)
        symbol = self._symbol_id(row_keys(words[reps]), words[reps])[local]
        values, local_label = torch.unique(labels, return_inverse=True)
        label = self._label_id(values)[local_label]
        pairs, counts = torch.unique(symbol * 2**32 + label, return_counts=True)
        self._pair_keys, self._pair_counts = _add_counts(self._pair_keys, self._pair_counts,
                                                         pairs, counts)
        self._n += n
        self._clipped += clipped
        self._collisions += collisions
        self._seconds += time.perf_counter() - start

    def _rows(self, t) -> torch.Tensor:
        """``t`` as a float (n, d) tensor; the full input check of :func:`prepare` runs only
        when a cheap min/max test finds a non-finite value (it then raises its message)."""
        a = to_numpy_or_tensor(t, "t")
        a = torch.as_tensor(a) if not isinstance(a, torch.Tensor) else a
        if a.ndim == 0 or a.shape[0] == 0 or a.numel() == 0 or a.dtype.is_complex \
                or a.dtype == torch.bool:
            return prepare(t, "t", discrete=False, device=self.device, dtype=self.dtype)[0]
        a = a.reshape(a.shape[0], -1).to(device=self.device, dtype=self.dtype)
        lo, hi = torch.aminmax(a)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            prepare(a, "t", discrete=False, device=self.device, dtype=self.dtype)
        return a

    @property
    def _words(self) -> torch.Tensor:
        return self._storage[: self._k]

    def _symbol_id(self, keys: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """Ids of distinct rows ``words`` (with their ``keys``), adding the new ones."""
        ids = torch.full_like(keys, -1)
        if self._k:
            lo = torch.searchsorted(self._symbol_keys, keys)
            hi = torch.searchsorted(self._symbol_keys, keys, right=True)
            found = hi > lo
            cand = self._symbol_ids[lo.clamp(max=self._symbol_keys.shape[0] - 1)]
            same = found & (hi - lo == 1) & (self._words[cand] == words).all(dim=1)
            ids[same] = cand[same]
            # a key shared by different rows (a hash collision): compare with each candidate
            for i in (found & ~same).nonzero().squeeze(1).tolist():
                for j in self._symbol_ids[int(lo[i]):int(hi[i])].tolist():
                    if bool((self._words[j] == words[i]).all()):
                        ids[i] = j
                self._collisions += int(ids[i] < 0)
        new = (ids < 0).nonzero().squeeze(1)
        if new.numel():
            first = self._k
            ids[new] = torch.arange(first, first + new.numel(), device=self.device)
            if self._storage is None or first + new.numel() > self._storage.shape[0]:
                # grow geometrically, so appending costs O(1) per symbol on average
                grown = torch.empty((max(2 * (first + new.numel()), 1024), words.shape[1]),
                                    dtype=torch.int64, device=self.device)
                if first:
                    grown[:first] = self._storage[:first]
                self._storage = grown
            self._storage[first:first + new.numel()] = words[new]
            self._k = first + new.numel()
            self._symbol_keys, self._symbol_ids = _merge_sorted(
                self._symbol_keys, self._symbol_ids, keys[new], ids[new])
        return ids

    def _label_id(self, values: torch.Tensor) -> torch.Tensor:
        """Ids of the distinct raw label ``values`` (sorted), adding the new ones."""
        pos = torch.searchsorted(self._label_values, values)
        known = pos < self._label_values.shape[0]
        known[known.clone()] = self._label_values[pos[known]] == values[known]
        ids = torch.full_like(values, -1)
        ids[known] = self._label_ids[pos[known]]
        new = (~known).nonzero().squeeze(1)
        first = self._label_values.shape[0]
        ids[new] = torch.arange(first, first + new.numel(), device=self.device)
        self._label_values, self._label_ids = _merge_sorted(
            self._label_values, self._label_ids, values[new], ids[new])
        return ids

    def compute(self) -> EstimateResult:
        """I(T;Y) when labels were given, else H(T), from every batch so far."""
        if self._n == 0:
            raise ValueError("compute() needs at least one update() first")
        start = time.perf_counter()
        k = self._k
        counts_t = torch.zeros(k, dtype=torch.int64, device=self.device).index_add_(
            0, self._pair_keys >> 32, self._pair_counts)
        counts_y = torch.zeros(self._label_values.shape[0], dtype=torch.int64,
                               device=self.device).index_add_(
            0, self._pair_keys & (2**32 - 1), self._pair_counts)
        total = self._n * self._d
        details = {"bins_x": dict(self._grid.describe(), clipped_values=self._clipped,
                                  clipped_fraction=self._clipped / total,
                                  hash_collisions=self._collisions),
                   "clipped_values": self._clipped, "clipped_fraction": self._clipped / total,
                   "streamed": True}
        flags = [f for f in (_clip_flag("x", self._clipped, total, self._grid),
                             _saturation_flag("x", k, self._n)) if f]
        if self._has_y:
            value, info = plugin_mi(counts_t, counts_y, self._pair_counts, self._n,
                                    self.miller_madow)
            details.update(info)
            quantity, dims = "mutual_information", (self._d, 1)
        else:
            value = entropy_from_counts(counts_t, self.miller_madow)
            details.update(symbols=k, ceiling=math.log(self._n))
            quantity, dims = "entropy", (self._d,)
        seconds = self._seconds + time.perf_counter() - start
        return EstimateResult(value=float(value), quantity=quantity, method="binning",
                              params=_jsonable(self.params), n=self._n, dims=dims,
                              seconds=seconds, flags=flags, details=details)


def _merge_sorted(keys: torch.Tensor, values: torch.Tensor, new_keys: torch.Tensor,
                  new_values: torch.Tensor):
    """Insert (new_keys, new_values) into the key-sorted pair (keys, values) in linear time."""
    order = torch.argsort(new_keys)
    new_keys, new_values = new_keys[order], new_values[order]
    total = keys.shape[0] + new_keys.shape[0]
    at = torch.searchsorted(keys, new_keys, right=True) + torch.arange(
        new_keys.shape[0], device=keys.device)
    slot = torch.zeros(total, dtype=torch.bool, device=keys.device)
    slot[at] = True
    out_keys = torch.empty(total, dtype=keys.dtype, device=keys.device)
    out_values = torch.empty(total, dtype=values.dtype, device=keys.device)
    out_keys[at], out_values[at] = new_keys, new_values
    out_keys[~slot], out_values[~slot] = keys, values
    return out_keys, out_values


def _add_counts(keys: torch.Tensor, counts: torch.Tensor, new_keys: torch.Tensor,
                new_counts: torch.Tensor):
    """Add counts of distinct ``new_keys`` into the key-sorted histogram (keys, counts)."""
    pos = torch.searchsorted(keys, new_keys)
    known = pos < keys.shape[0]
    known[known.clone()] = keys[pos[known]] == new_keys[known]
    counts = counts.index_add(0, pos[known], new_counts[known])
    return _merge_sorted(keys, counts, new_keys[~known], new_counts[~known])
