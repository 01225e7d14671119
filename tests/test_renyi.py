"""Matrix-based Renyi entropy and MI: exact spectral facts, invariances, ordering."""

import math

import numpy as np
import pytest
import torch

import ibtools
from ibtools.estimators.renyi import (
    MatrixRenyi,
    counts_renyi_entropy,
    delta_gram,
    gaussian_gram,
    hadamard_joint,
    kernel_width,
    matrix_renyi_entropy,
    normalized_gram,
    squared_distances,
)


def _correlated(n, rho, seed, d=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1 - rho * rho) * rng.normal(size=(n, d))
    return x, y


def test_normalized_grams_have_unit_trace_spectra():
    x, y = _correlated(150, 0.6, 0)
    xt = torch.as_tensor(x)
    a = normalized_gram(gaussian_gram(squared_distances(xt), 1.3))
    b = normalized_gram(delta_gram(torch.as_tensor(np.arange(150) % 4)))
    for m in (a, b, hadamard_joint(a, b)):
        lam = torch.linalg.eigvalsh(m)
        assert float(lam.sum()) == pytest.approx(1.0, abs=1e-10)
        assert float(lam.min()) > -1e-10  # positive semi-definite up to rounding
    assert float(a.diagonal().sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.01, 2.0])
def test_delta_kernel_on_balanced_labels_is_exactly_ln_k(alpha):
    # A = blocks of ones of size n/K divided by n: eigenvalues 1/K (K times), so S = ln K
    labels = torch.as_tensor(np.arange(120) % 4)
    via_eig = matrix_renyi_entropy(normalized_gram(delta_gram(labels)), alpha)
    assert via_eig == pytest.approx(math.log(4), abs=1e-9)
    assert counts_renyi_entropy(labels, alpha) == pytest.approx(math.log(4), abs=1e-12)
    x = np.random.default_rng(1).normal(size=(120, 2))
    r = MatrixRenyi(alpha=alpha).mutual_information(x, labels.numpy())
    assert r.details["entropy_y"] == pytest.approx(math.log(4), abs=1e-9)
    assert r.details["sigma_y"] is None
    assert r.value <= min(r.details["entropy_x"], r.details["entropy_y"]) + 1e-9


def test_unbalanced_labels_give_renyi_entropy_of_frequencies():
    labels = torch.as_tensor(np.r_[np.zeros(60, int), np.ones(30, int), np.full(10, 2)])
    p = np.array([0.6, 0.3, 0.1])
    for alpha in (0.5, 2.0):
        want = math.log((p ** alpha).sum()) / (1 - alpha)
        got = matrix_renyi_entropy(normalized_gram(delta_gram(labels)), alpha)
        assert got == pytest.approx(want, abs=1e-9)
    assert counts_renyi_entropy(labels, 1.0) == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)


@pytest.mark.parametrize("k", [2, 5])
def test_discrete_copy_gives_ln_k(k):
    x = np.arange(200) % k  # Y = X uniform on K symbols: I = ln K for every alpha
    r = ibtools.mutual_information(x, x.copy(), method="renyi", alpha=2.0)
    assert r.value == pytest.approx(math.log(k), abs=1e-12)
    assert r.details["rows_used"] == 200


def test_invariant_to_joint_row_permutation():
    x, y = _correlated(200, 0.7, 2)
    perm = np.random.default_rng(3).permutation(200)
    a = MatrixRenyi().mutual_information(x, y)
    b = MatrixRenyi().mutual_information(x[perm], y[perm])
    assert b.value == pytest.approx(a.value, abs=1e-8)


def test_invariant_to_scaling_with_sigma_scaled():
    x, y = _correlated(200, 0.7, 4)
    fixed = MatrixRenyi(sigma=0.8, dtype="float64").mutual_information(x, y)
    scaled = MatrixRenyi(sigma=0.8 * 7.0, dtype="float64").mutual_information(7.0 * x, 7.0 * y)
    assert scaled.value == pytest.approx(fixed.value, abs=1e-8)
    # the median rule scales with the data on its own
    ruled = MatrixRenyi(dtype="float64").mutual_information(x, y)
    ruled_scaled = MatrixRenyi(dtype="float64").mutual_information(0.01 * x, 50.0 * y)
    assert ruled_scaled.value == pytest.approx(ruled.value, abs=1e-8)
    assert ruled_scaled.details["sigma_x"] == pytest.approx(0.01 * ruled.details["sigma_x"])


def test_dependence_large_independence_and_permutation_small():
    x, y = _correlated(250, 0.9, 5)
    dep = ibtools.mutual_information(x, y, method="renyi").value
    indep = ibtools.mutual_information(x, np.random.default_rng(6).normal(size=(250, 2)),
                                       method="renyi").value
    shuffled = ibtools.mutual_information(x, y[np.random.default_rng(7).permutation(250)],
                                          method="renyi").value
    assert dep > 0.5
    assert 0.0 <= indep < 0.1 and 0.0 <= shuffled < 0.1
    assert dep > 5 * max(indep, shuffled)


def test_monotone_in_correlation():
    values = [MatrixRenyi().mutual_information(*_correlated(200, rho, 8)).value
              for rho in (0.0, 0.3, 0.6, 0.9, 0.99)]
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_alpha_to_one_is_continuous():
    x, y = _correlated(150, 0.8, 9)
    shannon = MatrixRenyi(alpha=1.0, dtype="float64").mutual_information(x, y)
    near = MatrixRenyi(alpha=1.0 + 1e-6, dtype="float64").mutual_information(x, y)
    assert near.value == pytest.approx(shannon.value, abs=1e-5)
    # alpha = 1 is the von Neumann entropy of the spectrum
    a = normalized_gram(gaussian_gram(squared_distances(torch.as_tensor(x)),
                                      shannon.details["sigma_x"]))
    lam = torch.linalg.eigvalsh(a).clamp(min=1e-300)
    assert shannon.details["entropy_x"] == pytest.approx(float(-(lam * lam.log()).sum()), abs=1e-9)
    # Renyi entropies decrease in alpha
    h = [MatrixRenyi(alpha=al).entropy(x).value for al in (0.5, 1.0, 2.0, 5.0)]
    assert all(b < a for a, b in zip(h, h[1:])), h


def test_max_samples_subsamples_and_flags():
    x, y = _correlated(400, 0.8, 10)
    r = MatrixRenyi(max_samples=150).mutual_information(x, y)
    assert r.details["rows_used"] == 150 and r.n == 400
    assert any("subsampled" in f for f in r.flags)
    again = MatrixRenyi(max_samples=150).mutual_information(x, y)
    assert again.value == r.value  # the subset is seeded
    other = MatrixRenyi(max_samples=150, seed=1).mutual_information(x, y)
    assert other.value != r.value
    full = MatrixRenyi(max_samples=400).mutual_information(x, y)
    assert not full.flags and full.details["rows_used"] == 400
    e = MatrixRenyi(max_samples=100).entropy(x)
    assert e.details["rows_used"] == 100 and any("subsampled" in f for f in e.flags)


def test_narrow_kernel_saturates_and_is_flagged():
    x = np.random.default_rng(11).normal(size=(100, 3))
    r = MatrixRenyi(sigma=1e-3).entropy(x)
    assert r.value == pytest.approx(math.log(100), abs=1e-6)
    assert any("ceiling" in f for f in r.flags)
    assert not MatrixRenyi().entropy(x).flags


def test_kernel_width_rules():
    x = torch.as_tensor(np.random.default_rng(12).normal(size=(101, 2)))
    dist = squared_distances(x)
    iu = torch.triu_indices(101, 101, offset=1)
    assert kernel_width(x, "median") == pytest.approx(float(dist[iu[0], iu[1]].sqrt().median()))
    std = float(x.var(dim=0).mean().sqrt())
    assert kernel_width(x, "silverman") == pytest.approx(std * 101 ** (-1 / 6))
    assert kernel_width(torch.ones(5, 2, dtype=torch.float64), "median") == 1.0


def test_subsample_interval():
    x, y = _correlated(120, 0.8, 13)
    r = MatrixRenyi(ci="auto", n_resamples=4).mutual_information(x, y)
    assert r.ci_kind == "subsample" and r.ci[0] < r.ci[1]


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="alpha"):
        MatrixRenyi(alpha=0.0)
    with pytest.raises(ValueError, match="sigma='wide'"):
        MatrixRenyi(sigma="wide")
    with pytest.raises(ValueError, match="sigma"):
        MatrixRenyi(sigma=-1.0)
    with pytest.raises(ValueError, match="max_samples"):
        MatrixRenyi(max_samples=1)
    with pytest.raises(TypeError, match="max_samples"):
        MatrixRenyi(max_samples=10.5)
    with pytest.raises(ValueError, match="ci='bootstrap'"):
        MatrixRenyi(ci="bootstrap")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _correlated(300, 0.7, 14)
    gpu = MatrixRenyi(max_samples=200, device="cuda").mutual_information(x, y)
    assert gpu.details["rows_used"] == 200
    assert math.isfinite(gpu.value) and gpu.value > 0.2
    full_cpu = MatrixRenyi().mutual_information(x, y)
    full_gpu = MatrixRenyi(device="cuda").mutual_information(x, y)
    assert full_gpu.value == pytest.approx(full_cpu.value, abs=1e-5)
