"""The written part of a report: who wins per layer and under which estimator, the
caveats raised by the results' own flags, and the settings and environment behind them."""

from __future__ import annotations

import json
import math
from importlib import metadata

import numpy as np
import pandas as pd

from ibtools.reports.ranking import STATUS_TEXT, TIE_TOLERANCE_NATS, rank_variants
from ibtools.reports.table import LN2, aggregate_seeds, select_step, shorten_flag

def known_limitation(method: str) -> str:
    """What every user of the estimator registered as ``method`` should keep in mind,
    whatever its flags say: the class's own ``limitations`` text (short and factual; the
    per-row flags add what happened in this run).  Empty for a method not registered in
    this process (a table from elsewhere)."""
    from ibtools.estimators import get_estimator_class

    try:
        return str(getattr(get_estimator_class(str(method).lower()), "limitations", "") or "")
    except ValueError:
        return ""


def _unit_scale(units: str) -> float:
    return 1.0 if units == "nats" else 1.0 / LN2


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _layer_sentence(layer: str, verdict: dict, n_settings: int, tolerance: str) -> str:
    winners, status = verdict["winner"], verdict["status"]
    if verdict["same_winner"]:
        best = next(iter(winners.values()))
        n_clear = sum(1 for v in status.values() if v == "clear")
        if len(winners) == 1:
            scope = f"under {next(iter(winners))}, the only setting with several variants"
        elif len(winners) == n_settings:
            scope = f"under all {n_settings} estimator settings"
        else:
            scope = f"under all {len(winners)} settings that rank several variants"
        tail = (f"its interval clears the runner-up's under {n_clear} of {len(status)}"
                if n_clear else "with one seed and no intervals, the margin's size cannot be "
                                "judged")
        return f"At {layer}, {best} has the highest IB value {scope}; {tail}."
    ties = [s for s, w in winners.items() if w is None]
    by_variant: dict[str, list[str]] = {}
    for setting, variant in winners.items():
        if variant is not None:
            by_variant.setdefault(variant, []).append(setting)
    if not by_variant:
        return (f"At {layer}, no variant stands out: under every setting the best margin is "
                f"below {tolerance}, inside overlapping intervals or not separated by the "
                f"seeds (a tie).")
    parts = [f"{v} under {_join(s)}" for v, s in by_variant.items()]
    tail = f"; a tie under {_join(ties)}" if ties else ""
    return (f"At {layer}, the highest IB value goes to {_join(parts)}{tail}: the ranking "
            f"depends on the estimator.")


def _headline(layers: list[dict], n_settings: int, tolerance: str) -> str:
    if not layers:
        return "There is only one model variant, so there is no ranking to report."
    agree = [e for e in layers if e["same_winner"]]
    tied = [e for e in layers if set(e["winners"].values()) == {None}]
    if len(tied) == len(layers):
        return (f"No variant has a clearly highest IB value at any layer ({len(layers)}): "
                f"every margin is below {tolerance}, inside overlapping intervals or not "
                f"separated by the seeds (Welch test, Holm-corrected, where there are two or "
                f"more).")
    if len(agree) == len(layers) and len({next(iter(e["winners"].values())) for e in agree}) == 1:
        best = next(iter(agree[0]["winners"].values()))
        return (f"{best} has the highest IB value at every layer ({len(layers)}) under "
                f"every estimator setting ({n_settings}).")
    counts: dict[str, int] = {}
    for entry in agree:
        best = next(iter(entry["winners"].values()))
        counts[best] = counts.get(best, 0) + 1
    parts = [f"{v} at {c} of {len(layers)} layers" for v, c in
             sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    lead = (f"Under every estimator setting, the highest IB value goes to {_join(parts)}"
            if parts else "No layer has the same clear winner under every estimator setting")
    rest = []
    if tied:
        rest.append(f"at {len(tied)} layer(s) no variant stands out (a tie)")
    mixed = len(layers) - len(agree) - len(tied)
    if mixed:
        rest.append(f"at {mixed} layer(s) the winner depends on the estimator")
    return lead + ("; " + "; ".join(rest) + "." if rest else ".")


def summarize(prepared: pd.DataFrame, step="last") -> dict:
    """Which variant has the highest IB value per layer, and whether every estimator agrees.

    A margin below :data:`ibtools.reports.ranking.TIE_TOLERANCE_NATS` or inside overlapping
    intervals is a tie, never a winner: sentences and headline say so.

    Parameters
    ----------
    prepared : pandas.DataFrame
        Output of :func:`ibtools.reports.table.prepare_table`.
    step : "last" or number
        Checkpoint compared (default each variant's latest).

    Returns
    -------
    dict
        ``headline`` (one sentence), ``sentences`` (one per layer), ``winners`` (a
        DataFrame: layer, setting, best variant, its IB value, runner-up, margin, whether
        the intervals separate them, and ``status``, the comparison's verdict as text) and
        ``layers`` (per layer: winner per setting, None for a tie, and the verdict) and
        ``per_layer`` (:func:`per_layer_table`, for a table of one model variant; else
        None).  With one variant the headline and sentences describe its layers instead
        of a ranking.
    """
    final = select_step(prepared, step)
    units = str(prepared["unit"].iloc[0])
    tolerance = TIE_TOLERANCE_NATS * _unit_scale(units)
    tolerance_text = f"{tolerance:g} {units}"
    agg = aggregate_seeds(final, ["layer_index", "layer", "setting_label", "variant"])
    n_settings = agg["setting_label"].nunique()
    records, layers, sentences = [], [], []
    for (_, layer), panel in agg.groupby(["layer_index", "layer"], sort=True):
        verdict = rank_variants(panel, tolerance=tolerance,
                                seeds=final[final["layer"] == layer])  # Welch when >= 2 seeds
        if not verdict["order"]:
            continue
        for setting, order in verdict["order"].items():
            values = panel[panel["setting_label"] == setting].set_index("variant")["ib_value"]
            records.append({
                "layer": layer, "setting": setting, "best": order[0],
                "ib_value": float(values[order[0]]), "runner_up": order[1],
                "margin": float(values[order[0]] - values[order[1]]),
                "separated": verdict["separated"][setting],
                "status": STATUS_TEXT[verdict["status"][setting]],
            })
        layers.append({"layer": layer, "winners": verdict["winner"],
                       "same_winner": verdict["same_winner"],
                       "same_order": verdict["same_order"], "verdict": verdict["verdict"]})
        sentences.append(_layer_sentence(layer, verdict, n_settings, tolerance_text))
    winners_df = pd.DataFrame(records, columns=["layer", "setting", "best", "ib_value",
                                                "runner_up", "margin", "separated", "status"])
    headline, per_layer = _headline(layers, n_settings, tolerance_text), None
    if final["variant"].nunique() == 1:
        per_layer = per_layer_table(final)
        headline, sentences = _one_model_text(final, per_layer, units)
    from ibtools.noise_channel import mode_sentence

    modes = mode_sentence(final)
    if modes:  # which numbers are finite MI at sigma and which resolution-dependent
        sentences = [modes, *sentences]
    return {"headline": headline, "sentences": sentences, "winners": winners_df,
            "layers": layers, "units": units, "n_settings": n_settings,
            "per_layer": per_layer}


def per_layer_table(final: pd.DataFrame) -> pd.DataFrame:
    """I(X;T) (or I(T_prev;T) for layer-wise rows), I(T;Y) and the IB value per layer and
    estimator setting, in layer order: what a report of one model shows first.  Seed
    means; ``flags`` counts the rows' flags (NaN values are estimates that failed)."""
    frame = final.assign(
        x_value=final["i_xt"].where(final["x_quantity"] == "i_xt", final["i_prev_t"]),
        n_flags=final["flag_list"].map(len))
    keys = ["layer_index", "layer", "setting_label", "x_quantity"]
    out = (frame.groupby(keys, sort=False, dropna=False)
           .agg(x_value=("x_value", "mean"), i_ty=("i_ty", "mean"),
                ib_value=("ib_value", "mean"), flags=("n_flags", "sum"))
           .reset_index().sort_values(["layer_index", "setting_label"], kind="mergesort"))
    out["x_name"] = np.where(out["x_quantity"] == "i_prev_t", "I(T_prev;T)", "I(X;T)")
    return out.rename(columns={"setting_label": "setting"})[
        ["layer", "setting", "x_name", "x_value", "i_ty", "ib_value", "flags"]
    ].reset_index(drop=True)


def _one_model_text(final: pd.DataFrame, per_layer: pd.DataFrame, units: str):
    """Headline and one sentence per estimator setting for a table of one model variant."""
    name = str(final["variant"].iloc[0])
    layers = list(dict.fromkeys(per_layer["layer"]))
    headline = (f"One model variant ({name}): I(X;T) and I(T;Y) per layer ({len(layers)} "
                f"layers) are in the table below; with a single variant there is nothing to "
                f"rank.")
    sentences = []
    for setting, rows in per_layer.groupby("setting", sort=False):
        done = rows[np.isfinite(rows["i_ty"].to_numpy(dtype=float))]
        if done.empty:
            sentences.append(f"Under {setting}, no layer could be estimated (see the flags).")
            continue
        first, last = done.iloc[0], done.iloc[-1]
        x_name = first["x_name"]
        sentence = (f"Under {setting}, I(T;Y) goes from {first['i_ty']:.3g} {units} at "
                    f"layer {first['layer']} to {last['i_ty']:.3g} at layer {last['layer']}, "
                    f"and {x_name} from {first['x_value']:.3g} to {last['x_value']:.3g}")
        missing = len(rows) - len(done)
        sentences.append(sentence + (f"; {missing} layer(s) could not be estimated."
                                     if missing else "."))
    return headline, sentences


def collect_caveats(prepared: pd.DataFrame) -> list[dict]:
    """The caveats of each estimator used, drawn from the rows' own flags.

    Flags that differ only in their numbers are grouped; each group keeps one example,
    the number of rows that raised it and the settings they came from.  A check of the
    values themselves is added: rows whose I(X;T) lies within 2% of ln n (the most a sample
    of n distinct points can show) are counted even where no flag says so.

    Returns
    -------
    list of dict
        One entry per estimator (in table order): ``estimator``, ``limitation`` (the known
        limitation, may be empty), ``flags`` (list of {"example", "rows", "settings"}),
        ``near_ln_n`` (rows at the ln n ceiling) and ``rows``.
    """
    scale = _unit_scale(str(prepared["unit"].iloc[0]))
    out = []
    for estimator, rows in prepared.groupby("estimator", sort=False):
        groups: dict[str, dict] = {}
        for setting, flags in zip(rows["setting_label"], rows["flag_list"]):
            for flag in flags:
                entry = groups.setdefault(shorten_flag(flag), {"example": flag, "rows": 0,
                                                                "settings": []})
                entry["rows"] += 1
                if setting not in entry["settings"]:
                    entry["settings"].append(setting)
        ceiling = np.log(rows["n_samples"].to_numpy(dtype=float)) * scale
        x = np.where(rows["x_quantity"] == "i_prev_t", rows["i_prev_t"], rows["i_xt"])
        near = int(np.sum(np.isfinite(x) & (x >= 0.98 * ceiling)))
        out.append({"estimator": estimator,
                    "limitation": known_limitation(estimator),
                    "flags": sorted(groups.values(), key=lambda g: (-g["rows"], g["example"])),
                    "near_ln_n": near, "rows": len(rows)})
    return out


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _plain(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def describe_run(prepared: pd.DataFrame, config: dict | None = None,
                 environment: dict | None = None) -> list[tuple[str, str]]:
    """Settings and environment that produced the table, as (name, value) pairs.

    Parameters
    ----------
    prepared : pandas.DataFrame
        Output of :func:`ibtools.reports.table.prepare_table`.
    config : dict, optional
        The run's configuration (``config.json`` of a results directory).
    environment : dict, optional
        Recorded environment (``ibtools``/``torch`` versions, ``device``, ``date``...).
        Entries given here win over the ones found in ``config["environment"]``.

    Notes
    -----
    No clock is read: the date appears only if the config or environment records it, so
    the same input renders to the same bytes.  Versions missing from both are read from
    the installed packages and marked "(rendering machine)".
    """
    config = config or {}
    env = dict(config.get("environment", {}) if isinstance(config.get("environment"), dict) else {})
    env.update(environment or {})
    pairs = []
    # ibtools.environment.describe_environment nests the versions; older configs did not
    versions = env.get("versions") if isinstance(env.get("versions"), dict) else {}
    for key, package in (("ibtools", "ibtools"), ("torch", "torch")):
        value = env.get(key) or env.get(f"{key}_version") or versions.get(key)
        pairs.append((f"{key} version", str(value) if value else
                      f"{_version(package)} (rendering machine)"))
    pairs.append(("device", str(env.get("device") or config.get("device") or "not recorded")))
    pairs.append(("date", str(env.get("date") or config.get("date") or "not recorded")))
    seeds = sorted({int(s) for s in prepared["seed"].dropna()})
    pairs.append(("seeds", ", ".join(map(str, seeds)) or "not recorded"))
    n = sorted({int(v) for v in prepared["n_samples"].dropna()})
    pairs.append(("samples per estimate (n)", ", ".join(map(str, n))))
    pairs.append(("estimator settings", "; ".join(dict.fromkeys(prepared["setting_label"]))))
    betas = sorted(prepared["beta"].dropna().unique().tolist())
    pairs.append(("beta", ", ".join(f"{b:g}" for b in betas) or "not recorded"))
    kinds = list(dict.fromkeys("classic" if pd.isna(k) else str(k) for k in prepared["ib_kind"]))
    pairs.append(("IB kind", ", ".join(kinds)))
    pairs.append(("model variants", "; ".join(dict.fromkeys(prepared["variant"]))))
    pairs.append(("layers", ", ".join(dict.fromkeys(prepared["layer"]))))
    steps = sorted(prepared["progress"].dropna().unique().tolist())
    pairs.append(("steps", ", ".join(f"{s:g}" for s in steps)))
    pairs.append(("units", f"{prepared['unit'].iloc[0]} (1 bit = ln 2 = 0.6931 nats)"))
    pairs.append(("rows", str(len(prepared))))
    for key in sorted(env):
        if key not in ("ibtools", "ibtools_version", "torch", "torch_version", "device", "date"):
            pairs.append((key, _plain(env[key])))
    return pairs


def format_number(value, digits: int = 4) -> str:
    """Numbers as short text for tables (``""`` for missing)."""
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return ""
        if float(value).is_integer() and abs(value) < 1e9:
            return str(int(value))
        return f"{value:.{digits}g}"
    return str(value)
