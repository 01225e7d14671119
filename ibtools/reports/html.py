"""A report as one self-contained HTML file: inline CSS, figures as inline SVG, a small
inline script to sort the table, and no external request of any kind."""

from __future__ import annotations

import html
import io
import re

import matplotlib
from matplotlib.figure import Figure

from ibtools.reports.content import ReportContent, build_report_content
from ibtools.reports.io import atomic_write
from ibtools.reports.summary import format_number

#: Fixed salt for the ids matplotlib hashes into SVG, so the same figure gives the same bytes.
SVG_RC = {"svg.hashsalt": "ibtools-report", "svg.fonttype": "path", "svg.image_inline": True}

_CSS = """
:root { --ink: #1d2330; --muted: #5b6475; --rule: #d9dde5; --accent: #0072B2; --bg: #ffffff; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f8; color: var(--ink);
  font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 60px; background: var(--bg); }
h1 { font-size: 1.7em; margin: 0.2em 0 0.1em; }
h2 { font-size: 1.3em; margin-top: 2em; padding-bottom: 0.2em; border-bottom: 2px solid var(--rule); }
h3 { font-size: 1.05em; margin-bottom: 0.3em; }
.sub { color: var(--muted); margin-top: 0; }
nav { font-size: 0.92em; margin: 1em 0; }
nav a { color: var(--accent); margin-right: 1.1em; text-decoration: none; }
.headline { font-size: 1.08em; padding: 0.7em 1em; border-left: 4px solid var(--accent);
  background: #eef5fb; }
figure { margin: 1.6em 0; }
figure svg { display: block; width: 100%; height: auto; }
figcaption { color: var(--muted); font-size: 0.92em; margin-top: 0.4em; }
table { border-collapse: collapse; font-size: 0.85em; }
th, td { padding: 3px 8px; border-bottom: 1px solid var(--rule); text-align: left;
  vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eceff4; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; white-space: nowrap; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; }
.scroll { max-height: 640px; overflow: auto; border: 1px solid var(--rule); }
table.data td { white-space: nowrap; max-width: 22em; overflow: hidden; text-overflow: ellipsis; }
.kv th { width: 16em; background: none; position: static; }
.no { color: #a14a00; }
.count { color: var(--muted); white-space: nowrap; }
pre { background: #f6f7f9; padding: 0.8em; overflow: auto; font-size: 0.82em; }
"""

# Sorting by clicking a header: numbers compare as numbers, text as text, blanks last.
_SCRIPT = """
(function () {
  function key(cell) {
    var raw = cell.getAttribute('data-v');
    if (raw === null || raw === '') { return null; }
    var num = Number(raw);
    return isNaN(num) ? raw : num;
  }
  var tables = document.querySelectorAll('table.sortable');
  Array.prototype.forEach.call(tables, function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.addEventListener('click', function () {
        var ascending = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = key(a.cells[col]), y = key(b.cells[col]);
          if (x === null || y === null) { return (x === null) - (y === null); }
          var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0)
                                          : (typeof x === 'number' ? -1 : 1);
          return ascending ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
"""


def figure_to_svg(figure: Figure, prefix: str, title: str = "") -> str:
    """Render ``figure`` as an inline ``<svg>`` element for an HTML page.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
    prefix : str
        Prepended to every id in the SVG: several inline SVGs share one document, and
        matplotlib reuses ids such as glyph names across figures.
    title : str
        Accessible name of the image.

    Returns
    -------
    str
        The ``<svg>`` element without XML prolog, DOCTYPE, metadata or namespace URLs
        (inline SVG in HTML needs none of them, and they would look like external links).
    """
    buffer = io.StringIO()
    with matplotlib.rc_context(SVG_RC):
        figure.savefig(buffer, format="svg", metadata={"Date": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<metadata>.*?</metadata>\s*", "", svg, flags=re.S)
    svg = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", svg)
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m.group(1)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)",
                 lambda m: f"url(#{prefix}{m.group(1)})" if m.group(1) in ids else m.group(0), svg)
    svg = re.sub(r'href="#([^"]+)"',
                 lambda m: f'href="#{prefix}{m.group(1)}"' if m.group(1) in ids else m.group(0), svg)
    label = html.escape(title, quote=True)
    return svg.replace("<svg", f'<svg role="img" aria-label="{label}"', 1).strip()


def _cell(value, numeric: bool) -> str:
    text = format_number(value)
    raw = "" if text == "" else (repr(float(value)) if numeric else str(value))
    cls = ' class="num"' if numeric else ""
    # Long text (flags, params, paths) is cut by CSS to keep rows one line high; the full
    # text stays in the tooltip.
    tip = f' title="{html.escape(text, quote=True)}"' if len(text) > 30 else ""
    return f'<td{cls}{tip} data-v="{html.escape(raw, quote=True)}">{html.escape(text)}</td>'


def _results_table(content: ReportContent) -> str:
    table = content.table
    columns = content.columns
    numeric = {c: table[c].dtype.kind in "fiu" for c in columns}
    head = "".join(f'<th scope="col">{html.escape(str(c))}</th>' for c in columns)
    body = []
    for row in table[columns].itertuples(index=False):
        body.append("<tr>" + "".join(_cell(v, numeric[c]) for c, v in zip(columns, row)) + "</tr>")
    return (f'<div class="scroll"><table class="sortable data" id="results-table">'
            f"<thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(body) +
            "\n</tbody></table></div>")


def _seed_means_table(content: ReportContent) -> str:
    final = content.final
    units = html.escape(content.units)
    labels = [html.escape(c) if c in ("layer", "setting", "variant", "seeds")
              else f"{html.escape(c)} [{units}]" for c in final.columns]
    numeric = [final[c].dtype.kind in "fiu" for c in final.columns]
    head = "".join(f'<th scope="col">{label}</th>' for label in labels)
    body = "\n".join("<tr>" + "".join(_cell(v, num) for v, num in zip(row, numeric)) + "</tr>"
                     for row in final.itertuples(index=False))
    return (f'<table class="sortable" id="seed-means"><thead><tr>{head}</tr></thead>'
            f"<tbody>\n{body}\n</tbody></table>")


def _winners_table(content: ReportContent) -> str:
    winners = content.summary["winners"]
    if winners.empty:
        return ""
    rows = []
    for r in winners.itertuples(index=False):
        sep = (html.escape(r.status) if r.status in ("yes", "unknown (no interval)")
               else f'<span class="no">{html.escape(r.status)}</span>')
        rows.append(f"<tr><td>{html.escape(r.layer)}</td><td>{html.escape(r.setting)}</td>"
                    f"<td>{html.escape(r.best)}</td><td class=\"num\">{format_number(r.ib_value)}"
                    f"</td><td>{html.escape(r.runner_up)}</td><td class=\"num\">"
                    f"{format_number(r.margin)}</td><td>{sep}</td></tr>")
    units = html.escape(content.units)
    return ('<table class="winners"><thead><tr><th>layer</th><th>estimator setting</th>'
            f"<th>highest IB value</th><th>IB value [{units}]</th><th>runner-up</th>"
            f"<th>margin [{units}]</th><th>clear winner</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table>")


def _per_layer_table(content: ReportContent) -> str:
    """For one model: I(X;T) (or I(T_prev;T)), I(T;Y) and the IB value per layer, up front."""
    per_layer = content.summary.get("per_layer")
    if per_layer is None or per_layer.empty:
        return ""
    units = html.escape(content.units)
    rows = "".join(
        f"<tr><td>{html.escape(str(r.layer))}</td><td>{html.escape(r.setting)}</td>"
        f"<td>{html.escape(r.x_name)}</td><td class=\"num\">{format_number(r.x_value)}</td>"
        f"<td class=\"num\">{format_number(r.i_ty)}</td>"
        f"<td class=\"num\">{format_number(r.ib_value)}</td><td class=\"num\">{r.flags}</td>"
        f"</tr>" for r in per_layer.itertuples(index=False))
    return ('<table class="sortable" id="per-layer"><thead><tr><th>layer</th>'
            f"<th>estimator setting</th><th>compression term</th><th>value [{units}]</th>"
            f"<th>I(T;Y) [{units}]</th><th>IB value [{units}]</th><th>flags</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _caveats(content: ReportContent) -> str:
    parts = []
    for entry in content.caveats:
        parts.append(f"<h3>{html.escape(entry['estimator'])}</h3>")
        if entry["limitation"]:
            parts.append(f"<p>{html.escape(entry['limitation'])}</p>")
        items = [f"<li>{html.escape(g['example'])} <span class=\"count\">({g['rows']} of "
                 f"{entry['rows']} rows; {html.escape(', '.join(g['settings']))})</span></li>"
                 for g in entry["flags"]]
        if entry["near_ln_n"]:
            items.append(f"<li>{entry['near_ln_n']} of {entry['rows']} rows have I(X;T) within 2% "
                         f"of ln n, the most a sample of n points can show.</li>")
        if not items:
            items.append("<li>No flags raised in this run.</li>")
        parts.append("<ul>" + "".join(items) + "</ul>")
    return "\n".join(parts)


def _run(content: ReportContent) -> str:
    rows = "".join(f"<tr><th scope=\"row\">{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in content.run)
    out = f'<table class="kv"><tbody>{rows}</tbody></table>'
    if content.config_text:
        out += (f"<details><summary>Configuration (config.json)</summary>"
                f"<pre>{html.escape(content.config_text)}</pre></details>")
    return out


def html_document(content: ReportContent) -> str:
    """The report as one HTML string (deterministic for the same content)."""
    title = html.escape(content.title)
    summary = content.summary
    sentences = "".join(f"<li>{html.escape(s)}</li>" for s in summary["sentences"])
    figures = []
    for i, fig in enumerate(content.figures, start=1):
        svg = figure_to_svg(fig.figure, prefix=f"f{i}-", title=fig.title)
        figures.append(f'<figure id="{fig.key}">{svg}<figcaption><b>Figure {i}. '
                       f"{html.escape(fig.title)}.</b> {html.escape(fig.caption)}"
                       f"</figcaption></figure>")
    nav = "".join(f'<a href="#{key}">{label}</a>' for key, label in (
        ("summary", "Summary"), ("figures", "Figures"), ("caveats", "Caveats"),
        ("run", "Settings and environment"), ("seed-means-section", "Seed means"),
        ("results", "Results table")))
    n_rows = len(content.table)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ibtools">
<title>{title}</title>
<style>{_CSS}</style>
</head>
<body>
<main>
<h1>{title}</h1>
<p class="sub">All information values are in {html.escape(content.units)}. IB value =
I(T;Y) &minus; &beta;&middot;I(X;T) (classic) or I(T;Y) &minus; &beta;&middot;I(T_prev;T)
(layer-wise). Every number depends on the estimator's resolution, so each is shown under
every estimator setting of the run.</p>
<nav>{nav}</nav>
<section id="summary">
<h2>Summary</h2>
<p class="headline">{html.escape(summary["headline"])}</p>
<ul>{sentences}</ul>
{_per_layer_table(content)}
{_winners_table(content)}
</section>
<section id="figures">
<h2>Figures</h2>
{"".join(figures)}
</section>
<section id="caveats">
<h2>Caveats of the estimators used</h2>
{_caveats(content)}
</section>
<section id="run">
<h2>Settings and environment</h2>
{_run(content)}
</section>
<section id="seed-means-section">
<h2>Seed means at the compared checkpoint</h2>
<p>One row per layer, estimator setting and model variant; bands span the seeds'
intervals. Click a column header to sort.</p>
{_seed_means_table(content)}
</section>
<section id="results">
<h2>Results table</h2>
<p>All {n_rows} rows as stored (values in {html.escape(content.units)}); click a column
header to sort.</p>
{_results_table(content)}
</section>
</main>
<script>{_SCRIPT}</script>
</body>
</html>
"""


def render_html(table, path, *, config=None, environment=None, units: str = "nats",
                title: str | None = None, content: ReportContent | None = None):
    """Write the report of a results table as one self-contained HTML file.

    Parameters
    ----------
    table : pandas.DataFrame
        Results table (columns of :mod:`ibtools.results`); ignored when ``content`` is given.
    path : str or os.PathLike
        Output file; written atomically (temporary file, then ``os.replace``).
    config, environment : dict, optional
        Run configuration and environment shown in the report (see
        :func:`ibtools.reports.summary.describe_run`).
    units : {"nats", "bits"}
    title : str, optional
    content : ReportContent, optional
        Prebuilt content (lets :func:`ibtools.reports.write_report` build figures once).

    Returns
    -------
    pathlib.Path
        The written file.

    Notes
    -----
    Figures are inline SVG with text as paths and a fixed hash salt, no clock is read,
    and the table order is fixed, so the same input gives the same bytes.
    """
    if content is None:
        content = build_report_content(table, config=config, environment=environment,
                                       units=units, title=title)
    return atomic_write(path, html_document(content))
