"""KSG mutual information, Ross's mixed variant, Kozachenko-Leonenko entropy and the exact
max-norm neighbour search behind them, against the closed forms of docs/estimators.md."""

import math

import numpy as np
import pytest
import torch

import ibtools
from ibtools.estimators import neighbours as nb
from ibtools.estimators.ksg import KSG, scale_and_jitter

# per-coordinate correlation giving exactly 1 nat over two pairs: -2/2 ln(1 - rho^2) = 1
RHO_1NAT_2D = math.sqrt(1 - math.exp(-1))


def gaussian_pair(n, rho, d=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = rho * x + math.sqrt(1 - rho**2) * rng.normal(size=(n, d))
    return x, y, -d / 2 * math.log(1 - rho**2)


def ksg(x, y, **settings):
    return ibtools.mutual_information(x, y, method="ksg", **settings)


# --------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("algorithm", [1, 2])
def test_gaussian_2d_one_nat_within_5_percent(algorithm):
    x, y, truth = gaussian_pair(10_000, RHO_1NAT_2D, d=2, seed=1)
    assert truth == pytest.approx(1.0)
    r = ksg(x, y, algorithm=algorithm)
    assert r.value == pytest.approx(truth, rel=0.05)
    assert r.details["algorithm"] == algorithm and r.details["backend"] == "tree"


@pytest.fixture(scope="module")
def gaussian_5d():
    # 5 pairs of 0.2 nats: 1 nat in all
    rho = math.sqrt(1 - math.exp(-0.4))
    x, y, truth = gaussian_pair(10_000, rho, d=5, seed=2)
    return x, y, truth, ksg(x, y)


def test_5d_reads_low_as_documented(gaussian_5d):
    # KSG's known downward bias in 10 joint dimensions at n = 10 000: it is a property of
    # the estimator, so it is asserted as a band, not hidden by a wide tolerance
    x, y, truth, plain = gaussian_5d
    assert 0.75 * truth < plain.value < 0.95 * truth
    assert any("biased toward 0" in f for f in plain.flags)


def test_cubed_y_reads_low_and_copula_restores(gaussian_5d):
    x, y, truth, plain = gaussian_5d
    cubed = ksg(x, y**3)
    # a monotone map keeps I(X;Y) but bends the kNN geometry: the tree estimate drops
    assert cubed.value < plain.value - 0.1
    restored = ksg(x, y**3, transform="copula")
    assert abs(restored.value - truth) <= abs(plain.value - truth) + 0.03


def test_independence_near_zero():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5000, 2)), rng.normal(size=(5000, 2))
    assert abs(ksg(x, y).value) < 0.02


def test_additive_over_independent_copies():
    x1, y1, t1 = gaussian_pair(4000, 0.6, seed=4)
    x2, y2, t2 = gaussian_pair(4000, 0.8, seed=5)
    separate = ksg(x1, y1).value + ksg(x2, y2).value
    joint = ksg(np.hstack([x1, x2]), np.hstack([y1, y2])).value
    assert joint == pytest.approx(separate, abs=0.04)
    assert separate == pytest.approx(t1 + t2, abs=0.04)


def test_invariance_affine_and_asinh():
    x, y, truth = gaussian_pair(3000, 0.7, d=2, seed=6)
    base = ksg(x, y, dtype="float64")
    # per-column centring and scaling make an affine map a no-op up to rounding (float64:
    # in float32 the shift by 100 alone rounds y by ~1e-5)
    affine = ksg(3.0 * x - 7.0, 0.25 * y + 100.0, dtype="float64")
    assert affine.value == pytest.approx(base.value, abs=1e-6)
    # the copula sees only ranks, so any increasing map leaves it exactly unchanged
    c0 = ksg(x, y, transform="copula").value
    c1 = ksg(np.arcsinh(5 * x), 2 * y + 1, transform="copula").value
    assert c1 == pytest.approx(c0, abs=1e-12)
    assert c0 == pytest.approx(truth, rel=0.06)
    # untransformed asinh bends the geometry a little: still within 6 %
    assert ksg(np.arcsinh(x), y).value == pytest.approx(truth, rel=0.06)


@pytest.mark.parametrize("w", [1.0, 2.0])
def test_mixed_case6_discrete_label(w):
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=5000)
    t = labels[:, None] + rng.uniform(0, w, size=(5000, 1))
    r = ksg(t, labels)
    assert r.details["estimator"] == "ross2014"
    assert r.value == pytest.approx(math.log(2) / w, abs=0.03)


def test_mixed_small_classes_are_flagged():
    rng = np.random.default_rng(8)
    labels = np.r_[np.zeros(500, int), np.ones(500, int), [2, 2, 3]]
    t = labels[:, None] + rng.uniform(0, 1.0, size=(len(labels), 1))
    r = ksg(t, labels, k=3)
    assert any("left out" in f for f in r.flags)  # the singleton class 3
    assert any("k was reduced" in f for f in r.flags)  # class 2 has 2 samples
    assert r.details["n_used"] == len(labels) - 1
    assert r.value == pytest.approx(math.log(2), abs=0.05)


def test_case7_uniform_noise():
    rng = np.random.default_rng(9)
    e = 0.3
    x = rng.uniform(0, 1, size=(5000, 1))
    y = x + rng.uniform(-e, e, size=(5000, 1))
    assert ksg(x, y).value == pytest.approx(e - math.log(2 * e), abs=0.03)


def test_kozachenko_leonenko_gaussian_entropy():
    rng = np.random.default_rng(10)
    cov = np.array([[1.0, 0.5, 0.2], [0.5, 2.0, 0.3], [0.2, 0.3, 1.5]])
    z = rng.multivariate_normal(np.zeros(3), cov, size=5000)
    truth = 0.5 * math.log((2 * math.pi * math.e) ** 3 * np.linalg.det(cov))
    r = ibtools.entropy(z, method="ksg")
    assert r.value == pytest.approx(truth, abs=0.05)
    # the entropy follows the scale: h(10 Z) = h(Z) + 3 ln 10, the geometry being rescaled
    big = ibtools.entropy(10 * z, method="ksg")
    assert big.value == pytest.approx(r.value + 3 * math.log(10), abs=1e-6)


# --------------------------------------------------------------------------- exactness


@pytest.fixture(params=["scipy", "numba"])
def engine(request, monkeypatch):
    """Both implementations of the "tree" backend: scipy/scikit-learn, and the numba tree
    (forced below its size threshold, so these small cases exercise it)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("IBTOOLS_TREE_ENGINE", request.param)
    assert nb.tree_engine(10) == request.param
    return request.param


@pytest.fixture(params=["torch", "numba"])
def brute(request, monkeypatch):
    """Both implementations of the "brute" backend: torch blocks, and the compiled per-row
    kernels (forced below their size threshold)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", request.param)
    assert nb.brute_engine(10, torch.float64, torch.device("cpu")) == request.param
    return request.param


def test_brute_and_tree_identical(engine, brute):
    x, y, _ = gaussian_pair(1500, 0.6, d=3, seed=11)
    y = y[:, :2]
    for algorithm in (1, 2):
        a = ksg(x, y, algorithm=algorithm, neighbours="brute")
        b = ksg(x, y, algorithm=algorithm, neighbours="tree")
        assert a.details["backend"] == "brute" and b.details["backend"] == "tree"
        assert b.details["tree_engine"] == engine and "tree_engine" not in a.details
        assert a.details["brute_engine"] == brute and "brute_engine" not in b.details
        assert a.value == b.value
    labels = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0.5)
    assert ksg(x, labels, neighbours="brute").value == ksg(x, labels, neighbours="tree").value
    ea = ibtools.entropy(x, method="ksg", neighbours="brute").value
    assert ea == ibtools.entropy(x, method="ksg", neighbours="tree").value


def test_chunked_brute_equals_unchunked():
    x, y, _ = gaussian_pair(1200, 0.5, d=2, seed=12)
    whole = ksg(x, y, neighbours="brute", algorithm=2)
    # ~8 query rows per block instead of all 1200
    tiny = ksg(x, y, neighbours="brute", algorithm=2, memory_budget=8 * 1200 * 26)
    assert tiny.value == whole.value


def test_neighbour_backends_agree_with_ties(engine):
    g = torch.Generator().manual_seed(13)
    pts = torch.round(torch.randn(800, 2, generator=g, dtype=torch.float64) * 8) / 8
    eps_b, idx_b = nb.knn_distance(pts, 4, "brute", 2**20, return_indices=True)
    eps_t, idx_t = nb.knn_distance(pts, 4, "tree", 2**20, return_indices=True)
    torch.testing.assert_close(eps_t, eps_b, rtol=0, atol=0)
    # indices may differ among equidistant points, never in their distances or in self
    assert not (idx_t == torch.arange(800)[:, None]).any()
    d_t = (pts[idx_t] - pts[:, None]).abs().amax(-1)
    d_b = (pts[idx_b] - pts[:, None]).abs().amax(-1)
    torch.testing.assert_close(d_t.sort(1).values, d_b.sort(1).values, rtol=0, atol=0)
    for strict in (True, False):
        brute = nb.count_brute(pts, eps_b, strict, 2**20)
        assert torch.equal(torch.as_tensor(nb.count_tree(pts.numpy(), eps_b.numpy(), strict)),
                           brute)
        one_d = nb.count_brute(pts[:, :1], eps_b, strict, 2**20)
        assert torch.equal(nb.count_sorted_1d(pts[:, 0], eps_b, strict), one_d)
    # a zero radius counts nothing strictly and the exact twins otherwise
    zero = torch.zeros(800, dtype=torch.float64)
    for strict in (True, False):
        assert torch.equal(torch.as_tensor(nb.count_tree(pts.numpy(), zero.numpy(), strict)),
                           nb.count_brute(pts, zero, strict, 2**20))
    assert int(nb.count_sorted_1d(pts[:, 0], zero, True).sum()) == 0
    assert torch.equal(nb.count_sorted_1d(pts[:, 0], zero, False),
                       nb.count_brute(pts[:, :1], zero, False, 2**20))


@pytest.mark.parametrize("sorted_engine", ["torch", "numba"])
def test_one_dimensional_counts_identical_on_both_engines(sorted_engine, monkeypatch):
    # the compiled sorted search and the torch one evaluate the same predicate: same counts,
    # with ties, a zero and a NaN radius, against brute force
    if sorted_engine == "numba":
        pytest.importorskip("numba")
    monkeypatch.setenv("IBTOOLS_SORTED_ENGINE", sorted_engine)
    g = torch.Generator().manual_seed(31)
    v = torch.round(torch.randn(3000, generator=g, dtype=torch.float64) * 16) / 16
    r = torch.rand(3000, generator=g, dtype=torch.float64) * 0.3
    r[:50] = 0.0
    r[50] = float("nan")
    for strict in (True, False):
        expected = nb.count_brute(v[:, None], r, strict, 2**20)
        assert expected[50] == 0
        assert torch.equal(nb.count_sorted_1d(v, r, strict), expected)


def test_seeds_reproducible_and_differ_on_ties():
    x, y, _ = gaussian_pair(2000, 0.6, d=1, seed=14)
    xr, yr = np.round(x, 1), np.round(y, 1)  # heavy ties: the noise decides their order
    a, b = ksg(xr, yr, seed=0), ksg(xr, yr, seed=0)
    assert a.value == b.value
    c = ksg(xr, yr, seed=1)
    assert 0 < abs(c.value - a.value) < 0.05
    assert any("tied values" in f for f in a.flags)
    # on continuous data the noise moves nothing that matters
    assert ksg(x, y, seed=0).value == pytest.approx(ksg(x, y, seed=5).value, abs=1e-9)


def test_float32_and_float64_agree():
    x, y, _ = gaussian_pair(3000, 0.7, d=2, seed=15)
    v32 = ksg(x, y, dtype="float32").value
    v64 = ksg(x, y, dtype="float64").value
    assert v32 == pytest.approx(v64, abs=2e-3)


def test_duplicates_and_constant_columns():
    x, y, truth = gaussian_pair(2000, 0.7, d=2, seed=16)
    base = ksg(x, y).value
    with_const = ksg(np.hstack([x, np.full((2000, 1), 3.0)]), y).value
    assert with_const == pytest.approx(base, abs=1e-9)
    dup_x, dup_y = np.vstack([x, x[:600]]), np.vstack([y, y[:600]])
    r = ksg(dup_x, dup_y)
    assert math.isfinite(r.value) and r.value > 0.5 * truth
    assert any("tied values" in f for f in r.flags)
    with pytest.raises(ValueError, match="noise > 0"):
        ibtools.entropy(np.vstack([x, x, x, x]), method="ksg", noise=0.0)


def test_scale_and_jitter_is_seeded_and_relative():
    t = torch.tensor([[0.0, 5.0], [2.0, 5.0], [4.0, 5.0]])
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a, log_scale = scale_and_jitter(t, 1e-6, g1)
    b, _ = scale_and_jitter(t, 1e-6, g2)
    assert torch.equal(a, b) and a.dtype == torch.float64
    assert log_scale == pytest.approx(math.log(math.sqrt(8 / 3)))
    assert a[:, 1].abs().max() < 1e-5  # constant column: only the noise is left
    torch.testing.assert_close(a[:, 0].std(unbiased=False).item(), 1.0, rtol=1e-5, atol=0)


# --------------------------------------------------------------------------- errors


def test_too_few_samples_raise():
    with pytest.raises(ValueError, match=r"n=3 samples is too few for KSG.*at least 4"):
        ksg(np.zeros((3, 1)) + np.arange(3)[:, None], np.arange(3.0)[:, None], k=3)


@pytest.mark.parametrize("setting, value, exc, text", [
    ("k", 0, ValueError, "k=0 is too small"),
    ("k", 2.5, TypeError, "k must be an integer"),
    ("algorithm", 3, ValueError, r"algorithm=3 is not accepted; use one of \[1, 2\]"),
    ("algorithm", True, TypeError, "algorithm must be the integer 1 or 2"),
    ("noise", -1.0, ValueError, "noise=-1.0 must be a finite number >= 0"),
    ("neighbours", "ball", ValueError, r"neighbours='ball' is not accepted"),
])
def test_bad_settings_are_named(setting, value, exc, text):
    with pytest.raises(exc, match=text):
        KSG(**{setting: value})


def test_seeds_interval():
    x, y, truth = gaussian_pair(2000, 0.6, d=1, seed=17)
    r = ksg(np.round(x, 2), np.round(y, 2), ci="seeds", n_resamples=5)
    assert r.ci_kind == "seeds" and len(r.details["resample_values"]) == 5
    # the spread over tie-breaking seeds is real but small next to the value
    assert 0 < r.ci[1] - r.ci[0] < 0.02
    assert r.value == pytest.approx(np.mean(r.details["resample_values"]), abs=0.01)


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_brute_matches_cpu():
    x, y, truth = gaussian_pair(4000, RHO_1NAT_2D, d=2, seed=18)
    xt = torch.as_tensor(x, device="cuda")
    yt = torch.as_tensor(y, device="cuda")
    for algorithm in (1, 2):
        gpu = ksg(xt, yt, algorithm=algorithm)
        cpu = ksg(x, y, algorithm=algorithm)
        assert gpu.details["backend"] == "brute"
        # the noise comes from the CUDA generator, so only the noise can differ
        assert gpu.value == pytest.approx(cpu.value, abs=1e-3)
    labels = torch.as_tensor((x[:, 0] > 0).astype(np.int64), device="cuda")
    assert ksg(xt, labels).value == pytest.approx(ksg(x, labels.cpu().numpy()).value, abs=1e-3)
    h = ibtools.entropy(xt, method="ksg").value
    assert h == pytest.approx(ibtools.entropy(x, method="ksg").value, abs=1e-3)


def test_tree_engine_choice(monkeypatch):
    monkeypatch.setenv("IBTOOLS_TREE_ENGINE", "scipy")
    assert nb.tree_engine(10**6) == "scipy"
    monkeypatch.setenv("IBTOOLS_TREE_ENGINE", "kdtree")
    with pytest.raises(ValueError, match=r"IBTOOLS_TREE_ENGINE='kdtree' is not accepted"):
        nb.tree_engine(10)
    monkeypatch.delenv("IBTOOLS_TREE_ENGINE")
    # auto: small samples keep scipy (no compile), large ones take numba when installed
    assert nb.tree_engine(nb.NUMBA_MIN_N - 1) == "scipy"
    has_numba = nb._TREE.module() is not None
    assert nb.tree_engine(nb.NUMBA_MIN_N) == ("numba" if has_numba else "scipy")


def test_numba_tree_from_several_threads(monkeypatch):
    # numba's default threading layer aborts the process when two Python threads run its
    # parallel code at once; the tree serialises its calls, so threads get the same numbers
    pytest.importorskip("numba")
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("IBTOOLS_TREE_ENGINE", "numba")
    pts = np.random.default_rng(14).standard_normal((3000, 4))
    alone = nb.knn_tree(pts, 3)[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: nb.knn_tree(pts, 3)[0], range(6)))
    assert all(np.array_equal(r, alone) for r in results)


def test_numba_tree_that_cannot_load_falls_back(monkeypatch):
    # numba raises RuntimeError, not ImportError, when it finds no writable folder for its
    # cache (read-only installs): "auto" must then use scipy, and forcing numba must say why
    from ibtools.estimators import _jit

    def broken(name):
        raise RuntimeError(f"cannot cache function 'build': no locator available ({name})")

    monkeypatch.setattr(_jit, "_import", broken)
    monkeypatch.setattr(nb, "_TREE", _jit.Compiled("_kdtree_numba"))
    monkeypatch.delenv("IBTOOLS_TREE_ENGINE", raising=False)
    assert nb.tree_engine(10**6) == "scipy"
    pts = np.random.default_rng(15).standard_normal((nb.NUMBA_MIN_N, 2))
    eps, _ = nb.knn_tree(pts, 2)
    assert eps.shape == (nb.NUMBA_MIN_N,) and np.all(eps > 0)
    monkeypatch.setenv("IBTOOLS_TREE_ENGINE", "numba")
    with pytest.raises(ImportError, match="RuntimeError: cannot cache function"):
        nb.tree_engine(10)


def test_numba_brute_kernels_equal_torch_blocks(monkeypatch):
    # every statistic of the brute backend, number for number: n spans several tiles of
    # columns (1024), ties (rounded data) for the distances and counts, k up to 5
    pytest.importorskip("numba")
    rng = np.random.default_rng(16)
    smooth = torch.as_tensor(rng.normal(size=(2600, 5)))
    tied = torch.round(smooth * 4) / 4
    radius = torch.as_tensor(rng.uniform(0.0, 1.0, 2600))
    radius[:5] = 0.0
    radius[5] = float("nan")
    out = {}
    for engine in ("torch", "numba"):
        monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", engine)
        got = []
        for algorithm in (1, 2):
            for k in (1, 5):
                eps, counts = nb.joint_neighbour_counts_brute(
                    [smooth[:, :2], smooth[:, 2:]], k, algorithm, 1 << 22)
                got += [eps, *counts]
        for k in (1, 4):
            eps, idx = nb.knn_brute(smooth, k, 1 << 22, return_indices=True)
            got += [eps, idx, nb.knn_brute(tied, k, 1 << 22)[0]]
        for strict in (True, False):
            got += [nb.count_brute(tied, radius, strict, 1 << 22),
                    nb.count_brute(smooth[:, :3], radius, strict, 1 << 22)]
        out[engine] = got
    assert len(out["numba"]) == len(out["torch"]) == 22
    for a, b in zip(out["numba"], out["torch"]):
        assert a.dtype == b.dtype and torch.equal(a, b)


def test_brute_engine_choice_and_fallback(monkeypatch):
    from ibtools.estimators import _jit

    cpu = torch.device("cpu")
    monkeypatch.delenv("IBTOOLS_BRUTE_ENGINE", raising=False)
    has_numba = nb._BRUTE.module() is not None
    big = nb.BRUTE_NUMBA_MIN_N
    assert nb.brute_engine(big, torch.float64, cpu) == ("numba" if has_numba else "torch")
    assert nb.brute_engine(big - 1, torch.float64, cpu) == "torch"
    assert nb.brute_engine(big, torch.float32, cpu) == "torch"
    assert nb.brute_engine(big, torch.float64, torch.device("cuda")) == "torch"
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "cdist")
    with pytest.raises(ValueError, match=r"IBTOOLS_BRUTE_ENGINE='cdist' is not accepted"):
        nb.brute_engine(10, torch.float64, cpu)

    def broken(name):
        raise RuntimeError(f"cannot cache function 'knn': no locator available ({name})")

    monkeypatch.setattr(_jit, "_import", broken)
    monkeypatch.setattr(nb, "_BRUTE", _jit.Compiled("_brute_numba"))
    monkeypatch.delenv("IBTOOLS_BRUTE_ENGINE")
    x, y, _ = gaussian_pair(big, 0.6, d=2, seed=17)
    r = ksg(x, y, neighbours="brute")
    assert r.details["brute_engine"] == "torch" and r.value > 0
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "numba")
    with pytest.raises(ImportError, match="RuntimeError: cannot cache function 'knn'"):
        ksg(x, y, neighbours="brute")


def test_numba_brute_from_several_threads(monkeypatch):
    # the brute kernels take the lock every numba kernel shares (as in
    # test_numba_tree_from_several_threads)
    pytest.importorskip("numba")
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "numba")
    pts = torch.as_tensor(np.random.default_rng(18).standard_normal((1500, 4)))
    alone = nb.knn_brute(pts, 3, 1 << 22)[0]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: nb.knn_brute(pts, 3, 1 << 22)[0], range(6)))
    assert all(torch.equal(r, alone) for r in results)


def test_auto_backend_follows_the_brute_engine(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "torch")
    assert nb.choose_backend("auto", cpu, 10, 5000) == "tree"
    assert nb.choose_backend("auto", cpu, 32, 5000) == "brute"
    assert nb.choose_backend("auto", cpu, 4, 500) == "brute"
    assert nb.choose_backend("auto", torch.device("cuda"), 2, 10**6) == "brute"
    assert nb.choose_backend("tree", cpu, 64, 100) == "tree"
    if nb._BRUTE.module() is None:
        return
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "auto")
    # compiled brute force: trees from the measured crossover, 1600 * 2^(d/3) points (5+5 d
    # at n = 30 000 took 2.4x the CPU time on brute force as on the compiled tree)
    assert nb.choose_backend("auto", cpu, 10, 15_000) == "brute"
    assert nb.choose_backend("auto", cpu, 10, 17_000) == "tree"
    assert nb.choose_backend("auto", cpu, 10, 30_000) == "tree"
    assert nb.choose_backend("auto", cpu, 4, 3_000) == "brute"
    assert nb.choose_backend("auto", cpu, 4, 5_000) == "tree"
    assert nb.choose_backend("auto", cpu, 20, 10**5) == "brute"
    r = ksg(*gaussian_pair(3000, 0.5, d=5, seed=19)[:2])
    assert r.details["backend"] == "brute" and r.details["brute_engine"] == "numba"


def test_numba_brute_guards_and_thread_setting(monkeypatch):
    # a part without columns never reaches the compiled kernels (they read coordinate 0),
    # and a kernel call leaves the caller's numba thread count as it found it
    numba = pytest.importorskip("numba")
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "numba")
    x = torch.as_tensor(np.random.default_rng(20).standard_normal((300, 3)))
    empty = x[:, :0]
    eps, (nx, ny) = nb.joint_neighbour_counts_brute([x, empty], 3, 1, 1 << 22)
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "torch")
    eps_t, (nx_t, ny_t) = nb.joint_neighbour_counts_brute([x, empty], 3, 1, 1 << 22)
    assert torch.equal(eps, eps_t) and torch.equal(nx, nx_t) and torch.equal(ny, ny_t)
    monkeypatch.setenv("IBTOOLS_BRUTE_ENGINE", "numba")
    numba.set_num_threads(1)
    try:
        nb.knn_brute(x, 2, 1 << 22)
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)


def test_auto_backend_does_not_flip_at_the_compiled_threshold(monkeypatch):
    if nb._BRUTE.module() is None:
        # the rule under test is the one for compiled brute force (needs ibtools[fast])
        pytest.skip(f"the compiled brute-force kernels cannot load: {nb._BRUTE.error}")
    monkeypatch.delenv("IBTOOLS_BRUTE_ENGINE", raising=False)
    cpu = torch.device("cpu")
    # d = 10: brute force below 1600 * 2^(10/3) = 16127 points, on either side of
    # BRUTE_NUMBA_MIN_N
    picks = {n: nb.choose_backend("auto", cpu, 10, n) for n in (1000, 1999, 2000, 16000)}
    assert set(picks.values()) == {"brute"}
    x, y, _ = gaussian_pair(600, 0.5, d=2, seed=21)
    labels = (x[:, 0] > 0).astype(int)
    r = ksg(np.hstack([x, y]), labels, neighbours="brute")
    assert r.details["brute_engine"] == "torch"  # 600 points: below the compiled threshold


def test_thousands_of_dimensions_do_not_overflow_the_engine_choice():
    # a flattened conv map: 2^(dim/2) overflows a float from about 2046 dimensions, which
    # aborted whole analyze runs with OverflowError
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2100))
    r = ibtools.mutual_information(x, x[:, :10], method="ksg", k=3)
    assert np.isfinite(r.value)
    assert any("dimension 2110 is high" in f for f in r.flags)
    labels = rng.integers(0, 3, 300)
    assert abs(ibtools.mutual_information(x, labels, method="ksg", k=3).value) < 0.1
