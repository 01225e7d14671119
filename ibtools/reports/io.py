"""Reading a results directory and writing report files atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pandas as pd

#: File names looked for in a results directory, in order of preference.
RESULT_FILES = ("results.csv", "results.json", "results.parquet")
CONFIG_FILE = "config.json"


def load_results(path) -> pd.DataFrame:
    """Read a results table from a results directory or a CSV/JSON/Parquet file.

    Parameters
    ----------
    path : str or os.PathLike
        A directory holding ``results.csv`` (or ``results.json`` / ``results.parquet``),
        or one such file.

    Returns
    -------
    pandas.DataFrame
        The table as stored (validate it with
        :func:`ibtools.reports.table.validate_table`).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or path; got {type(path).__name__}")
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in RESULT_FILES if (path / name).is_file()]
        if not found:
            raise ValueError(f"results directory {str(path)!r} holds none of {list(RESULT_FILES)}; "
                             f"run `ibtools analyze` there first")
        path = found[0]
    elif not path.is_file():
        raise ValueError(f"path={str(path)!r} does not exist; give a results directory or a "
                         f"results file ({', '.join(RESULT_FILES)})")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return pd.read_csv(path)
    if suffix == ".json":
        return pd.read_json(path, orient="records")
    if suffix == ".parquet":
        return pd.read_parquet(path)
    raise ValueError(f"path={str(path)!r} has suffix {suffix!r}; accepted: .csv, .json, .parquet")


def load_config(directory) -> dict:
    """The ``config.json`` of a results directory as a dict (empty when absent)."""
    config_path = Path(directory) / CONFIG_FILE
    if not config_path.is_file():
        return {}
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(config_path)!r} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{str(config_path)!r} must hold a JSON object; got "
                         f"{type(config).__name__}")
    return config


def atomic_write(path, data) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` via a temporary file and
    ``os.replace``, so a reader never sees a half-written report."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"path={str(path)!r} is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        # mkstemp makes the file private (0600); a report is meant to be shared.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
