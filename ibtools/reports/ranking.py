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
    "not significant": "tie (seeds do not separate them: Welch test, Holm-corrected)",
}


def _seed_status(seeds, value, best, second, tolerance, min_effect):
    """Welch test of the best variant's seeds against the runner-up's (or None when either
    has fewer than two seeds): the p-value and the status before multiplicity correction."""
    from ibtools import compare

    a = seeds.loc[seeds["variant"] == best, value].dropna().to_numpy()
    b = seeds.loc[seeds["variant"] == second, value].dropna().to_numpy()
    if len(a) < 2 or len(b) < 2:
        return None
    test = compare.welch(a, b)
    if not test["diff"] >= max(tolerance, min_effect):
        return {"p": test["p"], "status": "tie"}
    return {"p": test["p"], "status": None}


def _status(best, second, value: str, tolerance: float) -> str:
    if not best[value] - second[value] >= tolerance:
        return "tie"
    # a band that collapsed to its point (one seed, no interval) cannot tell a real margin
    # from noise: "unjudged" rather than "clear"
    if best["band_low"] >= best["band_high"] or second["band_low"] >= second["band_high"]:
        return "unjudged"
    return "clear" if best["band_low"] > second["band_high"] else "overlap"


def rank_variants(panel: pd.DataFrame, value: str = "ib_value",
                  tolerance: float = TIE_TOLERANCE_NATS, seeds: pd.DataFrame | None = None,
                  min_effect: float | None = None, alpha: float | None = None,
                  correction: str = "holm") -> dict:
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
    seeds : pandas.DataFrame, optional
        The per-seed rows behind ``panel`` (columns ``setting_label``, ``variant`` and
        ``value``).  Where the best variant and the runner-up both have two or more seeds,
        the setting is judged as :mod:`ibtools.compare` judges a cell: a Welch t-test of
        their seeds, corrected (``correction``) over the settings of this call, and a
        minimum effect; the interval rule applies only where a side has one seed.
    min_effect : float, optional
        Smallest margin a seed comparison can call a winner, in the panel's unit.  Default
        :data:`ibtools.compare.MIN_EFFECT_NATS` scaled like ``tolerance`` (a report in bits
        passes ``tolerance`` in bits).
    alpha : float, optional
        Level of the corrected p-value (default :data:`ibtools.compare.ALPHA`).
    correction : {"holm", "bh", "none"}
        Multiplicity correction over this call's seed comparisons.

    Returns
    -------
    dict
        ``order`` (setting -> variants, best first), ``status`` (setting -> ``"clear"``:
        the best variant's band lies wholly above the runner-up's; ``"overlap"``: the bands
        overlap; ``"tie"``: the margin is below ``tolerance``; ``"unjudged"``: a band is a
        bare point, one seed and no interval; ``"not significant"``: the seeds' Welch test
        does not separate them), ``p`` (setting -> corrected p-value of the seed
        comparison, where there was one), ``winner`` (setting -> best variant, or None
        for a tie or overlap), ``separated`` (setting -> True / False / None, the older
        reading of ``status``), ``same_winner`` (every setting names the same winner),
        ``same_order`` and ``verdict`` (a short phrase).

    Notes
    -----
    Ties and missing values rank last in input order (a stable sort), so the result is
    deterministic.  A setting with a single variant has nothing to rank and is skipped.
    """
    from ibtools import compare

    scale = tolerance / TIE_TOLERANCE_NATS
    min_effect = compare.MIN_EFFECT_NATS * scale if min_effect is None else min_effect
    alpha = compare.ALPHA if alpha is None else alpha
    order, status, winner, tested = {}, {}, {}, {}
    for setting, rows in panel.groupby("setting_label", sort=False):
        rows = rows.dropna(subset=[value])
        if rows["variant"].nunique() < 2:
            continue
        rows = rows.sort_values(value, ascending=False, kind="mergesort")
        order[setting] = rows["variant"].tolist()
        seed_test = None if seeds is None else _seed_status(
            seeds[seeds["setting_label"] == setting], value, order[setting][0],
            order[setting][1], tolerance, min_effect)
        if seed_test is None:
            status[setting] = _status(rows.iloc[0], rows.iloc[1], value, tolerance)
        elif seed_test["status"] is not None:
            status[setting] = seed_test["status"]
        else:
            tested[setting] = seed_test["p"]
    p_adj = dict(zip(tested, compare.adjust_pvalues(list(tested.values()), correction)))
    for setting, p in p_adj.items():
        status[setting] = "clear" if p < alpha else "not significant"
    status = {s: status[s] for s in order}
    for setting in order:
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
            "p": {s: float(p) for s, p in p_adj.items()},
            "same_winner": same_winner, "same_order": same_order, "verdict": verdict}
