"""Is variant A's value higher than variant B's, cell by cell, over model seeds?

One comparison rule for the study examples and the reports, so a table and a report
sentence can never judge the same numbers differently.  Each *cell* (for example one layer
under one estimator setting) holds A's values and B's values, one per model seed.  A cell is
judged by

1. a Welch t-test (unequal variances, :func:`scipy.stats.ttest_ind` with
   ``equal_var=False``), two-sided;
2. a correction for multiplicity over *all cells of the comparison* (Holm by default, which
   controls the family-wise error rate; Benjamini-Hochberg as an option, which controls the
   false discovery rate): with 240 cells at p < 0.05 each, a dozen "findings" are expected
   from noise alone;
3. a minimum effect size in the value's unit: a difference smaller than
   :data:`MIN_EFFECT_NATS` is not a finding however small its p-value (a network whose
   seeds agree to 1e-8 makes a 1e-5 difference "significant").

Cohen's d (the difference over the root-mean-square of the two seed sds) is reported beside
each verdict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from ibtools.errors import InputError

__all__ = ["ALPHA", "CORRECTIONS", "MIN_EFFECT_NATS", "VERDICTS", "adjust_pvalues",
           "compare_cells", "compare_to_reference", "summarize", "welch"]

#: Differences smaller than this many nats are "below effect size" whatever the test says.
#: 0.01 nats is about the seed-to-seed sd of binning and KDE IB values in the IBNorm study
#: and a tenth of the smallest differences between estimator settings there.
MIN_EFFECT_NATS = 0.01
#: Family-wise (Holm) or false-discovery (BH) level of the corrected p-values.
ALPHA = 0.05
CORRECTIONS = ("holm", "bh", "none")
#: The verdicts a cell can get, in report order.
VERDICTS = ("higher", "lower", "no difference", "below effect size", "not computed")


def _check(alpha, min_effect, correction):
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise InputError(f"alpha must be a number in (0, 1), got {alpha!r}")
    if not isinstance(min_effect, (int, float)) or not min_effect >= 0 or math.isinf(min_effect):
        raise InputError(f"min_effect must be a finite number >= 0 (in the value's unit), "
                         f"got {min_effect!r}")
    if correction not in CORRECTIONS:
        raise InputError(f"correction must be one of {CORRECTIONS}, got {correction!r}")


def welch(a: Sequence[float], b: Sequence[float]) -> dict:
    """Welch's two-sided t-test of mean(a) against mean(b), with Cohen's d.

    Parameters
    ----------
    a, b : sequence of float
        One value per seed; NaN values (an estimator that refused) are dropped.

    Returns
    -------
    dict
        ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``sd_a``, ``sd_b`` (ddof 1), ``diff``
        (mean_a - mean_b), ``cohens_d``, ``t``, ``df`` and ``p``.  With fewer than two
        values on a side the test is undefined and ``p`` is NaN.  When both sides have zero
        spread, ``p`` is 0 for different means and 1 for equal ones (the t statistic is
        infinite or undefined; these are exact statements about the seeds).
    """
    from scipy import stats

    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    out = {"n_a": len(a), "n_b": len(b),
           "mean_a": float(a.mean()) if len(a) else math.nan,
           "mean_b": float(b.mean()) if len(b) else math.nan,
           "sd_a": float(a.std(ddof=1)) if len(a) > 1 else math.nan,
           "sd_b": float(b.std(ddof=1)) if len(b) > 1 else math.nan}
    out["diff"] = out["mean_a"] - out["mean_b"]
    out.update(cohens_d=math.nan, t=math.nan, df=math.nan, p=math.nan)
    if len(a) < 2 or len(b) < 2:
        return out
    spread = math.sqrt((out["sd_a"] ** 2 + out["sd_b"] ** 2) / 2)
    if spread == 0:
        same = out["diff"] == 0
        out.update(cohens_d=0.0 if same else math.copysign(math.inf, out["diff"]),
                   t=0.0 if same else math.copysign(math.inf, out["diff"]),
                   df=float(len(a) + len(b) - 2), p=1.0 if same else 0.0)
        return out
    with warnings.catch_warnings():
        # seeds that agree to ~1e-8 (a saturated estimator) make scipy warn of precision
        # loss; the statistic is still right to the digits a verdict needs
        warnings.simplefilter("ignore", RuntimeWarning)
        res = stats.ttest_ind(a, b, equal_var=False)
    va, vb = out["sd_a"] ** 2 / len(a), out["sd_b"] ** 2 / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    out.update(cohens_d=out["diff"] / spread, t=float(res.statistic), df=float(df),
               p=float(res.pvalue))
    return out


def adjust_pvalues(p: Sequence[float], correction: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values over one family of tests.

    Parameters
    ----------
    p : sequence of float
        Raw p-values; NaN entries (untested cells) stay NaN and do not count as tests.
    correction : {"holm", "bh", "none"}
        ``"holm"``: Holm's step-down adjustment (family-wise error rate);
        ``"bh"``: Benjamini-Hochberg step-up adjustment (false discovery rate);
        ``"none"``: the raw values.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, capped at 1, in the input order.
    """
    if correction not in CORRECTIONS:
        raise InputError(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    p = np.asarray(p, dtype=float)
    out = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    if m == 0 or correction == "none":
        out[tested] = p[tested]
        return out
    order = tested[np.argsort(p[tested], kind="mergesort")]
    ranked = p[order]
    if correction == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    else:
        adjusted = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
        adjusted = np.minimum(1.0, adjusted)
    out[order] = adjusted
    return out


def _verdict(row, alpha, min_effect):
    if math.isnan(row["p"]):
        return "not computed"
    if abs(row["diff"]) < min_effect:
        return "below effect size"
    if row["p_adj"] < alpha:
        return "higher" if row["diff"] > 0 else "lower"
    return "no difference"


def compare_cells(cells: Iterable[tuple[dict, Sequence[float], Sequence[float]]], *,
                  alpha: float = ALPHA, min_effect: float = MIN_EFFECT_NATS,
                  correction: str = "holm") -> pd.DataFrame:
    """Judge A against B in every cell of one comparison.

    Parameters
    ----------
    cells : iterable of (dict, sequence, sequence)
        ``(keys, a_values, b_values)`` per cell; ``keys`` (e.g. ``{"layer": ..., "setting":
        ...}``) become the first columns of the result.
    alpha : float
        Level the corrected p-value is compared with.
    min_effect : float
        Smallest |mean difference| that can be a finding, in the values' unit (default
        :data:`MIN_EFFECT_NATS`; pass ``MIN_EFFECT_NATS / ln 2`` for bits).
    correction : {"holm", "bh", "none"}
        Multiplicity correction over all cells passed together.

    Returns
    -------
    pandas.DataFrame
        The keys, the columns of :func:`welch`, ``p_adj`` and ``verdict``: ``"higher"`` or
        ``"lower"`` (A's mean above or below B's, corrected p < alpha and |diff| >=
        min_effect), ``"below effect size"`` (|diff| < min_effect), ``"no difference"``
        (the test cannot tell them apart at this level) or ``"not computed"`` (fewer than
        two finite values on a side).
    """
    _check(alpha, min_effect, correction)
    rows = [{**dict(keys), **welch(a, b)} for keys, a, b in cells]
    table = pd.DataFrame(rows)
    if table.empty:
        return pd.DataFrame(columns=["n_a", "n_b", "mean_a", "mean_b", "sd_a", "sd_b", "diff",
                                     "cohens_d", "t", "df", "p", "p_adj", "verdict"])
    table["p_adj"] = adjust_pvalues(table["p"].to_numpy(), correction)
    table["verdict"] = [_verdict(r, alpha, min_effect) for r in table.to_dict("records")]
    return table


def compare_to_reference(table: pd.DataFrame, *, variant: str, reference, cell: Sequence[str],
                         value: str = "ib_value", alpha: float = ALPHA,
                         min_effect: float = MIN_EFFECT_NATS,
                         correction: str = "holm") -> pd.DataFrame:
    """Every variant against one reference variant, over all cells as one family.

    Parameters
    ----------
    table : pandas.DataFrame
        One row per (variant, cell, seed) with the columns named below.
    variant : str
        Column naming the variant of each row.
    reference : object
        The value of ``variant`` every other variant is compared with (B in each cell).
    cell : sequence of str
        Columns that define a cell (e.g. ``["layer", "setting"]``).
    value : str
        Column compared.
    alpha, min_effect, correction
        As in :func:`compare_cells`; the correction runs over all variants and cells.

    Returns
    -------
    pandas.DataFrame
        One row per (variant, cell): ``variant``, ``reference``, the cell columns and the
        columns of :func:`compare_cells`.
    """
    missing = [c for c in [variant, value, *cell] if c not in table.columns]
    if missing:
        raise InputError(f"table lacks the column(s) {missing}; it has {list(table.columns)}")
    if reference not in set(table[variant]):
        raise InputError(f"reference={reference!r} is not a value of column {variant!r}; "
                         f"values: {sorted(map(str, table[variant].unique()))}")
    cell = list(cell)
    base = {k if isinstance(k, tuple) else (k,): g[value].to_numpy()
            for k, g in table[table[variant] == reference].groupby(cell, sort=False, dropna=False)}
    cells = []
    others = table[table[variant] != reference]
    for (name, *key), group in others.groupby([variant, *cell], sort=False, dropna=False):
        b = base.get(tuple(key))
        if b is None:
            continue
        keys = {"variant": name, "reference": reference, **dict(zip(cell, key))}
        cells.append((keys, group[value].to_numpy(), b))
    return compare_cells(cells, alpha=alpha, min_effect=min_effect, correction=correction)


def summarize(comparison: pd.DataFrame, by: Sequence[str] = ()) -> pd.DataFrame:
    """Count the verdicts of a comparison, overall or per group.

    Parameters
    ----------
    comparison : pandas.DataFrame
        Output of :func:`compare_cells` or :func:`compare_to_reference`.
    by : sequence of str
        Columns to count within (e.g. ``["setting"]``); empty: one row for all cells.

    Returns
    -------
    pandas.DataFrame
        The ``by`` columns, one count column per verdict in :data:`VERDICTS` and ``cells``.
    """
    by = list(by)
    counts = pd.crosstab([comparison[c] for c in by] if by else
                         pd.Series("all", index=comparison.index, name="cells_of"),
                         comparison["verdict"]) if len(comparison) else pd.DataFrame()
    counts = counts.reindex(columns=list(VERDICTS), fill_value=0)
    counts.columns.name = None
    counts["cells"] = counts.sum(axis=1)
    return counts.reset_index() if by else counts.reset_index(drop=True)
