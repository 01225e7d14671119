"""Every MI estimate is checked against the ceilings that hold for it exactly."""

import math

import numpy as np
import pytest

import ibtools
from ibtools.estimators.bounds import label_entropy


def test_value_above_the_label_entropy_is_flagged_not_hidden():
    # 60-d activations of 600 rows against 50 classes: per-class covariances are singular
    # and the Gaussian formula once returned hundreds of nats without a word
    rng = np.random.default_rng(0)
    y = rng.integers(0, 50, 600)
    t = rng.normal(size=(600, 60)) + 0.01 * y[:, None]
    r = ibtools.mutual_information(t, y, method="gaussian", n_permutations=0)
    ceiling = r.details["mi_ceiling"]
    assert ceiling["bound"] == "H(y)"
    counts = np.bincount(y)
    p = counts / counts.sum()
    plug_in = -(p * np.log(p)).sum()
    assert ceiling["value"] == pytest.approx(plug_in + 49 / 1200, abs=1e-12)
    assert r.value > ceiling["value"]
    assert any("exceeds H(y)" in f for f in r.flags)


def test_discrete_x_is_named_x_in_the_ceiling():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 1000)
    t = labels[:, None] + 0.1 * rng.normal(size=(1000, 1))
    r = ibtools.mutual_information(labels, t, method="ksg", k=3)
    assert r.details["mi_ceiling"]["bound"] == "H(x)"
    # separated classes: KSG reads the ceiling itself, within its error, and is not flagged
    assert r.value == pytest.approx(r.details["mi_ceiling"]["value"], abs=0.01)
    assert not any("exceeds" in f for f in r.flags)


@pytest.mark.parametrize("method,settings", [("binning", {"n_bins": 1000}),
                                             ("kde", {"noise_var": 1e-6, "deterministic": True})])
def test_sample_bounded_estimators_keep_their_interval_below_ln_n(method, settings):
    # a deterministic copy on 200 distinct rows: the value sits near ln n, and the basic
    # bootstrap interval (2 * value - quantile) used to reach above it
    x = np.random.default_rng(2).normal(size=(200, 1))
    try:
        r = ibtools.mutual_information(x, 2 * x, method=method, ci="auto", n_resamples=30,
                                       **settings)
    except TypeError:  # an estimator without the deterministic switch
        settings.pop("deterministic", None)
        r = ibtools.mutual_information(x, 2 * x, method=method, ci="auto", n_resamples=30,
                                       **settings)
    assert r.details["mi_ceiling"] == {"value": math.log(200), "bound": "ln n (n=200)"}
    assert r.ci[1] <= math.log(200) + 1e-12
    assert r.ci[0] <= r.value <= r.ci[1]


def test_label_entropy_is_the_miller_madow_estimate():
    import torch

    codes = torch.tensor([0, 0, 1, 2, 2, 2])
    p = np.array([2, 1, 3]) / 6
    assert label_entropy(codes) == pytest.approx(-(p * np.log(p)).sum() + 2 / 12, abs=1e-12)


def test_processing_inequality_violation_is_flagged_in_the_rows():
    # Y -> X -> T: an estimator reading I(T;Y) above I(X;T) has failed on this layer
    from ibtools.layer_rows import _processing_flags

    assert _processing_flags(1.2, 1.0)[0].startswith("I(T;Y) = 1.2 exceeds I(X;T) = 1 nats")
    assert _processing_flags(1.0, 1.0) == [] and _processing_flags(float("nan"), 1.0) == []
