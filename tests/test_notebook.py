"""Notebook display (EstimateResult, estimators, results tables) and the quickstart notebook."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import ibtools
from ibtools.notebook import ResultsView

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
FIXTURE = ROOT / "tests" / "fixtures" / "results_small.csv"


def test_estimate_result_html_shows_value_unit_interval_and_flags():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 1))
    y = 0.8 * x + 0.6 * rng.normal(size=(600, 1))
    r = ibtools.mutual_information(x, y, method="ksg", ci="auto")
    r.flags = ["a <made-up> flag"]  # escaped, listed in full
    page = r._repr_html_()
    assert f"{r.value:.4f}</b> nats" in page and f"({r.bits:.4f} bits)" in page
    assert f"[{r.ci[0]:.4f}, {r.ci[1]:.4f}]" in page and "95% subsample" in page
    assert "flags (1)" in page and "a &lt;made-up&gt; flag" in page and "<made-up>" not in page
    assert "k=3" in page and "n, dims" in page and "600, (1, 1)" in page
    clean = ibtools.mutual_information(np.arange(40) % 4, np.arange(40) % 4, method="binning",
                                       n_permutations=0)
    assert "<td" in clean._repr_html_() and ">none<" in clean._repr_html_()


def test_estimator_html_lists_every_setting_changed_in_bold():
    est = ibtools.estimators.KDE(noise_var=0.5)
    page = est._repr_html_()
    assert "<b>KDE</b>" in page and "method=&#x27;kde&#x27;" in page
    assert "<b>0.5</b>" in page and "(default 0.1)" in page
    for key in est.settings:  # the text repr hides defaults; the HTML lists them all
        assert f">{key}<" in page
    assert repr(est) == "KDE(noise_var=0.5)"


def test_show_is_compact_and_names_bad_arguments(tmp_path):
    table = pd.read_csv(FIXTURE)
    view = ibtools.results.show(table, max_rows=5)
    page = view._repr_html_()
    assert f"{len(table)} rows (information in nats); first 5 shown, {len(table) - 5} more" in page
    assert page.count("<tr>") == 6  # header + 5 rows
    first = table.iloc[0]
    assert f"{first['ib_value']:.4f}" in page and f"{first['i_ty']:.4f}" in page
    n_flags = len(json.loads(first["flags"]))
    assert f"&#9888; {n_flags}<" in page and "title='" in page
    assert "... " in repr(view) and view.table is table
    table.to_csv(tmp_path / "results.csv", index=False)
    assert len(ibtools.results.show(tmp_path).table) == len(table)
    with pytest.raises(ValueError, match=r"columns \['nope'\]"):
        ibtools.results.show(table, columns=["nope"])
    with pytest.raises(ValueError, match="max_rows=0"):
        ResultsView(table, max_rows=0)
    with pytest.raises(TypeError, match="results DataFrame"):
        ResultsView([1, 2])


def test_quickstart_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(c["outputs"] == [] and c["execution_count"] is None for c in code)


def test_quickstart_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    truth = -0.5 * math.log(1 - 0.8**2)
    estimate = float(text.split("estimate ")[1].split(",")[0])
    assert abs(estimate - truth) < 0.05  # KSG on 2000 Gaussian rows
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("nats" in h and "interval" in h for h in html)  # the EstimateResult view
    assert any("rows (information in nats)" in h for h in html)  # the results view
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 2  # both planes drawn
    out = tmp_path / "quickstart-out"
    assert (out / "analysis" / "report.html").stat().st_size > 1000
    tracked = ibtools.load_results(out / "tracked")
    assert sorted(tracked["step"].unique()) == [0, 20, 40, 60]
