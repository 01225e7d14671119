"""Which model variant has the highest value, and does that survive the estimator choice.

Shared by the agreement plot and the written summary, so a figure's verdict and the
report's sentences can never disagree.
"""

from __future__ import annotations

import pandas as pd


#: Margins below this many nats are ties whatever the intervals say: differences of 1e-15
#: nats (float rounding) or 1e-6 nats are not findings.  Reports in bits scale it.
TIE_TOLERANCE_NATS = 1e-3

#: What a setting's comparison of its two best variants says, as a report prints it.
STATUS_TEXT = {
    "clear": "yes",
    "tie": "tie (margin below tolerance)",
    "overlap": "tie (intervals overlap)",
    "unjudged": "unknown (no interval)",
}


def _status(best, second, value: str, tolerance: float) -> str:
    if not best[value] - second[value] >= tolerance:
        return "tie"
    # a band that collapsed to its point (one seed, no interval) cannot tell a real margin
    # from noise: "unjudged" rather than "clear"
    if best["band_low"] >= best["band_high"] or second["band_low"] >= second["band_high"]:
        return "unjudged"
    return "clear" if best["band_low"] > second["band_high"] else "overlap"


def rank_variants(panel: pd.DataFrame, value: str = "ib_value",
                  tolerance: float = TIE_TOLERANCE_NATS) -> dict:
    """Rank the variants within each estimator setting of one layer.

    Parameters
    ----------
    panel : pandas.DataFrame
        Seed-aggregated rows of one layer (output of
        :func:`ibtools.reports.table.aggregate_seeds`) with columns ``setting_label``,
        ``variant``, ``value``, ``band_low`` and ``band_high``.
    value : str
        Column ranked, highest first.
    tolerance : float
        Smallest margin, in the panel's unit, that can name a winner.

    Returns
    -------
    dict
        ``order`` (setting -> variants, best first), ``status`` (setting -> ``"clear"``:
        the best variant's band lies wholly above the runner-up's; ``"overlap"``: the bands
        overlap; ``"tie"``: the margin is below ``tolerance``; ``"unjudged"``: a band is a
        bare point, one seed and no interval), ``winner`` (setting -> best variant, or None
        for a tie or overlap), ``separated`` (setting -> True / False / None, the older
        reading of ``status``), ``same_winner`` (every setting names the same winner),
        ``same_order`` and ``verdict`` (a short phrase).

    Notes
    -----
    Ties and missing values rank last in input order (a stable sort), so the result is
    deterministic.  A setting with a single variant has nothing to rank and is skipped.
    """
    order, status, winner = {}, {}, {}
    for setting, rows in panel.groupby("setting_label", sort=False):
        rows = rows.dropna(subset=[value])
        if rows["variant"].nunique() < 2:
            continue
        rows = rows.sort_values(value, ascending=False, kind="mergesort")
        order[setting] = rows["variant"].tolist()
        status[setting] = _status(rows.iloc[0], rows.iloc[1], value, tolerance)
        winner[setting] = order[setting][0] if status[setting] in ("clear", "unjudged") else None
    separated = {k: {"clear": True, "unjudged": None}.get(v, False) for k, v in status.items()}
    named = set(winner.values())
    same_winner = bool(order) and None not in named and len(named) == 1
    same_order = len({tuple(o) for o in order.values()}) <= 1
    if not order:
        verdict = "nothing to rank"
    elif named == {None}:
        verdict = "tie under every setting" if len(order) > 1 else "tie"
    elif None in named:
        verdict = "a winner under some settings, a tie under others"
    elif len(order) == 1:
        verdict = "one estimator setting only"
    elif same_order:
        verdict = "same ranking under every setting"
    elif same_winner:
        verdict = "same winner; lower ranks change"
    else:
        verdict = "winner changes with the estimator"
    return {"order": order, "status": status, "winner": winner, "separated": separated,
            "same_winner": same_winner, "same_order": same_order, "verdict": verdict}
