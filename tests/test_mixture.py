"""The sample-propagation estimator of Gaussian-mixture entropy (method "mixture").

Ground truth: numerical quadrature of -int p ln p for mixtures in one and two dimensions,
the Gaussian channel's closed form, KDE's pairwise bounds, and label / chain cases whose
value quadrature gives.  Every check allows a few Monte Carlo standard errors (which the
estimator reports) plus, where the centres are a sample, the sampling error of the mixture.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

import ibtools
from ibtools.estimators import KDE, get_estimator
from ibtools.estimators.mixture import MixtureEntropy


@pytest.fixture(autouse=True)
def _one_thread():
    """Small blocks of work: one thread is faster than two on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _density_1d(centres, s2):
    c = np.asarray(centres, dtype=float)
    return lambda u: float(np.mean(np.exp(-(u - c) ** 2 / (2 * s2)))) / math.sqrt(2 * math.pi * s2)


def _entropy_1d(centres, s2):
    p = _density_1d(centres, s2)
    f = lambda u: -p(u) * math.log(p(u)) if p(u) > 0 else 0.0  # noqa: E731
    lo, hi = min(centres) - 12 * math.sqrt(s2), max(centres) + 12 * math.sqrt(s2)
    return integrate.quad(f, lo, hi, limit=400, points=sorted(centres))[0]


def _entropy_2d(centres, s2, cells=801):
    """-int p ln p over a grid 10 sigma beyond the centres, by Simpson's rule per axis."""
    c = np.asarray(centres, dtype=float)
    pad = 10 * math.sqrt(s2)
    u = np.linspace(c[:, 0].min() - pad, c[:, 0].max() + pad, cells)
    v = np.linspace(c[:, 1].min() - pad, c[:, 1].max() + pad, cells)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    sq = (uu[..., None] - c[:, 0]) ** 2 + (vv[..., None] - c[:, 1]) ** 2
    p = np.exp(-sq / (2 * s2)).mean(axis=-1) / (2 * math.pi * s2)
    f = -p * np.log(np.where(p > 0, p, 1.0))
    return integrate.simpson(integrate.simpson(f, x=v, axis=1), x=u)


def _close(result, truth, extra=0.0):
    se = result.details["mc_se"]
    assert abs(result.value - truth) <= 4 * se + extra, (result.value, truth, se)


def test_one_dimensional_mixture_matches_quadrature():
    centres, s2 = [-1.0, 0.0, 0.5, 3.0], 0.3
    r = MixtureEntropy(noise_var=s2, mc_tolerance=0.003).entropy(np.array(centres)[:, None])
    truth = _entropy_1d(centres, s2)  # 1.66471 nats
    _close(r, truth)
    assert r.details["mc_se"] <= 0.003 and r.quantity == "entropy"
    assert r.details["h_noise"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e * s2))


def test_two_dimensional_mixture_matches_quadrature():
    rng = np.random.default_rng(1)
    centres = np.concatenate([rng.normal(0, 0.5, (6, 2)), rng.normal(2.5, 0.3, (4, 2))])
    s2 = 0.2
    r = MixtureEntropy(noise_var=s2, mc_tolerance=0.004, seed=3).entropy(centres)
    _close(r, _entropy_2d(centres, s2), extra=1e-4)


def test_gaussian_channel_closed_form():
    """X ~ N(0, S), T = A X: the mixture over n = 8000 sampled centres is within its Monte
    Carlo error plus a sampling allowance of 0.5 ln det(I + A S A^T / s2)."""
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.3], [0.0, 0.3, 0.5]])
    a, s2 = rng.normal(size=(2, 3)), 0.5
    x = rng.multivariate_normal(np.zeros(3), cov, size=8000)
    truth = 0.5 * np.linalg.slogdet(np.eye(2) + a @ cov @ a.T / s2)[1]  # 0.3069 nats
    r = ibtools.mutual_information(x, x @ a.T, method="mixture", noise_var=s2,
                                   deterministic=True, mc_tolerance=0.005)
    # measured over six samples of X: deviations up to 0.0125 at an se of 0.009
    _close(r, truth, extra=0.015)
    assert "deterministic" in r.details["assumes"]


@pytest.mark.parametrize("d", [2, 8, 64])
def test_between_kde_bounds(d):
    """Clustered random mixtures, noise chosen so the bounds are apart by a nat or more."""
    g = torch.Generator().manual_seed(d)
    means = 3.0 * torch.randn(6, d, generator=g)
    t = means[torch.randint(0, 6, (400,), generator=g)] + 0.7 * torch.randn(400, d, generator=g)
    s2 = 0.5 * d ** 0.5
    kde = KDE(noise_var=s2).entropy(t)
    r = MixtureEntropy(noise_var=s2, seed=d).entropy(t)
    low, high = kde.details["h_lower"], kde.details["h_upper"]
    assert high - low > 0.3
    se = r.details["mc_se"]
    assert low - 4 * se <= r.value <= high + 4 * se, (low, r.value, high)
    assert low + 0.05 < r.value < high - 0.05  # strictly inside, not at either bound


def test_rotation_invariance():
    g = torch.Generator().manual_seed(5)
    t = torch.randn(600, 6, generator=g) * torch.tensor([3.0, 2.0, 1.0, 1.0, 0.5, 0.2])
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    est = MixtureEntropy(noise_var=0.4)
    a, b = est.entropy(t), est.entropy(t @ q.float())
    assert abs(a.value - b.value) <= 4 * math.hypot(a.details["mc_se"], b.details["mc_se"])


def test_labels_well_separated_give_label_entropy():
    """Three classes far apart: I(T+Z; Y) = H(Y) for p = (0.5, 0.3, 0.2)."""
    g = torch.Generator().manual_seed(2)
    y = torch.tensor([0] * 150 + [1] * 90 + [2] * 60)
    t = 20.0 * y[:, None].float() + 0.3 * torch.randn(300, 4, generator=g)
    r = MixtureEntropy(noise_var=0.1).mutual_information(t, y)
    h_y = -sum(p * math.log(p) for p in (0.5, 0.3, 0.2))  # 1.0297 nats
    _close(r, h_y, extra=1e-6)
    assert r.details["h_labels"] == pytest.approx(h_y)
    assert r.details["h"] - r.details["h_cond"] == pytest.approx(r.value)


def test_labels_overlapping_match_quadrature():
    """Y uniform on {0, 1}, T = 0 or 1.5 by class: I = h(mixture of the two) - h(N(0, s2))."""
    y = np.array([0, 1] * 100)
    t = 1.5 * y[:, None].astype(np.float32)
    s2 = 0.5
    truth = _entropy_1d([0.0, 1.5], s2) - 0.5 * math.log(2 * math.pi * math.e * s2)
    r = MixtureEntropy(noise_var=s2, mc_tolerance=0.003).mutual_information(t, y)
    _close(r, truth)
    assert 0.1 < truth < math.log(2) - 0.1


def test_noisy_chain_matches_quadrature():
    """I(S+Z'; T+Z) = h(S+Z') + h(T+Z) - h([S, T] + noise), each by quadrature."""
    s = np.array([-1.0, 0.0, 0.4, 1.5, 2.0])
    t = np.tanh(2 * s) * 1.5
    s2 = 0.25
    truth = (_entropy_1d(s, s2) + _entropy_1d(t, s2)
             - _entropy_2d(np.stack([s, t], axis=1), s2))
    est = MixtureEntropy(noise_var=s2, mc_tolerance=0.003)
    r = est.chain_information(s[:, None], t[:, None])
    _close(r, truth, extra=2e-4)
    assert r.details["mi_x"] + r.details["mi_t"] - r.details["mi_joint"] == pytest.approx(r.value)


def test_standard_error_matches_spread_over_seeds():
    """The reported se is the spread of the value over seeds (fixed draws, 30 seeds)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(60, 3, generator=g)
    runs = [MixtureEntropy(noise_var=0.3, n_mc=200, seed=s).entropy(t) for s in range(30)]
    spread = float(np.std([r.value for r in runs], ddof=1))
    se = float(np.mean([r.details["mc_se"] for r in runs]))
    assert 0.6 < spread / se < 1.6, (spread, se)


def test_auto_reaches_tolerance_and_interval_is_se():
    g = torch.Generator().manual_seed(4)
    t = torch.randn(3000, 16, generator=g)
    r = MixtureEntropy(noise_var=4.0, mc_tolerance=0.01).entropy(t)
    se = r.details["mc_se"]
    assert se <= 0.01 and not r.flags
    assert r.ci_kind == "mc"
    z = 1.959963984540054
    assert r.ci == pytest.approx((r.value - z * se, r.value + z * se))


def test_flags_large_error_and_saturation():
    g = torch.Generator().manual_seed(6)
    t = torch.randn(500, 5, generator=g)
    few = MixtureEntropy(noise_var=1.0, n_mc=8, mc_tolerance=0.001).entropy(t)
    assert few.details["mc_se"] > 0.001
    assert any("Monte Carlo error" in f for f in few.flags)
    tiny = MixtureEntropy(noise_var=1e-4, deterministic=True).mutual_information(t[:, :1], t)
    assert tiny.value == pytest.approx(math.log(500), abs=1e-3)
    assert any("saturated" in f for f in tiny.flags)


def test_float32_far_from_origin():
    """A mixture 300 standard deviations from the origin reads as at the origin in float32
    (centring, or float64 where rounding would show; one seed gives the same draws)."""
    g = torch.Generator().manual_seed(8)
    t = torch.randn(800, 10, generator=g)
    a = MixtureEntropy(noise_var=1.0, n_mc=2000).entropy(t)
    b = MixtureEntropy(noise_var=1.0, n_mc=2000).entropy(t + 300.0)
    assert abs(a.value - b.value) < 1e-3


def test_registered_and_settings_checked():
    r = ibtools.entropy(np.zeros((50, 2)) + np.arange(50)[:, None], method="mixture",
                        noise_var=1.0)
    assert r.method == "mixture" and r.details["n_mc"] >= 4
    with pytest.raises(ValueError, match=r"noise_var=-1"):
        get_estimator("mixture", noise_var=-1)
    with pytest.raises(ValueError, match=r"n_mc=3 is too small"):
        get_estimator("mixture", n_mc=3)
    with pytest.raises(TypeError, match="n_mc must be an integer"):
        get_estimator("mixture", n_mc="lots")
    with pytest.raises(TypeError, match="deterministic must be True or False"):
        get_estimator("mixture", deterministic="yes")
    x = np.random.default_rng(0).normal(size=(100, 2))
    with pytest.raises(ValueError, match="deterministic=True"):
        ibtools.mutual_information(x, x, method="mixture")


def test_reuse_draws_shares_the_label_run_with_i_xt():
    g = torch.Generator().manual_seed(9)
    y = torch.randint(0, 3, (1500,), generator=g)
    t = y[:, None].float() + 0.8 * torch.randn(1500, 5, generator=g)
    x = torch.randn(1500, 2, generator=g)
    est = MixtureEntropy(noise_var=0.5, deterministic=True)
    with est._reuse_draws():  # internal: the seam layer_information enters it
        i_ty = est.mutual_information(t, y)
        i_xt = est.mutual_information(x, t)
        h = est.entropy(t)
    assert i_xt.details["shared_draws"] and h.details["shared_draws"]
    assert i_xt.value == i_ty.details["mi_xt"] and i_xt.details["mc_se"] == i_ty.details["mi_xt_se"]
    assert h.value == pytest.approx(i_ty.details["h"])
    assert i_xt.details["mc_se"] <= 0.01  # the label run went on until I(X;T) met it too
    fresh = est.mutual_information(x, t)  # outside the block: its own run (the seed's draws)
    assert "shared_draws" not in fresh.details
    assert abs(fresh.value - i_xt.value) <= 4 * math.hypot(fresh.details["mc_se"],
                                                           i_xt.details["mc_se"])
