"""Reports: table validation, plots, summary, HTML, PDF and a headless-browser check,
all rendered from tests/fixtures/results_small.csv (see make_results_fixture.py for how its
numbers were built: ib-T with lambda 2 leads at every layer except blocks.0.norm under KSG)."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from ibtools.reports import (
    REQUIRED_COLUMNS,
    build_report_content,
    collect_caveats,
    plot_estimator_agreement,
    plot_ib_across_lam,
    plot_ib_across_layers,
    plot_information_plane,
    prepare_table,
    render_html,
    summarize,
    validate_table,
    write_report,
)
from ibtools.reports.plots import PALETTE
from ibtools.reports.ranking import rank_variants
from ibtools.reports.table import aggregate_seeds

FIXTURES = Path(__file__).parent / "fixtures"
FIXTURE_CSV = FIXTURES / "results_small.csv"
LN2 = math.log(2.0)
FIGURE_IDS = ["information-plane", "ib-across-layers", "ib-across-lam", "estimator-agreement"]
FIGURE_TITLES = ["Information plane", "IB value across layers", "IB value across λ",
                 "Estimator agreement"]
CONFIG = {"title": "MLP norm comparison", "date": "2025-06-01",
          "environment": {"ibtools": "0.1.0", "torch": "2.13.0", "device": "cpu"},
          "estimators": ["binning", "kde", "ksg"]}


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return pd.read_csv(FIXTURE_CSV)


@pytest.fixture(scope="module")
def report(tmp_path_factory, table):
    """The full fixture rendered once through a results directory (the CLI's path)."""
    run_dir = tmp_path_factory.mktemp("run")
    shutil.copy(FIXTURE_CSV, run_dir / "results.csv")
    (run_dir / "config.json").write_text(json.dumps(CONFIG))
    paths = write_report(run_dir)
    return {"dir": run_dir, **paths}


# ---------------------------------------------------------------------------- the table


def test_fixture_matches_its_generator(table):
    spec = importlib.util.spec_from_file_location("make_fixture",
                                                  FIXTURES / "make_results_fixture.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    regenerated = module.make_table()
    assert list(regenerated.columns) == list(table.columns)
    assert len(table) == 3 * 2 * 3 * 4 * 3  # variants x seeds x steps x layers x settings
    numeric = table.select_dtypes("number").columns
    np.testing.assert_allclose(regenerated[numeric].to_numpy(float), table[numeric].to_numpy(float),
                               rtol=0, atol=1e-9)


def test_validate_table_lists_every_missing_column(table):
    with pytest.raises(ValueError) as err:
        validate_table(table.drop(columns=["i_ty", "beta"]))
    assert "'i_ty'" in str(err.value) and "'beta'" in str(err.value)
    assert "required" in str(err.value)


def test_validate_table_rejects_empty_and_non_tables(table, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        validate_table(table.iloc[:0])
    with pytest.raises(ValueError, match="empty"):
        render_html(table.iloc[:0], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()
    with pytest.raises(TypeError, match="DataFrame"):
        validate_table(table.to_dict("records"))
    with pytest.raises(ValueError, match="'unit'.*'nats' and 'bits'"):
        validate_table(table.assign(unit="bans"))
    with pytest.raises(ValueError, match="'ib_value' must be numeric"):
        validate_table(table.assign(ib_value=["x"] * len(table)))
    with pytest.raises(ValueError, match="holds none of"):
        write_report(tmp_path)
    with pytest.raises(ValueError, match="nothing to write"):
        write_report(table, out_dir=tmp_path, html=None, pdf=None)


def test_units_convert_from_each_rows_own_unit(table):
    bits = prepare_table(table, units="bits")
    nats = prepare_table(table, units="nats")
    np.testing.assert_allclose(bits["ib_value"], nats["ib_value"] / LN2, rtol=1e-12)
    np.testing.assert_allclose(bits["ci_high_xt"], nats["ci_high_xt"] / LN2, rtol=1e-12)
    # A table stored in bits reads back to the same nats.
    stored_bits = table.copy()
    for column in ("i_xt", "i_ty", "i_prev_t", "ib_value", "ci_low", "ci_high"):
        stored_bits[column] = stored_bits[column] / LN2
    stored_bits["unit"] = "bits"
    again = prepare_table(stored_bits, units="nats")
    np.testing.assert_allclose(again["i_xt"], nats["i_xt"], rtol=1e-12)
    with pytest.raises(ValueError, match="units='bans'"):
        prepare_table(table, units="bans")


def test_flags_accept_json_lists_and_joined_text(table):
    joined = table.copy()
    joined["flags"] = ["first; second" if i == 0 else "" for i in range(len(table))]
    prepared = prepare_table(joined)
    counts = prepared["flag_list"].map(len)
    assert counts.sum() == 2 and sorted(prepared["flag_list"][counts == 2].iloc[0]) == \
        ["first", "second"]
    no_optional = table[list(REQUIRED_COLUMNS)]
    labels = set(prepare_table(no_optional)["setting_label"])
    assert labels == {"binning(n_bins=30, strategy=uniform)", "kde(noise_var=0.1)", "ksg(k=3)"}


def test_seed_aggregation_is_mean_with_interval_envelope(table):
    prepared = prepare_table(table)
    rows = prepared[(prepared["layer"] == "head.norm") & (prepared["step"] == 2000)
                    & (prepared["setting_label"] == "kde(noise_var=0.1)")
                    & (prepared["variant"] == "ib-T, λ=2")]
    assert len(rows) == 2
    agg = aggregate_seeds(rows, ["variant"])
    assert agg["ib_value"].iloc[0] == pytest.approx(rows["ib_value"].mean(), abs=1e-12)
    assert agg["band_low"].iloc[0] == pytest.approx(rows["ci_low"].min(), abs=1e-12)
    assert agg["band_high"].iloc[0] == pytest.approx(rows["ci_high"].max(), abs=1e-12)
    assert agg["n_seeds"].iloc[0] == 2


def test_missing_intervals_and_steps_fall_back_honestly(table):
    bare = table.assign(ci_low=np.nan, ci_high=np.nan, step=np.nan)
    prepared = prepare_table(bare)
    # Checkpoint order stands in for the step: step0 < step1000 < step2000 sorts as text.
    order = prepared.drop_duplicates("checkpoint").set_index("checkpoint")["progress"]
    assert order["runs/mlp-ib-T-lam2-s1/step0.pt"] < order["runs/mlp-ib-T-lam2-s1/step1000.pt"]
    rows = prepared[(prepared["checkpoint"].str.endswith("step2000.pt")) & (prepared["lam"] == 1.0)
                    & (prepared["layer"] == "head.norm") & (prepared["estimator"] == "ksg")]
    agg = aggregate_seeds(rows, ["variant"])
    assert agg["band_low"].iloc[0] == pytest.approx(rows["ib_value"].min(), abs=1e-12)
    assert agg["band_high"].iloc[0] == pytest.approx(rows["ib_value"].max(), abs=1e-12)


def test_one_variant_has_nothing_to_rank(table):
    summary = summarize(prepare_table(table[table["lam"] == 1.0]))
    assert summary["headline"] == (
        "One model variant (ib-T, λ=1): I(X;T) and I(T;Y) per layer (4 layers) are in the "
        "table below; with a single variant there is nothing to rank.")
    assert summary["winners"].empty


def _one_pretrained_model(table):
    """The fixture's last checkpoint of one seed, as a pretrained BatchNorm model named by
    its user: one checkpoint, no IBNorm, no step."""
    one = table[(table["lam"] == 0.0) & (table["seed"] == 0)
                & table["checkpoint"].str.endswith("step2000.pt")].copy()
    one["model"], one["checkpoint"], one["norm"], one["step"] = "crepe-tiny", "crepe-tiny", \
        "batch", np.nan
    return one


def test_one_model_report_puts_its_layers_up_front(table):
    one = _one_pretrained_model(table)
    content = build_report_content(one)
    per_layer = content.summary["per_layer"]
    # one row per (layer, setting) in layer order, the seed means of the table's values
    assert list(dict.fromkeys(per_layer["layer"])) == list(
        one.sort_values("layer_index")["layer"].drop_duplicates())
    row = per_layer[(per_layer["layer"] == "head.norm")].iloc[0]
    src = one[(one["layer"] == "head.norm") & (one["setting"] == row["setting"])]
    assert row["i_ty"] == pytest.approx(src["i_ty"].mean(), abs=1e-12)
    assert row["x_value"] == pytest.approx(src["i_xt"].mean(), abs=1e-12)
    # the user's name, not "batch, λ=0"; no ranking figure; no step colour bar
    assert set(content.table["variant"]) == {"crepe-tiny"}
    assert content.summary["headline"].startswith("One model variant (crepe-tiny)")
    assert [f.key for f in content.figures] == ["information-plane", "ib-across-layers"]
    plane = content.figures[0].figure
    assert len(plane.axes) == per_layer["setting"].nunique()  # no colour-bar axis
    from ibtools.reports.html import html_document

    page = html_document(content)
    assert 'id="per-layer"' in page and "batch, λ=0" not in page


def test_a_legend_of_long_layer_names_fits_the_figure(table):
    one = _one_pretrained_model(table)
    one["layer"] = "encoder.blocks." + one["layer_index"].astype(str) + ".attention.output"
    fig = plot_information_plane(one)
    fig.canvas.draw()  # the old layout ran the legend past both sides of the figure
    box = fig.legends[0].get_window_extent()
    width = fig.get_figwidth() * fig.dpi
    assert box.x0 >= -1 and box.x1 <= width + 1


def test_named_models_label_their_variants(table):
    two = pd.concat([_one_pretrained_model(table),
                     _one_pretrained_model(table).assign(model="ib-S", checkpoint="ib-S",
                                                         norm="ib-S", lam=1.0)])
    prepared = prepare_table(two)
    assert list(dict.fromkeys(prepared["variant"])) == ["crepe-tiny", "ib-S"]
    # an IBNorm sweep of one model keeps its norm labels
    assert "ib-T, λ=2" in set(prepare_table(table)["variant"])


def test_figures_display_in_a_fresh_notebook_kernel(table):
    fig = plot_information_plane(_one_pretrained_model(table))
    png = fig._repr_png_()  # what IPython calls when no pyplot backend registered Figure
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert isinstance(fig, Figure)


# ---------------------------------------------------------------------------- summary


def test_summary_calls_overlapping_intervals_a_tie(table):
    summary = summarize(prepare_table(table))
    # Seed intervals of +-0.04..0.09 nats overlap margins of 0.03..0.10 nats here, and two
    # seeds a variant do not separate them in a Welch test: no layer has a winner, and the
    # headline says so instead of naming the best point value.
    assert summary["headline"] == (
        "No variant has a clearly highest IB value at any layer (4): every margin is below "
        "0.001 nats, inside overlapping intervals or not separated by the seeds (Welch test, "
        "Holm-corrected, where there are two or more).")
    assert all(set(entry["winners"].values()) == {None} for entry in summary["layers"])
    assert all("no variant stands out" in s for s in summary["sentences"])
    winners = summary["winners"].set_index(["layer", "setting"])
    assert not winners["separated"].any()
    assert set(winners["status"]) <= {"tie (seeds do not separate them: Welch test, Holm-corrected)",
                                      "tie (margin below tolerance)"}
    # The point-best variant and its value are still reported, recomputed by hand.
    assert winners.loc[("blocks.0.norm", "ksg(k=3)"), "best"] == "layer, λ=0"
    assert winners.loc[("blocks.0.norm", "kde(noise_var=0.1)"), "best"] == "ib-T, λ=2"
    by_hand = table[(table["step"] == 2000) & (table["lam"] == 2.0) & (table["layer"] == "head.norm")
                    & (table["estimator"] == "kde")]["ib_value"].mean()
    assert winners.loc[("head.norm", "kde(noise_var=0.1)"), "ib_value"] == pytest.approx(by_hand,
                                                                                          abs=1e-12)


def _panel(rows):
    return pd.DataFrame(rows, columns=["setting_label", "variant", "ib_value", "band_low",
                                       "band_high"])


def test_margins_below_the_tolerance_are_ties_not_winners():
    # margins of 0 and 1.8e-15 nats (float rounding) once named a "highest IB value"
    for margin in (0.0, 1.8e-15, 5e-4):
        verdict = rank_variants(_panel([("ksg", "a", 1.0 + margin, 1.0 + margin, 1.0 + margin),
                                        ("ksg", "b", 1.0, 1.0, 1.0)]))
        assert verdict["status"]["ksg"] == "tie" and verdict["winner"]["ksg"] is None
        assert verdict["verdict"] == "tie" and not verdict["same_winner"]


def test_clear_winner_needs_margin_and_separated_intervals():
    clear = rank_variants(_panel([("ksg", "a", 1.2, 1.15, 1.25), ("ksg", "b", 1.0, 0.95, 1.05),
                                  ("kde", "a", 2.2, 2.15, 2.25), ("kde", "b", 2.0, 1.9, 2.1)]))
    assert clear["status"] == {"ksg": "clear", "kde": "clear"}
    assert clear["same_winner"] and clear["verdict"] == "same ranking under every setting"
    mixed = rank_variants(_panel([("ksg", "a", 1.2, 1.15, 1.25), ("ksg", "b", 1.0, 0.95, 1.05),
                                  ("kde", "a", 2.05, 1.9, 2.2), ("kde", "b", 2.0, 1.9, 2.1)]))
    assert mixed["status"]["kde"] == "overlap" and mixed["winner"] == {"ksg": "a", "kde": None}
    assert mixed["verdict"] == "a winner under some settings, a tie under others"
    # one seed, no interval: a margin above the tolerance is a winner whose size is unjudged
    bare = rank_variants(_panel([("ksg", "a", 1.2, 1.2, 1.2), ("ksg", "b", 1.0, 1.0, 1.0)]))
    assert bare["status"]["ksg"] == "unjudged" and bare["winner"]["ksg"] == "a"


def test_several_seeds_are_judged_by_the_welch_rule():
    # 4 seeds a side; the seed bands overlap, but the seeds differ by far more than their sd
    rng = np.random.default_rng(0)
    seeds = pd.DataFrame(
        [("ksg", v, base + 0.002 * rng.standard_normal()) for v, base in (("a", 1.05), ("b", 1.0))
         for _ in range(4)]
        + [("kde", v, base + 0.05 * rng.standard_normal()) for v, base in (("a", 1.02), ("b", 1.0))
           for _ in range(4)]
        + [("bin", v, base + 1e-6 * rng.standard_normal()) for v, base in (("a", 1.005), ("b", 1.0))
           for _ in range(4)],
        columns=["setting_label", "variant", "ib_value"])
    panel = aggregate_seeds(seeds.assign(seed=np.tile(np.arange(4), 6), ci_low=np.nan,
                                         ci_high=np.nan), ["setting_label", "variant"])
    wide = panel.assign(band_low=panel["ib_value"] - 1, band_high=panel["ib_value"] + 1)
    assert rank_variants(wide)["status"] == {"ksg": "overlap", "kde": "overlap", "bin": "overlap"}
    verdict = rank_variants(wide, seeds=seeds)
    # ksg: 0.05 apart at sd 0.002, clear after Holm; kde: sd 0.05 hides 0.02;
    # bin: 0.005 apart at sd 1e-6 is "significant" but below the 0.01-nat minimum effect
    assert verdict["status"] == {"ksg": "clear", "kde": "not significant", "bin": "tie"}
    assert verdict["winner"] == {"ksg": "a", "kde": None, "bin": None}
    assert verdict["p"]["ksg"] < 0.05 and set(verdict["p"]) == {"ksg", "kde"}


def test_caveats_come_from_the_rows_flags(table):
    caveats = {c["estimator"]: c for c in collect_caveats(prepare_table(table))}
    flagged = table[table["flags"] != "[]"].groupby("estimator").size()
    for estimator in ("binning", "kde", "ksg"):
        groups = caveats[estimator]["flags"]
        assert len(groups) == 1  # one message, differing only in its numbers
        assert groups[0]["rows"] == flagged[estimator]
    assert "ln n" in caveats["binning"]["flags"][0]["example"]
    assert "biased low" in caveats["ksg"]["flags"][0]["example"]
    near = (table["i_xt"] >= 0.98 * np.log(table["n_samples"])).groupby(table["estimator"]).sum()
    assert caveats["binning"]["near_ln_n"] == near["binning"] > 0


# ---------------------------------------------------------------------------- plots


def test_information_plane_plots_seed_means_in_bits(table):
    fig = plot_information_plane(table, units="bits", settings="kde(noise_var=0.1)",
                                 variants="ib-T, λ=2", layers="head.norm")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "I(X;T) [bits]" and ax.get_ylabel() == "I(T;Y) [bits]"
    rows = table[(table["estimator"] == "kde") & (table["lam"] == 2.0) & (table["layer"] == "head.norm")]
    expected = rows.groupby("step")[["i_xt", "i_ty"]].mean().sort_index().to_numpy() / LN2
    np.testing.assert_allclose(ax.collections[-1].get_offsets(), expected, rtol=1e-12)
    assert any("training step" in a.get_ylabel() for a in fig.axes[1:])  # the colour bar
    full = plot_information_plane(table)
    assert sum(a.get_xlabel().startswith("I(X;T)") for a in full.axes) == 9


def test_ib_across_layers_lines_and_palette(table):
    fig = plot_ib_across_layers(table, settings="ksg(k=3)")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "IB value [nats]"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"layer, λ=0", "ib-T, λ=1", "ib-T, λ=2"}
    last = table[(table["step"] == 2000) & (table["estimator"] == "ksg") & (table["lam"] == 0.0)]
    expected = last.groupby("layer_index")["ib_value"].mean().to_numpy()
    np.testing.assert_allclose(lines["layer, λ=0"].get_ydata(), expected, rtol=1e-12)
    assert {line.get_color() for line in lines.values()} <= set(PALETTE)
    with pytest.raises(ValueError, match="settings=\\['nope'\\]"):
        plot_ib_across_layers(table, settings="nope")
    with pytest.raises(ValueError, match="step=3"):
        plot_ib_across_layers(table, step=3)


def test_ib_across_lam_marks_the_baseline(table):
    fig = plot_ib_across_lam(table, settings="binning(n_bins=30)", layers="head.norm")
    ax = fig.axes[0]
    data_lines = [line for line in ax.get_lines() if len(line.get_xdata()) == 3]
    assert len(data_lines) == 1
    np.testing.assert_allclose(data_lines[0].get_xdata(), [0.0, 1.0, 2.0])
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
    base = table[(table["step"] == 2000) & (table["estimator"] == "binning")
                 & (table["lam"] == 0.0) & (table["layer"] == "head.norm")]["ib_value"].mean()
    assert len(hollow) == 1 and hollow[0].get_ydata()[0] == pytest.approx(base, abs=1e-12)
    assert "λ" in ax.get_xlabel() and ax.get_ylabel() == "IB value [nats]"


def test_estimator_agreement_verdicts(table):
    fig = plot_estimator_agreement(table)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    # every margin of the fixture lies inside overlapping seed intervals
    assert titles == [f"{layer}\ntie under every setting" for layer in
                      ("blocks.0.norm", "blocks.1.norm", "blocks.2.norm", "head.norm")]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == \
        ["binning(n_bins=30)", "kde(noise_var=0.1)", "ksg(k=3)"]
    with pytest.raises(ValueError, match="quantity='h_t'"):
        plot_estimator_agreement(table, quantity="h_t")


# ---------------------------------------------------------------------------- HTML


class _Collector(HTMLParser):
    """Records elements, checks nesting, and keeps text per section."""

    VOID = {"meta", "br", "img", "hr", "input", "link", "col", "area", "base", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.tags, self.ids = [], [], [], []
        self.attrs_seen, self.section, self.text = [], None, {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.attrs_seen.append((tag, attrs))
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "section":
            self.section = attrs.get("id")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs_seen.append((tag, dict(attrs)))
        if "id" in dict(attrs):
            self.ids.append(dict(attrs)["id"])

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        if self.section:
            self.text[self.section] = self.text.get(self.section, "") + data


def test_html_is_self_contained_and_complete(report, table):
    text = report["html"].read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(text)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    figures = [a.get("id") for tag, a in parser.attrs_seen if tag == "figure"]
    assert figures == FIGURE_IDS
    assert parser.tags.count("svg") == len(FIGURE_IDS)
    assert len(parser.ids) == len(set(parser.ids)), "ids repeat across inline SVGs"
    # No external reference of any kind: no URL, no linked resource, no remote CSS.
    assert not re.search(r"https?:|//[a-z0-9]", text, flags=re.I)
    assert all(not a.get("src") for _, a in parser.attrs_seen)
    assert all(a.get("href", "#").startswith("#") for _, a in parser.attrs_seen)
    assert "link" not in parser.tags and "@import" not in text
    summary = parser.text["summary"]
    assert summarize(prepare_table(table))["headline"] in summary
    assert "At blocks.0.norm, no variant stands out" in summary
    assert "tie (seeds do not separate them: Welch test, Holm-corrected)" in summary
    rows = [a for tag, a in parser.attrs_seen if tag == "tr"]
    assert text.count('<td class="num" data-v=') > 0
    assert len(rows) >= len(table) + 1
    run = parser.text["run"]
    assert "2025-06-01" in run and "2.13.0" in run and "seeds0, 1" in run
    assert "KSG is biased low" in parser.text["caveats"]
    assert "MLP norm comparison" in text


# ---------------------------------------------------------------------------- PDF


def test_pdf_has_the_expected_pages(report, table):
    pypdf = pytest.importorskip("pypdf")
    reader = pypdf.PdfReader(report["pdf"])
    pages = [page.extract_text() for page in reader.pages]
    assert "Summary" in pages[0] and "MLP norm comparison" in pages[0]
    assert "No variant has a clearly highest IB value at any layer (4)" in pages[0]
    for i, title in enumerate(FIGURE_TITLES, start=1):
        assert title in pages[i], f"page {i + 1} should hold the figure {title!r}"
    assert pages[5].startswith("Winners per layer")
    caveat_pages = [i for i, p in enumerate(pages) if p.startswith("Caveats")]
    assert caveat_pages and caveat_pages[0] == 6
    assert "2.13.0" in "".join(pages[c] for c in caveat_pages)
    # 3 variants x 4 layers x 3 settings = 36 seed means: one page of 36 rows.
    assert pages[-1].startswith("Seed means at the compared checkpoint (rows 1-36 of 36)")
    assert len(pages) == 6 + len(caveat_pages) + 1
    assert not any(p.startswith("Results table") for p in pages)  # only on request
    assert reader.metadata.title == "MLP norm comparison"
    assert "/CreationDate" not in reader.metadata


def test_same_input_gives_identical_bytes_in_bits(tmp_path, table):
    pypdf = pytest.importorskip("pypdf")
    tiny = table[table["layer"].isin(["blocks.0.norm", "head.norm"])
                 & (table["estimator"] == "kde")].reset_index(drop=True)
    first = write_report(tiny, out_dir=tmp_path / "a", config=CONFIG, units="bits",
                         pdf_full_table=True)
    second = write_report(tiny.copy(), out_dir=tmp_path / "b", config=CONFIG, units="bits",
                          pdf_full_table=True)
    assert first["html"].read_bytes() == second["html"].read_bytes()
    assert first["pdf"].read_bytes() == second["pdf"].read_bytes()
    assert oct(first["html"].stat().st_mode & 0o777) == "0o644"
    assert not list((tmp_path / "a").glob(".*tmp"))  # no temporary file left behind
    text = first["html"].read_text(encoding="utf-8")
    assert "All information values are in bits" in text and "IB value [bits]" in text
    assert "[nats]" not in text
    pages = [p.extract_text() for p in pypdf.PdfReader(first["pdf"]).pages]
    assert pages[-1].startswith(f"Results table (rows 1-{len(tiny)} of {len(tiny)})")
    assert "ib_value [bits]" in pages[-1]


def test_content_checks_its_arguments(table):
    with pytest.raises(TypeError, match="config must be a dict"):
        build_report_content(table, config="config.json")
    with pytest.raises(TypeError, match="title must be a string"):
        build_report_content(table, title=3)
    with pytest.raises(ValueError, match="units='bans'"):
        build_report_content(table, units="bans")


# ---------------------------------------------------------------------------- browser


def _chromium():
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(binary, profile, *args):
    command = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
               *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _console_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


_SORT_PROBE = """
<script>
(function () {
  var heads = document.querySelectorAll('#results-table th');
  var col = -1;
  for (var i = 0; i < heads.length; i++) { if (heads[i].textContent === 'ib_value') { col = i; } }
  function firstValues() {
    var rows = document.querySelectorAll('#results-table tbody tr');
    var out = [];
    for (var r = 0; r < rows.length; r++) { out.push(rows[r].cells[col].getAttribute('data-v')); }
    return out.join(',');
  }
  heads[col].click();
  document.body.setAttribute('data-ascending', firstValues());
  heads[col].click();
  document.body.setAttribute('data-descending', firstValues());
})();
</script>
"""


@pytest.mark.skipif(_chromium() is None,
                    reason="Chromium not installed (Debian package `chromium`; .ci/run installs it)")
def test_html_renders_in_headless_chromium(report, tmp_path, table):
    binary = _chromium()
    shot = tmp_path / "shot.png"
    done = _run_chromium(binary, tmp_path / "profile", f"--screenshot={shot}",
                         "--window-size=1200,1600", report["html"].resolve().as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert _console_lines(done.stderr) == []
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] >= 1500 and pixels.shape[1] >= 1100
    # A blank page has std 0; text, figures and tables give a large spread.
    assert float(pixels[..., :3].std()) > 0.05
    assert float((pixels[..., :3].mean(axis=2) < 0.5).mean()) > 0.005  # dark ink present

    # The sort script: click the ib_value header twice and read the column back.
    probe = tmp_path / "probe.html"
    probe.write_text(report["html"].read_text(encoding="utf-8").replace("</body>",
                                                                         _SORT_PROBE + "</body>"),
                     encoding="utf-8")
    dumped = _run_chromium(binary, tmp_path / "profile2", "--dump-dom", probe.resolve().as_uri())
    assert dumped.returncode == 0 and _console_lines(dumped.stderr) == []
    ascending = re.search(r'data-ascending="([^"]*)"', dumped.stdout).group(1).split(",")
    descending = re.search(r'data-descending="([^"]*)"', dumped.stdout).group(1).split(",")
    values = np.array(ascending, dtype=float)
    assert len(values) == len(table)
    assert np.all(np.diff(values) >= 0)
    np.testing.assert_allclose(np.sort(values), np.sort(table["ib_value"].to_numpy()), atol=1e-9)
    assert np.array_equal(np.array(descending, dtype=float), values[::-1]) or \
        np.all(np.diff(np.array(descending, dtype=float)) <= 0)


def test_bits_convert_every_interval_with_its_quantity(table):
    # `ibtools report --bits` converted i_prev_t but left its interval in nats
    nats = table.assign(ci_low_prev_t=table["i_prev_t"] - 0.1, ci_high_prev_t=table["i_prev_t"] + 0.1)
    bits = prepare_table(nats, units="bits")
    np.testing.assert_allclose(bits["ci_low_prev_t"].to_numpy(),
                               prepare_table(nats)["ci_low_prev_t"].to_numpy() / LN2, rtol=1e-12)
    assert (bits["ci_low_prev_t"] <= bits["i_prev_t"]).all()
    assert (bits["i_prev_t"] <= bits["ci_high_prev_t"]).all()
