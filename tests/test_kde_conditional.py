"""KDE's class-conditional bounds (issue #22 item 2): every class in one call, singletons
without a kernel sum, a class above the packed pass's size through an uncached pass that
leaves the whole sample's cached bounds in place."""

import pytest
import torch

from ibtools.estimators import KDE
from ibtools.estimators.kde import gaussian_noise_entropy, pairwise_log_means
from ibtools.estimators.kde_classes import CLASS_PASS_MAX_ROWS, conditional_bounds


def _data(gen, d=3):
    big = CLASS_PASS_MAX_ROWS + 76  # above the packed pass: its own pairwise pass
    labels = torch.cat([torch.zeros(big, dtype=torch.long), torch.arange(1, 101),
                        torch.randint(101, 111, (400,), generator=gen)])
    t = torch.randn(len(labels), d, generator=gen, dtype=torch.float64) + labels[:, None] % 7
    return t, labels


def test_conditional_bounds_are_the_per_class_sums():
    gen = torch.Generator().manual_seed(11)
    t, labels = _data(gen)
    s2, n, d = 0.4, t.shape[0], t.shape[1]
    h_noise = gaussian_noise_entropy(d, s2)
    calls = []

    def class_bounds(rows):
        calls.append(rows.shape[0])
        kl, bd, _ = pairwise_log_means(rows, s2, 1 << 22)
        return h_noise - float(kl.mean()), h_noise - float(bd.mean())

    got = conditional_bounds(t, labels, h_noise, s2, 1 << 22, class_bounds)
    up = low = 0.0
    for c in torch.unique(labels).tolist():
        rows = t[labels == c]
        p = rows.shape[0] / n
        if rows.shape[0] == 1:
            up, low = up + p * h_noise, low + p * h_noise
            continue
        kl, bd, _ = pairwise_log_means(rows, s2, 1 << 22)
        up += p * (h_noise - float(kl.mean()))
        low += p * (h_noise - float(bd.mean()))
    assert got["cond_upper"] == pytest.approx(up, abs=1e-9)
    assert got["cond_lower"] == pytest.approx(low, abs=1e-9)
    assert calls == [CLASS_PASS_MAX_ROWS + 76]  # only the large class, once
    assert got["n_classes"] == 111 and got["per_class"] is None  # > 64 classes: not listed
    p = torch.bincount(labels).double() / n
    assert got["h_labels"] == pytest.approx(float(-(p * p.log()).sum()), rel=1e-12)


def test_a_large_class_leaves_the_whole_sample_bounds_cached():
    gen = torch.Generator().manual_seed(12)
    t, labels = _data(gen)
    x = torch.arange(t.shape[0])  # token-like ids: one row per class
    est = KDE(noise_var=0.4, dtype="float64", n_permutations=0)
    whole_passes = []
    compute = est._compute_bounds

    def counting(rows):
        if rows.shape[0] == t.shape[0]:
            whole_passes.append(1)
        return compute(rows)

    est._compute_bounds = counting
    reuse = getattr(est, "_reuse_bounds", None) or est.reuse_bounds
    with reuse():
        i_ty = est.mutual_information(t, labels, discrete_y=True)
        i_xt = est.mutual_information(x, t, discrete_x=True)
    assert len(whole_passes) == 1
    # every class of X is one row: H(T+Z | X) = h_noise, so I(X;T) = H(T+Z) - h_noise
    assert i_xt.details["mi_upper"] == pytest.approx(
        i_xt.details["h_upper"] - i_xt.details["h_noise"], abs=1e-12)
    assert 0 < i_ty.value < i_xt.value
