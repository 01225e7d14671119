"""Streaming binning: symbol and label counts accumulated batch by batch on a fixed grid.

:class:`BinningAccumulator` gives the numbers :class:`~ibtools.estimators.binning.Binning`
gives on all rows at once, holding only the histogram (one row of bin ids per distinct
symbol and one count per (symbol, label) pair), in the style of torchmetrics' split of
``update`` (sufficient statistics) from ``compute`` (the value).
"""

from __future__ import annotations

import math
import time

import torch

from ibtools.errors import InputError, InputTypeError
from ibtools.estimators.base import (
    EstimateResult,
    _jsonable,
    entropy_from_counts,
    prepare,
    resolve_device,
    resolve_dtype,
    to_numpy_or_tensor,
)
from ibtools.estimators.binning import (
    MAX_BINS,
    BinGrid,
    Binning,
    _check_range,
    _clip_flag,
    _saturation_flag,
    _width_bins,
    bin_rows,
    group_rows,
    plugin_mi,
    row_keys,
)


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
            raise InputError("BinningAccumulator needs a fixed grid: give range=(low, high) "
                             "(with n_bins or bin_width) or edges=, not both and not neither")
        settings = {"n_bins": n_bins, "bin_width": bin_width, "range": range,
                    "miller_madow": miller_madow, "dtype": dtype, "memory_budget": memory_budget,
                    "strategy": "uniform" if edges is None else "quantile"}
        if edges is not None:
            if bin_width is not None:
                raise InputError("bin_width cannot be combined with edges=")
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
            raise InputError(f"edges must be finite, shape (d, n_bins - 1) or (n_bins - 1,); got "
                             f"shape {tuple(e.shape)}")
        if bool((e[:, 1:] < e[:, :-1]).any()):
            raise InputError("edges must be nondecreasing along each unit's row")
        if e.shape[1] + 1 > MAX_BINS:
            raise InputError(f"edges give {e.shape[1] + 1} bins; at most {MAX_BINS} are supported")
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
                raise InputError(f"edges has {edges.shape[0]} rows but t has {d} units")
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
            raise InputTypeError(f"y must hold integer class ids for streaming; got dtype "
                                 f"{a.dtype}")
        a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a
        if a.ndim != 1 and a.shape[1] != 1:
            raise InputError(f"y must be one label per row, shape ({n},); got {tuple(a.shape)}")
        a = a.reshape(-1).to(self.device, torch.int64)
        if a.shape[0] != n:
            raise InputError(f"t and y must have the same number of rows; got t: {n} and "
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
            raise InputError(f"t has {d} units per row but earlier batches had {self._d}")
        if self._has_y is None:
            self._has_y = y is not None
        elif self._has_y != (y is not None):
            raise InputError("give labels y with every batch or with none")
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
            raise InputError("compute() needs at least one update() first")
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
