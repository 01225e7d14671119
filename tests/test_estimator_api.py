"""The shared estimator interface: input checks, transforms, results, specs, intervals."""

import json
import math

import numpy as np
import pytest
import torch

import ibtools
from ibtools.estimators import METHODS, get_estimator_class
from ibtools.estimators.base import EstimateResult, parse_bytes, prepare
from ibtools.estimators.spec import parse_estimator_spec, parse_estimator_specs
from ibtools.estimators.transforms import copula, standardize

CPU = torch.device("cpu")


def gaussian_pair(n, rho, d=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    return x, y, -d / 2 * math.log(1 - rho**2)


# --------------------------------------------------------------------------- prepare()


def test_discrete_detection_and_encoding():
    t, disc = prepare(np.array([5, 7, 5, 9]), "y", discrete=None, device=CPU, dtype=torch.float32)
    assert disc and t.tolist() == [0, 1, 0, 2]
    t, disc = prepare(np.array(["b", "a", "b"]), "y", discrete=None, device=CPU,
                      dtype=torch.float32)
    assert disc and t.tolist() == [1, 0, 1]
    t, disc = prepare(np.array([1.0, 0.0, 1.0]), "y", discrete=True, device=CPU,
                      dtype=torch.float32)
    assert disc and t.tolist() == [1, 0, 1]
    t, disc = prepare(np.zeros((4, 2, 3)), "x", discrete=None, device=CPU, dtype=torch.float64)
    assert not disc and t.shape == (4, 6) and t.dtype == torch.float64


def test_discrete_declared_on_non_integers_is_a_type_error():
    with pytest.raises(TypeError, match=r"y was declared discrete.*0\.5"):
        prepare(np.array([0.5, 1.0]), "y", discrete=True, device=CPU, dtype=torch.float32)


@pytest.mark.parametrize("bad, match", [
    (np.array([[1.0, np.nan], [np.inf, 2.0], [0.0, 0.0]]), r"x has 2 non-finite.*1 NaN, 1 inf.*row 0, column 1"),
    (np.zeros((0, 3)), r"x is empty"),
    (np.zeros((3, 0)), r"rows of size 0"),
    (np.float64(3.0), r"x is empty"),
])
def test_bad_continuous_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        prepare(bad, "x", discrete=None, device=CPU, dtype=torch.float32)


def test_non_array_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be a numpy array"):
        prepare({"a": 1}, "x", discrete=None, device=CPU, dtype=torch.float32)


def test_parse_bytes():
    assert parse_bytes("256MiB") == 256 * 2**20
    assert parse_bytes("2GB") == 2_000_000_000
    assert parse_bytes(1024) == 1024
    with pytest.raises(ValueError, match="memory_budget='lots'"):
        parse_bytes("lots")


# --------------------------------------------------------------------------- transforms


def test_copula_is_rank_invariant_and_standard_normal():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(5000, 3)))
    z = copula(x)
    torch.testing.assert_close(copula(torch.tanh(x) ** 3 + 2.0), z)  # strictly monotone map
    assert abs(float(z.mean())) < 1e-6
    # normal scores of n ranks have variance slightly below 1 (the tails are cut at 1/(n+1))
    assert 0.98 < float(z.var()) < 1.0


def test_copula_ties_get_average_rank():
    z = copula(torch.tensor([[1.0], [1.0], [2.0], [0.0]]))
    assert float(z[0]) == float(z[1]) == 0.0  # ranks 2 and 3 average to 2.5 = (n+1)/2


def test_standardize_constant_column():
    t = standardize(torch.tensor([[1.0, 3.0], [3.0, 3.0]]))
    torch.testing.assert_close(t, torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))


# --------------------------------------------------------------------------- API


def test_unknown_method_and_setting_are_named():
    x, y, _ = gaussian_pair(100, 0.5)
    with pytest.raises(ValueError, match=r"method='kraskov' is not known.*'ksg'"):
        ibtools.mutual_information(x, y, method="kraskov")
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['bins'\].*accepted settings"):
        ibtools.mutual_information(x, y, method="gaussian", bins=3)


@pytest.mark.parametrize("method", ["binning", "kde", "ksg", "gaussian", "renyi"])
def test_common_bad_input_every_method(method):
    x, y, _ = gaussian_pair(200, 0.5)
    with pytest.raises(ValueError, match=r"same number of rows.*x: 200 and y: 150"):
        ibtools.mutual_information(x, y[:150], method=method)
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(ValueError, match="x has 1 non-finite"):
        ibtools.mutual_information(bad, y, method=method)
    with pytest.raises(ValueError, match=r"ci='jackknife' is not offered"):
        ibtools.mutual_information(x, y, method=method, ci="jackknife")
    with pytest.raises(ValueError, match=r"dtype='float16' is not accepted"):
        ibtools.mutual_information(x, y, method=method, dtype="float16")
    with pytest.raises(TypeError, match="seed must be an int"):
        ibtools.mutual_information(x, y, method=method, seed="one")


@pytest.mark.parametrize("method", ["binning", "kde", "ksg", "gaussian", "renyi"])
def test_result_object(method):
    x, y, _ = gaussian_pair(300, 0.8)
    # KDE reads two continuous arrays only as a deterministic map, which it must be told
    extra = {"deterministic": True} if method == "kde" else {}
    r = ibtools.mutual_information(x, y, method=method, **extra)
    assert isinstance(r, EstimateResult)
    assert r.unit == "nats" and r.method == method and r.n == 300 and r.dims == (1, 1)
    assert r.bits == pytest.approx(r.value / math.log(2))
    assert r.seconds >= 0 and math.isfinite(r.value)
    d = r.to_dict()
    json.dumps(d)  # serialisable
    assert d["value"] == r.value and d["params"]["seed"] == 0


def test_numpy_and_torch_inputs_agree():
    x, y, _ = gaussian_pair(500, 0.6)
    a = ibtools.mutual_information(x, y, method="ksg")
    b = ibtools.mutual_information(torch.as_tensor(x), torch.as_tensor(y), method="ksg")
    assert a.value == pytest.approx(b.value, abs=1e-6)


def test_swapped_discrete_argument_gives_same_value():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=1000)
    t = labels[:, None] + rng.uniform(0, 1.5, size=(1000, 1))
    a = ibtools.mutual_information(t, labels, method="ksg")
    b = ibtools.mutual_information(labels, t, method="ksg")
    assert a.value == b.value and b.details["swapped_arguments"] is True
    assert a.value == pytest.approx(math.log(2) / 1.5, rel=0.1)


def test_two_discrete_variables_need_binning():
    a = np.arange(100) % 4
    with pytest.raises(ValueError, match="needs at least one continuous variable"):
        ibtools.mutual_information(a, a, method="ksg")
    assert ibtools.mutual_information(a, a, method="binning").value == pytest.approx(math.log(4))


def test_bootstrap_interval_covers_truth_and_is_seeded():
    x, y, truth = gaussian_pair(4000, 0.6, d=2, seed=3)
    r = ibtools.mutual_information(x, y, method="gaussian", ci="bootstrap", n_resamples=40)
    assert r.ci_kind == "bootstrap" and r.confidence == 0.95
    assert r.ci[0] < truth < r.ci[1]
    assert r.ci[1] - r.ci[0] < 0.1  # sd of the estimate here is about 0.015 nats
    again = ibtools.mutual_information(x, y, method="gaussian", ci="bootstrap", n_resamples=40)
    assert again.ci == r.ci


def test_subsample_interval_for_knn():
    x, y, truth = gaussian_pair(3000, 0.6, d=1, seed=4)
    r = ibtools.mutual_information(x, y, method="ksg", ci="auto", n_resamples=20)
    assert r.ci_kind == "subsample"
    assert r.ci[0] < r.value < r.ci[1]
    assert r.ci[0] < truth < r.ci[1]


def test_permutation_null_flags_independence():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(800, 1)), rng.normal(size=(800, 1))
    r = ibtools.mutual_information(x, y, method="ksg", n_permutations=30)
    null = r.details["null"]
    assert abs(null["mean"]) < 0.03 and null["p_value"] > 0.05
    x2, y2, _ = gaussian_pair(800, 0.7)
    r2 = ibtools.mutual_information(x2, y2, method="ksg", n_permutations=30)
    assert r2.details["null"]["p_value"] < 0.05  # (1 + 0) / 31
    assert not any("independence" in f for f in r2.flags)


# --------------------------------------------------------------------------- specs


def test_parse_specs():
    s = parse_estimator_spec("kde:noise_var=0.1,bound=lower")
    assert s.method == "kde" and s.settings == {"noise_var": 0.1, "bound": "lower"}
    assert s.label == "kde(bound=lower,noise_var=0.1)"
    s = parse_estimator_spec("binning:range=(-1,1),n_bins=10")
    assert s.settings == {"range": (-1, 1), "n_bins": 10}
    assert parse_estimator_spec({"method": "ksg", "k": 5}).settings == {"k": 5}
    assert parse_estimator_spec(("gaussian", {})).label == "gaussian"


@pytest.mark.parametrize("spec, err, match", [
    ("kraskov", ValueError, "method 'kraskov' is not known"),
    ("kde:noise_var", ValueError, "is not SETTING=VALUE; the accepted form"),
    ("kde:sigma=2", ValueError, r"unknown setting\(s\) \['sigma'\]"),
    ("kde:noise_var=-1", ValueError, "noise_var"),
    (3, TypeError, "is not understood"),
    ({"k": 3}, ValueError, "has no 'method' key"),
])
def test_bad_specs(spec, err, match):
    with pytest.raises(err, match=match):
        parse_estimator_spec(spec)


def test_duplicate_specs_refused():
    with pytest.raises(ValueError, match="listed twice"):
        parse_estimator_specs(["ksg:k=3", {"method": "ksg", "k": 3}])


def test_every_method_is_registered():
    for m in METHODS:
        cls = get_estimator_class(m)
        assert cls.name == m
