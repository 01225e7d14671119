"""Per-class log-determinants for Gaussian I(T;Y) (issue #22 item 2): classes with no more
rows than dimensions go through Sylvester's identity (an n_c x n_c Cholesky, or d ln ridge
for one row) instead of a d x d factorisation; the numbers must be those of the d x d path."""

import math

import pytest
import torch

from ibtools.estimators import Gaussian
from ibtools.estimators.gaussian import class_covariances, class_logdets, logdet


def _token_like(gen, d):
    """Sorted rows of classes of every kind: singletons, 2..d rows (several padded widths,
    one capped at d), just above d, above the packing limit."""
    sizes = [1, 1, 2, 3, 5, 8, 9, d - 1, d, d + 1, 2 * d + 3, 300, 1, 17]
    rows = torch.randn(sum(sizes), d, generator=gen, dtype=torch.float64) * 2.0
    return rows, sizes


@pytest.mark.parametrize("d", [12, 20])  # 20: a class of 17..20 rows pads to 32 > d, capped
def test_class_logdets_match_the_d_by_d_cholesky(d):
    gen = torch.Generator().manual_seed(5)
    rows, sizes = _token_like(gen, d)
    lam = 1e-3
    got, raw = class_logdets(rows, sizes, lam, budget=1 << 14)  # small budget: batches
    want, want_raw = logdet(class_covariances(rows, sizes, 1 << 20), lam)
    assert float((got - want).abs().max()) < 1e-9 * float(want.abs().max())
    assert raw is None and want_raw is None  # small classes are singular
    assert float(got[0]) == pytest.approx(d * math.log(lam), rel=1e-15)  # one row


def test_class_logdets_without_small_classes_keep_the_raw_logdets():
    gen = torch.Generator().manual_seed(6)
    d, sizes = 4, [5, 9, 40, 300]
    rows = torch.randn(sum(sizes), d, generator=gen, dtype=torch.float64)
    got, raw = class_logdets(rows, sizes, 1e-6, budget=1 << 20)
    want, want_raw = logdet(class_covariances(rows, sizes, 1 << 20), 1e-6)
    assert float((got - want).abs().max()) < 1e-12
    assert raw is not None and float((raw - want_raw).abs().max()) < 1e-12


def test_class_logdets_without_a_ridge_refuse_singular_classes():
    rows = torch.randn(10, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="singular even with ridge=0"):
        class_logdets(rows, [1, 9], 0.0, budget=1 << 20)


def test_token_labels_give_the_d_by_d_value():
    """I(X;T) with a token id per row (the GPT analysis' X): every class is a singleton
    or small, and the estimate is the one the stacked d x d path gives."""
    gen = torch.Generator().manual_seed(7)
    n, d = 600, 16
    y = torch.cat([torch.arange(300), torch.randint(300, 340, (300,), generator=gen)])
    t = torch.randn(n, d, generator=gen, dtype=torch.float64)
    est = Gaussian(dtype="float64", n_permutations=0, bias_correction=False)
    got = est.mutual_information(t, y, discrete_y=True)
    s = torch.cov(t.T)
    inv = 1.0 / torch.sqrt(torch.diagonal(s))
    lam = est.ridge * float(torch.diagonal(s * inv[:, None] * inv).sum()) / d
    ld_total, _ = logdet(s * inv[:, None] * inv, lam)
    order = torch.argsort(y, stable=True)
    counts = torch.bincount(y)
    sizes = counts[counts > 0].tolist()
    lds, _ = logdet(class_covariances(t[order] * inv, sizes, 1 << 20), lam)
    want = 0.5 * float(ld_total) - 0.5 * float((torch.tensor(sizes).double() / n * lds).sum())
    assert got.value == pytest.approx(want, rel=1e-10)
    assert got.value > 10  # the ridge, not the data, sets it: flagged
    assert any("no more rows than" in f for f in got.flags)
