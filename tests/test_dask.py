"""analyze on a Dask cluster: the serial table (values, flags, rows, order), a worker that dies
mid-task, an interrupted run resumed serially or on the cluster, GPU annotations, errors."""

import json
import shutil

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("distributed")

import ibtools  # noqa: E402
import ibtools.errors  # noqa: E402
from ibtools import analysis  # noqa: E402
from ibtools import distributed as ib_dask  # noqa: E402
from ibtools.distributed import driver, tasks  # noqa: E402
from ibtools.cli import main  # noqa: E402
from ibtools.results import read_journal  # noqa: E402

SPECS = ["binning:n_bins=10", "kde:noise_var=0.1"]


@pytest.fixture(scope="module")
def client():
    """One 2-process LocalCluster for the whole file (starting one takes seconds)."""
    with ib_dask.local_client(2, "cpu") as c:
        yield c


def _analyze(ckpts, **kw):
    kw.setdefault("estimators", SPECS)
    kw.setdefault("max_samples", 200)
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    kw.setdefault("betas", [0.1, 1.0])
    return ibtools.analyze(ckpts, data="digits", **kw)


def _same(a, b, check_dtype=True):
    """Equal in every column but the timing, row for row in the same order (without
    ``check_dtype``, None and NaN are both a missing value)."""
    cols = [c for c in a.columns if c != "seconds"]
    assert list(b.columns) == list(a.columns)
    a, b = a[cols].reset_index(drop=True), b[cols].reset_index(drop=True)
    if not check_dtype:
        a, b = a.where(a.notna(), float("nan")), b.where(b.notna(), float("nan"))
    pd.testing.assert_frame_equal(a, b, check_dtype=check_dtype)


@pytest.fixture(scope="module")
def serial(checkpoints, tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    table = _analyze(checkpoints, out_dir=out)
    return table, pd.read_csv(out / "results.csv")


def test_cluster_table_equals_serial(checkpoints, client, serial, tmp_path, monkeypatch):
    calls = []
    real_submit = client.submit
    monkeypatch.setattr(client, "submit", lambda *a, **k: calls.append(k) or real_submit(*a, **k))
    table = _analyze(checkpoints, out_dir=tmp_path, executor=client)
    _same(serial[0], table)
    _same(serial[1], pd.read_csv(tmp_path / "results.csv"))
    assert len(table) == 4 * 2 * len(SPECS) * 2  # checkpoints x layers x settings x betas
    assert read_journal(tmp_path) == [] and (tmp_path / "config.json").is_file()
    # 4 checkpoints fill 2 workers: one task per checkpoint, no plans; none asks for a GPU
    assert len(calls) == 4
    assert all(k["retries"] == ib_dask.RETRIES and k["resources"] is None and k["pure"] is False
               for k in calls)


def test_one_checkpoint_split_into_layer_groups(checkpoints, client):
    # one checkpoint on 2 workers: one group per layer, the second capturing the first as
    # T_prev; the Gaussian estimator tells I(T_prev;T) from I(X;T)
    kw = {"reference": "previous", "estimators": ["gaussian", "binning:n_bins=10"]}
    expected = _analyze(checkpoints[:1], **kw)
    table = _analyze(checkpoints[:1], executor=client, **kw)
    _same(expected, table)
    later = table[(table["layer_index"] == 1) & (table["estimator"] == "gaussian")]
    assert len(later) == 2 and (later["i_prev_t"] != later["i_xt"]).all()
    # a reduction applied per captured layer is the same whichever layers a group captures
    kw = {"reduce": "project:4", "estimators": ["binning:n_bins=10"], "betas": [0.1]}
    table = _analyze(checkpoints[:1], executor=client, **kw)
    _same(_analyze(checkpoints[:1], **kw), table)
    assert set(table["reduction"]) == {"project:4"} and set(table["dim"]) == {4}


def test_worker_killed_mid_task_is_retried(checkpoints, client, serial, tmp_path):
    marker = tmp_path / "died"
    client.run(tasks._arm_exit_once, str(marker))
    try:
        table = _analyze(checkpoints, out_dir=tmp_path / "run", executor=client)
    finally:
        client.run(tasks._arm_exit_once, None)
        client.wait_for_workers(2, timeout=60)
    assert marker.exists()  # a worker did end itself after its capture
    _same(serial[0], table)


def test_interrupted_cluster_run_resumes_to_the_same_table(checkpoints, client, serial,
                                                           tmp_path, monkeypatch):
    real = driver._record
    seen = []

    def interrupted(*args, **kwargs):
        if len(seen) == 5:
            raise KeyboardInterrupt  # Ctrl-C on the driver while tasks are running
        seen.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(driver, "_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _analyze(checkpoints, out_dir=tmp_path / "a", executor=client)
    monkeypatch.setattr(driver, "_record", real)
    saved = tmp_path / "a" / "results.csv"
    kept = len(read_journal(tmp_path / "a")) + (len(pd.read_csv(saved)) if saved.exists() else 0)
    assert kept == 5 * 2  # five steps, two betas each
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    steps = []
    real_rows = analysis._layer_rows
    monkeypatch.setattr(analysis, "_layer_rows",
                        lambda *a, **k: steps.append(1) or real_rows(*a, **k))
    resumed = _analyze(checkpoints, out_dir=tmp_path / "a")  # serially
    assert len(steps) == 4 * 2 * len(SPECS) - 5  # only the missing steps ran
    # rows read back from results.csv hold NaN where a fresh run's hold None (an empty
    # 'resolution'): the same in a serial resume, so the returned tables compare by value
    _same(serial[0], resumed, check_dtype=False)
    _same(serial[1], pd.read_csv(saved))
    on_cluster = _analyze(checkpoints, out_dir=tmp_path / "b", executor=client)
    _same(serial[0], on_cluster, check_dtype=False)
    _same(serial[1], pd.read_csv(tmp_path / "b" / "results.csv"))


def test_model_objects_are_shipped_and_named(checkpoints, client):
    from ibtools.probes import load_model

    models = {"first": load_model(checkpoints[0])[0], "second": load_model(checkpoints[3])[0]}
    expected = _analyze(models, betas=[0.5])
    table = _analyze(models, betas=[0.5], executor=client)
    _same(expected, table)
    assert list(table["checkpoint"].unique()) == ["first", "second"]


def test_errors_in_what_was_given(checkpoints, client):
    with pytest.raises(TypeError, match=r"executor=42 is not accepted; give a dask"):
        _analyze(checkpoints[:1], executor=42)
    with pytest.raises(ValueError, match=r"device='banana' is not a device"):
        _analyze(checkpoints[:1], executor=client, device="banana")
    # a user error on a worker comes back at once, not after retries
    with pytest.raises(ValueError, match=r"layers: 'nope' matches no module"):
        _analyze(checkpoints[:1], executor=client, layers="nope")


@pytest.mark.parametrize("exc", [
    ibtools.errors.ResourceExceeded("capturing the activations ran out of device memory"),
    ibtools.errors.InputError("layers: 'nope' matches no module"),
    ibtools.errors.EstimatorRefused("too few rows"),
    FileNotFoundError("checkpoint 'a.pt' cannot be read on Dask worker 'w'"),
    TypeError("unsupported operand type(s)"),
    KeyError("n_bins"),
])
def test_a_task_error_every_try_meets_comes_back_at_once(monkeypatch, exc):
    # before, ResourceExceeded (a MemoryError) and plain bugs other than TypeError/ValueError
    # were raised on the worker and retried RETRIES times before the driver saw them
    def on_worker(job):
        raise exc

    monkeypatch.setattr(tasks, "_on_worker", on_worker)
    job = type("Job", (), {"settings": None})()
    for result in (tasks._plan_task(job, None, None, "m"),
                   tasks._group_task(job, None, None, "m", "id", None, None, {})):
        assert not tasks.retried(exc) and result["error"] is exc
        # the driver raises it as the serial run would; a bug keeps the worker's traceback
        with pytest.raises(type(exc)) as info:
            driver._raise_or_warn(dict(result))
        if isinstance(exc, ibtools.errors.IbtoolsError):
            assert "traceback" not in result and not getattr(info.value, "__notes__", None)
        else:
            assert "in on_worker" in result["traceback"]
            assert "raised on a Dask worker" in info.value.__notes__[-1]
            info.value.__notes__.clear()


@pytest.mark.parametrize("exc", [OSError(116, "Stale file handle"), MemoryError(),
                                 torch.OutOfMemoryError("CUDA out of memory")])
def test_a_task_error_another_try_may_not_meet_is_retried(monkeypatch, exc):
    def on_worker(job):
        raise exc

    monkeypatch.setattr(tasks, "_on_worker", on_worker)
    assert tasks.retried(exc)
    with pytest.raises(type(exc)):  # raised on the worker: Dask runs the task again
        tasks._plan_task(type("Job", (), {"settings": None})(), None, None, "m")


def test_run_order_is_the_serial_order():
    specs = analysis.parse_estimator_specs(["binning:n_bins=10", "kde:noise_var=0.1"])
    rows = [{"checkpoint": c, "layer_index": i, "setting": s.label, "beta": b}
            for c in ("b", "a") for i in (1, 0) for s in specs[::-1] for b in (1.0, 0.1)]
    other = {"checkpoint": "old", "layer_index": 3, "setting": "x", "beta": 0.1}
    ordered = ib_dask.run_order(rows[::-1] + [other], ["a", "b"], specs, [0.1, 1.0])
    assert ordered[0] is other
    assert [(r["checkpoint"], r["layer_index"], r["setting"][:3], r["beta"])
            for r in ordered[1:4]] == [("a", 0, "bin", 0.1), ("a", 0, "bin", 1.0),
                                       ("a", 0, "kde", 0.1)]
    assert [r["checkpoint"] for r in ordered[1:]] == ["a"] * 8 + ["b"] * 8


def test_layer_groups_fill_workers_and_fit_memory():
    assert ib_dask.layer_groups([8] * 4, 64, 100, 1, None) == [[0, 1, 2, 3]]
    assert ib_dask.layer_groups([8] * 5, 64, 100, 2, None) == [[0, 1], [2, 3, 4]]
    assert ib_dask.layer_groups([8] * 3, 64, 100, 9, None) == [[0], [1], [2]]
    # 4 bytes x 100 rows x (64 inputs + layer before + layers): 2 layers of 100 do not fit 100 kB
    assert ib_dask.layer_groups([100] * 4, 64, 100, 1, 100_000) == [[0], [1], [2], [3]]
    assert ib_dask.layer_groups([10] * 4, 0, 100, 1, 4 * 100 * 25) == [[0, 1], [2], [3]]


def test_gpu_annotations_and_devices():
    assert ib_dask.task_resources("cuda") == {"GPU": 1}
    assert ib_dask.task_resources("cuda:1") == {"GPU": 1}
    assert ib_dask.task_resources("cpu") is None and ib_dask.task_resources("auto") is None
    opts = ib_dask.local_cluster_options(2, "cuda", n_gpus=2)
    assert opts["resources"] == {"GPU": 1} and opts["threads_per_worker"] == 1
    assert opts["n_workers"] == 2 and opts["processes"] is True
    assert ib_dask.local_cluster_options(1, "auto", n_gpus=1)["resources"] == {"GPU": 1}
    assert "resources" not in ib_dask.local_cluster_options(3, "cpu", n_gpus=2)
    assert "resources" not in ib_dask.local_cluster_options(3, "auto", n_gpus=0)
    with pytest.raises(ValueError, match=r"workers=3 with device='cuda': this machine has 2"):
        ib_dask.local_cluster_options(3, "cuda", n_gpus=2)
    with pytest.raises(ValueError, match=r"workers=0 is not accepted; use an integer >= 1"):
        ib_dask.local_cluster_options(0, "cpu", n_gpus=0)
    # LocalCluster's workers 0, 1, 2, 3 on two GPUs; a named worker keeps what it was given
    assert [ib_dask.worker_device("cuda", n, n_gpus=2) for n in (0, 1, 2, "3")] == [
        torch.device("cuda", i) for i in (0, 1, 0, 1)]
    assert ib_dask.worker_device("cuda:1", 0, n_gpus=2) == torch.device("cuda", 1)
    assert ib_dask.worker_device("cuda", "gpu-a", n_gpus=2) == torch.device("cuda")
    assert ib_dask.worker_device("auto", 1, n_gpus=0) == torch.device("cpu")
    assert ib_dask.worker_device("auto", 1, n_gpus=2) == torch.device("cuda", 1)
    assert ib_dask.cluster_device("cuda:3") == "cuda:3"  # no CUDA needed on the driver


def test_cli_scheduler_and_workers(checkpoints, client, serial, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, ["analyze", *checkpoints, "--estimator", SPECS[0],
                                    "--estimator", SPECS[1], "--beta", "0.1", "--beta", "1.0",
                                    "--max-samples", "200", "--device", "cpu", "--out", str(out),
                                    "--no-report", "--scheduler", client.scheduler.address])
    assert res.exit_code == 0, res.output
    _same(serial[1], pd.read_csv(out / "results.csv"))
    assert json.loads((out / "config.json").read_text())["betas"] == [0.1, 1.0]
    for args, match in ((["--workers", "0"], "--workers 0 is not accepted"),
                        (["--workers", "2", "--scheduler", "tcp://x:1"],
                         "give --workers or --scheduler, not both")):
        res = CliRunner().invoke(main, ["analyze", checkpoints[0], "--no-report",
                                        "--out", str(tmp_path / "e"), *args])
        assert res.exit_code == 2 and match in res.output, res.output


def test_cli_workers_without_the_extra(checkpoints, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_distributed(name, *args, **kwargs):
        if name == "distributed" or name.startswith("distributed."):
            raise ImportError("No module named 'distributed'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_distributed)
    res = CliRunner().invoke(main, ["analyze", checkpoints[0], "--workers", "2", "--no-report",
                                    "--out", str(tmp_path / "o"), "--device", "cpu"])
    assert res.exit_code == 2
    assert "pip install 'ibtools[dask]'" in res.output and "--workers" in res.output
    assert not (tmp_path / "o" / "results.csv").exists()


def test_noisy_modes_equal_serial(checkpoints, client, tmp_path):
    # an analysis-time channel, and a network trained with noise measured by the mixture
    # estimator from noise paths (one Monte Carlo over all its layers: one group, not two)
    from ibtools.models import train

    kw = {"noise_std": 0.3, "estimators": ["binning:n_bins=10"], "betas": [0.1]}
    _same(_analyze(checkpoints[:1], **kw), _analyze(checkpoints[:1], executor=client, **kw))
    train("mlp", model_config={"norm": "layer", "widths": [8, 4], "noise_std": 0.5},
          data="digits", max_steps=2, checkpoint_every=2, out_dir=tmp_path, seed=0)
    noisy_ckpt = [str(sorted(tmp_path.glob("*.pt"))[-1])]
    kw = {"estimators": ["mixture:mc_tolerance=0.05"], "betas": [0.1], "max_samples": 60}
    expected = _analyze(noisy_ckpt, **kw)
    table = _analyze(noisy_ckpt, executor=client, **kw)
    _same(expected, table)
    assert set(table["mode"]) == {"trained-noise"} and table["i_xt"].notna().all()
    # the tasks run the serial loop's own steps: the noise-path count reaches the workers
    few = _analyze(noisy_ckpt, executor=client, noise_paths=3, **kw)
    _same(_analyze(noisy_ckpt, noise_paths=3, **kw), few)
    assert not (few["i_xt"].to_numpy() == table["i_xt"].to_numpy()).any()


def _worker_state():
    import os
    import sys

    import dask

    return (os.environ.get("MALLOC_TRIM_THRESHOLD_"),
            dask.config.get("distributed.worker.profile.enabled"), torch.get_num_threads(),
            "ibtools.distributed.tasks" in sys.modules)


def test_local_cluster_workers_are_lean_and_warm(client):
    """local_client's workers run without Dask's malloc trim threshold (which makes every
    temporary tensor over 128 KiB a fresh mmap) and profiler, on one torch thread, with the
    analysis already imported.  Placed last, so a worker the nanny restarted after the
    crash test above is checked too (the nanny keeps its own copy of the settings)."""
    states = client.run(_worker_state)
    assert len(states) == 2
    assert set(states.values()) == {(None, False, 1, True)}
