"""End to end: checkpoints -> results table, resume, refusals; the CLI over the same API."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

import ibtools
from ibtools import analysis
from ibtools.cli import main
from ibtools.results import COLUMNS

SPECS = ["binning:n_bins=10", "kde:noise_var=0.1"]


def _analyze(ckpts, **kw):
    kw.setdefault("estimators", SPECS)
    kw.setdefault("max_samples", 200)
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    return ibtools.analyze(ckpts, data="digits", **kw)


def _stable(table):
    cols = [c for c in table.columns if c != "seconds"]
    return table[cols].sort_values(["checkpoint", "layer", "setting", "beta"]).reset_index(drop=True)


def test_table_contract_and_values(checkpoints):
    table = _analyze(checkpoints, betas=[0.1, 1.0])
    assert set(COLUMNS) <= set(table.columns)
    layers = sorted(table["layer"].unique())
    assert len(table) == 4 * len(layers) * len(SPECS) * 2
    # the same activations feed every setting: n and dim agree across estimators
    assert table.groupby(["checkpoint", "layer"])["n_samples"].nunique().max() == 1
    assert (table["n_samples"] == 200).all() and (table["unit"] == "nats").all()
    np.testing.assert_allclose(table["ib_value"].to_numpy(),
                               (table["i_ty"] - table["beta"] * table["i_xt"]).to_numpy(),
                               rtol=1e-12, atol=1e-12)
    first = table[table["layer_index"] == 0]
    assert np.allclose(first["i_prev_t"], first["i_xt"])  # T_0 = X
    binning = table[table["estimator"] == "binning"]
    # plug-in MI with 10 classes is at most H(Y) <= ln 10; I(X;T) at most ln n
    assert (binning["i_ty"] <= math.log(10) + 1e-9).all()
    assert (binning["i_xt"] <= math.log(200) + 1e-9).all()
    assert set(table["norm"]) == {"layer", "ib-T"}
    assert set(table.loc[table["norm"] == "ib-T", "lam"]) == {2.0}
    assert set(table.loc[table["norm"] == "layer", "lam"]) == {0.0}
    assert set(table["step"]) == {0, 8}
    assert "test_accuracy" in table.columns
    json.loads(table["flag_text"].iloc[0])
    assert json.loads(table["params"].iloc[0]) in ({"n_bins": 10}, {"noise_var": 0.1})


def test_layerwise_reference(checkpoints):
    # KDE's noisy-T reading gives I(T_prev;T) = I(X;T) for a deterministic net (both are
    # H(T + noise) - H(noise)); the Gaussian estimator sees the difference
    table = _analyze(checkpoints[:1], reference="previous", betas=[0.5],
                     estimators=["gaussian", "kde:noise_var=0.1"])
    assert (table["ib_kind"] == "layerwise").all()
    kde = table[table["estimator"] == "kde"]
    np.testing.assert_allclose(kde["i_prev_t"], kde["i_xt"], rtol=1e-6)
    table = table[table["estimator"] == "gaussian"]
    np.testing.assert_allclose(table["ib_value"], table["i_ty"] - 0.5 * table["i_prev_t"])
    later = table[table["layer_index"] > 0]
    assert len(later) > 0 and not np.allclose(later["i_prev_t"], later["i_xt"])


def test_resume_after_interruption_gives_the_same_table(checkpoints, tmp_path, monkeypatch):
    full = _analyze(checkpoints, out_dir=tmp_path / "full")
    real = analysis._layer_rows
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the run
        return real(*args, **kwargs)

    monkeypatch.setattr(analysis, "_layer_rows", flaky)
    with pytest.raises(KeyboardInterrupt):
        _analyze(checkpoints, out_dir=tmp_path / "resumed")
    from ibtools.results import read_journal

    saved = tmp_path / "resumed" / "results.csv"
    partial = pd.concat([pd.read_csv(saved) if saved.exists() else pd.DataFrame(),
                         pd.DataFrame(read_journal(tmp_path / "resumed"))])
    assert 0 < len(partial) < len(full)  # the completed steps were kept
    assert len(partial) == 4  # all four steps (one beta each) before the interruption
    monkeypatch.setattr(analysis, "_layer_rows", real)
    calls["n"] = 0
    counted = []
    monkeypatch.setattr(analysis, "_layer_rows",
                        lambda *a, **k: counted.append(1) or real(*a, **k))
    resumed = _analyze(checkpoints, out_dir=tmp_path / "resumed")
    assert len(counted) == (len(full) - len(partial)) // 1  # only the missing steps ran
    on_disk = pd.read_csv(tmp_path / "resumed" / "results.csv")
    assert read_journal(tmp_path / "resumed") == []  # folded into the table
    pd.testing.assert_frame_equal(_stable(resumed), _stable(pd.read_csv(tmp_path / "full" / "results.csv")),
                                  check_dtype=False)
    assert len(on_disk) == len(full)


def test_other_settings_in_out_dir_are_refused(checkpoints, tmp_path):
    _analyze(checkpoints[:1], out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"holds results of different settings.*estimators"):
        _analyze(checkpoints[:1], out_dir=tmp_path, estimators=["ksg:k=3"])
    table = _analyze(checkpoints[:1], out_dir=tmp_path, estimators=["gaussian"], overwrite=True)
    assert set(pd.read_csv(tmp_path / "results.csv")["estimator"]) == {"gaussian"}
    assert len(table) > 0


@pytest.mark.parametrize("kwargs, match", [
    ({"betas": [-1.0]}, "betas: -1.0 is not accepted"),
    ({"reference": "output"}, "reference='output' is not accepted"),
    ({"estimators": ["kde:noise_var=0"]}, "noise_var"),
    ({"max_samples": 3}, "max_samples=3 must be an integer >= 10"),
    ({"layers": ["nothing.*"]}, "nothing"),
])
def test_bad_arguments(checkpoints, kwargs, match):
    with pytest.raises((ValueError, TypeError, KeyError), match=match):
        _analyze(checkpoints[:1], **kwargs)


# --------------------------------------------------------------------------- CLI


def test_cli_analyze_writes_results_and_config(checkpoints, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["analyze", *checkpoints[:2], "--estimator", "binning:n_bins=10",
                                    "--beta", "0.1", "--beta", "1", "--max-samples", "150",
                                    "--device", "cpu", "--out", str(out), "--no-report"])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out / "results.csv")
    assert set(table["beta"]) == {0.1, 1.0} and (table["n_samples"] == 150).all()
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["estimators"] == ["binning:n_bins=10"]
    assert "ib_value" in res.output  # the closing table
    # the run's own config.json reproduces it: rerun resumes with nothing to do
    res2 = CliRunner().invoke(main, ["analyze", "--config", str(out / "config.json"),
                                     "--out", str(out), "--no-report", "--device", "cpu"])
    assert res2.exit_code == 0, res2.output
    pd.testing.assert_frame_equal(pd.read_csv(out / "results.csv"), table)
    assert config["settings"]["noise_paths"] == 8  # the default, recorded


def test_noise_paths_is_a_run_setting(checkpoints, tmp_path):
    _analyze(checkpoints[:1], out_dir=tmp_path, estimators=["binning:n_bins=10"])
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["settings"]["noise_paths"] == 8
    # a run directory written before the setting existed resumes as the default it used
    del config["settings"]["noise_paths"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    _analyze(checkpoints[:1], out_dir=tmp_path, estimators=["binning:n_bins=10"])
    with pytest.raises(ValueError, match=r"noise_paths: 8 there, 3 now"):
        _analyze(checkpoints[:1], out_dir=tmp_path, estimators=["binning:n_bins=10"],
                 noise_paths=3)


@pytest.mark.parametrize("args, match", [
    (["analyze", "missing.pt"], "checkpoint 'missing.pt' does not exist"),
    (["analyze", "{ck}", "--estimator", "kde:noise_var"], "accepted form"),
    (["analyze", "{ck}", "--layers", "nothing.*"], "layers.0"),
    (["analyze", "{ck}", "--data", "npz:/no/such.npz"], "/no/such.npz"),
    (["analyze", "{ck}", "--arch", "ibtools:nosuch"], "nosuch"),
    (["analyze"], "no checkpoints given"),
    (["analyze", "{ck}", "--noise-paths", "1"], "noise_paths=1 is not accepted"),
])
def test_cli_user_errors_exit_2(checkpoints, tmp_path, args, match):
    args = [a.replace("{ck}", checkpoints[0]) for a in args]
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "o"), "--no-report",
                                           "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert match in res.output
    assert not (tmp_path / "o" / "results.csv").exists()  # nothing written half


def test_cli_data_incompatible_with_model(checkpoints, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world, this is some text. " * 400)
    res = CliRunner().invoke(main, ["analyze", checkpoints[0], "--data", f"text:{text}",
                                    "--out", str(tmp_path / "o"), "--no-report", "--device", "cpu"])
    assert res.exit_code == 2, res.output
    assert "shape" in res.output.lower() or "input" in res.output.lower()


def test_cli_estimate(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 1))
    b = a + rng.normal(size=(2000, 1))
    np.save(tmp_path / "a.npy", a)
    np.savez(tmp_path / "b.npz", b=b)
    res = CliRunner().invoke(main, ["estimate", str(tmp_path / "a.npy"), f"{tmp_path / 'b.npz'}::b",
                                    "--method", "gaussian", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["I(A;B)"]["value"] == pytest.approx(0.5 * math.log(2), abs=0.03)
    assert out["H(A)"]["value"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=0.03)
    res = CliRunner().invoke(main, ["estimate", str(tmp_path / "a.npy"), "--method", "ksg",
                                    "--set", "k=0"])
    assert res.exit_code == 2 and "k" in res.output


def test_cli_version_and_help():
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and ibtools.__version__ in res.output
    for cmd in ("analyze", "report", "estimate", "demo"):
        res = CliRunner().invoke(main, [cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output


def test_demo_reduced(tmp_path):
    from ibtools.demo import run_demo

    table = run_demo(tmp_path / "demo", quick=True, epochs=1, device="cpu", progress=False,
                     echo=lambda *_: None)
    assert set(table["norm"]) == {"layer", "ib-T"}
    assert set(table["setting"]) == {"binning(n_bins=30)", "kde(noise_var=0.1)"}
    assert (tmp_path / "demo" / "results.csv").exists()
    assert len(list((tmp_path / "demo" / "checkpoints").rglob("*.pt"))) >= 4


def test_threads_setting_is_restored(checkpoints):
    before = torch.get_num_threads()
    seen = []
    real = analysis._layer_rows

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    analysis._layer_rows, saved = spy, analysis._layer_rows
    try:
        _analyze(checkpoints[:1], estimators=["gaussian"])  # "auto": small problem, 1 thread
    finally:
        analysis._layer_rows = saved
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads=0 is not accepted"):
        _analyze(checkpoints[:1], threads=0)
    assert torch.get_num_threads() == before
