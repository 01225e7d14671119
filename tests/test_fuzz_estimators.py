"""Property-based fuzzing of the estimator entry points (issue 15, "Done when").

Over shapes (0 to a dozen rows; 0-, 1-, 2- and 3-D), dtypes (float16/32/64, ints, bool,
object, strings, complex), containers (numpy, torch, lists), NaN/inf, ties, extreme scales
and degenerate settings (k=0, k >= n, n_bins=0, negative noise, ...), every call to
``ibtools.mutual_information`` and ``ibtools.entropy`` must either return a finite value or
raise ValueError/TypeError whose message names what was wrong (x, y, a setting or the row
count); never another exception type and never a hang.  The search is derandomized and
bounded, so the file is deterministic and takes seconds.
"""

import math
import os
import re
import signal
from contextlib import contextmanager

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import ibtools  # noqa: E402
from ibtools.errors import IbtoolsError  # noqa: E402

CHEAP_METHODS = ["binning", "kde", "ksg", "renyi", "gaussian"]
#: Seconds one call may take before it counts as a hang: a tiny input takes milliseconds, and
#: the margin absorbs a loaded CI machine.
HANG_SECONDS = 60
#: Examples per test: small enough for CI; IBTOOLS_FUZZ_EXAMPLES=2000 searches deeper locally.
EXAMPLES = int(os.environ.get("IBTOOLS_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAN, INF = float("nan"), float("inf")
#: Degenerate and ordinary values of each method's own settings.
METHOD_SETTINGS = {
    "binning": {"n_bins": [0, 1, 2, 10, 10**7, 2.5, "10"], "strategy": ["uniform", "weird"],
                "range": [(0, 0), (5, -5), (0, 1), (NAN, 1), "01"], "bin_width": [0, -1, 0.5, 1e-9],
                "miller_madow": [True, "yes"]},
    "kde": {"noise_var": [-0.1, 0, NAN, INF, 1e-30, 0.1, "0.1"], "bound": ["lower", "middle"],
            "deterministic": [True, 2], "transform": ["copula", "rank"]},
    "ksg": {"k": [-1, 0, 1, 3, 11, 50, 2.5, "3", True], "noise": [-1.0, 0.0, NAN, 1e-12],
            "algorithm": [1, 2, 3], "neighbours": ["brute", "tree", "bogus"],
            "transform": ["copula", "standardize", "rank"]},
    "renyi": {"alpha": [0, 1, 1.01, 2, -2, NAN], "sigma": [0, -1, None, "bogus", 1.0],
              "max_samples": [0, 2, 5]},
    "gaussian": {"ridge": [-1, 0, 1e-6, NAN], "bias_correction": [False, "no"]},
}
#: Settings every estimator shares.
COMMON_SETTINGS = {"seed": [0, -1, 1.0], "dtype": ["float64", "float16"], "ci": ["auto", "bogus"],
                   "n_resamples": [1, 2], "n_permutations": [-1, 2, "auto", "many"],
                   "confidence": [0, 1.5, 0.9], "memory_budget": ["1B", "-5MB", 0]}
DTYPES = ["float16", "float32", "float64", "int8", "int64", "bool", "object", "object-none",
          "str", "complex64"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny problems: threads only add contention (and time) on a shared CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Hang(Exception):
    pass


@contextmanager
def no_hang(seconds=HANG_SECONDS):
    """Fail a call that runs past ``seconds`` instead of letting the suite hang."""
    def alarm(signum, frame):
        raise Hang(f"call ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


#: Kinds of trouble an example may carry; each example draws at most two, so most calls are
#: one step from ordinary data and reach the estimator's own code instead of the first check.
FAULTS = ["shape", "dtype", "container", "non-finite", "ties", "scale", "setting", "discrete",
          "rows"]
faults = st.sets(st.sampled_from(FAULTS), max_size=2)


@st.composite
def arrays(draw, n, trouble):
    """One argument of ``n`` rows: ordinary floats unless ``trouble`` names a fault."""
    width = draw(st.integers(1, 3))
    shape = draw(st.sampled_from(["1d", "3d", "no-columns", "scalar"])) if "shape" in trouble \
        else draw(st.sampled_from(["1d", "2d"]))
    full = {"1d": (n,), "2d": (n, width), "3d": (n, width, 2), "no-columns": (n, 0),
            "scalar": ()}[shape]
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1e-30, 1e30, 1e-8])) if "scale" in trouble else 1.0
    a = np.array(rng.normal(size=full) * scale, dtype=np.float64)
    if "ties" in trouble:
        pattern = draw(st.sampled_from(["constant", "duplicates", "rounded"]))
        if pattern == "constant" and a.size:
            a[...] = 1.5
        elif pattern == "duplicates" and a.ndim and a.shape[0] > 1:
            a[1::2] = a[0]
        else:
            a = np.asarray(np.round(a))
    if "non-finite" in trouble and a.size:
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([NAN, INF, -INF]))
    kinds = DTYPES if "dtype" in trouble else ["float64", "float32", "int64"]
    dtype = draw(st.sampled_from(kinds))
    if dtype == "object":
        a = a.astype(object)
    elif dtype == "object-none":
        a = a.astype(object)
        if a.size:
            a.reshape(-1)[0] = None
    elif dtype == "str":
        a = a.astype(str)
    elif dtype.startswith(("int", "bool")):
        with np.errstate(invalid="ignore", over="ignore"):
            a = np.asarray(np.nan_to_num(a * 2).clip(-100, 100)).astype(dtype)
    else:
        with np.errstate(over="ignore"):
            a = a.astype(dtype)
    a = np.asarray(a)
    container = draw(st.sampled_from(["torch", "bfloat16", "strided", "list", "pandas"])) \
        if "container" in trouble else "numpy"
    if container in ("torch", "bfloat16", "strided") and a.dtype.kind in "biufc":
        t = torch.from_numpy(np.ascontiguousarray(a))
        if container == "bfloat16" and t.dtype.is_floating_point:
            return t.to(torch.bfloat16)
        if container == "strided" and t.ndim == 2:  # a non-contiguous view of the same values
            return t.T.contiguous().T
        return t
    if container == "list":
        return a.tolist()
    if container == "pandas" and a.ndim in (1, 2):
        import pandas as pd

        return pd.Series(a) if a.ndim == 1 else pd.DataFrame(a)
    return a


@st.composite
def method_settings(draw, method, trouble):
    """One to three of the method's own and the common settings, ordinary or degenerate,
    when ``trouble`` holds "setting"; otherwise none."""
    if "setting" not in trouble:
        return {}
    pool = {**METHOD_SETTINGS[method], **COMMON_SETTINGS}
    names = draw(st.lists(st.sampled_from(sorted(pool)), min_size=1, max_size=3, unique=True))
    return {name: draw(st.sampled_from(pool[name])) for name in names}


#: The automatic permutation check reruns an estimator dozens of times; it runs only when
#: the drawn settings ask for it, so the search stays at seconds.
QUIET = {"n_permutations": 0}


def discrete_flag(draw, trouble):
    return draw(st.sampled_from([True, False, "yes"])) if "discrete" in trouble else None


def check_outcome(call, named):
    """Run ``call``: a finite value, or one of ibtools' own errors (an InputError or an
    EstimatorFailed, both ValueErrors) naming one of ``named``; a plain ValueError or
    TypeError would be a bug, which the CLI shows with its traceback."""
    try:
        with no_hang():
            result = call()
    except (ValueError, TypeError) as exc:
        assert isinstance(exc, IbtoolsError), f"a plain {type(exc).__name__}: {exc}"
        message = str(exc)
        words = "|".join(re.escape(w) for w in named)
        assert re.search(rf"(?<![A-Za-z_])({words})(?![A-Za-z_])", message), (
            f"{type(exc).__name__} names none of {sorted(named)}: {message}")
        return None
    assert math.isfinite(result.value), result
    assert result.n >= 1 and all(d >= 1 for d in result.dims), result
    return result


def _named(kw, *args):
    """What an error may legitimately name: the arguments, the settings given, the method,
    the row count n, and the discrete_* flags."""
    return {*args, *kw, "n", "method", "discrete", *(f"discrete_{a}" for a in args)}


ROWS = st.sampled_from([5, 12, 12, 30, 30, 60])
FEW_ROWS = st.sampled_from([0, 1, 2, 3, 4])


@pytest.mark.parametrize("method", CHEAP_METHODS)
@FUZZ
@given(data=st.data())
def test_mutual_information_fuzz(method, data):
    trouble = data.draw(faults, label="faults")
    n = data.draw(FEW_ROWS if "rows" in trouble else ROWS, label="n")
    x = data.draw(arrays(n, trouble), label="x")
    n_y = max(0, n - 1) if "rows" in trouble and data.draw(st.booleans(), label="mismatch") else n
    y = data.draw(arrays(n_y, trouble), label="y")
    kw = data.draw(method_settings(method, trouble), label="settings")
    dx, dy = discrete_flag(data.draw, trouble), discrete_flag(data.draw, trouble)
    check_outcome(lambda: ibtools.mutual_information(x, y, method=method, discrete_x=dx,
                                                     discrete_y=dy, **{**QUIET, **kw}),
                  _named(kw, "x", "y"))


@pytest.mark.parametrize("method", CHEAP_METHODS)
@FUZZ
@given(data=st.data())
def test_entropy_fuzz(method, data):
    trouble = data.draw(faults, label="faults")
    n = data.draw(FEW_ROWS if "rows" in trouble else ROWS, label="n")
    x = data.draw(arrays(n, trouble), label="x")
    kw = data.draw(method_settings(method, trouble), label="settings")
    discrete = discrete_flag(data.draw, trouble)
    check_outcome(lambda: ibtools.entropy(x, method=method, discrete=discrete,
                                          **{**QUIET, **kw}),
                  _named(kw, "x"))


@pytest.mark.parametrize("method", ["mine", "nwj", "infonce", "smile", "doe"])
@pytest.mark.parametrize("case", ["tiny", "constant", "labels", "nan", "one-row", "bad-steps"])
def test_neural_degenerate_inputs(method, case):
    """The neural bounds and DoE train networks, so a few explicit cases rather than a
    search."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2)).astype(np.float32)
    y = x + rng.normal(size=(40, 2)).astype(np.float32)
    kw = {"steps": 3, "batch_size": 16, "hidden": 8, "progress": False}
    if method != "doe":  # DoE's density models have no critic embedding
        kw["embed_dim"] = 4
    if case == "constant":
        x[:] = 2.0
    elif case == "labels":
        y = rng.integers(0, 3, size=40)
    elif case == "nan":
        x[5, 1] = np.nan
    elif case == "one-row":
        x, y = x[:1], y[:1]
    elif case == "bad-steps":
        kw["steps"] = 0
    check_outcome(lambda: ibtools.mutual_information(x, y, method=method, **kw),
                  _named(kw, "x", "y"))


def test_integral_float_labels_beyond_int64_stay_distinct():
    """Found by the fuzzing: class ids held as floats were cast to int64, which merged every
    id beyond 2**63 into one class (1e30, 2e30, 3e30 -> one label; MI 0 instead of ln 3)."""
    rng = np.random.default_rng(0)
    ids = np.tile([0.0, 1.0, 2.0], 100)
    y = ids + 0.05 * rng.normal(size=ids.size)  # y determines the class: I = ln 3
    small = ibtools.mutual_information(ids, y, method="binning", discrete_x=True, n_bins=10)
    huge = ibtools.mutual_information((ids + 1) * 1e30, y, method="binning", discrete_x=True,
                                      n_bins=10)
    assert small.value == pytest.approx(math.log(3), abs=1e-9)
    assert huge.value == pytest.approx(small.value, abs=1e-12)


def test_gaussian_constant_block_with_single_row_classes():
    """Found by the fuzzing: a constant x (no dimension left after the singular-covariance
    check) against labels of one row each divided by zero in the log-det bias; the bias of
    a 0-dimensional block is 0, and x tells nothing about the labels."""
    x = np.zeros(6, dtype=np.float16)
    labels = np.array(list("abcdef"))
    r = check_outcome(lambda: ibtools.mutual_information(x, labels, method="gaussian"),
                      {"x", "y", "n"})
    assert r is None or r.value == pytest.approx(0.0, abs=1e-9)



@pytest.mark.parametrize("method", ["binning", "kde"])
def test_bfloat16_class_ids_are_read(method):
    """Found by the fuzzing: a bfloat16 tensor declared discrete failed inside NumPy
    ("Got unsupported ScalarType BFloat16"); its ids are exact in float32."""
    ids = torch.tensor([0.0, 1.0, 2.0] * 40)
    y = ids + 0.05 * torch.randn(120, generator=torch.Generator().manual_seed(0))
    as_bf16 = ibtools.mutual_information(ids.to(torch.bfloat16), y, method=method,
                                         discrete_x=True)
    as_f32 = ibtools.mutual_information(ids, y, method=method, discrete_x=True)
    assert as_bf16.value == pytest.approx(as_f32.value, abs=1e-12)
    h = ibtools.entropy(ids.to(torch.bfloat16), method="binning", discrete=True)
    assert h.value == pytest.approx(math.log(3), abs=1e-9)
