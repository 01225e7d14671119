"""Binning (plug-in) estimates of entropy and mutual information, in batch and streaming form.

Each unit's activation is put in a bin; the bin ids of one row form a discrete symbol, and
plug-in entropies of the symbol histograms give H(T), I(X;T) = H(X) + H(T) - H(X,T) and
I(T;Y) = H(T) - H(T|Y).  Rows are never looked up in an m**d table: a row's bin ids are
packed into a few int64 words, hashed to one int64 key, and keys are grouped with one sort;
the grouping is then checked word by word against the rows themselves, so a hash collision
can never merge two different rows.  The streaming form, :class:`BinningAccumulator`, lives
in :mod:`ibtools.estimators.binning_stream` and is importable from here.
"""

from __future__ import annotations

import math

import torch

from ibtools.errors import InputError, InputTypeError
from ibtools.estimators.base import (
    Estimator,
    check_choice,
    check_int,
    check_positive,
    entropy_from_counts,
)
from ibtools.estimators import resolution
from ibtools.estimators.binning_grid import (  # noqa: F401 - importable from here too
    MAX_BINS,
    STRATEGIES,
    BinGrid,
    _check_range,
    _representatives,
    _width_bins,
    bin_rows,
    group_rows,
    make_grid,
    quantile_edges,
    row_keys,
)
from ibtools.estimators.intervals import wilks_reach

#: A binned variable whose distinct symbols reach this fraction of n is saturated.
SATURATION_FRACTION = 0.5

#: Shuffles of the automatic permutation null (p-values down to 1/31).
AUTO_PERMUTATIONS = 30

#: The automatic null runs when the value is below the G-test null mean plus this many sds.
NULL_REACH_SDS = 4.0


# --------------------------------------------------------------------------- plug-in MI


def _saturation_flag(name: str, symbols: int, n: int) -> str | None:
    if symbols < SATURATION_FRACTION * n:
        return None
    return (f"{name}: {symbols} distinct bin patterns among n={n} rows ({symbols / n:.0%}); "
            f"most rows sit alone in their bin, so the plug-in value is saturated near its "
            f"ceiling (an entropy <= ln n = {math.log(n):.3f} nats, I(T;Y) -> H(Y)) and measures "
            f"the bin resolution, not the data. Use bin_width=auto (a width from the data's "
            f"neighbour distances, widened until unsaturated), fewer bins or more rows")


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
    bin_width : float, "auto" or None
        Fixed bin width; overrides ``n_bins`` (``strategy="uniform"`` then acts as
        ``"width"``).  Without a range the grid is anchored at 0 (edges at multiples of the
        width), so bins mean the same in every layer and batch.  ``"auto"``: each variable's
        width from its own scale (the median Chebyshev distance to the ceil(sqrt(n))-th
        neighbour, doubled while saturated; :mod:`ibtools.estimators.resolution`), recorded
        in ``details["auto_resolution"]``.
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
    limitations = (
        "Plug-in entropies of binned activations: the value depends on the bin grid; with "
        "fine bins and distinct inputs I(X;T) = H(T) approaches ln n.")
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
        if resolution.is_auto(self.bin_width):
            self.bin_width = resolution.AUTO
            if self.strategy == "quantile":
                raise InputError("bin_width='auto' cannot be combined with strategy='quantile' "
                                 "(equal-mass bins have no fixed width); use strategy='width' "
                                 "or 'uniform'")
        elif isinstance(self.bin_width, str):
            raise InputTypeError(f"bin_width={self.bin_width!r} is not accepted; use a number > 0, "
                             f"'auto' (chosen from the data's scale) or None")
        elif self.bin_width is not None:
            check_positive(self.bin_width, "bin_width")
            if self.strategy == "quantile":
                raise InputError(f"bin_width={self.bin_width!r} cannot be combined with "
                                 f"strategy='quantile' (equal-mass bins have no fixed width); "
                                 f"use n_bins, or strategy='width'")
        elif self.strategy == "width":
            raise InputError("strategy='width' needs bin_width (a number > 0); got None")
        if self.range is not None:
            low, high = _check_range(self.range)
            if self.strategy == "quantile":
                raise InputError(f"range={self.range!r} cannot be combined with "
                                 f"strategy='quantile' (its edges come from the data per unit)")
            if self.bin_width is not None and not resolution.is_auto(self.bin_width):
                _width_bins(low, high, float(self.bin_width))
        if not isinstance(self.miller_madow, bool):
            raise InputTypeError(f"miller_madow must be True or False; got {self.miller_madow!r}")

    @property
    def effective_strategy(self) -> str:
        return "width" if self.bin_width is not None else self.strategy

    def _grid(self, t: torch.Tensor, name: str = "x", width=None) -> BinGrid:
        value_range = None if self.range is None else _check_range(self.range)
        if resolution.is_auto(self.bin_width) and value_range is None and t.numel():
            # anchored at the data's minimum, not at 0: a width wider than the spread then
            # puts every row in one bin, so widening always ends the saturation
            lo, hi = torch.aminmax(t)
            value_range = (float(lo), max(float(hi), float(lo) + 1e-12))
        if width is None and resolution.is_auto(self.bin_width):
            width = self._auto_widths[name]  # resolved from the whole sample (_finish)
        elif width is None and self.bin_width is not None:
            width = float(self.bin_width)
        return make_grid(t, self.effective_strategy, self.n_bins, width, value_range,
                         self._budget(t.device))

    def _pattern_count(self, t: torch.Tensor, width: float) -> int:
        budget = self._budget(t.device)
        words, _ = bin_rows(t, self._grid(t, width=width), budget)
        return int(group_rows(words, budget)[1].shape[0])

    def _finish(self, quantity, run, tensors, n, dims, device, extra=None):
        """With ``bin_width='auto'``, each continuous variable's width comes from the whole
        sample (:func:`ibtools.estimators.resolution.binning_auto`) before any resample, and
        is recorded in ``details['auto_resolution']``."""
        with resolution.binning_auto(self, tensors, SATURATION_FRACTION, MAX_BINS) as record:
            result = super()._finish(quantity, run, tensors, n, dims, device, extra)
        if record is not None:
            result.details["auto_resolution"] = record
        return result

    def _symbols(self, t, discrete: bool, name: str, details: dict, flags: list):
        """Labels (n,) and histogram of one variable."""
        n = t.shape[0]
        if discrete:
            return t, torch.bincount(t)
        if resolution.is_auto(self.bin_width) and self._auto_widths.get(name, 0) is None:
            # the input of I(X;T) at full resolution: equal rows share a symbol, no others
            bits = t.contiguous().view(torch.int64 if t.element_size() == 8 else torch.int32)
            labels, counts = group_rows(bits.to(torch.int64), self._budget(t.device))[:2]
            details[f"bins_{name}"] = {"strategy": "exact rows"}
            return labels, counts
        grid = self._grid(t, name)
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
        exact_x = details.get("bins_x", {}).get("strategy") == "exact rows"
        if not (x_discrete or y_discrete or exact_x):
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
        if d.get("bins_x", {}).get("strategy") == "exact rows":
            return False  # distinct inputs: every pairing reads H(T's patterns), no test
        df = (d["symbols_x"] - 1) * (d["symbols_y"] - 1)
        return result.value <= wilks_reach(df, result.n, NULL_REACH_SDS)

    def _null_values(self, run, x, y, perms) -> list:
        """The plug-in MI of each shuffle from the symbols binned once (binning a shuffled
        variable gives the same grid and the same symbols, shuffled)."""
        n = x.shape[0]
        lx, cx = self._symbols(x, x.ndim == 1, "x", {}, [])
        ly, cy = self._symbols(y, y.ndim == 1, "y", {}, [])
        ky = int(cy.shape[0])
        dense = int(cx.shape[0]) * ky <= 4 * n
        # a shuffle leaves both histograms as they are: only H(X,Y) is recomputed per shuffle
        h_marginals = entropy_from_counts(cx, self.miller_madow) + entropy_from_counts(
            cy, self.miller_madow)
        out = []
        for perm in perms:
            joint = lx * ky + ly[perm]
            cxy = torch.bincount(joint) if dense else torch.unique(joint, return_counts=True)[1]
            out.append(float(h_marginals - entropy_from_counts(cxy, self.miller_madow)))
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


def __getattr__(name):
    # the streaming accumulator lives in binning_stream.py (it imports this module)
    if name == "BinningAccumulator":
        from ibtools.estimators.binning_stream import BinningAccumulator

        return BinningAccumulator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
