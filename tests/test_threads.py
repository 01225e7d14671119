"""The compiled kernels never change the caller's thread settings.

Each case runs in a fresh interpreter: numba picks and starts its threading layer once per
process, and the bug this guards against (numba's OpenMP layer resetting the process's
OpenMP thread count, so ``torch.set_num_threads(1)`` read 2 after the first KDE call) only
shows on that first start.
"""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("numba")

SCRIPT = r"""
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
import ibtools
rng = np.random.default_rng(0)
x = rng.normal(size=(600, 3)); y = x + rng.normal(size=(600, 3))
labels = rng.integers(0, 4, 600)
seen = {}
ibtools.mutual_information(x, labels, method="kde", noise_var=0.1)
seen["kde"] = torch.get_num_threads()
ibtools.mutual_information(x, y, method="ksg", k=3)
seen["ksg"] = torch.get_num_threads()
import numba
seen["layer"] = numba.threading_layer()
print(json.dumps(seen))
"""


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env.update(IBTOOLS_KDE_ENGINE="numba", IBTOOLS_BRUTE_ENGINE="numba",
               IBTOOLS_TREE_ENGINE="numba", **env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_keep_torch_thread_setting_and_use_workqueue():
    seen = _run({})
    assert seen["kde"] == 1 and seen["ksg"] == 1
    # no second OpenMP runtime started by ibtools
    assert seen["layer"] == "workqueue"


def test_users_threading_layer_choice_is_respected_and_threads_restored():
    seen = _run({"NUMBA_THREADING_LAYER": "omp"})
    assert seen["layer"] == "omp"
    assert seen["kde"] == 1 and seen["ksg"] == 1
