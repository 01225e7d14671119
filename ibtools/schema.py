"""The results table's schema, written down once: columns, units, which columns hold
information, which interval belongs to which quantity, and what identifies a row.

The table is the contract between the analysis (which writes it, :mod:`ibtools.results`) and
the reports (which read it, :mod:`ibtools.reports.table`); both take every column list from
here, so a column added to the table is added in one place, and a unit conversion converts
each quantity together with its own interval.

Long format: one row per (checkpoint, layer, estimator setting, beta); information in the
table's ``unit`` (``"nats"`` as written by the analysis, ``"bits"`` after a conversion).
"""

from __future__ import annotations

from ibtools.errors import InputError

#: Columns every results table has, in display order.
COLUMNS = [
    "checkpoint", "model", "norm", "lam", "seed", "step", "layer", "layer_index",
    "estimator", "setting", "params", "reference", "ib_kind",
    "i_xt", "i_ty", "i_prev_t", "ib_value", "beta", "unit", "ci_low", "ci_high",
    "ci_low_xt", "ci_high_xt", "ci_low_ty", "ci_high_ty", "ci_low_prev_t", "ci_high_prev_t",
    "n_samples", "dim", "seconds", "flag_text",
]

#: Each information quantity and the (low, high) columns of its interval:
#: I(X;T), I(T;Y), I(T_prev;T) and the IB objective (whose interval keeps the short name).
INTERVALS = {
    "i_xt": ("ci_low_xt", "ci_high_xt"),
    "i_ty": ("ci_low_ty", "ci_high_ty"),
    "i_prev_t": ("ci_low_prev_t", "ci_high_prev_t"),
    "ib_value": ("ci_low", "ci_high"),
}
QUANTITIES = tuple(INTERVALS)
#: Columns holding information in the table's unit: converted together, never one without
#: its interval.
INFORMATION_COLUMNS = QUANTITIES + INTERVALS["ib_value"] + tuple(
    c for q in ("i_xt", "i_ty", "i_prev_t") for c in INTERVALS[q])
UNITS = ("nats", "bits")

#: The column of each row's flags (a JSON list of strings).  Tables written before it was
#: renamed call it ``flags``, which pandas shadows (``table.flags`` is ``DataFrame.flags``);
#: every reader takes the old name as the new one.
FLAG_COLUMN = "flag_text"
OLD_FLAG_COLUMN = "flags"

#: Columns that identify a row; a resumed run skips rows whose key is already present.
KEY = ["checkpoint", "layer", "setting", "beta"]
#: Columns that name a model variant (what reports compare): the model and its norm setting.
VARIANT_KEYS = ("model", "norm", "lam")
#: Where a row's checkpoint was read from: the resolved path and a content fingerprint, so a
#: resume recognises the same file under another name and re-analyses a file replaced in
#: place.  Empty for models passed in memory.
SOURCE_COLUMNS = ["checkpoint_path", "checkpoint_fingerprint"]
#: Model metrics copied from checkpoint metadata when present.
METRIC_COLUMNS = ["test_accuracy", "val_loss", "train_loss", "epoch"]

#: Columns a table must have for a report; the other :data:`COLUMNS` (and two metrics)
#: are optional, filled with NaN when absent (tables of older versions lack some).
REQUIRED_COLUMNS = (
    "checkpoint", "model", "norm", "lam", "seed", "step", "layer", "layer_index",
    "estimator", "params", "i_xt", "i_ty", "i_prev_t", "ib_value", "beta", "unit",
    "ci_low", "ci_high", "n_samples", "dim", "seconds",
)
OPTIONAL_COLUMNS = tuple(c for c in COLUMNS if c not in REQUIRED_COLUMNS) + (
    "test_accuracy", "val_loss")
#: Columns read as numbers (information plus the numeric identity and metric columns).
NUMERIC_COLUMNS = INFORMATION_COLUMNS + (
    "lam", "seed", "step", "layer_index", "beta", "n_samples", "dim", "seconds",
    "test_accuracy", "val_loss",
)


def interval_of(quantity: str) -> tuple[str, str]:
    """The (low, high) interval columns of an information quantity (``"i_xt"``, ...)."""
    if quantity not in INTERVALS:
        raise InputError(f"quantity={quantity!r} has no interval columns; use one of "
                         f"{list(INTERVALS)}")
    return INTERVALS[quantity]


__all__ = ["COLUMNS", "FLAG_COLUMN", "INFORMATION_COLUMNS", "INTERVALS", "KEY",
           "METRIC_COLUMNS", "NUMERIC_COLUMNS", "OLD_FLAG_COLUMN", "OPTIONAL_COLUMNS",
           "QUANTITIES", "REQUIRED_COLUMNS", "SOURCE_COLUMNS", "UNITS", "VARIANT_KEYS",
           "interval_of"]
