"""One call from a results table or directory to report.html and report.pdf."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ibtools.reports.content import build_report_content
from ibtools.reports.html import render_html
from ibtools.reports.io import load_config, load_results
from ibtools.reports.pdf import render_pdf


def _output_name(value, name: str):
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise TypeError(f"{name} must be a file name or path (or None to skip); got {value!r}")
    return Path(value)


def write_report(table_or_dir, out_dir=None, html="report.html", pdf="report.pdf", *,
                 config=None, environment=None, units: str = "nats",
                 title: str | None = None, pdf_full_table: bool = False) -> dict:
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
        raise ValueError("html=None and pdf=None: nothing to write; name at least one output")
    if isinstance(table_or_dir, pd.DataFrame):
        table, base = table_or_dir, Path.cwd()
        found_config = {}
    elif isinstance(table_or_dir, (str, os.PathLike)):
        source = Path(table_or_dir)
        table = load_results(source)
        base = source if source.is_dir() else source.parent
        found_config = load_config(base)
    else:
        raise TypeError(f"table_or_dir must be a results DataFrame or a results directory/file "
                        f"path; got {type(table_or_dir).__name__}")
    if out_dir is not None:
        if not isinstance(out_dir, (str, os.PathLike)):
            raise TypeError(f"out_dir must be a folder path; got {type(out_dir).__name__}")
        base = Path(out_dir)
    content = build_report_content(table, config=config if config is not None else found_config,
                                   environment=environment, units=units, title=title)
    written = {}
    if html_name is not None:
        written["html"] = render_html(None, base / html_name, content=content)
    if pdf_name is not None:
        written["pdf"] = render_pdf(None, base / pdf_name, content=content,
                                    full_table=pdf_full_table)
    return written
