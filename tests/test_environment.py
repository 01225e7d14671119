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
