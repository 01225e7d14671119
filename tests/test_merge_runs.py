"""Runs that combine: several run directories as one table and one report (#21)."""

import json
import shutil
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import ibtools
from ibtools.cli import main
from ibtools.merge import MergeWarning, layer_order, merge_runs


def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 3))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: layers 0, 1 of 'net' with binning; run B: layers 1, 2 of 'net' with another
    binning setting, plus a second model 'other' (another architecture's rows)."""
    root = tmp_path_factory.mktemp("merge")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, size=150)
    x = np.stack([y, -y], axis=1).astype(np.float32) + 0.05 * rng.standard_normal((150, 2),
                                                                                 ).astype(np.float32)
    common = dict(data=(x, y), max_samples=150, device="cpu", progress=False)
    net, other = _net(0), _net(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ibtools.analyze({"net": net}, layers=["0", "1"], estimators=["binning:n_bins=4"],
                        out_dir=root / "a", **common)
        ibtools.analyze({"net": net, "other": other}, layers=["1", "2"],
                        estimators=["binning:n_bins=6"], out_dir=root / "b", **common)
    return root


def test_layer_order_keeps_every_runs_order():
    assert layer_order([["conv1", "conv2", "conv4"], ["conv4", "classifier"],
                        ["conv2", "conv3", "conv4"]]) == (
        ["conv1", "conv2", "conv3", "conv4", "classifier"], True)
    order, agreed = layer_order([["a", "b"], ["b", "a"]])
    assert order == ["a", "b"] and not agreed


def test_merge_places_layers_by_model_not_by_run(runs):
    table = merge_runs([runs / "a", runs / "b"])
    a = pd.read_csv(runs / "a" / "results.csv")
    b = pd.read_csv(runs / "b" / "results.csv")
    assert len(table) == len(a) + len(b)
    assert set(table["run"]) == {str(runs / "a"), str(runs / "b")}
    net = table[table["checkpoint"] == "net"]
    index = dict(zip(net["layer"], net["layer_index"]))
    # run b's layer "1" had index 0 in its own run; merged, every run reads 0 < 1 < 2
    assert index == {"0": 0, "1": 1, "2": 2}
    assert set(net.loc[net["run"] == str(runs / "b"), "run_layer_index"]) == {0, 1}
    # values are carried over unchanged
    merged_b = table[table["run"] == str(runs / "b")].sort_values(["checkpoint", "layer"])
    np.testing.assert_allclose(merged_b["i_xt"].to_numpy(),
                               b.sort_values(["checkpoint", "layer"])["i_xt"].to_numpy())


def test_duplicated_rows_are_dropped_with_a_warning_or_refused(runs, tmp_path):
    copy = tmp_path / "a-again"
    shutil.copytree(runs / "a", copy)
    with pytest.warns(MergeWarning, match="already held by an earlier run"):
        table = merge_runs([runs / "a", copy])
    assert len(table) == len(pd.read_csv(runs / "a" / "results.csv"))
    assert set(table["run"]) == {str(runs / "a")}
    with pytest.raises(ValueError, match="already held by an earlier run"):
        merge_runs([runs / "a", copy], on_duplicate="error")
    with pytest.raises(ValueError, match="lists a run twice"):
        merge_runs([runs / "a", runs / "a"])


def test_cli_merge_and_report_of_several_runs(runs, tmp_path):
    cli = CliRunner()
    out = tmp_path / "merged"
    res = cli.invoke(main, ["merge", str(runs / "a"), str(runs / "b"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    merged = pd.read_csv(out / "results.csv")
    assert len(merged) == len(merge_runs([runs / "a", runs / "b"]))
    again = cli.invoke(main, ["merge", str(runs / "a"), str(runs / "b"), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    res = cli.invoke(main, ["report", str(runs / "a"), str(runs / "b"), "--no-pdf"])
    assert res.exit_code == 2 and "--out" in res.output
    rep = tmp_path / "rep"
    res = cli.invoke(main, ["report", str(runs / "a"), str(runs / "b"), "--out", str(rep),
                            "--no-pdf"])
    assert res.exit_code == 0, res.output
    html = (rep / "report.html").read_text()
    assert "other" in html and "net" in html
    assert json.loads((rep / "config.json").read_text())["device"] == "cpu"


def test_a_run_written_before_the_flag_rename_merges_and_resumes(runs, tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    table = pd.read_csv(runs / "a" / "results.csv").rename(columns={"flag_text": "flags"})
    table.to_csv(old / "results.csv", index=False)
    merged = merge_runs([old, runs / "b"])
    assert "flags" not in merged.columns
    assert merged["flag_text"].notna().all()
    assert (merged.loc[merged["run"] == str(old), "flag_text"].to_numpy()
            == table["flags"].to_numpy()).all()
    # a resume reads the old header as the new one: no row is dropped or recomputed
    shutil.copy(runs / "a" / "config.json", old / "config.json")
    from ibtools.run_directory import RunSchema, read_resume_rows
    from ibtools.estimators.spec import parse_estimator_specs

    schema = RunSchema.from_specs(parse_estimator_specs(["binning:n_bins=4"]), "input")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = read_resume_rows(old, schema)
    assert len(rows) == len(table) and all("flag_text" in r for r in rows)
