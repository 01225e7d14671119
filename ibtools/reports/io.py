"""Reading a results directory and writing report files: the table contract's own readers
and atomic writer (``ibtools.results``), with the empty-config convention reports use."""

from __future__ import annotations

from ibtools.results import CONFIG_JSON as CONFIG_FILE
from ibtools.results import RESULT_FILES, load_results
from ibtools.results import load_config as _load_config
from ibtools.results import write_atomic as atomic_write

__all__ = ["CONFIG_FILE", "RESULT_FILES", "atomic_write", "load_config", "load_results"]


def load_config(directory) -> dict:
    """The ``config.json`` of a results directory as a dict (empty when absent)."""
    return _load_config(directory) or {}
