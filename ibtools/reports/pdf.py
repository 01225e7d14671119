"""A report as a multi-page PDF, written with matplotlib's PdfPages.

Why PdfPages: the figures are matplotlib figures already, so they go in as vector pages
with no second renderer, no extra dependency (HTML-to-PDF libraries pull in a browser
engine or Cairo/Pango) and byte-identical output once the creation date is fixed.  The
price is that text pages are laid out by hand here.

Pages: a title page with the summary and the figure captions, one page per figure, the table of
winners, the caveats and the settings, the seed means at the compared checkpoint, and, on
request, the per-seed results table (key columns; the HTML report and results.csv hold
every row and column).
"""

from __future__ import annotations

import io
import textwrap

import matplotlib
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ibtools.errors import InputTypeError
from ibtools.reports.content import PDF_TABLE_COLUMNS, ReportContent, build_report_content
from ibtools.reports.io import atomic_write
from ibtools.reports.summary import format_number

#: Type 3 fonts (matplotlib's default) carry a ToUnicode map, so the text stays searchable
#: and extractable; Type 42 would add a fontTools subsetting pass of about a second a font.
PDF_RC = {"pdf.fonttype": 3, "pdf.compression": 6}
PAGE = (11.69, 8.27)  # A4 landscape, inches
_LINE = 0.205  # inches per line of 9.5 pt text
_TOP, _BOTTOM, _LEFT = 0.55, 0.5, 0.6
TABLE_ROWS_PER_PAGE = 36
_WRAP = 150


def _text_pages(lines: list[tuple[str, str]], heading: str) -> list[Figure]:
    """Lay out (style, text) lines over as many pages as they need.

    Styles: "title", "h", "b" (bold body), "p" (body), "mono"."""
    sizes = {"title": 18, "h": 12.5, "b": 9.5, "p": 9.5, "mono": 8}
    heights = {"title": 2.2, "h": 1.6, "b": 1.0, "p": 1.0, "mono": 0.9}
    wrapped = []
    for style, text in lines:
        width = _WRAP if style != "mono" else 170
        chunks = textwrap.wrap(text, width, subsequent_indent="   " if style == "p" else "",
                               drop_whitespace=style != "mono") or [""]
        wrapped.extend((style, chunk) for chunk in chunks)
    usable = PAGE[1] - _TOP - _BOTTOM
    pages, current, used = [], [], 0.0
    for style, text in wrapped:
        need = heights[style] * _LINE
        if used + need > usable and current:
            pages.append(current)
            current, used = [("h", f"{heading} (continued)")], heights["h"] * _LINE
        current.append((style, text))
        used += need
    pages.append(current)
    figures = []
    for page in pages:
        fig = Figure(figsize=PAGE)
        y = PAGE[1] - _TOP
        for style, text in page:
            y -= heights[style] * _LINE
            fig.text(_LEFT / PAGE[0], y / PAGE[1], text, fontsize=sizes[style],
                     fontweight="bold" if style in ("title", "h", "b") else "normal",
                     family="monospace" if style == "mono" else "sans-serif", va="baseline")
        figures.append(fig)
    return figures


def _fixed_width(header: list[str], rows: list[list[str]], cap: int = 26) -> list[str]:
    """Rows as fixed-width text lines; numbers right-aligned, long text cut with an ellipsis."""
    def cut(text: str) -> str:
        return text if len(text) <= cap else text[:cap - 1] + "\u2026"

    cells = [[cut(str(v)) for v in row] for row in [header] + rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    numeric = [all(_is_number(row[i]) for row in cells[1:] if row[i]) and len(cells) > 1
               for i in range(len(header))]
    return ["  ".join(c.rjust(w) if num and r else c.ljust(w)
                      for c, w, num in zip(row, widths, numeric)).rstrip()
            for r, row in enumerate(cells)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _table_pages(title: str, header: list[str], rows: list[list[str]]) -> list[Figure]:
    """Tables as monospaced text, one Text per row: a cell-per-Text table costs seconds a
    page, and a results table may run to many pages."""
    lines = _fixed_width(header, rows)
    # Monospace glyphs are 0.6 em wide: the largest size (up to 9 pt) that fits the width.
    usable_pt = (PAGE[0] - 2 * _LEFT) * 72
    size = min(9.0, usable_pt / (0.6 * max(len(line) for line in lines)))
    figures = []
    row_h = 0.185
    for start in range(0, max(len(rows), 1), TABLE_ROWS_PER_PAGE):
        chunk = lines[1 + start:1 + start + TABLE_ROWS_PER_PAGE]
        fig = Figure(figsize=PAGE)
        span = f" (rows {start + 1}-{start + len(chunk)} of {len(rows)})" if rows else ""
        fig.text(_LEFT / PAGE[0], 1 - _TOP / PAGE[1], title + span, fontsize=12.5,
                 fontweight="bold", va="top")
        y = PAGE[1] - _TOP - 0.55
        fig.text(_LEFT / PAGE[0], y / PAGE[1], lines[0], fontsize=size, family="monospace",
                 fontweight="bold", va="baseline")
        fig.add_artist(Line2D([_LEFT / PAGE[0], 1 - _LEFT / PAGE[0]],
                              [(y - 0.07) / PAGE[1]] * 2, color="#555555", linewidth=0.6))
        for i, line in enumerate(chunk):
            y -= row_h
            if i % 2 == 1:
                fig.add_artist(Rectangle((_LEFT / PAGE[0] - 0.003, (y - 0.055) / PAGE[1]),
                                         1 - 2 * _LEFT / PAGE[0] + 0.006, row_h / PAGE[1],
                                         facecolor="#f0f2f6", edgecolor="none", zorder=0))
            fig.text(_LEFT / PAGE[0], y / PAGE[1], line, fontsize=size, family="monospace",
                     va="baseline")
        figures.append(fig)
    return figures


def _title_lines(content: ReportContent) -> list[tuple[str, str]]:
    summary = content.summary
    lines = [("title", content.title),
             ("p", f"All information values are in {content.units}. IB value = I(T;Y) - beta "
                   f"I(X;T) (classic) or I(T;Y) - beta I(T_prev;T) (layer-wise). Every number "
                   f"depends on the estimator's resolution, so each is shown under every "
                   f"estimator setting of the run."),
             ("h", "Summary"), ("b", summary["headline"])]
    lines += [("p", f"- {s}") for s in summary["sentences"]]
    lines.append(("h", "Figures (one a page, in this order)"))
    lines += [("p", f"Figure {i}. {f.title}. {f.caption}")
              for i, f in enumerate(content.figures, start=1)]
    lines.append(("h", "Then"))
    lines += [("p", "Winners per layer and estimator setting; caveats of the estimators used; "
                    "settings and environment; seed means at the compared checkpoint. The "
                    "HTML report and results.csv hold every row and column.")]
    return lines


def _caveat_lines(content: ReportContent) -> list[tuple[str, str]]:
    lines = [("h", "Caveats of the estimators used")]
    for entry in content.caveats:
        lines.append(("b", entry["estimator"]))
        if entry["limitation"]:
            lines.append(("p", entry["limitation"]))
        for group in entry["flags"]:
            lines.append(("p", f"- {group['example']} ({group['rows']} of {entry['rows']} rows; "
                               f"{', '.join(group['settings'])})"))
        if entry["near_ln_n"]:
            lines.append(("p", f"- {entry['near_ln_n']} of {entry['rows']} rows have I(X;T) "
                               f"within 2% of ln n, the most a sample of n points can show."))
        if not entry["flags"] and not entry["near_ln_n"]:
            lines.append(("p", "- No flags raised in this run."))
    lines.append(("h", "Settings and environment"))
    lines += [("p", f"{key}: {value}") for key, value in content.run]
    if content.config_text:
        lines.append(("b", "Configuration (config.json)"))
        lines += [("mono", line) for line in content.config_text.splitlines()]
    return lines


def pdf_bytes(content: ReportContent, full_table: bool = False) -> bytes:
    """The report as PDF bytes (deterministic: no creation date, fixed page order).

    ``full_table=True`` appends every row of the results table (key columns); off by
    default because a real run has thousands of rows, and each page of text costs about
    a second to lay out."""
    if not isinstance(full_table, bool):
        raise InputTypeError(f"full_table must be True or False; got {full_table!r}")
    buffer = io.BytesIO()
    metadata = {"Title": content.title, "Creator": "ibtools", "CreationDate": None}
    summary = content.summary
    units = content.units
    winner_rows = [[r.layer, r.setting, r.best, format_number(r.ib_value), r.runner_up,
                    format_number(r.margin), r.status]
                   for r in summary["winners"].itertuples(index=False)]
    final = content.final
    final_header = [c if c in ("layer", "setting", "variant", "seeds") else f"{c} [{units}]"
                    for c in final.columns]
    final_rows = [[format_number(v) for v in row] for row in final.itertuples(index=False)]
    with matplotlib.rc_context(PDF_RC), PdfPages(buffer, metadata=metadata) as pdf:
        for page in _text_pages(_title_lines(content), "Summary"):
            pdf.savefig(page)
        per_layer = summary.get("per_layer")
        if per_layer is not None and not per_layer.empty:  # one model: its layers up front
            rows = [[str(r.layer), r.setting, r.x_name, format_number(r.x_value),
                     format_number(r.i_ty), format_number(r.ib_value), str(r.flags)]
                    for r in per_layer.itertuples(index=False)]
            for page in _table_pages("Per layer", ["layer", "estimator setting", "term",
                                                   f"value [{units}]", f"I(T;Y) [{units}]",
                                                   f"IB value [{units}]", "flags"], rows):
                pdf.savefig(page)
        for fig in content.figures:
            pdf.savefig(fig.figure)
        if winner_rows:
            for page in _table_pages(
                    "Winners per layer and estimator setting",
                    ["layer", "estimator setting", "highest IB value", f"IB value [{units}]",
                     "runner-up", f"margin [{units}]", "clear winner"],
                    winner_rows):
                pdf.savefig(page)
        for page in _text_pages(_caveat_lines(content), "Caveats and settings"):
            pdf.savefig(page)
        for page in _table_pages("Seed means at the compared checkpoint", final_header,
                                 final_rows):
            pdf.savefig(page)
        if full_table:
            header = [c.replace("setting_label", "setting")
                      + (f" [{units}]" if c.startswith(("i_", "ib_", "ci_")) else "")
                      for c in PDF_TABLE_COLUMNS]
            rows = [[format_number(v) for v in row]
                    for row in content.table[list(PDF_TABLE_COLUMNS)].itertuples(index=False)]
            for page in _table_pages("Results table", header, rows):
                pdf.savefig(page)
    return buffer.getvalue()


def render_pdf(table, path, *, config=None, environment=None, units: str = "nats",
               title: str | None = None, content: ReportContent | None = None,
               full_table: bool = False):
    """Write the report of a results table as a multi-page PDF.

    Parameters
    ----------
    table : pandas.DataFrame
        Results table (columns of :mod:`ibtools.results`); ignored when ``content`` is given.
    path : str or os.PathLike
        Output file; written atomically (temporary file, then ``os.replace``).
    config, environment : dict, optional
        Run configuration and environment shown in the report.
    units : {"nats", "bits"}
    title : str, optional
    content : ReportContent, optional
        Prebuilt content (lets :func:`ibtools.reports.write_report` build figures once).
    full_table : bool
        Append every row of the results table (key columns) after the seed means.

    Returns
    -------
    pathlib.Path
        The written file.

    Notes
    -----
    Page order: title and summary, one page per figure, winners table, caveats and
    settings, seed means at the compared checkpoint, then (``full_table=True``) the results
    table; tables run ``TABLE_ROWS_PER_PAGE`` rows a page.  The creation date is
    left out of the metadata, so the same input gives the same bytes.
    """
    if content is None:
        content = build_report_content(table, config=config, environment=environment,
                                       units=units, title=title)
    return atomic_write(path, pdf_bytes(content, full_table=full_table))
