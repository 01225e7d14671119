"""The noisy-network IBNorm study and the prepared GPU study, at their --quick sizes.

``examples/ibnorm_noisy.py`` trains noisy MLPs and measures them with the noisy-network
mixture estimate; ``examples/ibnorm_gpu_study.py`` trains a GPT and a ViT in deterministic and
noisy modes.  The tests run both end to end in this process (tiny sizes, CPU) and check the
numbers against what must hold: the IB value is its terms' combination, the first layer's
T_prev is the input, values stay under the mixture's ceiling, verdicts follow the rule, a
rerun resumes without retraining, and the accuracy-matching rule picks what it says.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ibtools.compare import MIN_EFFECT_NATS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def noisy():
    return _load("ibnorm_noisy")


@pytest.fixture(scope="module")
def gpu():
    return _load("ibnorm_gpu_study")


def test_matched_steps_picks_closest_checkpoint_to_lowest_final_accuracy(noisy):
    rows = []
    # two seeds per variant; seed means: layer 0.50, 0.80, 0.90 ; ib-T 0.60, 0.85, 0.86
    for norm, lam, means in (("layer", 0.0, (0.50, 0.80, 0.90)), ("ib-T", 4.0, (0.60, 0.85, 0.86))):
        for step, m in zip((0, 22, 44), means):
            for seed, delta in ((0, -0.01), (1, 0.01)):
                rows.append({"sigma": 0.2, "norm": norm, "lam": lam, "seed": seed, "step": step,
                             "test_accuracy": m + delta})
    steps = noisy.matched_steps(pd.DataFrame(rows), tolerance=0.01).set_index("norm")
    assert steps["target_accuracy"].tolist() == pytest.approx([0.86, 0.86])
    # LayerNorm's closest checkpoint to 0.86 is step 44 (0.90 is 0.04 away, 0.80 is 0.06)
    assert steps.loc["layer", "matched_step"] == 44
    assert not steps.loc["layer", "matched"]            # 0.04 > tolerance 0.01
    assert steps.loc["ib-T", "matched_step"] == 44 and steps.loc["ib-T", "matched"]
    assert steps.loc["layer", "final_accuracy_sd"] == pytest.approx(math.sqrt(2) * 0.01)
    loose = noisy.matched_steps(pd.DataFrame(rows), tolerance=0.05).set_index("norm")
    assert loose.loc["layer", "matched"]


def test_noisy_study_quick_end_to_end_and_resume(noisy, tmp_path):
    out, data = tmp_path / "run", tmp_path / "data"
    assert noisy.main(["--quick", "--out", str(out), "--data-dir", str(data)]) == 0
    seeds = pd.read_csv(out / "seeds.csv")
    cfg = noisy.QUICK
    n_layers = len(cfg["widths"])
    # 2 variants x 2 seeds x layers x (final, matched) roles
    assert len(seeds) == 2 * 2 * n_layers * 2
    assert seeds["ib_value"].to_numpy() == pytest.approx(
        (seeds["i_ty"] - noisy.BETA * seeds["i_prev_t"]).to_numpy(), abs=1e-12)
    first = seeds[seeds["layer"] == "layers.0"]
    assert first["i_xt"].to_numpy() == pytest.approx(first["i_prev_t"].to_numpy(), abs=1e-9)
    ceiling = math.log(cfg["max_samples"] * cfg["n_paths"])
    assert (seeds["i_xt"] <= ceiling + 4 * seeds["se_xt"] + 1e-9).all()
    assert (seeds["i_ty"] <= math.log(10) + 4 * seeds["se_ty"] + 1e-9).all()
    assert (seeds["i_xt"] > 0).all()
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["comparison"]) <= {"matched noise", "matched accuracy"}
    tested = comparison[comparison["verdict"] != "not matched"]
    small = tested["diff"].abs() < MIN_EFFECT_NATS
    assert (tested.loc[small, "verdict"] == "below effect size").all()
    assert (tested["p_adj"] >= tested["p"] - 1e-12).all()
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["n_seeds"] == 2).all()
    assert (summary["ib_value_mc_se"] > 0).all()
    env = json.loads((data / "noisy_environment.json").read_text(encoding="utf-8"))
    assert env["versions"]["torch"] and env["run"]["n_paths"] == cfg["n_paths"]
    for name in ("seeds", "accuracy", "summary", "comparison"):
        assert (data / f"noisy_{name}.csv").stat().st_size > 100
    # the doc's tables print from those files
    tables = _load("study_tables").render(data, ["noisy_accuracy", "noisy_terms",
                                                 "noisy_diffs", "noisy_verdicts"])
    assert "IBNorm-T, λ=1" in tables["noisy_terms"] and "LayerNorm" in tables["noisy_terms"]
    counts = tables["noisy_verdicts"].splitlines()[2:]
    assert sum(int(line.strip("| ").split(" | ")[-1]) for line in counts) == len(comparison)
    assert len(tables["noisy_diffs"].splitlines()) == 2 + len(comparison) // 4

    # a rerun resumes: no run is trained again, no checkpoint measured again
    histories = {p: p.stat().st_mtime_ns for p in out.glob("checkpoints/**/history.json")}
    cached = {p: p.stat().st_mtime_ns for p in out.glob("analysis/**/*.csv")}
    assert noisy.main(["--quick", "--out", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in histories} == histories
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    pd.testing.assert_frame_equal(pd.read_csv(out / "seeds.csv"), seeds)

    # the noise-path bias check: another K measures into its own folder and files, the
    # main run's are untouched, and the check tabulates both K
    assert noisy.main(["--quick", "--out", str(out), "--n-paths", "3"]) == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    assert (out / "seeds_paths3.csv").exists() and any(out.glob("analysis_paths3/**/*.csv"))
    pd.testing.assert_frame_equal(pd.read_csv(out / "seeds.csv"), seeds)
    assert noisy.main(["--quick", "--out", str(out), "--paths-check", "--data-dir",
                       str(data)]) == 0
    check = pd.read_csv(data / "noisy_paths_check.csv")
    assert sorted(check["n_paths"].unique()) == [2, 3]
    assert (check.loc[check["norm"] == "layer", "d_i_xt"] == 0).all()
    final = seeds[seeds["checkpoint"] == "final"]
    means = final.groupby(["norm", "layer"])["i_xt"].mean()
    row = check[(check["n_paths"] == 2) & (check["norm"] == "ib-T")
                & (check["layer"] == "layers.1")].iloc[0]
    assert row["d_i_xt"] == pytest.approx(means[("ib-T", "layers.1")]
                                          - means[("layer", "layers.1")], abs=1e-12)
    assert "K=3" in _load("study_tables").render(data, ["noisy_paths"])["noisy_paths"]


def _check_beta_sweep(sweep: pd.DataFrame, seeds: pd.DataFrame, comparison: pd.DataFrame):
    """The sweep's difference at every beta is the terms' combination, each (kind, beta) is
    one Holm family, and at the study's beta the layer-wise differences are the comparison's."""
    from ibtools.compare import MIN_EFFECT_NATS as floor

    assert set(sweep["ib_kind"]) == {"layerwise", "classic"}
    assert sorted(sweep["beta"].unique()) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    final = seeds[seeds["checkpoint"] == "final"]
    means = final.groupby(["sigma", "norm", "lam", "layer"])[["i_ty", "i_prev_t", "i_xt"]].mean()
    rows = sweep[sweep["comparison"] == "matched noise"]
    for r in rows.sample(n=min(12, len(rows)), random_state=0).to_dict("records"):
        term = {"layerwise": "i_prev_t", "classic": "i_xt"}[r["ib_kind"]]
        a = means.loc[(r["sigma"], r["norm"], r["lam"], r["layer"])]
        b = means.loc[(r["sigma"], "layer", 0.0, r["layer"])]
        expected = (a["i_ty"] - b["i_ty"]) - r["beta"] * (a[term] - b[term])
        assert r["diff"] == pytest.approx(expected, abs=1e-9)
    tested = sweep[sweep["verdict"] != "not matched"]
    assert (tested.loc[tested["diff"].abs() < floor, "verdict"] == "below effect size").all()
    for _, family in tested.groupby(["ib_kind", "beta"]):
        # Holm inside each family: the smallest p is multiplied by the family's size
        smallest = family.loc[family["p"].idxmin()]
        assert smallest["p_adj"] == pytest.approx(min(1.0, smallest["p"] * len(family)))
    at = sweep[(sweep["ib_kind"] == "layerwise") & (sweep["beta"] == 0.1)]
    ib = comparison[comparison["quantity"] == "ib_value"]
    keys = ["comparison", "sigma", "norm", "lam", "layer"]
    joined = at.merge(ib, on=keys, suffixes=("", "_main"))
    assert len(joined) == len(ib) and np.allclose(joined["diff"], joined["diff_main"], atol=1e-12)


def test_noisy_beta_sweep_of_the_quick_run(noisy, tmp_path):
    out = tmp_path / "run"
    assert noisy.main(["--quick", "--out", str(out)]) == 0
    _check_beta_sweep(pd.read_csv(out / "beta_sweep.csv"), pd.read_csv(out / "seeds.csv"),
                      pd.read_csv(out / "comparison.csv"))


def test_noisy_retable_reproduces_the_shipped_comparison_and_sweep(noisy, tmp_path, capsys):
    data = EXAMPLES.parent / "docs" / "data"
    for name in ("seeds", "accuracy", "comparison"):
        (tmp_path / f"noisy_{name}.csv").write_bytes((data / f"noisy_{name}.csv").read_bytes())
    assert noisy.main(["--retable", str(tmp_path)]) == 0
    assert "equal to" in capsys.readouterr().out
    sweep = pd.read_csv(tmp_path / "noisy_beta_sweep.csv")
    pd.testing.assert_frame_equal(sweep, pd.read_csv(data / "noisy_beta_sweep.csv"))
    _check_beta_sweep(sweep, pd.read_csv(data / "noisy_seeds.csv"),
                      pd.read_csv(data / "noisy_comparison.csv"))
    # a comparison that no longer follows from the seeds is reported, with a failing status
    bad = pd.read_csv(tmp_path / "noisy_comparison.csv")
    bad.loc[0, "diff"] += 0.5
    bad.to_csv(tmp_path / "noisy_comparison.csv", index=False)
    assert noisy.main(["--retable", str(tmp_path)]) == 1
    assert "DIFFERS from" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="noisy_seeds.csv"):
        noisy.main(["--retable", str(tmp_path / "empty")])


def test_noisy_study_rejects_one_seed(noisy, tmp_path, capsys):
    with pytest.raises(SystemExit):
        noisy.main(["--quick", "--seeds", "1", "--out", str(tmp_path)])
    assert "--seeds must be >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        noisy.main(["--quick", "--n-paths", "1", "--out", str(tmp_path)])
    assert "--n-paths must be >= 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        noisy.main(["--quick", "--sigmas", "0.1", "0", "--out", str(tmp_path)])
    assert "--sigmas must all be > 0" in capsys.readouterr().err


def _check_gpu_run(out: Path, noisy_mode: str) -> pd.DataFrame:
    results = pd.read_csv(out / "results.csv")
    assert set(results["study_mode"]) == {"deterministic", "noisy-1"}
    assert set(results.loc[results["study_mode"] == "noisy-1", "mode"]) == {noisy_mode}
    assert (results["at_ceiling"] == (results["i_xt"] >= 0.98 * np.log(results["n_samples"]))).all()
    assert (results.loc[results["study_mode"] == "deterministic", "mode"]
            == "deterministic").all()
    assert results["ib_value"].to_numpy() == pytest.approx(
        (results["i_ty"] - 0.1 * results["i_prev_t"]).to_numpy(), abs=1e-9)
    comparison = pd.read_csv(out / "comparison.csv")
    # one IBNorm-T variant x 2 modes x blocks x settings (2 deterministic, 1 noisy)
    depth = 2
    assert len(comparison) == depth * (2 + 1)
    assert set(comparison["mode"]) == {"deterministic", "noisy-1"}
    ceiling = pd.read_csv(out / "ceiling.csv")
    assert ceiling["at_ceiling"].between(0, 1).all() and len(ceiling) == depth * (2 + 1)
    small = comparison["diff"].abs() < MIN_EFFECT_NATS
    assert (comparison.loc[small, "verdict"].isin(["below effect size", "not computed"])).all()
    env = json.loads((out / "environment.json").read_text(encoding="utf-8"))
    assert env["run"]["models"] == ["vit"] and env["device"] == "cpu"
    return results


def test_gpu_study_quick_on_cpu(gpu, tmp_path):
    out, data = tmp_path / "gpu", tmp_path / "data"
    assert gpu.main(["--quick", "--models", "vit", "--out", str(out), "--data-dir", str(data),
                     "--data-name", "cpu_vit"]) == 0
    results = _check_gpu_run(out, "trained-noise")
    # the doc's tables print from the --data-dir files: one diffs row per compared cell, and
    # its I(X;T) column is the difference of the seed means
    study_tables = _load("study_tables")
    tables = study_tables.render(data, ["cpu_vit_metrics", "cpu_vit_levels", "cpu_vit_diffs"])
    comparison = pd.read_csv(data / "cpu_vit_comparison.csv")
    diff_rows = tables["cpu_vit_diffs"].splitlines()[2:]
    assert len(diff_rows) == len(comparison)
    summary = pd.read_csv(data / "cpu_vit_summary.csv").set_index(
        ["mode", "norm", "layer", "setting"])
    first = comparison.assign(_mode=comparison["mode"].map(study_tables._mode_key)).sort_values(
        ["_mode", "lam", "layer_index"], kind="mergesort").iloc[0]
    expected = (summary.loc[(first["mode"], "ib-T", first["layer"], first["setting"]), "i_xt_mean"]
                - summary.loc[(first["mode"], "layer", first["layer"], first["setting"]),
                              "i_xt_mean"])
    assert diff_rows[0].split(" | ")[6] == f"{expected:+.3f}"
    assert len(tables["cpu_vit_metrics"].splitlines()) == 2 + 2 * 2  # modes x variants
    # the scale a channel is read against: one row per run and block, positive
    scale = pd.read_csv(data / "cpu_vit_scale.csv")
    assert len(scale) == 2 * 2 * 2 * 2  # modes x variants x seeds x blocks
    assert (scale["coord_sd"] > 0).all() and (scale["nn_distance_median"] > 0).all()
    assert (scale["n_rows"] == gpu.QUICK["vit"]["max_samples"]).all()
    assert (results.loc[results["study_mode"] == "noisy-1", "noise_std"] == 1.0).all()
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == 2 * 2 * 2 and metrics["test_accuracy"].between(0, 1).all()

    # two worker processes (the script as users run it) give the same rows in the same order
    import subprocess

    parallel = tmp_path / "gpu_jobs2"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "ibnorm_gpu_study.py"), "--quick",
                           "--models", "vit", "--jobs", "2", "--out", str(parallel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    volatile = ["seconds", "checkpoint", "checkpoint_path", "checkpoint_fingerprint"]
    pd.testing.assert_frame_equal(pd.read_csv(parallel / "results.csv").drop(columns=volatile),
                                  results.drop(columns=volatile))
    env = json.loads((parallel / "environment.json").read_text(encoding="utf-8"))
    assert env["run"]["jobs"] == 2 and env["run"]["cpu_seconds"] > 0


def test_gpu_study_falls_back_to_analysis_time_noise(gpu, tmp_path, monkeypatch):
    monkeypatch.setattr(gpu, "has_noise_option", lambda model: False)
    out = tmp_path / "gpu"
    assert gpu.main(["--quick", "--models", "vit", "--out", str(out)]) == 0
    _check_gpu_run(out, "analysis-noise")
    # without train-time noise both modes read the same deterministic networks
    assert not (out / "checkpoints" / "vit" / "noisy").exists()


def test_gpu_study_channel_mode_reads_the_deterministic_nets(gpu, tmp_path):
    out = tmp_path / "gpu"
    assert gpu.main(["--quick", "--models", "vit", "--no-noisy", "--channel-std", "2",
                     "--channel-rel", "0.5", "--out", str(out)]) == 0
    results = pd.read_csv(out / "results.csv")
    assert set(results["study_mode"]) == {"deterministic", "channel-2", "relchannel-0.5"}
    relative = results[results["study_mode"] == "relchannel-0.5"]
    assert relative["setting"].str.endswith("@noise_rel=0.5").all()
    assert set(relative["mode"]) == {"analysis-noise"}
    channel = results[results["study_mode"] == "channel-2"]
    assert set(channel["mode"]) == {"analysis-noise"} and (channel["noise_std"] == 2.0).all()
    # no training of its own: the channel rows read the deterministic checkpoints
    assert [p.name for p in (out / "checkpoints" / "vit").iterdir()] == ["deterministic"]
    det = results[results["study_mode"] == "deterministic"]
    assert set(channel["checkpoint_fingerprint"]) == set(det["checkpoint_fingerprint"])
    # a channel keeps the values below the deterministic ceiling ln n for I(X;T)
    assert (channel["i_xt"] < np.log(channel["n_samples"])).all()


@pytest.mark.parametrize("argv, message", [
    (["--models", "resnet"], "--models 'resnet'"),
    (["--noise-std", "0"], "--noise-std must all be > 0"),
    (["--no-noisy", "--noise-std", "2"], "--no-noisy and --noise-std contradict"),
    (["--channel-std", "0"], "--channel-std must all be > 0"),
    (["--channel-rel", "-1"], "--channel-rel must all be > 0"),
    (["--jobs", "0"], "--jobs 0"),
    (["--data-name", "../x"], "--data-name '../x'"),
])
def test_gpu_study_names_bad_arguments(gpu, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit):
        gpu.main(["--quick", *argv, "--out", str(tmp_path)])
    assert message in capsys.readouterr().err
