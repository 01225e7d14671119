"""One results table from several run directories.

Runs split for good reasons: an estimator that needs its own layer set, a second
architecture, a rerun with more rows.  :func:`merge_runs` reads each run (a directory or a
results file), tags every row with the ``run`` it came from, and makes ``layer_index`` mean
the same thing across runs: for each model the layers of all runs are put in one order that
keeps every run's own order (a run holding ``conv1..conv4`` and one holding
``conv4..classifier`` give ``conv1..classifier``), and each run's own index is kept as
``run_layer_index``.  ``i_prev_t`` stays what its run measured: the information between the
layer and the layer before it *in that run's selection*.

A row that two runs both hold (same checkpoint, layer, setting, beta and reference) is kept
once, from the first run given, with a warning (``on_duplicate="warn"``), or refused
(``"error"``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pandas as pd

from ibtools import results as results_io
from ibtools.errors import InputError, InputTypeError

ON_DUPLICATE = ("warn", "error")
#: What identifies a row across runs.
ROW_KEY = ["checkpoint", "layer", "setting", "beta", "reference"]


class MergeWarning(UserWarning):
    """Rows held by more than one run, of which only the first run's are kept, or layer
    orders that the runs disagree on."""


def _read(run) -> pd.DataFrame:
    if not isinstance(run, (str, os.PathLike)):
        raise InputTypeError(f"runs: each run must be a directory or results file path; got "
                             f"{type(run).__name__}")
    table = results_io.load_results(run)
    if len(table) == 0:
        raise InputError(f"run {os.fspath(run)!r} holds no rows")
    missing = [c for c in ("checkpoint", "layer", "layer_index", "setting", "beta")
               if c not in table.columns]
    if missing:
        raise InputError(f"run {os.fspath(run)!r} is not a results table: it lacks the "
                         f"column(s) {missing}")
    return table


def _model_key(table: pd.DataFrame) -> pd.Series:
    return (table["model"] if "model" in table.columns else table["checkpoint"]).astype(str)


def layer_order(sequences: list[list[str]]) -> tuple[list[str], bool]:
    """One order of the layers that keeps the order of every sequence when they agree
    (ties broken by first appearance), and whether they did.

    Runs that disagree (``a, b`` in one and ``b, a`` in another) cannot both be kept: the
    layers are then placed by first appearance and ``False`` is returned.
    """
    first: dict[str, int] = {}
    for seq in sequences:
        for name in seq:
            first.setdefault(name, len(first))
    after: dict[str, set] = {name: set() for name in first}
    before_count = dict.fromkeys(first, 0)
    for seq in sequences:
        for a, b in zip(seq, seq[1:]):
            if a != b and b not in after[a]:
                after[a].add(b)
                before_count[b] += 1
    ready = sorted((n for n, c in before_count.items() if c == 0), key=first.get)
    out = []
    while ready:
        name = ready.pop(0)
        out.append(name)
        for nxt in after[name]:
            before_count[nxt] -= 1
            if before_count[nxt] == 0:
                ready.append(nxt)
        ready.sort(key=first.get)
    if len(out) < len(first):  # a cycle: the runs disagree
        return sorted(first, key=first.get), False
    return out, True


def _run_sequences(table: pd.DataFrame) -> list[list[str]]:
    keys = [c for c in ("run", "checkpoint", "setting") if c in table.columns]
    seqs = []
    for _, group in table.groupby(keys, sort=False, dropna=False):
        ordered = group.sort_values("layer_index", kind="mergesort")["layer"].astype(str)
        seqs.append(list(dict.fromkeys(ordered)))
    return seqs


def merge_tables(tables: list[pd.DataFrame], names: list[str], *,
                 on_duplicate: str = "warn") -> pd.DataFrame:
    """:func:`merge_runs` on tables already read; ``names`` label their ``run`` column."""
    if on_duplicate not in ON_DUPLICATE:
        raise InputError(f"on_duplicate={on_duplicate!r} is not accepted; use one of "
                         f"{list(ON_DUPLICATE)}")
    if len(tables) != len(names):
        raise InputError(f"{len(tables)} tables but {len(names)} names")
    parts = []
    for table, name in zip(tables, names):
        table = table.copy()
        if "run" not in table.columns:  # a merged table keeps the runs it came from
            table["run"] = name
        table["run"] = table["run"].fillna(name).astype(str)
        parts.append(table)
    merged = pd.concat(parts, ignore_index=True, sort=False)
    merged["layer"] = merged["layer"].astype(str)
    key = [c for c in ROW_KEY if c in merged.columns]
    dup = merged.duplicated(key, keep="first")
    if dup.any():
        runs = sorted(set(merged.loc[dup, "run"]))
        first = merged.loc[dup].iloc[0]
        example = ", ".join(f"{c}={first[c]!r}" for c in key)
        message = (f"{int(dup.sum())} row(s) of run(s) {runs} are already held by an earlier "
                   f"run (same {', '.join(key)}; e.g. {example})")
        if on_duplicate == "error":
            raise InputError(f"{message}; give each run once, or on_duplicate='warn' "
                             f"(--on-duplicate warn) to keep the first run's rows")
        warnings.warn(f"{message}; keeping the first run's rows. Name models distinctly if "
                      f"they are different models", MergeWarning, stacklevel=3)
        merged = merged.loc[~dup].reset_index(drop=True)
    merged["run_layer_index"] = merged["layer_index"]
    models = _model_key(merged)
    for model in dict.fromkeys(models):
        rows = models == model
        order, agreed = layer_order(_run_sequences(merged.loc[rows]))
        if not agreed:
            warnings.warn(f"model {model!r}: the runs list its layers in different orders; "
                          f"placing them by first appearance ({order})", MergeWarning,
                          stacklevel=3)
        index = {name: i for i, name in enumerate(order)}
        merged.loc[rows, "layer_index"] = merged.loc[rows, "layer"].map(index)
    merged["layer_index"] = merged["layer_index"].astype(int)
    return results_io.order_columns(merged)


def merge_runs(runs, *, on_duplicate: str = "warn") -> pd.DataFrame:
    """Read several run directories (or results files) into one table.

    Parameters
    ----------
    runs : list of str or os.PathLike
        Run directories or results files (``results.csv``/``.json``/``.parquet``).
    on_duplicate : {"warn", "error"}
        A row two runs both hold: keep the first run's with a :class:`MergeWarning`, or
        raise ValueError naming the runs and an example row.

    Returns
    -------
    pandas.DataFrame
        Every row, with ``run`` (the path as given), ``layer_index`` in one order per model
        and ``run_layer_index`` (the index within its own run).
    """
    if isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    runs = list(runs)
    if not runs:
        raise InputError("runs is empty; give at least one run directory or results file")
    names = [os.fspath(r) if isinstance(r, (str, os.PathLike)) else r for r in runs]
    if len(set(map(str, names))) < len(names):
        raise InputError(f"runs lists a run twice: {names}")
    return merge_tables([_read(r) for r in runs], [str(n) for n in names],
                        on_duplicate=on_duplicate)


def merged_config(runs) -> dict:
    """A config for the merged table: each run's ``config.json`` under its path, and the
    device and versions the runs recorded (``"a, b"`` when they differ)."""
    out = {}
    for run in runs:
        base = Path(run) if Path(run).is_dir() else Path(run).parent
        out[os.fspath(run)] = results_io.load_config(base) or {}
    config = {"merged_from": out}
    for key in ("device", "ibtools_version", "torch_version"):
        values = list(dict.fromkeys(str(c[key]) for c in out.values() if c.get(key)))
        if values:
            config[key] = ", ".join(values)
    return config


def write_merged(runs, out_dir, *, on_duplicate: str = "warn", overwrite: bool = False) -> tuple:
    """Merge ``runs`` and save the table and a config into ``out_dir`` (atomically).

    Returns ``(table, paths)``.  Refuses an ``out_dir`` that already holds results unless
    ``overwrite``, and one that is among the runs.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"out_dir={str(out)!r} exists and is not a directory")
    runs = [runs] if isinstance(runs, (str, os.PathLike)) else list(runs)
    for run in runs:
        base = Path(run) if Path(run).is_dir() else Path(run).parent
        if out.exists() and base.resolve() == out.resolve():
            raise InputError(f"out_dir={str(out)!r} is one of the runs; merge into another "
                             f"directory")
    held = [n for n in results_io.RESULT_FILES if (out / n).exists()]
    if held and not overwrite:
        raise InputError(f"out_dir={str(out)!r} already holds {held}; choose another directory "
                         f"or overwrite=True (--overwrite)")
    table = merge_runs(runs, on_duplicate=on_duplicate)
    paths = results_io.save_results(table, out)
    results_io.save_config(merged_config(runs), out)
    return table, paths
