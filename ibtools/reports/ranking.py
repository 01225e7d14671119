"""Which model variant has the highest value, and does that survive the estimator choice.

Shared by the agreement plot and the written summary, so a figure's verdict and the
report's sentences can never disagree.
"""

from __future__ import annotations

import pandas as pd


def rank_variants(panel: pd.DataFrame, value: str = "ib_value") -> dict:
    """Rank the variants within each estimator setting of one layer.

    Parameters
    ----------
    panel : pandas.DataFrame
        Seed-aggregated rows of one layer (output of
        :func:`ibtools.reports.table.aggregate_seeds`) with columns ``setting_label``,
        ``variant``, ``value``, ``band_low`` and ``band_high``.
    value : str
        Column ranked, highest first.

    Returns
    -------
    dict
        ``order`` (setting -> variants, best first), ``winner`` (setting -> best variant),
        ``separated`` (setting -> True when the winner's band lies wholly above the
        runner-up's, None when either band is a bare point: one seed and no interval), ``same_winner``, ``same_order`` and ``verdict`` (a short phrase).

    Notes
    -----
    Ties and missing values rank last in input order (a stable sort), so the result is
    deterministic.  A setting with a single variant has nothing to rank and is skipped.
    """
    order, winner, separated = {}, {}, {}
    for setting, rows in panel.groupby("setting_label", sort=False):
        rows = rows.dropna(subset=[value])
        if rows["variant"].nunique() < 2:
            continue
        rows = rows.sort_values(value, ascending=False, kind="mergesort")
        order[setting] = rows["variant"].tolist()
        winner[setting] = order[setting][0]
        best, second = rows.iloc[0], rows.iloc[1]
        # a band that collapsed to its point (one seed, no interval) cannot tell a real margin
        # from noise: say "unknown" rather than "separated"
        degenerate = (best["band_low"] >= best["band_high"]
                      or second["band_low"] >= second["band_high"])
        separated[setting] = None if degenerate else bool(best["band_low"] > second["band_high"])
    same_winner = len(set(winner.values())) <= 1
    same_order = len({tuple(o) for o in order.values()}) <= 1
    if not order:
        verdict = "nothing to rank"
    elif len(order) == 1:
        verdict = "one estimator setting only"
    elif same_order:
        verdict = "same ranking under every setting"
    elif same_winner:
        verdict = "same winner; lower ranks change"
    else:
        verdict = "winner changes with the estimator"
    return {"order": order, "winner": winner, "separated": separated,
            "same_winner": same_winner, "same_order": same_order, "verdict": verdict}
