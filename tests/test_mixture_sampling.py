"""The mixture estimator's sampling: control variates, their exact means, the compiled
row kernels, and a standard error that stays honest when they are used."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ibtools.estimators.mixture import MixtureEntropy
from ibtools.estimators.mixture_sampling import (
    _KERNELS,
    MixtureExponents,
    TwoStageDesign,
    centre_covariates,
    pair_pmi,
    pointwise_mi_,
    quadratic_control,
    radial_features,
    radial_scores,
)
from ibtools.noisy import _adjusted_mean, _path_monte_carlo


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("d,s2", [(1, 0.3), (7, 2.0), (512, 40.0)])
def test_radial_scores_are_standard_normal(d, s2):
    g = torch.Generator().manual_seed(d)
    z = math.sqrt(s2) * torch.randn(20000, d, generator=g)
    s = radial_scores(z, s2).numpy()
    assert stats.kstest(s, "norm").pvalue > 1e-3
    # against scipy's chi-square quantiles, both tails
    r2 = (z.double() ** 2).sum(dim=1).numpy() / s2
    want = stats.norm.ppf(stats.chi2.cdf(r2, d))
    lower = stats.chi2.cdf(r2, d) < 0.5
    want[~lower] = -stats.norm.ppf(stats.chi2.sf(r2[~lower], d))
    np.testing.assert_allclose(s, want, rtol=1e-8, atol=1e-8)


def test_quadratic_control_has_mean_zero_at_a_centre():
    """E[q - E q] = 0 over the noise at a fixed centre, in a crowded and a sparse place."""
    g = torch.Generator().manual_seed(3)
    t = torch.randn(400, 6, generator=g)
    s2 = 0.5
    mix = MixtureExponents(t, s2, 1e-3)
    for centre in (0, int((t * t).sum(1).argmax())):
        c = torch.full((4000,), centre, dtype=torch.int64)
        z = math.sqrt(s2) * torch.randn(4000, 6, generator=g)
        e = mix.exponents(torch.cat([c, c]), torch.cat([z, -z]))
        q = quadratic_control(mix, torch.cat([c, c]), e, k=8)
        assert abs(float(q.mean())) < 4 * float(q.std()) / math.sqrt(4000), centre
        assert float(q.std()) > 0.01  # not trivially zero


def test_compiled_rows_match_torch():
    if _KERNELS.module() is None:
        pytest.skip("numba not installed")
    g = torch.Generator().manual_seed(5)
    t = torch.randn(3000, 24, generator=g)
    mix = MixtureExponents(t, 2.0, 1e-3)
    c = torch.randint(3000, (200,), generator=g)
    z = math.sqrt(2.0) * torch.randn(200, 24, generator=g)
    args = (mix, torch.cat([c, c]), torch.cat([z, -z]), math.log(3000))
    pmi_t, quad_t = pair_pmi(*args, "torch")
    pmi_n, quad_n = pair_pmi(*args, "numba")
    torch.testing.assert_close(pmi_n, pmi_t, rtol=0, atol=2e-5)
    torch.testing.assert_close(quad_n, quad_t, rtol=0, atol=2e-5)


def test_design_adjusts_draws_and_centres_without_bias():
    """Values = a centre effect explained by a covariate + noise partly explained by a
    mean-zero feature: both adjustments keep the mean and shrink the standard error."""
    g = torch.Generator().manual_seed(7)
    n = 5000
    x = torch.randn(n, 1, generator=g, dtype=torch.float64)
    mu = 2.0 * x[:, 0] + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    truth = float(mu.mean())
    plain = TwoStageDesign(n, 1, torch.randperm(n, generator=g))
    adjusted = TwoStageDesign(n, 1, plain.order.clone(), covariates=x)
    centres = plain.order[:1500].repeat_interleave(2)
    h = torch.randn(centres.numel(), generator=g, dtype=torch.float64)
    values = (mu[centres] + 1.5 * h + 0.1 * torch.randn(centres.numel(), generator=g,
                                                        dtype=torch.float64))[None]
    for design in (plain, adjusted):
        design.m = 1500
        design.add(centres, values, h[None] if design is adjusted else None)
    mean_p, se_p, _, _ = (float(v[0]) for v in plain.stats())
    mean_a, se_a, _, _ = (float(v[0]) for v in adjusted.stats())
    assert abs(mean_p - truth) < 4 * se_p and abs(mean_a - truth) < 4 * se_a
    assert se_a < 0.2 * se_p
    # with every centre drawn the centre covariates change nothing
    full = TwoStageDesign(n, 1, plain.order.clone(), covariates=x)
    full.m = n
    every = torch.arange(n)
    full.add(every, mu[None], None)
    assert float(full.stats()[0][0]) == pytest.approx(truth, abs=1e-12)


@pytest.mark.parametrize("data", ["gauss", "clusters"])
def test_standard_error_matches_spread_over_seeds_with_control_variates(data):
    """n_mc='auto' on part of the centres (one draw on most, the control variates fitted):
    the reported se is the spread of the value over 24 seeds, on standard-normal rows and
    on unequal clusters (where crowding does not follow the distance from the middle)."""
    g = torch.Generator().manual_seed(11)
    t = torch.randn(4000, 16, generator=g)
    if data == "clusters":
        label = torch.randint(30, (4000,), generator=g)
        spread = 0.3 + 1.2 * torch.rand(30, generator=g)
        t = torch.randn(30, 16, generator=g)[label] + spread[label, None] * t
    tol = 0.008 if data == "gauss" else 0.015
    runs = [MixtureEntropy(noise_var=1.25, mc_tolerance=tol, seed=s).entropy(t)
            for s in range(24)]
    assert all(r.details["centres_drawn"] < 4000 for r in runs)
    assert sum(r.details["draws_per_centre"] == (1, 2) for r in runs) >= 12
    spread = float(np.std([r.value for r in runs], ddof=1))
    se = float(np.mean([r.details["mc_se"] for r in runs]))
    assert 0.6 < spread / se < 1.6, (spread, se)


def test_centre_covariates_are_cheap_and_finite():
    t = torch.randn(100, 3, dtype=torch.float64)
    t[:, 2] = 0.0  # a constant coordinate
    cov = centre_covariates(t, t[:, :1])
    assert cov.shape == (100, 6) and bool(torch.isfinite(cov).all())


def test_noise_path_standard_error_matches_spread_over_seeds():
    """The noisy network's path Monte Carlo, with the control variates fitted on its draws:
    the reported se is the spread over 24 seeds, and on the same draws it is below the se
    without them."""
    g = torch.Generator().manual_seed(4)
    n, k, d, s2 = 200, 4, 8, 0.5
    centres = torch.randn(n, 1, d, generator=g) + 0.5 * torch.randn(n, k, d, generator=g)
    labels = torch.randint(3, (n,), generator=g)
    runs = [_path_monte_carlo(centres, labels, s2, torch.Generator().manual_seed(s), 0.02,
                              262144, block=128) for s in range(24)]
    for col in range(3):
        spread = float(np.std([mean[col] for mean, _, _ in runs], ddof=1))
        se = float(np.mean([se[col] for _, se, _ in runs]))
        assert 0.6 < spread / se < 1.6, (col, spread, se)
    # the same draws without their control variates have a larger standard error
    mix = MixtureExponents(centres.reshape(n * k, d), s2, 1e-3)
    c = torch.randint(n * k, (2000,), generator=g)
    z = math.sqrt(s2) * torch.randn(2000, d, generator=g)
    e = mix.exponents(torch.cat([c, c]), torch.cat([z, -z]))
    q = quadratic_control(mix, torch.cat([c, c]), e)
    pmi = pointwise_mi_(e, math.log(n * k))
    values = (0.5 * (pmi[:2000] + pmi[2000:]))[None]
    features = torch.stack(radial_features([(z, s2)]) + [q])
    _, plain = _adjusted_mean(values, features[:0])
    _, adjusted = _adjusted_mean(values, features)
    assert float(adjusted[0]) < 0.8 * float(plain[0])
