"""method="auto": its choice and its value on cases with closed-form truth."""

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.special import digamma, gammaln

import ibtools
from ibtools.cli import main
from ibtools.estimators.auto import (
    GAUSSIAN_COPULA,
    KL_ENTROPY,
    KSG_COPULA,
    MIXED_KSG,
    PLUGIN,
    Auto,
)
from ibtools.estimators.spec import parse_estimator_spec


def gaussian_pairs(n, d, rho, seed):
    """x, y in R^d with correlation rho between x_i and y_i: I = -d/2 ln(1 - rho^2)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    return x, y, -d / 2 * math.log(1 - rho**2)


def student_t_mi(dof, dx, dy):
    """MI of a multivariate Student-t with identity dispersion (x, y uncorrelated): all of it
    comes from the shared chi-square scale (Arellano-Valle et al. 2013; BMI's formula)."""
    def term(d):
        a = (dof + d) / 2
        return gammaln(a) - a * digamma(a)

    return float(term(0) + term(dx + dy) - term(dx) - term(dy))


def test_low_dimensional_gaussian_reports_the_larger_candidate():
    x, y, truth = gaussian_pairs(5000, 2, 0.6, seed=0)  # 0.446 nats
    r = ibtools.mutual_information(x, y)
    auto = r.details["auto"]
    assert r.method == "auto" and set(auto["candidates"]) == {GAUSSIAN_COPULA, KSG_COPULA}
    assert r.value == max(auto["candidates"].values())
    assert r.value == auto["candidates"][auto["chosen"]]
    assert r.value == pytest.approx(truth, abs=0.03)
    # both candidates agree here, so the choice does not matter and no flag says it did
    assert not any(f.startswith("auto used") for f in r.flags)


def test_twenty_dimensions_gaussian_copula_where_ksg_collapses():
    x, y, truth = gaussian_pairs(5000, 20, 0.3, seed=1)  # 0.988 nats over 20 pairs
    r = ibtools.mutual_information(x, y)
    auto = r.details["auto"]
    assert auto["chosen"] == GAUSSIAN_COPULA
    assert auto["candidates"][KSG_COPULA] < truth - 0.3  # KSG's known collapse at 20 + 20 d
    assert r.value == pytest.approx(truth, abs=0.05)
    assert r.flags[0].startswith(f"auto used {GAUSSIAN_COPULA}")
    assert "KSG reads low" in r.flags[0]
    assert not any("biased toward 0" in f for f in r.flags)  # KSG's own flag is moot


def test_non_gaussian_marginals_leave_the_gaussian_copula_value_unchanged():
    x, y, truth = gaussian_pairs(4000, 3, 0.5, seed=2)  # 0.432 nats
    plain = ibtools.mutual_information(x, y)
    bent = ibtools.mutual_information(np.exp(x), y**3 + np.tanh(y))
    assert bent.value == pytest.approx(truth, abs=0.04)
    # normal scores depend only on ranks, which strictly increasing maps keep (up to a few
    # ranks tied by float32 rounding of the bent values)
    assert bent.details["auto"]["chosen"] == plain.details["auto"]["chosen"]
    assert bent.details["auto"]["candidates"] == pytest.approx(plain.details["auto"]["candidates"],
                                                               abs=1e-4)


def test_student_t_dependence_the_gaussian_copula_misses_is_read_by_ksg():
    dof, n = 1, 5000
    rng = np.random.default_rng(3)
    scale = np.sqrt(rng.chisquare(dof, size=(n, 1)) / dof)
    z = rng.normal(size=(n, 2)) / scale  # x and y uncorrelated, dependent through scale
    truth = student_t_mi(dof, 1, 1)
    assert truth == pytest.approx(0.2242, abs=1e-4)
    r = ibtools.mutual_information(z[:, :1], z[:, 1:])
    auto = r.details["auto"]
    assert auto["chosen"] == KSG_COPULA
    assert abs(auto["candidates"][GAUSSIAN_COPULA]) < 0.01
    assert r.value == pytest.approx(truth, abs=0.04)
    assert r.flags[0].startswith(f"auto used {KSG_COPULA}") and "Student-t" in r.flags[0]


@pytest.mark.parametrize("labels_first", [False, True])
def test_continuous_against_labels_uses_ross_ksg(labels_first):
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 2, 5000)
    t = (labels + rng.uniform(0, 2.0, 5000))[:, None]  # I = ln(2) / 2 (docs/estimators.md case 6)
    args = (labels, t) if labels_first else (t, labels)
    r = ibtools.mutual_information(*args)
    assert r.details["auto"]["chosen"] == MIXED_KSG
    assert r.details["estimator"] == "ross2014"
    assert r.value == pytest.approx(math.log(2) / 2, abs=0.03)


def test_discrete_pair_is_plug_in_with_miller_madow():
    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, 20000)
    y = np.where(rng.random(20000) < 0.1, 1 - x, x)  # binary symmetric channel, flip 0.1
    truth = math.log(2) + 0.1 * math.log(0.1) + 0.9 * math.log(0.9)  # 0.368
    r = ibtools.mutual_information(x, y)
    assert r.details["auto"]["chosen"] == PLUGIN
    assert r.value == pytest.approx(truth, abs=0.01)
    # independent 10-class labels: the plug-in reads (K-1)^2 / (2n) = 0.020 high; auto does not
    a, b = rng.integers(0, 10, 2000), rng.integers(0, 10, 2000)
    plain = ibtools.mutual_information(a, b, method="binning").value
    corrected = ibtools.mutual_information(a, b).value
    assert plain > 0.012 and abs(corrected) < 0.008


def test_entropy_default_is_kozachenko_leonenko_or_plug_in():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(4000, 2))
    r = ibtools.entropy(x)
    assert r.method == "auto" and r.details["auto"]["chosen"] == KL_ENTROPY
    assert r.value == ibtools.entropy(x, method="ksg").value  # the same KL estimate
    assert r.value == pytest.approx(math.log(2 * math.pi * math.e), abs=0.05)
    labels = rng.integers(0, 8, 4000)
    assert ibtools.entropy(labels).value == pytest.approx(math.log(8), abs=0.01)


def test_ksg_candidate_subsample_is_flagged():
    x, y, truth = gaussian_pairs(3000, 1, 0.8, seed=7)
    r = ibtools.mutual_information(x, y, ksg_max_samples=1000)
    assert r.details["auto"]["candidate_details"][KSG_COPULA]["rows_used"] == 1000
    assert any("1000 of the n=3000 rows" in f for f in r.flags)
    assert r.value == pytest.approx(truth, abs=0.05)


def test_settings_are_checked_and_named():
    with pytest.raises(ValueError, match="k=0"):
        Auto(k=0)
    with pytest.raises(ValueError, match="ksg_max_samples=2"):
        Auto(ksg_max_samples=2)
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['transform'\]"):
        Auto(transform="copula")
    assert parse_estimator_spec("auto:k=5").build().k == 5


def test_interval_is_of_the_whole_policy():
    x, y, truth = gaussian_pairs(2000, 1, 0.7, seed=8)
    r = ibtools.mutual_information(x, y, ci="auto", n_resamples=6)
    assert r.ci_kind == "subsample" and r.ci[0] < truth < r.ci[1]


def test_torch_input_gives_the_numpy_value():
    x, y, _ = gaussian_pairs(1500, 2, 0.5, seed=9)
    a = ibtools.mutual_information(x, y)
    b = ibtools.mutual_information(torch.as_tensor(x), torch.as_tensor(y))
    assert a.value == pytest.approx(b.value, abs=1e-9)


def test_cli_estimate_defaults_to_auto(tmp_path):
    x, y, truth = gaussian_pairs(3000, 1, 0.6, seed=10)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", y)
    res = CliRunner().invoke(main, ["estimate", str(tmp_path / "a.npy"),
                                    str(tmp_path / "b.npy"), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["I(A;B)"]["method"] == "auto"
    assert out["I(A;B)"]["details"]["auto"]["chosen"] in (GAUSSIAN_COPULA, KSG_COPULA)
    assert out["I(A;B)"]["value"] == pytest.approx(truth, abs=0.04)
    assert out["H(A)"]["value"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e), abs=0.05)
