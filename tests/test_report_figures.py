"""A new report figure is one FigureSpec plus one register_figure call: shown here with a
histogram of I(T;Y) that appears in the HTML report with no other edits."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ibtools.errors import InputError, InputTypeError  # noqa: E402
from ibtools.reports import build_report_content, render_html  # noqa: E402
from ibtools.reports import content as report_content  # noqa: E402
from ibtools.reports.content import FigureSpec, register_figure  # noqa: E402

FIXTURE_CSV = Path(__file__).parent / "fixtures" / "results_small.csv"


@pytest.fixture
def restore_figures():
    saved = list(report_content.FIGURES)
    yield
    report_content.FIGURES[:] = saved


def _histogram(prepared, units, step):
    fig = Figure(figsize=(4, 3))
    ax = fig.add_subplot()
    ax.hist(prepared["i_ty"].dropna(), bins=10)
    ax.set_xlabel(f"I(T;Y) [{units}]")
    return fig


def test_a_registered_figure_is_in_the_report(tmp_path, restore_figures):
    table = pd.read_csv(FIXTURE_CSV)
    spec = FigureSpec("ity-histogram", "I(T;Y) over all rows", lambda t: True,
                      lambda t: f"All {len(t)} rows of the table.", _histogram)
    before = [f.key for f in build_report_content(table).figures]
    assert "ity-histogram" not in before

    register_figure(spec, before="estimator-agreement")  # the one registry line

    content = build_report_content(table)
    keys = [f.key for f in content.figures]
    assert keys.index("ity-histogram") == keys.index("estimator-agreement") - 1
    assert len(keys) == len(before) + 1
    render_html(table, tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "I(T;Y) over all rows" in html and f"All {len(table)} rows of the table." in html


def test_register_figure_checks_its_arguments(restore_figures):
    with pytest.raises(InputTypeError, match="spec must be a FigureSpec"):
        register_figure(lambda t: None)
    spec = FigureSpec("x", "X", lambda t: False, lambda t: "", _histogram)
    with pytest.raises(InputError, match="before='nope' names no registered figure"):
        register_figure(spec, before="nope")
    register_figure(spec)
    register_figure(spec)  # same key: replaced, not doubled
    assert [f.key for f in report_content.FIGURES].count("x") == 1
