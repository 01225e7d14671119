"""Per-class work in one pass (issue #22 section 2): the Gaussian and KDE I(T;Y) paths that
reduce every class together give the numbers of the old one-class-at-a-time paths, which
are written out here as the references."""

import math

import pytest
import torch

from ibtools.estimators import KDE, Gaussian
from ibtools.estimators.gaussian import class_covariances, logdet
from ibtools.estimators.kde import pairwise_log_means
from ibtools.estimators.kde_classes import class_log_means


def _labels(n, gen, n_small=200):
    """Token-like labels: a few large classes, many small ones, singletons, gaps."""
    big = torch.randint(0, 3, (n // 2,), generator=gen)
    small = torch.randint(3, n_small, (n - n // 2,), generator=gen) * 2  # even ids: gaps
    y = torch.cat([big, small])
    return y[torch.randperm(n, generator=gen)]


def _old_class_covariances(x, y):
    """The old path: one mean and one matmul per class, in a Python loop."""
    covs = []
    for c in torch.unique(y).tolist():
        rows = x[y == c].to(torch.float64)
        centred = rows - rows.mean(dim=0)
        covs.append(centred.T @ centred / max(rows.shape[0] - 1, 1))
    return torch.stack(covs)


def test_class_covariances_match_one_class_at_a_time():
    gen = torch.Generator().manual_seed(0)
    n, d = 3000, 6
    y = _labels(n, gen, n_small=700)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) * 3 + y[:, None].double() * 0.01
    order = torch.argsort(y, stable=True)
    sizes = torch.bincount(y)
    sizes = sizes[sizes > 0].tolist()
    assert max(sizes) > 256 and min(sizes) == 1  # both the packed and the per-class route
    new = class_covariances(x[order], sizes, budget=1 << 16)  # small budget: several batches
    old = _old_class_covariances(x, y)
    assert new.shape == old.shape
    assert float((new - old).abs().max()) < 1e-10


def _old_gaussian_mi(est, x, y):
    """I(T;Y) by the pre-#22 formula, every class's covariance built on its own."""
    n, d = x.shape
    x64 = x.to(torch.float64)
    s = torch.cov(x64.T)
    std = torch.sqrt(torch.diagonal(s))
    inv = torch.where(std > 0, 1.0 / std, torch.ones_like(std))
    s = s * inv[:, None] * inv[None, :]
    lam = est.ridge * float(torch.diagonal(s).sum()) / d
    ld_total, _ = logdet(s, lam)
    lds, _ = logdet(_old_class_covariances(x64 * inv, y), lam)
    counts = torch.bincount(y)
    counts = counts[counts > 0].double()
    cond = float((counts / n * lds).sum())
    return 0.5 * float(ld_total) - 0.5 * cond


def test_gaussian_mi_classes_matches_the_old_per_class_path():
    gen = torch.Generator().manual_seed(1)
    n, d = 4000, 4
    y = torch.randint(0, 40, (n,), generator=gen)
    y[:1500] = 0  # one class above the packing limit
    x = torch.randn(n, d, generator=gen, dtype=torch.float64) + torch.randn(
        40, d, generator=gen, dtype=torch.float64)[y]
    est = Gaussian(bias_correction=False, dtype="float64", n_permutations=0)
    got = est.mutual_information(x, y, discrete_y=True)
    assert abs(got.value - _old_gaussian_mi(est, x, y)) < 1e-10
    assert got.value > 0.5  # the class means separate the classes: a real dependence


def _old_kde_mi(est, t, y):
    """KDE I(T;Y) upper and lower by the old path: one pairwise pass per class."""
    s2 = est.noise_var
    n = t.shape[0]
    kl, bd, _ = pairwise_log_means(t, s2, 1 << 24)
    h_up, h_low = -float(kl.mean()), -float(bd.mean())  # the noise entropy cancels
    for c in torch.unique(y).tolist():
        rows = t[y == c]
        p = rows.shape[0] / n
        if rows.shape[0] > 1:
            kl_c, bd_c, _ = pairwise_log_means(rows, s2, 1 << 24)
            h_up += p * float(kl_c.mean())
            h_low += p * float(bd_c.mean())
    return h_up, h_low


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kde_mi_classes_matches_the_old_per_class_path(dtype):
    gen = torch.Generator().manual_seed(2)
    n, d = 3000, 5
    y = _labels(n, gen)
    t = torch.randn(n, d, generator=gen) + 0.5 * torch.randn(800, d, generator=gen)[y]
    t = t.to(getattr(torch, dtype))
    est = KDE(noise_var=0.3, dtype=dtype, n_permutations=0)
    got = est.mutual_information(t, y, discrete_y=True)
    up, low = _old_kde_mi(est, t, y)
    assert abs(got.details["mi_upper"] - up) < 1e-6
    assert abs(got.details["mi_lower"] - low) < 1e-6
    assert 0.1 < got.value < math.log(n)


def test_class_log_means_are_the_per_class_row_means():
    gen = torch.Generator().manual_seed(3)
    sizes = [1, 2, 7, 300, 31, 1, 64, 65]  # 300: a class split over several row blocks
    t = torch.randn(sum(sizes), 3, generator=gen, dtype=torch.float64)
    kl, bd = class_log_means(t, sizes, 0.2, budget=1 << 15)
    start = 0
    for k in sizes:
        kl_c, bd_c, _ = pairwise_log_means(t[start:start + k], 0.2, 1 << 20)
        assert float((kl[start:start + k] - kl_c).abs().max()) < 1e-12
        assert float((bd[start:start + k] - bd_c).abs().max()) < 1e-12
        start += k
