"""The results table: its columns, and atomic saving and loading of a run directory.

A run directory holds ``results.csv`` and ``results.json`` (the same rows), ``config.json``
(the settings that produced them) and, when pyarrow is installed, ``results.parquet``.
Every write goes to a temporary file that replaces the old one in a single rename, so an
interrupted run leaves the previous complete table, never half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

#: Columns every results table has (DESIGN.md's contract), in display order.
COLUMNS = [
    "checkpoint", "model", "norm", "lam", "seed", "step", "layer", "layer_index",
    "estimator", "setting", "params", "reference", "ib_kind",
    "i_xt", "i_ty", "i_prev_t", "ib_value", "beta", "unit", "ci_low", "ci_high",
    "ci_low_xt", "ci_high_xt", "ci_low_ty", "ci_high_ty", "ci_low_prev_t", "ci_high_prev_t",
    "n_samples", "dim", "seconds", "flags",
]
#: Columns that identify a row; a resumed run skips rows whose key is already present.
KEY = ["checkpoint", "layer", "setting", "beta"]

RESULTS_CSV = "results.csv"
RESULTS_JSON = "results.json"
RESULTS_PARQUET = "results.parquet"
CONFIG_JSON = "config.json"


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file and one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    """Read a results table from a run directory, a CSV, a JSON or a Parquet file."""
    path = Path(path)
    if path.is_dir():
        if (path / RESULTS_CSV).exists():
            path = path / RESULTS_CSV
        elif (path / RESULTS_JSON).exists():
            path = path / RESULTS_JSON
        else:
            raise FileNotFoundError(f"{path} holds no {RESULTS_CSV} or {RESULTS_JSON}; run "
                                    f"`ibtools analyze ... --out {path}` first")
    if not path.exists():
        raise FileNotFoundError(f"results file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix == ".json":
        return pd.read_json(path, orient="records")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"results file {path}: suffix {suffix!r} is not one of .csv, .json, .parquet")


def save_config(config: dict, out_dir) -> Path:
    path = Path(out_dir) / CONFIG_JSON
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True, default=str))
    return path


def load_config(out_dir) -> dict | None:
    path = Path(out_dir) / CONFIG_JSON
    if not path.exists():
        return None
    return json.loads(path.read_text(encoding="utf-8"))
