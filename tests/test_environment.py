"""The environment record every run writes: hardware, instruction set, versions, threads."""

from __future__ import annotations

import json

import numpy
import torch

import ibtools
from ibtools.environment import describe_environment, environment_lines


def test_record_has_hardware_versions_and_threads():
    env = describe_environment("cpu")
    for key in ("device", "cpu_model", "cpu_count", "torch_cpu_capability", "numpy_simd", "gpus",
                "threads", "versions", "platform", "python"):
        assert key in env, key
    assert env["device"] == "cpu" and env["cpu_count"] >= 1 and env["cpu_model"]
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["threads"]["torch"] == torch.get_num_threads()
    assert env["versions"]["torch"] == torch.__version__.split("+")[0] or \
        env["versions"]["torch"] == torch.__version__
    assert env["versions"]["numpy"] == numpy.__version__
    assert env["versions"]["ibtools"] == ibtools.__version__
    for lib in ("scipy", "numba"):
        assert lib in env["versions"]
    json.dumps(env)  # a config.json entry
    assert env == describe_environment("cpu")  # no clock: same machine, same record
    lines = environment_lines(env)
    assert any(line.startswith("instruction set: torch ") for line in lines)


def test_thread_count_follows_torch():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert describe_environment()["threads"]["torch"] == 1
    finally:
        torch.set_num_threads(before)


def test_analyze_and_tracker_record_the_environment(tmp_path):
    from ibtools.models import build_model, train

    ck = tmp_path / "ck"
    train("mlp", model_config={"norm": "layer", "widths": [8]}, data="digits", max_steps=2,
          checkpoint_every=2, out_dir=ck, seed=0)
    out = tmp_path / "run"
    ibtools.analyze([str(p) for p in sorted(ck.glob("*.pt"))][-1:], data="digits",
                    estimators=["binning:n_bins=5,n_permutations=0"], max_samples=60,
                    out_dir=out, progress=False, device="cpu")
    config = json.loads((out / "config.json").read_text())
    assert config["environment"]["versions"]["ibtools"] == ibtools.__version__
    assert config["environment"]["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()

    torch.manual_seed(0)
    model = build_model("mlp", norm="layer", widths=[8])
    tracked = tmp_path / "tracked"
    with ibtools.track(model, "digits", layers=["layers.0"], every=1, max_samples=60,
                       estimators=["binning:n_bins=5,n_permutations=0"], out=tracked) as tracker:
        tracker.step(1)
    config = json.loads((tracked / "config.json").read_text())
    assert set(config["environment"]) >= {"cpu_model", "threads", "versions", "gpus"}
    # the report reads the nested versions instead of the rendering machine's
    from ibtools.reports.summary import describe_run
    from ibtools.reports.table import prepare_table

    pairs = dict(describe_run(prepare_table(ibtools.results.load_results(out)),
                              json.loads((out / "config.json").read_text())))
    assert pairs["ibtools version"] == ibtools.__version__
