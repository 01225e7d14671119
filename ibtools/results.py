"""The results table: its columns, and atomic saving and loading of a run directory.

A run directory holds ``results.csv`` and ``results.json`` (the same rows), ``config.json``
(the settings that produced them) and, when pyarrow is installed, ``results.parquet``.
Every write goes to a temporary file that replaces the old one in a single rename, so an
interrupted run leaves the previous complete table, never half a file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path

import pandas as pd

from ibtools.errors import InputError, InputTypeError
from ibtools.schema import (  # noqa: F401  (re-exported)
    COLUMNS,
    FLAG_COLUMN,
    KEY,
    METRIC_COLUMNS,
    OLD_FLAG_COLUMN,
    SOURCE_COLUMNS,
)

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
RESULTS_PARQUET = "results.parquet"
CONFIG_JSON = "config.json"
#: Rows of the checkpoint in progress, one JSON object per line, appended after every step;
#: folded into the table (and removed) when the checkpoint is finished.
RESULTS_JOURNAL = "results.partial.jsonl"
#: Files looked for in a run directory, in order of preference.
RESULT_FILES = (RESULTS_CSV, RESULTS_JSON, RESULTS_PARQUET)


def write_atomic(path, data) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` through a temporary file in the
    same folder and one ``os.replace``, so a reader never sees a half-written file."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"path={str(path)!r} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); results and reports are meant to be shared
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def rename_old_columns(df: pd.DataFrame) -> pd.DataFrame:
    """A table written before the flag column's rename, with ``flags`` read as
    ``flag_text`` (a table holding both keeps both)."""
    if OLD_FLAG_COLUMN in df.columns and FLAG_COLUMN not in df.columns:
        return df.rename(columns={OLD_FLAG_COLUMN: FLAG_COLUMN})
    return df


def _rename_old_keys(row):
    if isinstance(row, dict) and OLD_FLAG_COLUMN in row and FLAG_COLUMN not in row:
        row = dict(row)
        row[FLAG_COLUMN] = row.pop(OLD_FLAG_COLUMN)
    return row


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in COLUMNS if c in df.columns]
    rest = [c for c in df.columns if c not in first]
    return df[first + rest]


def save_results(df: pd.DataFrame, out_dir) -> dict:
    """Save the table as CSV and JSON (and Parquet when pyarrow exists), atomically."""
    out_dir = Path(out_dir)
    df = order_columns(df)
    paths = {"csv": out_dir / RESULTS_CSV, "json": out_dir / RESULTS_JSON}
    write_atomic(paths["csv"], df.to_csv(index=False))
    write_atomic(paths["json"], df.to_json(orient="records", indent=1))
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        pass
    else:
        import io

        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        paths["parquet"] = out_dir / RESULTS_PARQUET
        write_atomic(paths["parquet"], buf.getvalue())
    return paths


def load_results(path) -> pd.DataFrame:
    """Read a results table from a run directory or a CSV/JSON/Parquet file.

    Parameters
    ----------
    path : str or os.PathLike
        A directory holding ``results.csv`` (or ``results.json`` / ``results.parquet``),
        or one such file.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"path must be a str or path; got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in RESULT_FILES if (path / name).is_file()]
        if not found and (path / RESULTS_JOURNAL).is_file():
            return _journal_table(path)
        if not found:
            raise InputError(f"results directory {str(path)!r} holds none of "
                             f"{list(RESULT_FILES)}; run `ibtools analyze ... --out {path}` first")
        path = found[0]
    elif not path.is_file():
        raise InputError(f"path={str(path)!r} does not exist; give a results directory or a "
                         f"results file ({', '.join(RESULT_FILES)})")
    suffix = path.suffix.lower()
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet,
               ".json": lambda p: pd.read_json(p, orient="records")}
    if suffix not in readers:
        raise InputError(f"path={str(path)!r} has suffix {suffix!r}; accepted: .csv, .json, "
                         f".parquet")
    try:
        return rename_old_columns(readers[suffix](path))
    except (ValueError, OSError) as exc:  # pandas' parse errors are ValueErrors
        # pandas names neither the file nor that it is a results table
        raise InputError(f"{str(path)!r} cannot be read as a results table ({type(exc).__name__}: "
                         f"{exc}); it is empty, damaged or not a {suffix[1:]} table") from exc


def _journal_table(out_dir: Path) -> pd.DataFrame:
    """The rows of a run that stopped before its first checkpoint was finished (only the
    journal exists), with a warning saying so; unreadable lines are skipped."""
    import warnings

    rows = read_journal(out_dir)
    if not rows:
        raise InputError(f"results directory {str(out_dir)!r} holds only {RESULTS_JOURNAL}, and "
                         f"no row in it can be read; rerun `ibtools analyze ... --out {out_dir}`")
    warnings.warn(f"{str(out_dir)!r} holds no {RESULTS_CSV}: the run stopped before finishing "
                  f"a checkpoint; reading the {len(rows)} row(s) of {RESULTS_JOURNAL} (rerun "
                  f"the analysis into it to resume)", UserWarning, stacklevel=3)
    return order_columns(rename_old_columns(pd.DataFrame(rows)))


def append_journal(rows: list[dict], out_dir) -> None:
    """Append finished rows to the run's journal (cheap: no rewrite of the whole table)."""
    path = Path(out_dir) / RESULTS_JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_journal_lines(out_dir) -> tuple[list[tuple[int, object]], list[tuple[int, str]]]:
    """The journal's lines as ``(line number, parsed JSON)`` and the unreadable ones as
    ``(line number, reason)``: bytes that are not UTF-8, or text that is not JSON (a last line
    cut short by an interruption is the usual case).  Nothing is checked against a schema."""
    path = Path(out_dir) / RESULTS_JOURNAL
    if not path.is_file():
        return [], []
    parsed, bad = [], []
    for number, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            parsed.append((number, _rename_old_keys(json.loads(raw.decode("utf-8")))))
        except UnicodeDecodeError:
            bad.append((number, "is not UTF-8 text"))
        except json.JSONDecodeError:
            bad.append((number, "is not valid JSON (cut short or damaged)"))
    return parsed, bad


def read_journal(out_dir) -> list[dict]:
    """Rows in the run's journal; lines that are not JSON objects (a last line cut short by an
    interruption, damaged bytes) are skipped."""
    return [row for _, row in read_journal_lines(out_dir)[0] if isinstance(row, dict)]


def read_table_lines(path) -> tuple[list[str], list[tuple[int, dict]], list[tuple[int, str]]]:
    """A results CSV as its header, its rows as ``(line number, {column: text})`` and the rows
    that cannot be rows as ``(line number, reason)`` (a different number of fields than the
    header: a cut or damaged line).

    Raises
    ------
    ValueError
        Naming the file, when it is not UTF-8 text or has no header with the key columns
        (for example a file overwritten by something else).
    """
    path = Path(path)
    advice = "move it away or rerun with --overwrite (overwrite=True) to start afresh"
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{str(path)!r} is not a results table: not UTF-8 text ({exc}); "
                         f"{advice}") from exc
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise InputError(f"{str(path)!r} line 1 is not a CSV header ({exc}); {advice}") from exc
    if header and OLD_FLAG_COLUMN in header and FLAG_COLUMN not in header:
        header = [FLAG_COLUMN if c == OLD_FLAG_COLUMN else c for c in header]
    missing = [c for c in KEY if c not in (header or [])]
    if missing:
        raise InputError(f"{str(path)!r} is not a results table: its first line lacks the key "
                         f"column(s) {missing}; {advice}")
    rows, bad = [], []
    while True:
        start = reader.line_num + 1  # a quote left open by a cut runs a record over lines
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            bad.append((start, f"is not valid CSV ({exc})"))
            continue
        if not fields:
            continue
        if len(fields) != len(header):
            span = f", read as one record up to line {reader.line_num}" if (
                reader.line_num > start) else ""
            bad.append((start, f"has {len(fields)} fields where the header has "
                               f"{len(header)} (a cut or damaged row{span})"))
            continue
        rows.append((start, dict(zip(header, fields))))
    return header, rows, bad


def records_from_text(header: list[str], records: list[dict]) -> list[dict]:
    """Text rows (as :func:`read_table_lines` gives them) typed the way ``pandas.read_csv``
    types a whole table, so resumed rows equal rows read back from a finished run."""
    if not records:
        return []
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header)
    writer.writeheader()
    writer.writerows(records)
    buf.seek(0)
    return pd.read_csv(buf).to_dict("records")


def clear_journal(out_dir) -> None:
    (Path(out_dir) / RESULTS_JOURNAL).unlink(missing_ok=True)


def save_config(config: dict, out_dir) -> Path:
    path = Path(out_dir) / CONFIG_JSON
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True, default=str))
    return path


def load_config(out_dir) -> dict | None:
    """The ``config.json`` of a run directory as a dict, or None when there is none."""
    path = Path(out_dir) / CONFIG_JSON
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InputError(f"{str(path)!r} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise InputError(f"{str(path)!r} must hold a JSON object; got {type(config).__name__}")
    return config


def show(table, columns=None, max_rows: int = 50):
    """A compact notebook view of a results table or run directory (four-digit values,
    intervals in one cell, flags as a count with a tooltip); see :func:`ibtools.notebook.show`."""
    from ibtools.notebook import show as _show

    return _show(table, columns=columns, max_rows=max_rows)
