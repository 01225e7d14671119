"""Neural MI bounds (MINE, NWJ, InfoNCE, SMILE) against closed-form ground truth.

Small, fast cases: a few hundred steps of small critics on a few thousand rows.  The full
sizes (20-d Gaussian staircase up to 10 nats, n = 20 000) are in benchmarks/neural.py.
"""

import math

import numpy as np
import pytest
import torch

import ibtools
from ibtools.estimators import neural_critics
from ibtools.estimators.neural import MINE, SMILE, InfoNCE

# Small critics: a few hundred steps are enough for these sizes.
FAST = {"hidden": 64, "embed_dim": 32, "batch_size": 128, "steps": 400}
# The 2-nat 20-d Gaussian needs more rows and steps: with fewer the critic overfits or is
# still rising, and the held-out value sits 10-20% low.
GAUSS = {**FAST, "steps": 600}


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny networks gain nothing from intra-op threads, and on a busy machine two spinning
    # threads per process are several times slower than one.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def correlated_gaussian(n, d, mi, seed):
    """x, y in R^d with per-coordinate correlation rho; I = -d/2 ln(1 - rho^2) = mi."""
    rho = math.sqrt(1.0 - math.exp(-2.0 * mi / d))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1.0 - rho**2) * torch.randn(n, d, generator=g)
    return x, y


@pytest.mark.parametrize("method", ["mine", "smile"])
def test_gaussian_2_nats_within_15_percent(method):
    x, y = correlated_gaussian(6000, 10, 2.0, seed=1)
    r = ibtools.mutual_information(x, y, method=method, ci="auto", **GAUSS)
    assert r.value == pytest.approx(2.0, rel=0.15)
    # the number is the held-out value, and the result says what it is
    assert r.details["n_heldout"] == 1200 and r.details["n_train"] == 4800
    assert r.details["lower_bound"] is (method == "mine")
    assert 1 <= r.details["best_step"] <= r.details["steps_run"] <= GAUSS["steps"]
    summary = r.details["heldout_summary"]
    assert summary["selected"] == r.value and summary["first"] <= summary["best"]
    # the critic is chosen by the trailing mean of three held-out evaluations of the
    # training objective (SMILE: Jensen-Shannon), not by the largest reported value
    curve = r.details["heldout_curve"]
    trailing = [np.mean(curve["selection"][max(0, i - 2):i + 1])
                for i in range(len(curve["selection"]))]
    chosen = int(np.argmax(trailing))
    assert curve["step"][chosen] == r.details["best_step"]
    assert curve["value"][chosen] == r.value
    assert r.details["selection"].startswith(
        "held-out Jensen-Shannon" if method == "smile" else "held-out bound")
    assert r.ci_kind == "heldout" and r.ci[0] < r.value < r.ci[1]
    assert 0.0 < r.ci[1] - r.ci[0] < 1.0
    if method == "smile":
        # the unclipped DV reading of the same critic sits next to the clipped value; at
        # 2 nats the clip (tau = 5) hardly matters, so both are near the truth and no flag
        assert r.details["tau"] == 5.0
        assert r.details["dv_value"] == pytest.approx(2.0, rel=0.15)
        assert not any(f.startswith("clip-limited") for f in r.flags)
    else:
        assert "dv_value" not in r.details


def test_smile_flags_a_value_near_its_clip():
    # tau = 1.5 on a 2-nat Gaussian: the clip at e^1.5 drops most of the large ratios, the
    # value is within 1 nat of tau and reads above the unclipped DV reading of the critic
    x, y = correlated_gaussian(6000, 10, 2.0, seed=1)
    r = ibtools.mutual_information(x, y, method="smile", tau=1.5, **GAUSS)
    (flag,) = [f for f in r.flags if f.startswith("clip-limited")]
    assert "tau=1.5" in flag and f"{r.details['dv_value']:.3f}" in flag
    assert r.value > r.details["dv_value"] + 0.1


class ExactGaussianCritic(torch.nn.Module):
    """The optimal critic of :func:`correlated_gaussian`: f = ln p(x, y) / (p(x) p(y))."""

    def __init__(self, d, rho):
        super().__init__()
        self.d, self.rho = d, rho

    def forward(self, x, y):
        r2 = self.rho**2
        quad = (r2 * (x**2).sum(1)[:, None] - 2 * self.rho * x @ y.T
                + r2 * (y**2).sum(1)[None, :]) / (2 * (1 - r2))
        return -0.5 * self.d * math.log(1 - r2) - quad  # (rows of x, rows of y)


def test_heldout_evaluation_of_the_exact_critic():
    # 6 nats over 20 dims: the regime where the log-partition term is noisy and where
    # SMILE's clip shows.  The critic is exact, so any error is the evaluation's.
    x, y = correlated_gaussian(3840, 20, 6.0, seed=13)
    critic = ExactGaussianCritic(20, math.sqrt(1.0 - math.exp(-2.0 * 6.0 / 20)))
    batches = torch.arange(3840).view(15, 256)
    mine = MINE(batch_size=256)
    groups = mine._groups(batches)
    assert [g.numel() for g in groups] == [2048, 1792]  # ~2000 negatives per row, not 255
    value, select, per_batch = mine._evaluate(critic, x, y, groups, 256, None)
    assert value == pytest.approx(6.0, abs=0.25) and select == value and len(per_batch) == 15
    # SMILE (tau = 5) overestimates at 6 nats even with the exact critic: the clip drops
    # the large ratios of the partition term (about +0.7 nats here; see SMILE's Notes)
    smile, _, _ = SMILE(batch_size=256)._evaluate(critic, x, y, groups, 256, 5.0)
    assert 6.4 < smile < 7.0
    # the unclipped reading SMILE reports next to it (details["dv_value"]) is MINE's number
    pooled = SMILE(batch_size=256)._pooled(critic, x, y, groups, 256, 5.0)
    assert float(neural_critics.bound_value("dv", pooled)) == pytest.approx(value, abs=1e-9)
    # InfoNCE reads each row against its own batch of 256: below its ln 256 ceiling
    nce, _, _ = InfoNCE(batch_size=256)._evaluate(critic, x, y, groups, 256, None)
    assert 4.4 < nce < math.log(256)


def test_heldout_pooling_matches_direct_formulas():
    # two 3-row blocks of a 6 x 6 score matrix, pooled, against the formulas on the whole
    g = torch.Generator().manual_seed(12)
    scores = 2.0 * torch.randn(6, 6, generator=g, dtype=torch.float64)
    blocks = [neural_critics.score_stats(scores[r:r + 3], 1.0, offset=r, batch=3)
              for r in (0, 3)]
    pooled = neural_critics.pool_stats(blocks)
    diag = scores.diagonal()
    off = scores[~torch.eye(6, dtype=torch.bool)]
    expected = {
        "dv": diag.mean() - (torch.logsumexp(off, 0) - math.log(30)),
        "nwj": diag.mean() - torch.exp(off - 1.0).mean(),
        "smile": diag.mean() - (torch.logsumexp(off.clamp(-1.0, 1.0), 0) - math.log(30)),
        # each row against its own 3-row batch only
        "infonce": torch.cat([diag[r:r + 3] - torch.logsumexp(scores[r:r + 3, r:r + 3], 1)
                              for r in (0, 3)]).mean() + math.log(3),
    }
    for bound, value in expected.items():
        torch.testing.assert_close(neural_critics.bound_value(bound, pooled), value)
    js = -(torch.nn.functional.softplus(-diag).mean()
           + torch.nn.functional.softplus(off).mean())
    torch.testing.assert_close(neural_critics.selection_value("smile", pooled), js)
    # a joint critic (one pass per pair) keeps batch-sized groups
    assert [g.numel() for g in MINE(critic="joint")._groups(torch.arange(640).view(10, 64))] \
        == [64] * 10


def test_invariance_under_invertible_maps():
    x, y = correlated_gaussian(6000, 10, 2.0, seed=1)
    g = torch.Generator().manual_seed(3)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    fx = torch.asinh(2.0 * x) + 0.1 * x**3  # strictly increasing in each coordinate
    # A dense random mix of y (A = randn + 3 I) is invertible too, but correlated inputs
    # slow the critic's training: at this budget MINE then reads ~1.5 nats.  A rotation,
    # scale and shift keeps the test about invariance, not about conditioning.
    gy = 3.0 * y @ rotation + 5.0
    r = ibtools.mutual_information(fx, gy, method="mine", **GAUSS)
    assert r.value == pytest.approx(2.0, rel=0.15)


def test_independence_near_zero():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2000, 5, generator=g)
    y = torch.randn(2000, 5, generator=g)
    r = ibtools.mutual_information(x, y, method="nwj", **{**FAST, "steps": 200})
    # lower bound at independence: a small negative or small positive number; choosing the
    # best held-out evaluation biases it up by about one standard error
    assert -0.1 < r.value < 0.05


def test_infonce_capped_by_log_batch_size_and_flagged():
    x, y = correlated_gaussian(3000, 10, 5.0, seed=5)
    r = ibtools.mutual_information(x, y, method="infonce", **{**FAST, "batch_size": 16})
    ceiling = math.log(16)
    assert r.details["ceiling"] == pytest.approx(ceiling)
    assert r.value <= ceiling + 1e-5  # exact: each row term is at most ln B
    assert r.value > ceiling - 1.0  # a trained critic gets close to the cap
    assert any("InfoNCE ceiling" in f for f in r.flags)


def test_infonce_ceiling_flag_threshold():
    # flagged from 1.5 nats below ln B on: the bound bends well before its cap
    est = InfoNCE(batch_size=256)
    details = {"ceiling": math.log(256), "heldout_curve": {"value": [1.0]},
               "stopped_early": True, "best_step": 1, "steps_run": 1, "heldout_se": 0.01,
               "train_value": None}
    near = est._flags(math.log(256) - 1.4, details, [])
    assert any(f.startswith("near the InfoNCE ceiling") and "within 1.5 nats" in f
               for f in near)
    assert not est._flags(math.log(256) - 1.6, details, [])


def _mixture(n, seed, means):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(means), (n,), generator=g)
    x = means[labels] + torch.randn(n, means.shape[1], generator=g, dtype=means.dtype)
    return x, labels


def _mixture_mi_monte_carlo(means, n=200_000, seed=99):
    """I(X;Y) = E[ln p(x|y) - ln sum_k p(k) p(x|k)], by Monte Carlo of the exact densities."""
    x, labels = _mixture(n, seed, means)
    # unit-covariance Gaussians: ln p(x|k) = -|x - mu_k|^2 / 2 + const (const cancels)
    log_lik = -0.5 * torch.cdist(x, means) ** 2  # (n, K)
    log_mix = torch.logsumexp(log_lik, 1) - math.log(len(means))
    return float((log_lik[torch.arange(n), labels] - log_mix).mean())


@pytest.mark.parametrize("method,critic", [("mine", "separable"), ("nwj", "joint")])
def test_discrete_labels_mixture(method, critic):
    g = torch.Generator().manual_seed(6)
    means = 1.5 * torch.randn(4, 5, generator=g, dtype=torch.float64)
    truth = _mixture_mi_monte_carlo(means)
    assert 0.5 < truth < math.log(4)  # a case neither trivial nor saturated
    x, labels = _mixture(3000, 7, means)
    settings = {**FAST, "critic": critic}
    if critic == "joint":  # B^2 network passes per step: a smaller batch keeps it fast
        settings["batch_size"] = 64
    r = ibtools.mutual_information(x.float(), labels, method=method, **settings)
    assert r.dims == (5, 1)
    assert r.value == pytest.approx(truth, rel=0.15)


def test_seeds_reproducible():
    x, y = correlated_gaussian(1000, 4, 1.0, seed=8)
    settings = {**FAST, "steps": 60}
    a = ibtools.mutual_information(x, y, method="smile", seed=11, **settings)
    b = ibtools.mutual_information(x, y, method="smile", seed=11, **settings)
    c = ibtools.mutual_information(x, y, method="smile", seed=12, **settings)
    assert a.value == b.value
    assert a.details["heldout_curve"] == b.details["heldout_curve"]
    assert c.value != a.value
    # the caller's global RNG is untouched by the critic's initialisation
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    ibtools.mutual_information(x, y, method="smile", seed=11, **settings)
    torch.testing.assert_close(torch.rand(3), expected)


def test_seeds_interval_retrains():
    x, y = correlated_gaussian(800, 4, 1.0, seed=9)
    r = ibtools.mutual_information(x, y, method="infonce", ci="seeds", n_resamples=3,
                                   **{**FAST, "steps": 60})
    assert r.ci_kind == "seeds" and len(r.details["resample_values"]) == 3
    assert len(set(r.details["resample_values"])) == 3  # each seed a new split and critic
    assert r.ci[0] <= r.ci[1]


def test_divergence_restarts_with_smaller_lr(monkeypatch):
    x, y = correlated_gaussian(600, 3, 0.5, seed=10)
    real = neural_critics.training_loss
    calls = {"n": 0}

    def nan_on_first_run(bound, scores, state):
        calls["n"] += 1
        loss = real(bound, scores, state)
        return loss * float("nan") if calls["n"] == 1 else loss

    monkeypatch.setattr(neural_critics, "training_loss", nan_on_first_run)
    r = MINE(**{**FAST, "steps": 40, "lr": 1e-3}).mutual_information(x, y)
    assert math.isfinite(r.value)
    assert r.details["restarts"] == 1
    assert r.details["lr_used"] == pytest.approx(1e-4)
    assert any("diverged" in f for f in r.flags)

    monkeypatch.setattr(neural_critics, "training_loss",
                        lambda b, s, st: real(b, s, st) * float("nan"))
    with pytest.raises(RuntimeError, match="diverged"):
        MINE(**{**FAST, "steps": 20}).mutual_information(x, y)


def test_progress_bar_only_when_asked_or_on_a_terminal():
    assert SMILE(progress="auto")._progress_bar(10) is None  # pytest captures stderr
    assert SMILE(progress=False)._progress_bar(10) is None
    bar = SMILE(progress=True)._progress_bar(10)
    assert bar.total == 10
    bar.close()


@pytest.mark.parametrize("settings,match", [
    ({"critic": "bilinear"}, "critic='bilinear'"),
    ({"hidden": 0}, "hidden=0"),
    ({"hidden": (64, -1)}, "hidden="),
    ({"batch_size": 1}, "batch_size=1"),
    ({"steps": 0}, "steps=0"),
    ({"lr": -1e-3}, "lr=-0.001"),
    ({"val_fraction": 1.0}, "val_fraction=1.0"),
    ({"progress": "yes"}, "progress='yes'"),
    ({"ci": "bootstrap"}, "ci='bootstrap'"),
])
def test_bad_settings_rejected(settings, match):
    with pytest.raises(ValueError, match=match):
        InfoNCE(**settings)


def test_bound_specific_settings():
    with pytest.raises(ValueError, match="tau=0"):
        SMILE(tau=0)
    with pytest.raises(ValueError, match=r"ema=1\.0"):
        MINE(ema=1.0)
    with pytest.raises(TypeError, match="unknown setting"):
        InfoNCE(tau=5.0)  # tau belongs to SMILE only


def test_bad_inputs_rejected():
    x, y = correlated_gaussian(100, 2, 0.5, seed=0)
    with pytest.raises(ValueError, match="same number of rows"):
        ibtools.mutual_information(x, y[:50], method="mine", **FAST)
    x_bad = x.clone()
    x_bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        ibtools.mutual_information(x_bad, y, method="mine", **FAST)
    labels = torch.arange(100) % 3
    with pytest.raises(ValueError, match="both"):
        ibtools.mutual_information(labels, labels, method="infonce", **FAST)
    with pytest.raises(ValueError, match="too few"):
        ibtools.mutual_information(x[:5], y[:5], method="nwj", **FAST)
    with pytest.raises(ValueError, match="2 held-out batches"):
        ibtools.mutual_information(x, y, method="mine", ci="heldout", **FAST)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    # CUDA draws other random numbers than the CPU, so this is a fresh seed, not a replay of
    # the CPU test.  With the CPU test's small setting (6000 rows, 600 steps) eight CPU seeds
    # read MINE -8.5..+0.5% and SMILE -12.7..-2.9%: too close to a 15% tolerance for a seed
    # that cannot be checked in advance.  On a GPU steps are cheap, so the larger setting
    # below, where eight CPU seeds read MINE -3.3..+1.4% and SMILE -5.2..+1.1% (70 s each
    # on one CPU thread), is held to 10%.
    big = {"hidden": 128, "embed_dim": 64, "batch_size": 256, "steps": 1000}
    x, y = correlated_gaussian(20000, 10, 2.0, seed=1)
    r = ibtools.mutual_information(x.cuda(), y.cuda(), method="mine", **big)
    assert r.details["device"].startswith("cuda")
    assert r.value == pytest.approx(2.0, rel=0.10)
    # numpy input with device="cuda" trains there too
    r2 = ibtools.mutual_information(np.asarray(x), np.asarray(y), method="smile",
                                    device="cuda", **big)
    assert r2.details["device"].startswith("cuda")
    assert r2.value == pytest.approx(2.0, rel=0.10)
