"""HTML views for Jupyter: an estimate, an estimator with its settings, a results table.

Jupyter shows an object through its ``_repr_html_``; :class:`ibtools.EstimateResult` and every
estimator class delegate theirs here, and :func:`show` wraps a results table in a compact view
(the information columns to four digits, intervals in one cell, flags as a count whose
tooltip lists them).  Everything is plain HTML with inline styles, so it renders the same in
JupyterLab, VS Code and a saved notebook, and nothing here imports a notebook package.
"""

from __future__ import annotations

import html
import json
import math

from ibtools.errors import InputError, InputTypeError

__all__ = ["result_html", "estimator_html", "show", "ResultsView"]

_TABLE = ("border-collapse:collapse;font-family:ui-monospace,Menlo,monospace;font-size:12px;"
          "margin:2px 0")
_TH = "text-align:left;padding:2px 8px;border-bottom:1px solid #999;background:#f4f4f4"
_TD = "padding:2px 8px;border-bottom:1px solid #e4e4e4;text-align:left"
_NUM = "padding:2px 8px;border-bottom:1px solid #e4e4e4;text-align:right"
_FLAG = "color:#8a4b00"


def _e(value) -> str:
    return html.escape(str(value))


def _number(value, digits: int = 4) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return _e(value)
    if math.isnan(v):
        return "&ndash;"
    return f"{v:.{digits}f}"


def result_html(result) -> str:
    """An :class:`~ibtools.EstimateResult` as a small two-column table.

    Shows the value in nats and bits, the interval (kind and confidence), method and settings,
    n and dimensions, the time, and every flag in full (flags are the estimator's own
    warnings about this number, so they are not hidden behind a count).
    """
    name = result.quantity.replace("_", " ")
    value = (f"<b>{_number(result.value)}</b> {_e(result.unit)} "
             f"({_number(result.bits)} bits)")
    rows = [(name, value)]
    if result.ci is not None:
        level = "" if result.confidence is None else f"{100 * result.confidence:g}% "
        rows.append(("interval", f"[{_number(result.ci[0])}, {_number(result.ci[1])}] "
                                 f"({level}{_e(result.ci_kind or '')})"))
    settings = ", ".join(f"{_e(k)}={_e(v)}" for k, v in sorted(result.params.items())
                         if k not in ("device", "memory_budget"))
    rows += [("method", f"{_e(result.method)}"
                        + (f" <span style='color:#666'>({settings})</span>" if settings else "")),
             ("n, dims", f"{result.n}, {_e(tuple(result.dims))}"),
             ("seconds", _number(result.seconds, 3))]
    if result.flags:
        items = "".join(f"<li style='{_FLAG}'>{_e(f)}</li>" for f in result.flags)
        rows.append((f"flags ({len(result.flags)})",
                     f"<ul style='margin:0;padding-left:16px'>{items}</ul>"))
    else:
        rows.append(("flags", "none"))
    body = "".join(f"<tr><th style='{_TH}'>{k}</th><td style='{_TD}'>{v}</td></tr>"
                   for k, v in rows)
    return f"<table style='{_TABLE}'>{body}</table>"


def estimator_html(estimator) -> str:
    """An estimator as its class and method name and every setting, the ones changed from
    the default in bold (the text repr lists only those, so ``KDE()`` hides the defaults)."""
    defaults = estimator.accepted_settings()
    rows = []
    for key, value in estimator.settings.items():
        changed = value != defaults.get(key)
        shown = f"<b>{_e(repr(value))}</b>" if changed else _e(repr(value))
        default = _e(repr(defaults.get(key)))
        note = f" <span style='color:#666'>(default {default})</span>" if changed else ""
        rows.append(f"<tr><td style='{_TD}'>{_e(key)}</td>"
                    f"<td style='{_TD}'>{shown}{note}</td></tr>")
    title = (f"<b>{_e(type(estimator).__name__)}</b> "
             f"<span style='color:#666'>method={_e(repr(getattr(estimator, 'name', '')))}</span>")
    return (f"<div style='font-family:ui-monospace,Menlo,monospace;font-size:12px'>{title}</div>"
            f"<table style='{_TABLE}'><tr><th style='{_TH}'>setting</th>"
            f"<th style='{_TH}'>value</th></tr>{''.join(rows)}</table>")


#: Columns :func:`show` keeps by default, in order (those present in the table).
SHOW_COLUMNS = ("step", "checkpoint", "model", "norm", "lam", "layer", "setting", "beta",
                "i_xt", "i_prev_t", "i_ty", "ib_value", "ci", "n_samples", "flags")
_INFO = ("i_xt", "i_prev_t", "i_ty", "ib_value")


def _flags(value) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and math.isnan(value)) or not str(value).strip():
        return []
    try:
        parsed = json.loads(str(value))
    except json.JSONDecodeError:
        return [str(value)]
    return [str(v) for v in parsed] if isinstance(parsed, list) else [str(parsed)]


class ResultsView:
    """A results table shown compactly: ``_repr_html_`` for Jupyter, ``repr`` for text.

    Attributes
    ----------
    table : pandas.DataFrame
        The rows shown (all of them; ``max_rows`` only limits the display).
    columns : list of str
    max_rows : int
    """

    def __init__(self, table, columns=None, max_rows: int = 50):
        import pandas as pd

        if not isinstance(table, pd.DataFrame):
            raise InputTypeError(f"table must be a results DataFrame; got {type(table).__name__}")
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise InputError(f"max_rows={max_rows!r} is not accepted; use an integer >= 1")
        # the flag column is "flag_text" in current tables and "flags" in older ones (pandas
        # shadows that name); the view calls it "flags" either way
        self._flag_column = "flag_text" if "flag_text" in table.columns else "flags"
        present = set(table.columns) | ({"ci"} if "ci_low" in table.columns else set())
        if self._flag_column in table.columns:
            present = (present - {self._flag_column}) | {"flags"}
        if columns is None:
            columns = [c for c in SHOW_COLUMNS if c in present]
        unknown = [c for c in columns if c not in present]
        if unknown:
            raise InputError(f"columns {unknown} are not in the table; it has "
                             f"{sorted(map(str, present))}")
        self.table, self.columns, self.max_rows = table, list(columns), max_rows

    def _cell(self, row, column) -> str:
        if column == "ci":
            lo, hi = row.get("ci_low"), row.get("ci_high")
            if lo is None or (isinstance(lo, float) and math.isnan(lo)):
                return f"<td style='{_NUM}'>&ndash;</td>"
            return f"<td style='{_NUM}'>[{_number(lo)}, {_number(hi)}]</td>"
        value = row.get(self._flag_column if column == "flags" else column)
        if column == "flags":
            flags = _flags(value)
            if not flags:
                return f"<td style='{_TD}'></td>"
            tip = _e("\n".join(flags))
            return f"<td style='{_TD};{_FLAG}' title='{tip}'>&#9888; {len(flags)}</td>"
        if column in _INFO or column in ("lam", "beta"):
            digits = 4 if column in _INFO else 3
            text = _number(value, digits)
            if column in ("lam", "beta") and text != "&ndash;":
                text = f"{float(value):g}"
            return f"<td style='{_NUM}'>{text}</td>"
        if column in ("step", "n_samples") and value is not None:
            try:
                return f"<td style='{_NUM}'>{int(value)}</td>"
            except (TypeError, ValueError):
                pass
        return f"<td style='{_TD}'>{_e('' if value is None else value)}</td>"

    def _repr_html_(self) -> str:
        unit = ""
        if "unit" in self.table.columns and len(self.table):
            unit = f" (information in {_e(self.table['unit'].iloc[0])})"
        head = "".join(f"<th style='{_TH}'>{_e(c)}</th>" for c in self.columns)
        records = self.table.head(self.max_rows).to_dict("records")
        body = "".join("<tr>" + "".join(self._cell(r, c) for c in self.columns) + "</tr>"
                       for r in records)
        more = len(self.table) - len(records)
        note = (f"{len(self.table)} rows{unit}" + (f"; first {len(records)} shown, "
                f"{more} more in .table" if more > 0 else ""))
        return (f"<div style='font-size:11px;color:#555'>{note}; hover over &#9888; for "
                f"flags</div><table style='{_TABLE}'><tr>{head}</tr>{body}</table>")

    def __repr__(self) -> str:
        shown = self.table.head(self.max_rows)
        flags = shown[self._flag_column] if "flags" in self.columns else None
        shown = shown[[c for c in self.columns if c in self.table.columns and c != "flags"]].copy()
        if flags is not None:  # the full texts are in the HTML tooltip and the table
            shown["flags"] = [len(_flags(v)) for v in flags]
        more = len(self.table) - len(shown)
        return shown.to_string(index=False) + (f"\n... {more} more rows in .table" if more > 0
                                               else "")


def show(table, columns=None, max_rows: int = 50) -> ResultsView:
    """A compact notebook view of a results table (a DataFrame or a run directory).

    Parameters
    ----------
    table : pandas.DataFrame, str or os.PathLike
        A results table, or a run directory / results file for
        :func:`ibtools.results.load_results`.
    columns : list of str, optional
        Columns to show; default :data:`SHOW_COLUMNS` present in the table (``"ci"`` is the
        IB value's interval in one cell).
    max_rows : int
        Rows displayed; the view's ``table`` keeps them all.
    """
    import os

    if isinstance(table, (str, os.PathLike)):
        from ibtools.results import load_results

        table = load_results(table)
    return ResultsView(table, columns=columns, max_rows=max_rows)
