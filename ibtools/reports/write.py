"""One call from a results table or directory to report.html and report.pdf."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ibtools.errors import InputError, InputTypeError
from ibtools.reports.content import build_report_content
from ibtools.reports.html import render_html
from ibtools.reports.io import load_config, load_results
from ibtools.reports.pdf import render_pdf
from ibtools.results import CONFIG_JSON, RESULT_FILES, RESULTS_JOURNAL
from ibtools.run_directory import HOLDER_FILE, LOCK_FILE

#: A run directory's own files: a report is never written over one of them.
RUN_FILES = (*RESULT_FILES, CONFIG_JSON, RESULTS_JOURNAL, LOCK_FILE, HOLDER_FILE)
#: What every ibtools report carries (HTML ``<meta name="generator">``, PDF ``/Creator``):
#: an existing file with it may be replaced by a new report without ``overwrite``.
_REPORT_MARKS = (b'<meta name="generator" content="ibtools">', b"/Creator (ibtools)")
_MARK_SCAN_BYTES = 4 * 2**20


def _output_name(value, name: str):
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise InputTypeError(f"{name} must be a file name or path (or None to skip); got {value!r}")
    return Path(value)


def _made_by_report(path: Path) -> bool:
    """Whether ``path`` carries the mark an ibtools report writes (HTML head, PDF info)."""
    with open(path, "rb") as fh:
        head = fh.read(_MARK_SCAN_BYTES)
        size = fh.seek(0, os.SEEK_END)
        tail = b""
        if size > _MARK_SCAN_BYTES:
            fh.seek(size - _MARK_SCAN_BYTES)
            tail = fh.read()
    return any(mark in head or mark in tail for mark in _REPORT_MARKS)


def _check_target(path: Path, name: str, source: Path | None, overwrite: bool) -> None:
    """Refuse to write a report over the run's own files, or over a file no report made."""
    if path.name in RUN_FILES or (source is not None and source.is_file()
                                  and path.resolve() == source.resolve()):
        raise InputError(f"{name}={str(path)!r} would replace the run's own file "
                         f"{path.name!r} (results, config or journal); a report never does "
                         f"that: choose another name, e.g. report.{name}")
    if path.is_dir():
        raise InputError(f"{name}={str(path)!r} is a directory; give a file name")
    if path.exists() and not overwrite and not _made_by_report(path):
        raise InputError(f"{name}={str(path)!r} exists and was not written by an ibtools "
                         f"report; choose another name, or pass overwrite=True (--overwrite) "
                         f"to replace it")


def write_report(table_or_dir, out_dir=None, html="report.html", pdf="report.pdf", *,
                 config=None, environment=None, units: str = "nats",
                 title: str | None = None, pdf_full_table: bool = False,
                 overwrite: bool = False) -> dict:
    """Write the HTML and PDF reports of a results table.

    Parameters
    ----------
    table_or_dir : pandas.DataFrame, str or os.PathLike
        A results table, a results directory (holding ``results.csv`` and optionally
        ``config.json``) or a results file.
    out_dir : str or os.PathLike, optional
        Folder for relative ``html``/``pdf`` names.  Default: the results directory (the
        file's folder for a results file); the current directory for a DataFrame.
    html, pdf : str, os.PathLike or None
        Output names; ``None`` skips that format.
    config : dict, optional
        Run configuration; default the directory's ``config.json`` (none for a DataFrame).
    environment : dict, optional
        Versions, device, date...; default ``config["environment"]``.
    units : {"nats", "bits"}
        Unit of every number in the report.
    title : str, optional
        Report title.
    pdf_full_table : bool
        Also print every row of the results table in the PDF (the HTML always has it).
    overwrite : bool
        Replace an existing file that no ibtools report wrote.  Files a report wrote (they
        carry its mark) are replaced without it; the run's own files (results, config.json,
        the journal) never are.

    Returns
    -------
    dict
        ``{"html": Path, "pdf": Path}`` for the formats written.

    Notes
    -----
    Figures are built once and rendered into both files; each file is written atomically.
    """
    html_name = _output_name(html, "html")
    pdf_name = _output_name(pdf, "pdf")
    if html_name is None and pdf_name is None:
        raise InputError("html=None and pdf=None: nothing to write; name at least one output")
    source = None
    if isinstance(table_or_dir, pd.DataFrame):
        table, base = table_or_dir, Path.cwd()
        found_config = {}
    elif isinstance(table_or_dir, (str, os.PathLike)):
        source = Path(table_or_dir)
        table = load_results(source)
        base = source if source.is_dir() else source.parent
        found_config = load_config(base)
    else:
        raise InputTypeError(f"table_or_dir must be a results DataFrame or a results "
                             f"directory/file path; got {type(table_or_dir).__name__}")
    if out_dir is not None:
        if not isinstance(out_dir, (str, os.PathLike)):
            raise InputTypeError(f"out_dir must be a folder path; got {type(out_dir).__name__}")
        base = Path(out_dir)
    targets = [(base / n, k) for n, k in ((html_name, "html"), (pdf_name, "pdf")) if n is not None]
    if len(targets) == 2 and targets[0][0].resolve() == targets[1][0].resolve():
        raise InputError(f"html and pdf name the same file {str(targets[0][0])!r}; give two names")
    for path, kind in targets:
        _check_target(path, kind, source, overwrite)
    content = build_report_content(table, config=config if config is not None else found_config,
                                   environment=environment, units=units, title=title)
    written = {}
    if html_name is not None:
        written["html"] = render_html(None, base / html_name, content=content)
    if pdf_name is not None:
        written["pdf"] = render_pdf(None, base / pdf_name, content=content,
                                    full_table=pdf_full_table)
    return written
