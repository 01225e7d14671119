"""Intervals as scheme objects: one interface, chosen by the estimator's ``ci`` setting.

The resampling arithmetic itself is checked in ``test_intervals_independence.py`` and its
numbers are pinned in ``test_golden.py``; here: the choice by name, the standard-error
schemes, the permutation null as an object, and an estimator bringing a scheme of its own.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch

from ibtools.estimators import Estimator
from ibtools.estimators.intervals import (
    INTERVAL_SCHEMES,
    Bootstrap,
    IntervalScheme,
    PermutationNull,
    Seeds,
    Subsample,
    interval_scheme,
)
from ibtools.estimators.result import EstimateResult


def test_every_kind_by_name_and_a_clear_error_otherwise():
    assert isinstance(interval_scheme("bootstrap"), Bootstrap)
    assert isinstance(interval_scheme("subsample"), Subsample)
    assert isinstance(interval_scheme("seeds"), Seeds)
    assert {"heldout", "mc"} <= set(INTERVAL_SCHEMES)
    with pytest.raises(ValueError, match=r"unknown interval kind 'jackknife'.*'bootstrap'"):
        interval_scheme("jackknife")


def test_standard_error_scheme_reads_the_estimate_details():
    result = EstimateResult(value=0.8, quantity="mutual_information", method="x", params={},
                            n=100, dims=(1, 1), seconds=0.0, flags=[],
                            details={"heldout_se": 0.05, "heldout_values": [0.7, 0.9]})

    class Conf:
        confidence = 0.9

    low, high, samples, info = INTERVAL_SCHEMES["heldout"].interval(Conf(), None, (), result,
                                                                    "cpu")
    z = NormalDist().inv_cdf(0.95)
    assert (low, high) == pytest.approx((0.8 - z * 0.05, 0.8 + z * 0.05), rel=1e-12)
    assert samples == [0.7, 0.9] and info["ci_method"].startswith("value +- z x standard error")


class FisherZ(IntervalScheme):
    """The classical interval of a correlation r, tanh(atanh r +- z / sqrt(n - 3)), mapped
    to the Gaussian MI -ln(1 - r^2) / 2 (monotone in |r|); no reruns."""

    kind = "fisher"
    description = "Fisher z interval of the correlation, mapped to -ln(1 - r^2)/2"

    def interval(self, estimator, run, tensors, result, device):
        r = result.details["r"]
        z = NormalDist().inv_cdf(0.5 + estimator.confidence / 2) / math.sqrt(result.n - 3)
        ends = [abs(math.tanh(math.atanh(r) + s * z)) for s in (-1, 1)]
        mi = sorted(-0.5 * math.log1p(-e * e) for e in ends)
        return mi[0], mi[1], [], {"ci_method": self.description}


class Correlation(Estimator):
    """-ln(1 - r^2) / 2 of two 1-d columns, with its own interval kind."""

    name = "toy-fisher"
    limitations = "Toy: linear dependence of the first columns only."
    interval_kinds = ("fisher", "bootstrap")

    def _interval_scheme(self, kind):
        return FisherZ() if kind == "fisher" else super()._interval_scheme(kind)

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        r = float(torch.corrcoef(torch.stack([x[:, 0].double(), y[:, 0].double()]))[0, 1])
        return -0.5 * math.log1p(-r * r), {"r": r}, []


def test_an_estimator_brings_its_own_scheme_and_keeps_the_shared_ones():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 1))
    y = 0.6 * x + 0.8 * rng.normal(size=(400, 1))  # rho = 0.6: I = 0.223 nats
    r = Correlation(ci="auto").mutual_information(x, y)
    assert r.ci_kind == "fisher" and r.details["ci_method"] == FisherZ.description
    assert r.ci[0] < r.value < r.ci[1] and r.ci[0] < -0.5 * math.log(1 - 0.36) < r.ci[1]
    boot = Correlation(ci="bootstrap", n_resamples=8).mutual_information(x, y)
    assert boot.ci_kind == "bootstrap" and len(boot.details["resample_values"]) == 8


def test_permutation_null_object_shuffles_the_same_pairs_for_every_estimator():
    rng = np.random.default_rng(1)
    x = torch.as_tensor(rng.normal(size=(200, 1)))
    y = x + 0.5 * torch.as_tensor(rng.normal(size=(200, 1)))
    est = Correlation(seed=4)

    def run(xs, ys, offset):
        return est._mi(xs, ys, False, False, None)

    value = run(x, y, 0)[0]
    null = PermutationNull().run(est, run, (x, y), value, "cpu", 9)
    again = PermutationNull().run(Correlation(seed=4), run, (x, y), value, "cpu", 9)
    assert null["values"] == again["values"] and len(null["values"]) == 9
    assert null["p_value"] == pytest.approx(1 / 10)  # no shuffle reaches 0.5 nats
    assert max(null["values"]) < 0.1 < value
