"""KDE pairwise-distance bounds: ground truth from mixture entropies computed by quadrature,
the deterministic-map case 9 of docs/estimators.md, chunking, precision and the NumPy reference."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ibtools
from ibtools.estimators.kde import KDE, gaussian_noise_entropy, pairwise_log_means

_REF_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "kde_reference.py"
_spec = importlib.util.spec_from_file_location("kde_reference", _REF_PATH)
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


def _mixture_entropy_1d(centres, s2):
    """Entropy of 1/n sum_i N(c_i, s2) by a fine trapezoid rule (error << 1e-6)."""
    sd = math.sqrt(s2)
    grid = np.linspace(centres.min() - 12 * sd, centres.max() + 12 * sd, 200_001)
    z = (grid[:, None] - centres[None, :]) / sd
    log_p = (np.logaddexp.reduce(-0.5 * z * z, axis=1) - math.log(len(centres))
             - 0.5 * math.log(2 * math.pi * s2))
    p = np.exp(log_p)
    return float(-np.trapezoid(p * log_p, grid))


def _mixture_entropy_2d(centres, s2):
    """Entropy of an equal-weight 2-D Gaussian mixture by the rectangle rule with step sd/8
    over +-9 sd (spectrally accurate for a smooth Gaussian integrand: error << 1e-6)."""
    sd = math.sqrt(s2)
    step = sd / 8
    axes = [np.arange(centres[:, k].min() - 9 * sd, centres[:, k].max() + 9 * sd, step)
            for k in range(2)]
    gx, gy = np.meshgrid(*axes, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    d2 = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1)
    log_p = (np.logaddexp.reduce(-d2 / (2 * s2), axis=1) - math.log(len(centres))
             - math.log(2 * math.pi * s2))
    p = np.exp(log_p)
    return float(-(p * log_p).sum() * step * step)


@pytest.mark.parametrize("s2", [0.05, 0.3, 1.0])
def test_deterministic_map_bounds_bracket_true_mi(s2):
    # case 9: X uniform on N = 4 points, T = h(X) + N(0, s2 I); each point exactly 50 times so
    # the estimator's empirical mixture is the true one and the bounds are exact bounds.
    points = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
    x = np.repeat(np.arange(4.0), 50)[:, None]
    t = points[np.repeat(np.arange(4), 50)]
    true_mi = _mixture_entropy_2d(points, s2) - gaussian_noise_entropy(2, s2)
    r = ibtools.mutual_information(x, t, method="kde", noise_var=s2, deterministic=True,
                                   dtype="float64")
    lo, hi = r.details["mi_lower"], r.details["mi_upper"]
    assert lo - 1e-4 <= true_mi <= hi + 1e-4, (lo, true_mi, hi)
    assert r.value == pytest.approx(hi, abs=1e-12)  # bound="upper" is the default
    assert "deterministic function" in r.details["assumes"]
    low = ibtools.mutual_information(x, t, method="kde", noise_var=s2,
                                     deterministic=True, bound="lower")
    assert low.value == pytest.approx(lo, abs=1e-5)


def test_deterministic_map_tends_to_ln_n_points_as_noise_vanishes():
    rng = np.random.default_rng(0)
    points = rng.normal(size=(6, 3)) * 3.0
    codes = np.repeat(np.arange(6), 30)
    x, t = rng.normal(size=(180, 2)), points[codes]
    previous = 0.0
    for s2 in (3.0, 0.3, 0.03, 1e-4):
        r = ibtools.mutual_information(x, t, method="kde", noise_var=s2,
                                       deterministic=True)
        assert r.details["mi_lower"] <= r.details["mi_upper"] + 1e-6
        assert r.details["mi_lower"] >= previous - 1e-6  # less noise, more information
        previous = r.details["mi_lower"]
    # at s2 = 1e-4 the closest pair is > 1 apart: exp(-1 / 8e-4) vanishes, both equal ln 6
    assert r.details["mi_lower"] == pytest.approx(math.log(6), abs=1e-5)
    assert r.details["mi_upper"] == pytest.approx(math.log(6), abs=1e-5)
    assert not r.flags  # ln 6 is the true value, far below the ln 180 ceiling


@pytest.mark.parametrize("s2", [0.01, 0.1, 1.0])
def test_entropy_bounds_bracket_quadrature_mixture_entropy(s2):
    centres = np.random.default_rng(1).normal(size=40)
    truth = _mixture_entropy_1d(centres, s2)
    r = KDE(noise_var=s2, dtype="float64").entropy(centres[:, None])
    assert r.details["h_lower"] - 1e-6 <= truth <= r.details["h_upper"] + 1e-6
    assert r.value == pytest.approx(r.details["h_upper"], abs=1e-12)
    assert r.details["h_noise"] == pytest.approx(0.5 * math.log(2 * math.pi * math.e * s2))


def test_single_tight_cluster_approaches_noise_entropy():
    # spread 0.01 next to s2 = 1: -ln mean exp(-D/2s2) ~ mean D / 2s2 = tr(Cov) / s2 to first
    # order, and a quarter of that for the Bhattacharyya kernel
    t = np.random.default_rng(2).normal(size=(200, 3)) * 0.01
    s2 = 1.0
    r = KDE(noise_var=s2, dtype="float64").entropy(t)
    h_noise = gaussian_noise_entropy(3, s2)
    trace_cov = float(np.var(t, axis=0).sum())
    assert r.details["h_upper"] - h_noise == pytest.approx(trace_cov / s2, rel=0.01)
    assert r.details["h_lower"] - h_noise == pytest.approx(trace_cov / (4 * s2), rel=0.01)
    assert abs(r.details["h_upper"] - h_noise) < 1e-3


def test_discrete_labels_well_separated_give_ln2():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 200)
    t = 10.0 * y[:, None] + 0.1 * rng.normal(size=(400, 2))
    r = ibtools.mutual_information(t, y, method="kde", noise_var=0.1)
    assert r.details["mi_upper"] == pytest.approx(math.log(2), abs=1e-5)
    assert r.details["mi_lower"] == pytest.approx(math.log(2), abs=1e-5)
    swapped = ibtools.mutual_information(y, t, method="kde", noise_var=0.1)
    assert swapped.value == pytest.approx(r.value, abs=1e-9)
    assert swapped.details["swapped_arguments"] is True
    # unbalanced labels: the plug-in H(Y) of the label frequencies, not ln 2
    y2 = np.r_[np.zeros(300, int), np.ones(100, int)]
    t2 = 10.0 * y2[:, None] + 0.1 * rng.normal(size=(400, 2))
    r2 = ibtools.mutual_information(t2, y2, method="kde", noise_var=0.1, bound="lower")
    assert r2.value == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), abs=1e-5)


def test_overlapping_classes_give_less_than_label_entropy_and_match_reference():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, size=300)
    t = y[:, None] * 0.7 + rng.normal(size=(300, 2))
    r = ibtools.mutual_information(t, y, method="kde", noise_var=0.5, dtype="float64")
    assert 0.0 < r.details["mi_lower"] < r.details["h_labels"]
    assert r.details["mi_upper"] == pytest.approx(ref.mi_labels(t, y, 0.5, "upper"), abs=1e-9)
    assert r.details["mi_lower"] == pytest.approx(ref.mi_labels(t, y, 0.5, "lower"), abs=1e-9)


def test_many_classes_with_singletons_match_reference():
    rng = np.random.default_rng(14)
    y = np.r_[rng.integers(0, 5, size=150), np.arange(5, 35)]  # 30 classes of one row
    t = rng.normal(size=(180, 3)) + 0.5 * (y % 5)[:, None]
    r = KDE(noise_var=0.4, dtype="float64").mutual_information(t, y)
    assert r.details["n_classes"] == 35
    assert r.details["mi_upper"] == pytest.approx(ref.mi_labels(t, y, 0.4, "upper"), abs=1e-9)
    assert r.details["mi_lower"] == pytest.approx(ref.mi_labels(t, y, 0.4, "lower"), abs=1e-9)


def test_saturation_flagged_for_tiny_noise_only():
    t = np.random.default_rng(5).normal(size=(300, 5))
    tiny = KDE(noise_var=1e-4).entropy(t)
    assert any("saturated" in f for f in tiny.flags)
    assert tiny.details["resolved_upper"] == pytest.approx(math.log(300), abs=1e-4)
    assert tiny.details["mean_self_weight"] > 0.99
    wide = KDE(noise_var=10.0).entropy(t)
    assert not wide.flags
    assert wide.details["resolved_upper"] < 0.5 * math.log(300)
    x = np.random.default_rng(6).normal(size=(300, 1))
    mi = ibtools.mutual_information(x, t, method="kde", noise_var=1e-4,
                                    deterministic=True)
    assert any("saturated" in f for f in mi.flags)


def test_saturated_discrete_mi_names_the_entropy_it_goes_to():
    # every row its own kernel: the MI with a discrete variable is that variable's plug-in
    # entropy whichever side (Y of I(T;Y), or token ids X of I(X;T)) it is
    rng = np.random.default_rng(8)
    t = rng.normal(size=(300, 5))
    labels = rng.integers(0, 7, size=300)
    counts = np.bincount(labels) / 300
    h = float(-(counts * np.log(counts)).sum())
    r = KDE(noise_var=1e-4).mutual_information(t, labels)
    assert r.value == pytest.approx(h, abs=1e-3)
    said = [f for f in r.flags if "plug-in entropy of the discrete variable" in f]
    assert said and f"({h:.4f} nats)" in said[0]
    assert not any("I(T;Y)" in f for f in r.flags)


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(7)
    t = rng.normal(size=(257, 4))
    y = rng.integers(0, 3, size=257)
    whole = KDE(noise_var=0.3).mutual_information(t, y)
    small = KDE(noise_var=0.3, memory_budget=20_000).mutual_information(t, y)
    assert whole.details["chunk_rows"] == 257 and small.details["chunk_rows"] < 20
    for key in ("mi_upper", "mi_lower", "h_upper", "h_lower"):
        assert small.details[key] == pytest.approx(whole.details[key], abs=1e-5)


def test_float32_matches_float64_and_numpy_reference():
    t = np.random.default_rng(8).normal(size=(400, 6)) * 2.0 + 5.0
    for s2 in (0.05, 1.0):
        r32 = KDE(noise_var=s2).entropy(t)
        r64 = KDE(noise_var=s2, dtype="float64").entropy(t)
        assert r32.details["h_upper"] == pytest.approx(r64.details["h_upper"], abs=1e-4)
        assert r32.details["h_lower"] == pytest.approx(r64.details["h_lower"], abs=1e-4)
        assert r32.details["h_upper"] == pytest.approx(ref.entropy_upper_kl(t, s2), abs=1e-4)
        assert r32.details["h_lower"] == pytest.approx(ref.entropy_lower_bd(t, s2), abs=1e-4)
        assert r64.details["h_upper"] == pytest.approx(ref.entropy_upper_kl(t, s2), abs=1e-9)
        mi = ibtools.mutual_information(t[:, :1], t, method="kde", noise_var=s2,
                                        deterministic=True)
        assert mi.value == pytest.approx(ref.mi_deterministic(t, s2), abs=1e-4)


def test_pairwise_log_means_rows_hold_self_term():
    t = torch.randn(50, 3, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    kl, bd, info = pairwise_log_means(t, 1e-6, 2**20)
    # every other kernel vanishes: ln(1/n * 1) per row
    torch.testing.assert_close(kl, torch.full((50,), -math.log(50), dtype=torch.float64))
    torch.testing.assert_close(bd, torch.full((50,), -math.log(50), dtype=torch.float64))
    assert info["chunk_rows"] == 50 and info["pairs"] == 50 * 50 and info["engine"] == "torch"


def test_invariant_to_row_order_and_translation():
    rng = np.random.default_rng(10)
    t = rng.normal(size=(200, 3))
    base = KDE(noise_var=0.2, dtype="float64").entropy(t).value
    perm = KDE(noise_var=0.2, dtype="float64").entropy(t[rng.permutation(200)] + 100.0).value
    assert perm == pytest.approx(base, abs=1e-8)


def test_subsample_interval_is_the_auto_choice():
    t = np.random.default_rng(11).normal(size=(200, 2))
    r = KDE(noise_var=0.2, ci="auto", n_resamples=5).entropy(t)
    assert r.ci_kind == "subsample"
    assert r.ci[0] < r.ci[1] and len(r.details["resample_values"]) == 5


def test_bad_settings_and_inputs_raise():
    with pytest.raises(ValueError, match="noise_var"):
        KDE(noise_var=0.0)
    with pytest.raises(ValueError, match="noise_var"):
        KDE(noise_var=-1.0)
    with pytest.raises(TypeError, match="noise_var"):
        KDE(noise_var="0.1")
    with pytest.raises(ValueError, match="bound='middle'"):
        KDE(bound="middle")
    with pytest.raises(ValueError, match="discrete"):
        KDE().mutual_information(np.array([0, 1, 1, 0]), np.array([1, 0, 1, 0]))
    with pytest.raises(ValueError, match="discrete"):
        KDE().entropy(np.array([0, 1, 2, 1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    t = torch.randn(3000, 16, generator=torch.Generator().manual_seed(12))
    y = torch.randint(0, 10, (3000,), generator=torch.Generator().manual_seed(13))
    cpu = KDE(noise_var=0.5).mutual_information(t, y)
    gpu = KDE(noise_var=0.5, memory_budget="8MiB").mutual_information(t.cuda(), y.cuda())
    assert gpu.details["mi_upper"] == pytest.approx(cpu.details["mi_upper"], abs=1e-4)
    assert gpu.details["h_lower"] == pytest.approx(cpu.details["h_lower"], abs=1e-4)


def test_whole_sample_bounds_are_reused_and_invalidated_by_inplace_change():
    gen = torch.Generator().manual_seed(11)
    t = torch.randn(1500, 4, generator=gen)
    x = torch.randn(1500, 4, generator=gen)
    labels = torch.randint(0, 3, (1500,), generator=gen)
    est = KDE(noise_var=0.2, deterministic=True)
    calls = []
    real = est._compute_bounds
    est._compute_bounds = lambda a: calls.append(a.shape[0]) or real(a)
    with est._reuse_bounds():  # internal: the seam layer_information enters it
        first = est.mutual_information(t, labels).details["h_upper"]
        est.mutual_information(x, t)  # same T: its H(T) bounds are not recomputed
        assert calls.count(1500) == 1
        t.mul_(2.0)  # an in-place change must not be served from the cache
        second = est.mutual_information(t, labels).details["h_upper"]
        assert calls.count(1500) == 2
    # scaling T by 2 raises H(T + Z) (wider mixture, same noise)
    assert second > first
    # outside the block nothing is kept: each call computes its own bounds
    est.mutual_information(x, t)
    est.mutual_information(x, t)
    assert calls.count(1500) == 4 and est._last_bounds is None


def test_no_stale_bounds_when_a_numpy_input_changes_in_place():
    # A float32 NumPy input is shared, not copied, by the tensor each call makes of it: same
    # address, version counter 0 every time.  An always-on cache keyed by those (the first
    # version) served the old array's bounds after an in-place change (2.65 instead of 5.56
    # nats here); outside _reuse_bounds() nothing is cached.
    rng = np.random.default_rng(12)
    est = KDE(noise_var=0.5, deterministic=True)
    x0 = np.zeros((1500, 1), dtype=np.float32)
    a = rng.normal(size=(1500, 3)).astype(np.float32)
    before = est.mutual_information(x0, a).value
    a *= 3.0
    after = est.mutual_information(x0, a).value
    assert after == pytest.approx(
        KDE(noise_var=0.5, deterministic=True).mutual_information(x0, a).value, abs=1e-9)
    assert after > before + 1.0  # a 3x wider T resolves far more


# -- the fused numba pass (ibtools[fast]) ------------------------------------------------------


def test_numba_exp2_is_accurate_over_the_clamped_range():
    kern = pytest.importorskip("ibtools.estimators._kde_numba")
    x = np.concatenate([np.linspace(-115.0, 0.0, 200_001), [-0.5, 0.5 - 1e-7, -114.5]])
    x = x.astype(np.float32)
    got = kern.exp2_array(x).astype(np.float64)
    rel = np.abs(got / np.exp2(x.astype(np.float64)) - 1.0)
    assert rel.max() < 3e-7  # float32 unit roundoff is 6e-8


@pytest.mark.parametrize("n, d, s2, budget", [
    (700, 1, 0.5, None),            # one tile, one block
    (2500, 7, 0.05, None),          # three tiles of columns
    (1500, 40, 1.0, 400_000),       # many blocks of 66 rows: the triangle's ragged edges
    (900, 5, 1e-3, None),           # small s2: the matmul runs in float64, then float32
])
def test_numba_engine_equals_torch_engine(monkeypatch, n, d, s2, budget):
    pytest.importorskip("numba")
    rng = np.random.default_rng(20 + d)
    t = (rng.normal(size=(n, d)) * rng.uniform(0.5, 2.0, size=d)).astype(np.float32)
    t[::50] = t[1::50]  # coinciding rows, as repeated inputs give
    kw = {} if budget is None else {"memory_budget": budget}
    out = {}
    for engine in ("torch", "numba"):
        monkeypatch.setenv("IBTOOLS_KDE_ENGINE", engine)
        r = KDE(noise_var=s2, **kw).entropy(t)
        assert r.details["engine"] == engine
        out[engine] = r.details
    for key in ("h_upper", "h_lower", "mean_self_weight"):
        assert out["numba"][key] == pytest.approx(out["torch"][key], abs=2e-6, rel=1e-6)
    assert out["numba"]["h_upper"] == pytest.approx(ref.entropy_upper_kl(t, s2), abs=1e-4)
    assert out["numba"]["h_lower"] == pytest.approx(ref.entropy_lower_bd(t, s2), abs=1e-4)


def test_numba_engine_row_sums_hold_every_pair(monkeypatch):
    # per-row log means, not only their average: both engines, every row, and the
    # self-only case (all other kernels underflow) is exactly -ln n
    pytest.importorskip("numba")
    t = torch.randn(3000, 3, generator=torch.Generator().manual_seed(21))
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "torch")
    kl_t, bd_t, _ = pairwise_log_means(t, 0.7, 1 << 20)
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "numba")
    kl_n, bd_n, info = pairwise_log_means(t, 0.7, 1 << 20)
    assert info["engine"] == "numba" and info["pairs"] >= 3000 * 3001 // 2
    torch.testing.assert_close(kl_n, kl_t, atol=2e-6, rtol=0)
    torch.testing.assert_close(bd_n, bd_t, atol=2e-6, rtol=0)
    kl, bd, _ = pairwise_log_means(t * 1e4, 1e-6, 1 << 20)
    torch.testing.assert_close(kl, torch.full((3000,), -math.log(3000), dtype=torch.float64))


def test_kde_engine_choice(monkeypatch):
    from ibtools.estimators import kde_kernel as kde_mod

    cpu = torch.device("cpu")
    monkeypatch.delenv("IBTOOLS_KDE_ENGINE", raising=False)
    has_numba = kde_mod._KERNELS.module() is not None
    big = kde_mod.KDE_NUMBA_MIN_N
    assert kde_mod.kde_engine(big, torch.float32, cpu) == ("numba" if has_numba else "torch")
    assert kde_mod.kde_engine(big - 1, torch.float32, cpu) == "torch"
    assert kde_mod.kde_engine(big, torch.float64, cpu) == "torch"
    assert kde_mod.kde_engine(big, torch.float32, torch.device("cuda")) == "torch"
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "torch")
    assert kde_mod.kde_engine(10**6, torch.float32, cpu) == "torch"
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "fused")
    with pytest.raises(ValueError, match=r"IBTOOLS_KDE_ENGINE='fused' is not accepted"):
        kde_mod.kde_engine(10, torch.float32, cpu)


def test_numba_kernel_that_cannot_load_falls_back(monkeypatch):
    from ibtools.estimators import _jit
    from ibtools.estimators import kde_kernel as kde_mod

    def broken(name):
        raise RuntimeError(f"cannot cache function 'block_sums': no locator available ({name})")

    monkeypatch.setattr(_jit, "_import", broken)
    monkeypatch.setattr(kde_mod, "_KERNELS", _jit.Compiled("_kde_numba"))
    monkeypatch.delenv("IBTOOLS_KDE_ENGINE", raising=False)
    t = np.random.default_rng(22).normal(size=(kde_mod.KDE_NUMBA_MIN_N, 2)).astype(np.float32)
    r = KDE(noise_var=0.5).entropy(t)
    assert r.details["engine"] == "torch" and math.isfinite(r.value)
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "numba")
    with pytest.raises(ImportError, match="RuntimeError: cannot cache function"):
        KDE(noise_var=0.5).entropy(t)


def test_numba_engine_from_several_threads(monkeypatch):
    # the fused pass and the numba tree share one lock: parallel numba code entered from two
    # Python threads at once aborts the process with numba's default threading layer
    pytest.importorskip("numba")
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "numba")
    t = np.random.default_rng(23).normal(size=(1200, 6)).astype(np.float32)
    alone = KDE(noise_var=0.4).entropy(t).value
    with ThreadPoolExecutor(4) as pool:
        values = list(pool.map(lambda _: KDE(noise_var=0.4).entropy(t).value, range(6)))
    assert values == [alone] * 6


def test_numba_engine_gives_way_to_torch_on_non_finite_rows(monkeypatch):
    # the fused pass assumes finite exponents (fastmath); pairwise_log_means, which direct
    # callers may reach with NaN, carries the NaN through as the torch engine does
    pytest.importorskip("numba")
    monkeypatch.setenv("IBTOOLS_KDE_ENGINE", "numba")
    t = torch.randn(300, 3, generator=torch.Generator().manual_seed(24))
    t[5, 0] = float("nan")
    kl, bd, info = pairwise_log_means(t, 1.0, 1 << 20)
    assert info["engine"] == "torch" and bool(torch.isnan(kl).all())


def test_labels_independent_of_t_are_flagged_by_the_automatic_check():
    # fewer kernels per class than in the whole mixture: KDE reads 0.066 nats here for
    # independent labels, which used to come back without a word
    rng = np.random.default_rng(0)
    t, y = rng.normal(size=(500, 1)), rng.integers(0, 10, 500)
    r = ibtools.mutual_information(t, y, method="kde", noise_var=0.1)
    assert r.value > 0.05
    assert r.details["null"]["automatic"] and r.details["null"]["p_value"] > 0.05
    assert any(f.startswith("not distinguishable from independence") for f in r.flags)
    # real dependence of the same size is not flagged, and a strong one needs no shuffles
    t = rng.normal(size=(2000, 2))
    r = ibtools.mutual_information(t, (t[:, 0] > 1.5).astype(int), method="kde", noise_var=0.1)
    assert not any("independence" in f for f in r.flags)
    r = ibtools.mutual_information(t, (t[:, 0] > 0).astype(int), method="kde", noise_var=0.1)
    assert "null" not in r.details
