"""ibtools never changes the caller's thread settings, and runs on fewer threads while
other processes keep the cores busy.

The numba cases run in a fresh interpreter: numba picks and starts its threading layer once per
process, and the bug this guards against (numba's OpenMP layer resetting the process's
OpenMP thread count, so ``torch.set_num_threads(1)`` read 2 after the first KDE call) only
shows on that first start.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ibtools.estimators import _jit

try:
    import numba  # noqa: F401
    HAVE_NUMBA = True
except ImportError:
    HAVE_NUMBA = False
needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed")

SCRIPT = r"""
import json, sys
import numpy as np, torch
if "--set" in sys.argv:
    torch.set_num_threads(1)
assert torch.get_num_threads() == 1
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


def _run(env_extra, how="--set"):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env.update(IBTOOLS_KDE_ENGINE="numba", IBTOOLS_BRUTE_ENGINE="numba",
               IBTOOLS_TREE_ENGINE="numba", **env_extra)
    out = subprocess.run([sys.executable, "-c", SCRIPT, how], env=env, capture_output=True,
                         text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_numba
def test_kernels_keep_torch_thread_setting_and_use_workqueue():
    seen = _run({})
    assert seen["kde"] == 1 and seen["ksg"] == 1
    # no second OpenMP runtime started by ibtools
    assert seen["layer"] == "workqueue"


@needs_numba
def test_omp_num_threads_one_is_respected():
    seen = _run({"OMP_NUM_THREADS": "1"}, how="--env")
    assert seen["kde"] == 1 and seen["ksg"] == 1


@needs_numba
def test_users_threading_layer_choice_is_respected_and_threads_restored():
    seen = _run({"NUMBA_THREADING_LAYER": "omp"})
    assert seen["layer"] == "omp"
    assert seen["kde"] == 1 and seen["ksg"] == 1


# -- the load-aware thread count, on a faked /proc ---------------------------------------

TASK = "{tid} (python3 (worker) x) {state} 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15"


@pytest.fixture
def fake_proc(monkeypatch):
    """Replace /proc: ``set(running, own_states, cores)``; counts the readings."""
    state = {"loadavg": "0.10 0.20 0.30 1/120 4242\n", "tasks": {}, "reads": 0}

    def read_text(path):
        state["reads"] += 1
        if path == "/proc/loadavg":
            if state["loadavg"] is None:
                raise FileNotFoundError(path)
            return state["loadavg"]
        return state["tasks"][path]

    def configure(running, own_states=("R",), cores=2):
        state["loadavg"] = None if running is None else f"3.00 2.00 1.00 {running}/150 999\n"
        state["tasks"] = {f"/proc/self/task/{i}/stat": TASK.format(tid=i, state=s)
                          for i, s in enumerate(own_states)}
        monkeypatch.setattr(_jit.os, "cpu_count", lambda: cores)
        monkeypatch.setattr(_jit, "_cores", lambda: cores)
        _jit._load["at"] = -float("inf")  # forget the cached reading

    monkeypatch.setattr(_jit, "_read_text", read_text)
    monkeypatch.setattr(_jit, "_task_stat_paths", lambda: list(state["tasks"]))
    monkeypatch.delenv("IBTOOLS_THREADS", raising=False)
    monkeypatch.setitem(_jit._load, "at", -float("inf"))
    monkeypatch.setitem(_jit._load, "free", None)
    configure(1)
    state["set"] = configure
    return state


def test_busy_machine_gives_one_thread(fake_proc):
    # 3 runnable: this process's reading thread and two other processes, on 2 cores
    fake_proc["set"](3, own_states=("R", "S", "S"))
    assert _jit.busy_elsewhere() == 2
    assert _jit.free_cores() == 1
    assert _jit.call_threads_count(2) == 1


def test_idle_machine_gives_the_callers_limit(fake_proc):
    # this process's own spinning pool threads are not "other load"
    fake_proc["set"](3, own_states=("R", "R", "R", "S"), cores=4)
    assert _jit.busy_elsewhere() == 0
    assert _jit.call_threads_count(4) == 4
    assert _jit.call_threads_count(2) == 2  # never above the caller's limit


def test_partly_busy_machine_and_limit_one(fake_proc):
    fake_proc["set"](3, own_states=("R",), cores=8)  # two other runnable tasks
    assert _jit.call_threads_count(8) == 6
    assert _jit.call_threads_count(1) == 1
    fake_proc["set"](40, own_states=("R",), cores=8)  # far more load than cores
    assert _jit.call_threads_count(8) == 1


def test_without_proc_the_limit_stands(fake_proc):
    fake_proc["set"](None)
    assert _jit.busy_elsewhere() is None and _jit.free_cores() is None
    assert _jit.call_threads_count(2) == 2


def test_reading_is_cached(fake_proc, monkeypatch):
    fake_proc["set"](3, own_states=("R",))
    clock = [100.0]
    monkeypatch.setattr(_jit.time, "monotonic", lambda: clock[0])
    assert _jit.free_cores() == 1
    reads = fake_proc["reads"]
    fake_proc["loadavg"] = "0.1 0.1 0.1 1/150 999\n"  # the machine became idle
    clock[0] += _jit.LOAD_CACHE_SECONDS / 2
    assert _jit.free_cores() == 1 and fake_proc["reads"] == reads
    clock[0] += _jit.LOAD_CACHE_SECONDS
    assert _jit.free_cores() == 2 and fake_proc["reads"] > reads


def test_policy_variable(fake_proc, monkeypatch):
    fake_proc["set"](5)
    monkeypatch.setenv("IBTOOLS_THREADS", "torch")
    assert _jit.call_threads_count(2) == 2
    monkeypatch.setenv("IBTOOLS_THREADS", "fast")
    with pytest.raises(ValueError, match=r"IBTOOLS_THREADS='fast' is not accepted.*'auto'"):
        _jit.call_threads_count(2)


@pytest.fixture
def two_threads():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield torch
    torch.set_num_threads(before)


def test_call_threads_lowers_only_inside_and_restores(fake_proc, two_threads):
    torch = two_threads
    fake_proc["set"](4)
    with _jit.call_threads() as used:
        assert used == 1 and torch.get_num_threads() == 1
        with _jit.call_threads() as inner:  # nested: nothing to lower further
            assert inner == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    with pytest.raises(KeyError), _jit.call_threads():
        raise KeyError("inside")
    assert torch.get_num_threads() == 2
    fake_proc["set"](1)  # idle: the count is not touched
    with _jit.call_threads() as used:
        assert used == 2 and torch.get_num_threads() == 2


def test_estimator_calls_follow_the_load_and_restore(fake_proc, two_threads, monkeypatch):
    import ibtools
    from ibtools.estimators.binning import Binning
    from ibtools.estimators.renyi import MatrixRenyi

    torch = two_threads
    seen = {}
    for cls in (Binning, MatrixRenyi):
        real = cls._mi

        def spy(self, *args, _real=real, _name=cls.name, **kwargs):
            seen.setdefault(_name, set()).add(torch.get_num_threads())
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "_mi", spy)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    labels = rng.integers(0, 3, 300)
    fake_proc["set"](4)  # busy
    for method in ("binning", "renyi"):
        ibtools.mutual_information(x, labels, method=method, n_permutations=0)
        assert torch.get_num_threads() == 2
    # binning's numbers do not depend on the thread count: it follows the load; Renyi's
    # eigenvalues do (in the last bits): it runs on its fixed one thread
    assert seen == {"binning": {1}, "renyi": {1}}
    fake_proc["set"](1)  # idle: binning keeps the caller's two, Renyi still one
    seen.clear()
    for method in ("binning", "renyi"):
        ibtools.mutual_information(x, labels, method=method, n_permutations=0)
    assert seen == {"binning": {2}, "renyi": {1}}


# -- estimators whose numbers depend on the thread count run on a fixed one ----------------

FIXED = [("mine", {"steps": 10, "eval_every": 5, "progress": False}),
         ("doe", {"steps": 10, "eval_every": 5, "progress": False}),
         ("renyi", {"max_samples": 256})]


@pytest.mark.parametrize("method,settings", FIXED, ids=[m for m, _ in FIXED])
def test_fixed_thread_estimators_ignore_the_callers_count_and_the_load(
        fake_proc, monkeypatch, method, settings):
    """The seeded value is bit-identical whatever torch.set_num_threads and the machine's
    load say, the call runs on one thread, and the caller's count is put back.  (On this
    machine MINE at n=1024 and Renyi at m=256 move by ~1e-7 and ~3e-14 between 1 and 2
    threads, so a call that kept the caller's count would not give one value.)"""
    import torch

    import ibtools
    from ibtools.estimators import get_estimator_class

    cls = get_estimator_class(method)
    seen = []
    real = cls._mi

    def spy(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, "_mi", spy)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1024, 4))
    y = x + rng.normal(size=(1024, 4))

    def estimate():
        return ibtools.mutual_information(x, y, method=method, seed=0, ci=None,
                                          n_permutations=0, **settings).value

    before = torch.get_num_threads()
    values = []
    try:
        for caller in (1, 2, 3):
            for running in (1, 7):  # idle, then six other runnable tasks on 4 cores
                fake_proc["set"](running, cores=4)
                torch.set_num_threads(caller)
                values.append(estimate())
                assert torch.get_num_threads() == caller
            with pytest.raises(ValueError, match="same number of rows"):
                ibtools.mutual_information(x, y[:-1], method=method, **settings)
            assert torch.get_num_threads() == caller  # put back after an error too
        assert set(seen) == {1}
        assert len(set(values)) == 1, values
        # IBTOOLS_THREADS=torch: the caller's count as it is (never the load)
        monkeypatch.setenv("IBTOOLS_THREADS", "torch")
        torch.set_num_threads(2)
        fake_proc["set"](7, cores=4)
        seen.clear()
        estimate()
        assert seen == [2] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_fixed_threads_count_is_checked(two_threads):
    torch = two_threads
    with _jit.call_threads(1) as used:
        assert used == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    for bad in (0, 1.5, True, "1"):
        with pytest.raises(ValueError, match=r"fixed_threads=.* is not accepted.*int >= 1"), \
                _jit.call_threads(bad):
            pass  # entering the context is what must raise
    assert torch.get_num_threads() == 2
