"""Keeping a run directory whole: one writer at a time, resume by file content, and only rows
that belong to the run.

``ibtools.analyze(..., out_dir=DIR)`` appends to a table that can outlive many invocations.
Three things could otherwise lose, duplicate or mix rows:

- two processes writing into ``DIR`` at once: each would rewrite the table with only its own
  rows.  A lock (the ``filelock`` library; the operating system releases it when a process
  dies, so a crash leaves no stale lock) makes the second wait and then add its rows to the
  first's; a file beside the lock names the holder (pid, host, start, command).
- a checkpoint named two ways (``./a.pt``, ``../x/a.pt``) or replaced in place: rows are
  keyed on the resolved path plus a content :func:`fingerprint`, so the first is recognised
  and the second re-analysed, its stale rows replaced.
- damaged or foreign rows in ``results.csv`` or the journal: :func:`read_resume_rows` keeps
  only rows that fit this run's schema and settings and warns, naming file and line, about
  every other one.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import math
import os
import socket
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from ibtools import results as results_io
from ibtools.errors import InputError

LOCK_FILE = ".ibtools.lock"
#: Who holds the lock, written atomically once it is acquired and removed before release.
HOLDER_FILE = ".ibtools.lock.holder.json"
#: Files up to this size are hashed whole (their fingerprint ignores the modification time);
#: larger ones by size, modification time and their first and last MiB.
FULL_HASH_LIMIT = 64 * 2**20
_END_BYTES = 2**20
#: How many dropped rows are described one by one before the rest are counted.
_MAX_ROW_WARNINGS = 10

_NUMERIC = ("lam", "seed", "step", "layer_index", "i_xt", "i_ty", "i_prev_t", "ib_value", "beta",
            "ci_low", "ci_high", "ci_low_xt", "ci_high_xt", "ci_low_ty", "ci_high_ty",
            "ci_low_prev_t", "ci_high_prev_t", "n_samples", "dim", "seconds", "noise_std",
            *results_io.METRIC_COLUMNS)
_REQUIRED = ("checkpoint", "layer", "layer_index", "estimator", "setting", "params", "beta",
             "reference", "unit", "n_samples", "dim", results_io.FLAG_COLUMN)
_KNOWN = set(results_io.COLUMNS) | set(results_io.SOURCE_COLUMNS) | set(results_io.METRIC_COLUMNS)
#: How a row's numbers were measured (ibtools.noise_channel): its mode and channel std.
_KNOWN |= {"mode", "noise_std"}
#: How a row's layer was reduced and the resolution chosen from the data (ibtools.probes.reduce,
#: ibtools.estimators.resolution).
_KNOWN |= {"reduction", "resolution"}


class RunDirectoryWarning(UserWarning):
    """Rows dropped or replaced while resuming, or a wait for another run's lock."""


class RunDirectoryBusyError(RuntimeError):
    """Another process holds the run directory and did not release it in time."""


def _warn(message: str) -> None:
    warnings.warn(message, RunDirectoryWarning, stacklevel=3)


# --- what a checkpoint is: resolved path and content fingerprint -------------------------------

def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        if stat.st_size <= FULL_HASH_LIMIT:
            kind = "full"
            for block in iter(lambda: fh.read(2**20), b""):
                digest.update(block)
        else:
            kind = "ends"
            digest.update(fh.read(_END_BYTES))
            fh.seek(stat.st_size - _END_BYTES)
            digest.update(fh.read(_END_BYTES))
    return f"{stat.st_size}:{stat.st_mtime_ns}:{kind}:{digest.hexdigest()[:32]}"


def fingerprint(path) -> str:
    """A content fingerprint of a checkpoint file or directory.

    ``"SIZE:MTIME_NS:full:SHA256"`` for files up to :data:`FULL_HASH_LIMIT` (the whole file
    hashed) and ``"SIZE:MTIME_NS:ends:SHA256"`` above it (the first and last MiB hashed, so a
    multi-GB checkpoint costs two reads); a directory (a Hugging Face checkpoint) gets
    ``"dir:SHA256"`` over its files' relative names and fingerprints.  Compare two with
    :func:`same_content`, which ignores the modification time where the whole file was hashed.
    """
    path = Path(path)
    if not path.is_dir():
        return _file_fingerprint(path)
    digest = hashlib.sha256()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{item.relative_to(path).as_posix()}={_content_key(_file_fingerprint(item))}"
                      f"\n".encode())
    return f"dir:{digest.hexdigest()[:32]}"


def _content_key(fp: str) -> str:
    parts = str(fp).split(":")
    if len(parts) == 4 and parts[2] == "full":
        return f"{parts[0]}:full:{parts[3]}"  # the whole content was hashed: mtime is noise
    return str(fp)


def same_content(recorded, current) -> bool:
    """Whether two fingerprints describe the same file content (see :func:`fingerprint`)."""
    if not isinstance(recorded, str) or not recorded or not current:
        return False
    return _content_key(recorded) == _content_key(current)


def checkpoint_source(ckpt) -> tuple[str, str | None]:
    """``(identity, fingerprint)`` of a checkpoint: the resolved path and its fingerprint for a
    file or directory on disk, the given label and ``None`` otherwise (a model in memory, a
    name that is no path)."""
    if isinstance(ckpt, (str, os.PathLike)) and Path(ckpt).exists():
        resolved = Path(ckpt).resolve()
        return str(resolved), fingerprint(resolved)
    return (type(ckpt).__name__ if not isinstance(ckpt, (str, os.PathLike)) else str(ckpt)), None


def row_identity(row: dict) -> str:
    path = row.get("checkpoint_path")
    if isinstance(path, str) and path:
        return path
    return str(row.get("checkpoint"))


def reconcile(rows: list[dict], ckpts: list, sources: list[tuple[str, str | None]]):
    """Drop rows of this run's checkpoints whose file has changed since they were computed.

    Returns the rows kept and a map from checkpoint identity to the label its earlier rows
    use (so a file given under another name keeps one label in the table).  Rows of files not
    in this run are kept as they are.
    """
    by_label = {str(c): ident for c, (ident, fp) in zip(ckpts, sources) if fp is not None}
    current = {ident: fp for ident, fp in sources if fp is not None}
    kept, stale, labels = [], {}, {}
    for row in rows:
        path, label = row.get("checkpoint_path"), str(row.get("checkpoint"))
        if isinstance(path, str) and path:
            ident = path
        else:  # a row of an older ibtools: its label, as given then or resolved here
            ident = by_label.get(label) or (str(Path(label).resolve()) if Path(label).exists()
                                             else None)
        if ident in current and not same_content(row.get("checkpoint_fingerprint"),
                                                 current[ident]):
            stale.setdefault(ident, []).append(row)
            continue
        if ident in current:
            row = dict(row, checkpoint_path=ident)
            labels.setdefault(ident, str(row.get("checkpoint")))
        kept.append(row)
    for ident, old in stale.items():
        recorded = old[0].get("checkpoint_fingerprint")
        why = ("its rows were recorded without a content fingerprint (an older ibtools)"
               if not isinstance(recorded, str) or not recorded else
               f"it changed since its rows were computed (fingerprint {recorded} then, "
               f"{current[ident]} now)")
        _warn(f"checkpoint {ident}: {why}; re-analysing it and replacing its {len(old)} "
              f"stale row(s)")
    return kept, labels


# --- what a row of this run looks like ---------------------------------------------------------

@dataclass
class RunSchema:
    """What rows of one run must agree on: its estimator settings and its IB reference."""

    specs: dict  # setting label -> (method, params as a dict)
    reference: str
    seen: set = field(default_factory=set)

    @classmethod
    def from_specs(cls, specs, reference):
        return cls({s.label: (s.method, json.loads(s.params_json)) for s in specs}, reference)


def _missing(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def _number(value):
    """The value as a float (NaN when empty), or None when it is no number."""
    if _missing(value):
        return math.nan
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _json(value):
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return None


def row_problem(row, schema: RunSchema) -> str | None:
    """Why ``row`` (a dict of a journal line or a CSV row's text) does not belong to the run,
    or None when it does.  A row that fits is remembered so a second copy is a duplicate."""
    if not isinstance(row, dict):
        return f"is a JSON {type(row).__name__}, not a row object"
    unknown = sorted(str(k) for k in row if k not in _KNOWN)
    if unknown:
        return f"has unknown column(s) {unknown}"
    missing = [c for c in _REQUIRED if _missing(row.get(c))]
    if missing:
        return f"lacks {missing} (a cut or incomplete row)"
    bad = [f"{c}={row[c]!r}" for c in _NUMERIC if c in row and _number(row[c]) is None]
    if bad:
        return f"has non-numeric value(s) {', '.join(bad)}"
    beta, index = _number(row["beta"]), _number(row["layer_index"])
    if not (math.isfinite(beta) and beta >= 0) or not (index >= 0 and index == int(index)):
        return f"has beta={row['beta']!r} / layer_index={row['layer_index']!r} out of range"
    setting = str(row["setting"])
    if setting not in schema.specs:
        return f"belongs to estimator setting {setting!r}, which this run does not use"
    method, params = schema.specs[setting]
    if str(row["estimator"]) != method or _json(row["params"]) != params:
        return (f"has estimator {row['estimator']!r} / params {row['params']!r}, which do not "
                f"match this run's {setting!r}")
    if str(row["reference"]) != schema.reference or str(row["unit"]) != "nats":
        return (f"has reference={row['reference']!r}, unit={row['unit']!r}; this run uses "
                f"reference={schema.reference!r} in nats")
    if not isinstance(_json(row[results_io.FLAG_COLUMN]), list):
        return (f"has {results_io.FLAG_COLUMN}={row[results_io.FLAG_COLUMN]!r}, not a JSON "
                f"list (a cut or damaged row)")
    key = (row_identity(row), str(row["layer"]), setting, beta)
    if key in schema.seen:
        return "repeats a row already read (same checkpoint, layer, setting and beta)"
    schema.seen.add(key)
    return None


def _report_dropped(path: Path, dropped: list[tuple[int, str]]) -> None:
    for line, why in dropped[:_MAX_ROW_WARNINGS]:
        _warn(f"{path} line {line} {why}; dropped, not carried into the table")
    if len(dropped) > _MAX_ROW_WARNINGS:
        _warn(f"{path}: {len(dropped) - _MAX_ROW_WARNINGS} more line(s) dropped for the same "
              f"kinds of reasons")


def read_resume_rows(out_dir, schema: RunSchema) -> list[dict]:
    """The rows of ``results.csv`` and then the journal that fit ``schema``, typed as
    ``pandas.read_csv`` types them; every other line is dropped with a
    :class:`RunDirectoryWarning` naming the file and line."""
    out = Path(out_dir)
    rows = []
    table = out / results_io.RESULTS_CSV
    if table.exists():
        header, records, dropped = results_io.read_table_lines(table)
        extra = [c for c in header if c not in _KNOWN]
        if extra:
            _warn(f"{table} line 1 names unknown column(s) {extra}; those columns are dropped, "
                  f"not carried into the table")
            records = [(n, {k: v for k, v in r.items() if k in _KNOWN}) for n, r in records]
            header = [c for c in header if c in _KNOWN]
        good = []
        for line, record in records:
            why = row_problem(record, schema)
            if why is None:
                good.append(record)
            else:
                dropped.append((line, why))
        rows += results_io.records_from_text(header, good)
        _report_dropped(table, sorted(dropped))
    parsed, dropped = results_io.read_journal_lines(out)
    for line, record in parsed:
        why = row_problem(record, schema)
        if why is None:
            rows.append(record)
        else:
            dropped.append((line, why))
    _report_dropped(out / results_io.RESULTS_JOURNAL, sorted(dropped))
    return rows


# --- one writer at a time ----------------------------------------------------------------------

def _holder(out: Path) -> str:
    try:
        info = json.loads((out / HOLDER_FILE).read_text(encoding="utf-8"))
        return (f"pid {info.get('pid')} on host {info.get('host')} (since {info.get('started')}: "
                f"{info.get('command')})")
    except (OSError, ValueError, AttributeError):
        return "another process (it has not written its name yet)"


@contextlib.contextmanager
def run_directory_lock(out_dir, timeout=None):
    """Hold ``out_dir`` for one run: create it, lock it, name the holder beside the lock.

    Parameters
    ----------
    out_dir : path
        The run directory (created when missing).  The lock file stays in it: removing it
        while another process waits on it would let a third one in beside the second.
    timeout : float or None
        Seconds to wait for another run's lock: ``None`` waits until it is released (with a
        warning naming the holder), ``0`` refuses at once.

    Raises
    ------
    RunDirectoryBusyError
        When the lock was not released within ``timeout``; the message names the holder.
    """
    from filelock import FileLock, Timeout

    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout >= 0):
        raise InputError(f"lock_timeout={timeout!r} is not accepted; use None (wait) or a "
                         f"number of seconds >= 0")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir={str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(out / LOCK_FILE))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(out)
        if timeout == 0:
            raise RunDirectoryBusyError(f"run directory {str(out)!r} is in use by {holder}; "
                                        f"wait for it or use another directory") from None
        _warn(f"run directory {str(out)!r} is in use by {holder}; waiting for it to finish, "
              f"then this run adds its rows to the same table")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise RunDirectoryBusyError(f"run directory {str(out)!r} is still in use by "
                                        f"{_holder(out)} after {timeout} s") from None
    try:
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                      timespec="seconds"),
                  "command": " ".join(sys.argv) or "python"}
        results_io.write_atomic(out / HOLDER_FILE, json.dumps(holder))
        yield out
    finally:
        (out / HOLDER_FILE).unlink(missing_ok=True)
        lock.release()
