"""The results table as reports read it: validation, units, labels and seed aggregation.

The table is the analysis-to-reports contract (:mod:`ibtools.results`): long format, one row
per (checkpoint, layer, estimator, quantity setting), values in nats.  Reports never look
past its columns, so everything a plot or a summary needs is derived here, once.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd

from ibtools.errors import InputError, InputTypeError
from ibtools.schema import (  # noqa: F401  (re-exported)
    INFORMATION_COLUMNS,
    INTERVALS,
    NUMERIC_COLUMNS,
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    UNITS,
)

LN2 = math.log(2.0)


def check_units(units) -> str:
    """Return ``units`` if it is ``"nats"`` or ``"bits"``, else raise ValueError."""
    if units not in UNITS:
        raise InputError(f"units={units!r} is not accepted; use 'nats' or 'bits'")
    return units


def validate_table(df) -> None:
    """Check that ``df`` is a usable results table; raise a clear error if not.

    Parameters
    ----------
    df : pandas.DataFrame
        Results table in the long format of :mod:`ibtools.results`.

    Raises
    ------
    TypeError
        If ``df`` is not a DataFrame.
    ValueError
        If it has no rows, lacks required columns (all missing ones are listed), has a
        ``unit`` other than nats/bits, or has a non-numeric value in a numeric column.
    """
    if not isinstance(df, pd.DataFrame):
        raise InputTypeError(f"table must be a pandas DataFrame (a results table); "
                             f"got {type(df).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(
            f"the results table lacks required column(s) {missing}; a results table needs "
            f"{list(REQUIRED_COLUMNS)} (present: {list(map(str, df.columns))})")
    if len(df) == 0:
        raise InputError("the results table is empty (0 rows); nothing to report. "
                         "Run `ibtools analyze` first or pass a table with rows.")
    units = set(df["unit"].dropna().astype(str).str.strip().str.lower())
    if not units <= set(UNITS):
        raise InputError(f"column 'unit' has value(s) {sorted(units - set(UNITS))}; "
                         f"accepted units are 'nats' and 'bits'")
    for column in NUMERIC_COLUMNS:
        if column not in df.columns:
            continue
        coerced = pd.to_numeric(df[column], errors="coerce")
        bad = coerced.isna() & df[column].notna()
        if bad.any():
            first = df[column][bad].iloc[0]
            raise InputError(f"column {column!r} must be numeric; row {int(np.flatnonzero(bad)[0])} "
                             f"holds {first!r}")
    for column in ("i_ty", "ib_value"):
        if pd.to_numeric(df[column], errors="coerce").isna().all():
            raise InputError(f"column {column!r} has no values (all missing); the report needs it")


def parse_flags(value) -> list[str]:
    """Flags of one row as a list of strings (JSON list, ``"; "``-joined text or empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value if str(v).strip()]
    text = str(value).strip()
    if not text or text in ("[]", "nan", "None"):
        return []
    if text.startswith("["):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return [str(v) for v in parsed if str(v).strip()]
    return [part.strip() for part in text.split("; ") if part.strip()]


def parse_params(value) -> dict:
    """Settings of one row as a dict (a JSON object string, a dict, or empty)."""
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _format_value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def setting_label(estimator: str, params) -> str:
    """Short label of an estimator setting, e.g. ``"kde(noise_var=0.1)"``."""
    params = parse_params(params)
    inner = ", ".join(f"{k}={_format_value(v)}" for k, v in sorted(params.items())
                      if v is not None)
    return f"{estimator}({inner})"


def _lam_is_baseline(lam) -> bool:
    return lam is None or (isinstance(lam, float) and math.isnan(lam)) or float(lam) == 0.0


def variant_label(model: str, norm: str, lam, with_model: bool) -> str:
    """Label of one model variant: ``"ib-T, λ=1"``; ``"layer, λ=0"``; plain norm without lam."""
    lam_text = "" if lam is None or (isinstance(lam, float) and math.isnan(lam)) else f", λ={float(lam):g}"
    label = f"{norm}{lam_text}"
    return f"{model} {label}" if with_model else label


def _named_models(out: pd.DataFrame) -> bool:
    """Whether variants are best told apart by model name: each model has one norm setting,
    and either no row has an IBNorm (no IBNorm sweep: "batch, λ=0" would name a norm, not
    a model) or there are several models (``analyze({"layernorm": m1, "ib-S": m2})``)."""
    keys = out[["model", "norm"]].assign(lam=out["lam"].fillna(-1.0)).drop_duplicates()
    one_each = bool((keys.groupby("model").size() == 1).all())
    has_ib = bool(out["norm"].str.startswith("ib").any())
    return one_each and (not has_ib or keys["model"].nunique() > 1)


def prepare_table(df, units: str = "nats") -> pd.DataFrame:
    """Validate ``df`` and return a copy ready for plots and summaries.

    Parameters
    ----------
    df : pandas.DataFrame
        Results table (columns of :mod:`ibtools.results`).
    units : {"nats", "bits"}
        Unit of every information column in the returned copy (rows in bits are read as
        bits, whatever the target).

    Returns
    -------
    pandas.DataFrame
        The rows, sorted deterministically, with added columns: ``flag_list`` (list of
        str), ``setting_label`` (estimator setting, with ib kind and beta appended when the
        table mixes them), ``variant`` (the model's name when the table holds no IBNorm
        or one norm setting per model, else a norm/lambda label), ``variant_order`` (baseline
        first, then by norm and lambda), ``is_baseline`` (lambda 0 or absent), ``progress``
        (step, or the checkpoint's order when steps are missing) and ``x_quantity`` (the
        column the x axis of an information plane reads: ``i_prev_t`` for layer-wise rows).

    Notes
    -----
    Optional columns that are absent are added empty, so callers can rely on them.
    """
    validate_table(df)
    units = check_units(units)
    out = df.copy().reset_index(drop=True)
    if "flags" in out.columns and "flag_text" not in out.columns:  # a table from before the
        out = out.rename(columns={"flags": "flag_text"})  # rename (pandas shadows .flags)
    for column in OPTIONAL_COLUMNS:
        if column not in out.columns:
            out[column] = np.nan
    for column in NUMERIC_COLUMNS:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    for column in ("checkpoint", "model", "norm", "layer", "estimator"):
        out[column] = out[column].astype(str)

    row_units = out["unit"].astype(str).str.strip().str.lower()
    factor = np.where(row_units == units, 1.0, np.where(units == "bits", 1.0 / LN2, LN2))
    for column in INFORMATION_COLUMNS:
        out[column] = out[column] * factor
    out["unit"] = units

    out["flag_list"] = [parse_flags(v) for v in out["flag_text"]]
    labels = [s if isinstance(s, str) and s.strip() else setting_label(e, p)
              for s, e, p in zip(out["setting"], out["estimator"], out["params"])]
    kinds = out["ib_kind"].astype(object).where(out["ib_kind"].notna(), "classic").astype(str)
    if kinds.nunique() > 1:
        labels = [f"{label} [{kind}]" for label, kind in zip(labels, kinds)]
    if out["beta"].nunique(dropna=True) > 1:
        labels = [f"{label} β={b:g}" for label, b in zip(labels, out["beta"])]
    out["setting_label"] = labels

    with_model = out["model"].nunique() > 1
    out["is_baseline"] = [_lam_is_baseline(v) for v in out["lam"]]
    if _named_models(out):
        # models the user named (or one pretrained model): the name, not "batch, λ=0"
        out["variant"] = out["model"]
    else:
        out["variant"] = [variant_label(m, n, lam, with_model)
                          for m, n, lam in zip(out["model"], out["norm"], out["lam"])]
    from ibtools.noise_channel import report_labels

    report_labels(out)  # deterministic / analysis noise σ / noisy net σ, when the table mixes
    keys = (out[["model", "is_baseline", "norm", "lam"]]
            .assign(is_baseline=~out["is_baseline"], lam=out["lam"].fillna(-1.0))
            .drop_duplicates().sort_values(["model", "is_baseline", "norm", "lam"]))
    order = {tuple(row): i for i, row in enumerate(keys.itertuples(index=False))}
    out["variant_order"] = [order[(m, not b, n, -1.0 if math.isnan(lam) else lam)]
                            for m, b, n, lam in zip(out["model"], out["is_baseline"],
                                                   out["norm"], out["lam"])]

    if out["step"].notna().all():
        out["progress"] = out["step"]
    else:
        # Without steps, the checkpoints' sorted order stands in for training time.
        ranks = {c: i for i, c in enumerate(sorted(out["checkpoint"].unique()))}
        out["progress"] = out["checkpoint"].map(ranks).astype(float)

    layerwise = (out["ib_kind"].astype(str).str.lower() == "layerwise") | \
                (out["reference"].astype(str).str.lower() == "previous") | out["i_xt"].isna()
    out["x_quantity"] = np.where(layerwise & out["i_prev_t"].notna(), "i_prev_t", "i_xt")

    out = out.sort_values(["variant_order", "seed", "progress", "layer_index", "setting_label"],
                          kind="mergesort").reset_index(drop=True)
    return out


def ordered(values) -> list:
    """Unique values in first-seen order (the prepared table's order is deterministic)."""
    return list(dict.fromkeys(values))


def aggregate_seeds(prepared: pd.DataFrame, keys: list[str], value: str = "ib_value",
                    low: str = "ci_low", high: str = "ci_high") -> pd.DataFrame:
    """Mean of ``value`` over seeds for each group of ``keys``, with an interval band.

    Parameters
    ----------
    prepared : pandas.DataFrame
        Output of :func:`prepare_table` (or a filtered view of it).
    keys : list of str
        Grouping columns (everything but the seed).
    value, low, high : str
        Columns of the value and its interval.

    Returns
    -------
    pandas.DataFrame
        One row per group: ``keys``, ``value`` (mean over seeds), ``band_low``/``band_high``
        and ``n_seeds``.

    Notes
    -----
    The band is the envelope of the seeds' intervals (lowest lower end, highest upper
    end); where a row has no interval the seed values themselves are used, so with several
    seeds the band shows at least their spread, and with one seed and no interval it
    collapses to the point.
    """
    frame = prepared[keys + ["seed"]].copy()
    point = prepared[value].astype(float)
    lows = prepared[low].astype(float).where(prepared[low].notna(), point)
    highs = prepared[high].astype(float).where(prepared[high].notna(), point)
    frame["_value"] = point
    frame["_lo"] = np.minimum(lows, point)
    frame["_hi"] = np.maximum(highs, point)
    grouped = frame.groupby(keys, sort=False, dropna=False)
    result = grouped.agg(**{value: ("_value", "mean"), "band_low": ("_lo", "min"),
                            "band_high": ("_hi", "max"), "n_seeds": ("seed", "nunique")})
    return result.reset_index()


def select_step(prepared: pd.DataFrame, step="last") -> pd.DataFrame:
    """Rows of one checkpoint per variant and seed.

    Parameters
    ----------
    step : "last" or number
        ``"last"`` keeps each variant's latest checkpoint (largest step or checkpoint
        order); a number keeps rows whose ``step`` equals it.
    """
    if isinstance(step, str):
        if step != "last":
            raise InputError(f"step={step!r} is not accepted; use 'last' or a step number")
        latest = prepared.groupby(["variant", "seed"])["progress"].transform("max")
        return prepared[prepared["progress"] == latest]
    if not isinstance(step, (int, float, np.integer, np.floating)) or isinstance(step, bool):
        raise InputTypeError(f"step must be 'last' or a number; got {type(step).__name__}")
    chosen = prepared[prepared["step"] == float(step)]
    if chosen.empty:
        steps = sorted(prepared["step"].dropna().unique().tolist())
        raise InputError(f"step={step!r} is not in the table; steps present: {steps}")
    return chosen


def quantity_label(column: str, units: str) -> str:
    """Axis label of an information column with its unit."""
    names = {"i_xt": "I(X;T)", "i_ty": "I(T;Y)", "i_prev_t": "I(T_prev;T)",
             "ib_value": "IB value"}
    return f"{names.get(column, column)} [{units}]"


def shorten_flag(flag: str) -> str:
    """A flag with its numbers replaced by ``#``, to group flags that differ only in values."""
    return re.sub(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", "#", flag)
