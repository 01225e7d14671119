"""Reports of a results table: information-bottleneck plots, a self-contained HTML page and
a multi-page PDF.

>>> from ibtools.reports import write_report
>>> write_report("runs/analysis")            # doctest: +SKIP
{'html': PosixPath('runs/analysis/report.html'), 'pdf': PosixPath('runs/analysis/report.pdf')}

The plot functions take the table (or a filtered view of it) and return a matplotlib
Figure, for notebooks.  Reports know the table's columns (:mod:`ibtools.results`) and nothing else.
"""

from ibtools.reports.content import ReportContent, build_report_content
from ibtools.reports.html import render_html
from ibtools.reports.io import load_config, load_results
from ibtools.reports.pdf import render_pdf
from ibtools.reports.plots import (
    plot_estimator_agreement,
    plot_ib_across_lam,
    plot_ib_across_layers,
    plot_information_plane,
)
from ibtools.reports.summary import collect_caveats, describe_run, summarize
from ibtools.reports.table import (
    OPTIONAL_COLUMNS,
    REQUIRED_COLUMNS,
    prepare_table,
    validate_table,
)
from ibtools.reports.write import write_report

__all__ = [
    "OPTIONAL_COLUMNS", "REQUIRED_COLUMNS", "ReportContent", "build_report_content",
    "collect_caveats", "describe_run", "load_config", "load_results",
    "plot_estimator_agreement", "plot_ib_across_lam", "plot_ib_across_layers",
    "plot_information_plane", "prepare_table", "render_html", "render_pdf", "summarize",
    "validate_table", "write_report",
]
