"""Binning (plug-in) estimator and its streaming accumulator against closed forms."""

import math

import numpy as np
import pytest
import torch

import ibtools
from ibtools.estimators import binning_grid as grid_module
from ibtools.estimators.binning import Binning, BinningAccumulator, quantile_edges

LN2 = math.log(2.0)


def binary_entropy(p):
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


def label_and_uniform(n, w, seed):
    """Y uniform on {0, 1}, T = Y + U(0, w): I(T;Y) = ln 2 / w for w >= 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    return y[:, None] + rng.uniform(0, w, size=(n, 1)), y


# --------------------------------------------------------------------------- ground truth


def test_copy_of_uniform_symbols_gives_ln_k():
    x = np.random.default_rng(0).integers(0, 8, size=20000)
    r = ibtools.mutual_information(x, x, method="binning")
    # plug-in of Y = X: the empirical entropy of 8 near-equal counts, ln 8 - O(1e-4)
    assert r.value == pytest.approx(math.log(8), abs=5e-3)
    assert r.details["symbols_joint"] == 8


def test_binary_symmetric_channel():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 2, size=50000)
    y = x ^ (rng.random(50000) < 0.1)
    truth = LN2 - binary_entropy(0.1)  # 0.368
    r = ibtools.mutual_information(x, y.astype(np.int64), method="binning")
    assert r.value == pytest.approx(truth, abs=0.012)  # sd of the estimate ~0.003


def test_label_plus_uniform_noise():
    t, y = label_and_uniform(20000, 2.0, seed=3)
    # edges at multiples of 0.25 fall on the overlap's ends 1 and 2, so the binned MI equals
    # ln2/w in the limit; sd over seeds 0.0026 nats, bias (16 - 12 - 2 + 1)/(2n) ~ 1e-4
    r = ibtools.mutual_information(t, y, method="binning", bin_width=0.25)
    assert r.value == pytest.approx(LN2 / 2, abs=0.01)
    assert r.details["bins_x"]["strategy"] == "width"
    assert r.details["bins_x"]["range"] == [0.0, 3.0]  # grid anchored at 0, 12 bins
    assert r.details["symbols_x"] == 12


def test_distinct_rows_with_fine_bins_saturate_at_ln_n():
    x = np.random.default_rng(2).normal(size=(2000, 3))
    r = ibtools.entropy(x, method="binning", n_bins=65536)
    assert r.value == pytest.approx(math.log(2000), abs=1e-12)
    assert any("saturated" in f for f in r.flags)
    # I(X;T) of a deterministic map on distinct inputs is H(T): x given as distinct ids
    ids = np.arange(2000)
    coarse = ibtools.entropy(x, method="binning", n_bins=4).value
    assert ibtools.mutual_information(ids, x, method="binning", n_bins=4).value == \
        pytest.approx(coarse, abs=1e-12)


def test_identical_continuous_variables_give_their_entropy():
    x = np.random.default_rng(4).normal(size=(3000, 2))
    mi = ibtools.mutual_information(x, x.copy(), method="binning", n_bins=8).value
    h = ibtools.entropy(x, method="binning", n_bins=8).value
    assert mi == pytest.approx(h, abs=1e-12)


def test_independence_bias_is_positive_and_shrinks_with_n():
    values = {}
    for n in (2000, 20000):
        rng = np.random.default_rng(n)
        x, y = rng.normal(size=(n, 1)), rng.normal(size=(n, 1))
        r = ibtools.mutual_information(x, y, method="binning", n_bins=10)
        # first-order plug-in bias at independence: (K_xy - K_x - K_y + 1) / (2n)
        k = r.details
        expected = (k["symbols_joint"] - k["symbols_x"] - k["symbols_y"] + 1) / (2 * n)
        assert 0.4 * expected < r.value < 2.0 * expected
        values[n] = r.value
    assert values[20000] < values[2000] / 4


def test_miller_madow_adds_k_minus_one_over_2n():
    x = np.random.default_rng(5).normal(size=(1000, 2))
    plain = ibtools.entropy(x, method="binning", n_bins=5)
    mm = ibtools.entropy(x, method="binning", n_bins=5, miller_madow=True)
    k = plain.details["symbols"]
    assert mm.value - plain.value == pytest.approx((k - 1) / (2 * 1000), abs=1e-12)


# --------------------------------------------------------------------------- grids


def test_clipped_values_are_counted_and_flagged():
    t = np.array([[-2.0, 0.5], [0.2, 3.0], [0.1, 0.9], [-0.99, 1.0]])
    r = ibtools.entropy(t, method="binning", range=(-1, 1), n_bins=4)
    assert r.details["clipped_values"] == 2  # -2.0 and 3.0; 1.0 lies on the closed range
    assert r.details["clipped_fraction"] == pytest.approx(2 / 8)
    assert any("clipped" in f and "2 of 8" in f for f in r.flags)
    # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]: -2.0 joins -0.99 in bin 0, 3.0 joins 0.5, 0.9 and
    # 1.0 in bin 3, so the rows are (0,3) (2,3) (2,3) (0,3): two symbols, two rows each
    assert r.details["symbols"] == 2 and r.value == pytest.approx(LN2, abs=1e-12)
    derived = ibtools.entropy(t, method="binning", n_bins=4)
    assert derived.details["clipped_values"] == 0 and not any("clipped" in f for f in derived.flags)


def test_fixed_range_versus_derived_range():
    x = np.random.default_rng(6).uniform(0, 1, size=(5000, 2))
    lo, hi = float(x.min()), float(x.max())
    derived = ibtools.entropy(x, method="binning", n_bins=10)
    same = ibtools.entropy(x, method="binning", n_bins=10, range=(lo, hi))
    assert same.value == derived.value
    assert derived.details["bins_x"]["range_source"] == "data"
    assert same.details["bins_x"]["range_source"] == "user"
    # 20 bins over [-1, 1] put the data in 10 bins of width 0.1 over [0, 1]
    wide = ibtools.entropy(x, method="binning", n_bins=20, range=(-1, 1))
    grid = ibtools.entropy(x, method="binning", bin_width=0.1, range=(0, 1))
    assert wide.value == pytest.approx(grid.value, abs=1e-12)
    assert wide.value != pytest.approx(derived.value, abs=1e-6)  # different edges


def test_quantile_strategy_gives_equal_counts():
    t = torch.as_tensor(np.random.default_rng(7).standard_cauchy(size=(1000, 3)))
    edges = quantile_edges(t, 10)
    assert edges.shape == (3, 9)
    r = ibtools.entropy(t[:, :1], method="binning", strategy="quantile", n_bins=10)
    assert r.value == pytest.approx(math.log(10), abs=1e-12)  # 100 rows in each bin
    # ties stay together: 600 zeros and 400 distinct values cannot fill 10 equal bins
    tied = torch.cat([torch.zeros(600, 1), torch.arange(1, 401.0)[:, None]])
    r = ibtools.entropy(tied, method="binning", strategy="quantile", n_bins=10)
    assert r.details["symbols"] == 5  # one bin of 600 zeros, four of 100
    assert r.value == pytest.approx(-(0.6 * math.log(0.6) + 4 * 0.1 * math.log(0.1)), abs=1e-12)


def test_hash_collisions_are_resolved_exactly(monkeypatch):
    x = torch.randint(0, 5, (3000, 20)).double()
    ref = ibtools.entropy(x, method="binning", n_bins=5)
    original = grid_module.row_keys
    monkeypatch.setattr(grid_module, "row_keys", lambda w: original(w) % 7)
    r = ibtools.entropy(x, method="binning", n_bins=5)
    assert r.details["bins_x"]["hash_collisions"] > 0
    assert r.value == ref.value and r.details["symbols"] == ref.details["symbols"]
    # streaming: colliding keys across batches are told apart by comparing rows
    monkeypatch.setattr(grid_module, "row_keys", lambda w: original(w) % 4093)
    acc = BinningAccumulator(edges=torch.arange(1, 5.0) - 0.5)  # one edge row for all units
    for start in range(0, 3000, 700):
        acc.update(x[start:start + 700])
    streamed = acc.compute()
    assert streamed.details["bins_x"]["hash_collisions"] > 0
    assert streamed.value == pytest.approx(ref.value, abs=1e-12)


def test_small_memory_budget_gives_same_value():
    t, y = label_and_uniform(5000, 1.5, seed=8)
    t = np.hstack([t, t**2, np.sin(t)])
    a = ibtools.mutual_information(t, y, method="binning", n_bins=12)
    b = ibtools.mutual_information(t, y, method="binning", n_bins=12, memory_budget=4096)
    assert a.value == b.value


# --------------------------------------------------------------------------- streaming


def test_accumulator_equals_batch_estimator():
    t, y = label_and_uniform(7000, 1.5, seed=9)
    t = np.hstack([t, np.random.default_rng(9).normal(size=(7000, 2))])
    batch = ibtools.mutual_information(t, y, method="binning", range=(-3, 3), n_bins=8)
    acc = BinningAccumulator(range=(-3, 3), n_bins=8)
    for start in range(0, 7000, 999):
        acc.update(t[start:start + 999], y[start:start + 999] * 10 - 4)  # any integer labels
    r = acc.compute()
    assert acc.n == 7000 and r.quantity == "mutual_information" and r.dims == (3, 1)
    assert r.value == pytest.approx(batch.value, abs=1e-12)
    assert r.details["clipped_values"] == batch.details["clipped_values"] > 0
    assert len(r.flags) == len(batch.flags)
    # entropy form, and per-unit edges (quantile bins fixed from the whole sample)
    acc = BinningAccumulator(edges=quantile_edges(torch.as_tensor(t, dtype=torch.float32), 6))
    for start in range(0, 7000, 2500):
        acc.update(t[start:start + 2500])
    r = acc.compute()
    h = ibtools.entropy(t, method="binning", strategy="quantile", n_bins=6)
    assert r.quantity == "entropy" and r.value == pytest.approx(h.value, abs=1e-12)


def test_accumulator_rejects_bad_use():
    with pytest.raises(ValueError, match="needs a fixed grid"):
        BinningAccumulator()
    with pytest.raises(ValueError, match="n_bins=0 is too small"):
        BinningAccumulator(range=(0, 1), n_bins=0)
    acc = BinningAccumulator(range=(0, 1))
    with pytest.raises(ValueError, match="at least one update"):
        acc.compute()
    acc.update(np.zeros((4, 2)), np.arange(4))
    with pytest.raises(ValueError, match="t has 3 units per row but earlier batches had 2"):
        acc.update(np.zeros((4, 3)), np.arange(4))
    with pytest.raises(ValueError, match="labels y with every batch"):
        acc.update(np.zeros((4, 2)))
    with pytest.raises(TypeError, match="integer class ids"):
        acc.update(np.zeros((4, 2)), np.zeros(4))


# --------------------------------------------------------------------------- API behaviour


@pytest.mark.parametrize("settings, error, match", [
    ({"n_bins": 0}, ValueError, "n_bins=0 is too small"),
    ({"bin_width": -0.5}, ValueError, r"bin_width=-0.5 must be a finite number > 0"),
    ({"range": (1, 1)}, ValueError, r"range=\(1, 1\) needs finite low < high"),
    ({"range": 5}, TypeError, "range=5 must be None"),
    ({"strategy": "kmeans"}, ValueError, r"strategy='kmeans' is not accepted.*'quantile'"),
    ({"strategy": "width"}, ValueError, "strategy='width' needs bin_width"),
    ({"strategy": "quantile", "range": (0, 1)}, ValueError, "cannot be combined"),
    ({"bins": 3}, TypeError, r"unknown setting\(s\) \['bins'\]"),
    ({"miller_madow": "yes"}, TypeError, "miller_madow must be True or False"),
    ({"bin_width": 1e-9, "range": (0, 1)}, ValueError, "at most 65536 bins"),
])
def test_bad_settings_are_named(settings, error, match):
    with pytest.raises(error, match=match):
        Binning(**settings)


def test_bootstrap_interval_contains_truth():
    rng = np.random.default_rng(11)
    x = rng.integers(0, 2, size=8000)
    y = x ^ (rng.random(8000) < 0.2)
    truth = LN2 - binary_entropy(0.2)
    r = ibtools.mutual_information(x, y.astype(np.int64), method="binning", ci="auto",
                                   n_resamples=40)
    assert r.ci_kind == "bootstrap" and r.ci[0] < truth < r.ci[1]
    assert r.ci[1] - r.ci[0] < 0.05  # sd of the estimate ~0.007


def test_deterministic_across_seeds_and_dtypes():
    t, y = label_and_uniform(4000, 1.5, seed=12)
    a = ibtools.mutual_information(t, y, method="binning", seed=0, ci="bootstrap", n_resamples=5)
    b = ibtools.mutual_information(t, y, method="binning", seed=0, ci="bootstrap", n_resamples=5)
    c = ibtools.mutual_information(t, y, method="binning", seed=123)
    assert a.value == b.value == c.value and a.ci == b.ci
    d = ibtools.mutual_information(t, y, method="binning", dtype="float64")
    # only values within a float32 ulp of a bin edge can move: none at this n
    assert d.value == pytest.approx(a.value, abs=1e-9)


def test_cpu_path_on_torch_inputs():
    t, y = label_and_uniform(3000, 1.5, seed=13)
    a = ibtools.mutual_information(torch.as_tensor(t), torch.as_tensor(y), method="binning")
    b = ibtools.mutual_information(t, y, method="binning")
    assert a.value == b.value


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    t, y = label_and_uniform(20000, 1.5, seed=14)
    t = np.hstack([t, np.random.default_rng(14).normal(size=(20000, 15))])
    cpu = ibtools.mutual_information(t, y, method="binning", n_bins=6)
    gpu = ibtools.mutual_information(torch.as_tensor(t, device="cuda"),
                                     torch.as_tensor(y, device="cuda"), method="binning", n_bins=6)
    assert gpu.value == pytest.approx(cpu.value, abs=1e-9)
    acc = BinningAccumulator(range=(-4, 4), n_bins=6, device="cuda")
    acc.update(torch.as_tensor(t, device="cuda"), torch.as_tensor(y, device="cuda"))
    ref = ibtools.mutual_information(t, y, method="binning", n_bins=6, range=(-4, 4))
    assert acc.compute().value == pytest.approx(ref.value, abs=1e-9)
