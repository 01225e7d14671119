"""Bounds as objects: a new bound is one class plus an estimator naming it.

A toy bound is defined and registered below, the DV reading of a critic trained and
selected on the Jensen-Shannon objective (the f-GAN critic of Deep InfoMax read as in Poole
et al. 2019), and the estimator contract (``tests/test_estimator_contract.py``) is run on it
unchanged.  Also: the built-in bounds' formulas against direct computation, and the generic
trainer's restart on a model that is not a critic.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import test_estimator_contract as contract
import torch

import ibtools.estimators as E
from ibtools.estimators import register
from ibtools.estimators.neural import NeuralEstimator
from ibtools.estimators.neural_bounds import (
    BOUNDS,
    Bound,
    _dv,
    get_bound,
    js_loss,
    js_objective,
    pool_stats,
    score_stats,
)
from ibtools.estimators.neural_training import HeldOutTrainer, NeuralTrainingError

# --------------------------------------------------------------------------- the toy bound


class JensenShannonDV(Bound):
    """E_P[f] - ln E_Q[e^f] of a critic trained and selected on the JS objective."""

    key = "js-dv"
    label = "Donsker-Varadhan reading of a Jensen-Shannon-trained critic"
    selection_label = "held-out Jensen-Shannon objective"

    def value(self, stats):
        return _dv(stats)

    def selection(self, stats):
        return js_objective(stats)

    def training_loss(self, scores, state):
        return js_loss(scores)


class ToyJSDV(NeuralEstimator):
    """The toy bound as an estimator; small defaults so the contract runs in seconds."""

    name = "toy-jsdv"
    limitations = "Toy: a Donsker-Varadhan reading of a critic trained on another objective."
    bound_type = JensenShannonDV
    defaults = {"hidden": (16,), "embed_dim": 8, "batch_size": 64, "steps": 100,
                "eval_every": 10, "progress": False}


register("toy-jsdv", ToyJSDV)

CONTRACT = [contract.test_contract_result_params_and_determinism,
            contract.test_contract_gaussian_pair_is_near_truth,
            contract.test_contract_independent_data_is_small_or_flagged,
            contract.test_contract_bad_settings_name_themselves,
            contract.test_contract_signature_repr_and_limitations,
            contract.test_contract_entropy_or_clear_refusal]


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("check", CONTRACT, ids=lambda f: f.__name__)
def test_toy_bound_passes_the_estimator_contract(one_thread, check):
    check("toy-jsdv")


def test_toy_bound_reads_a_gaussian_pair_and_says_how_it_chose(one_thread):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2000, 1))
    y = 0.8 * x + 0.6 * rng.normal(size=(2000, 1))  # I = -ln(1 - 0.64) / 2 = 0.51 nats
    r = E.mutual_information(x, y, method="toy-jsdv", ci="auto", steps=300, lr=1e-2)
    # a lower bound in expectation; 300 steps of the small critic read 0.47
    assert -0.5 * math.log(1 - 0.64) - 0.1 < r.value < -0.5 * math.log(1 - 0.64) + 0.05
    assert r.details["bound"] == JensenShannonDV.label and r.details["lower_bound"] is True
    assert r.details["selection"].startswith("held-out Jensen-Shannon objective")
    assert r.ci_kind == "heldout" and r.ci[0] <= r.value <= r.ci[1]


# --------------------------------------------------------------------------- built-in bounds


def test_builtin_bounds_against_direct_formulas():
    g = torch.Generator().manual_seed(5)
    scores = 1.5 * torch.randn(8, 8, generator=g, dtype=torch.float64)
    pooled = pool_stats([score_stats(scores[r:r + 4], 2.0, offset=r, batch=4) for r in (0, 4)])
    diag, off = scores.diagonal(), scores[~torch.eye(8, dtype=torch.bool)]
    dv = diag.mean() - (torch.logsumexp(off, 0) - math.log(56))
    torch.testing.assert_close(get_bound("dv").value(pooled), dv)
    torch.testing.assert_close(get_bound("nwj").value(pooled),
                               diag.mean() - torch.exp(off - 1.0).mean())
    clipped = diag.mean() - (torch.logsumexp(off.clamp(-2.0, 2.0), 0) - math.log(56))
    torch.testing.assert_close(get_bound("smile").value(pooled), clipped)
    # selection: the bound itself for the lower bounds, the JS objective for SMILE
    torch.testing.assert_close(get_bound("dv").selection(pooled), dv)
    js = -(torch.nn.functional.softplus(-diag).mean()
           + torch.nn.functional.softplus(off).mean())
    torch.testing.assert_close(get_bound("smile").selection(pooled), js)
    # SMILE also reads its critic unclipped: that reading is the DV value
    assert get_bound("smile").readings(lambda: pooled)["dv_value"] == pytest.approx(float(dv))
    assert get_bound("infonce").ceiling(4) == pytest.approx(math.log(4))
    assert get_bound("dv").ceiling(4) is None
    assert set(BOUNDS) == {"dv", "nwj", "infonce", "smile"}


def test_bound_settings_are_checked_by_the_bound():
    with pytest.raises(ValueError, match="tau=0"):
        BOUNDS["smile"](tau=0)
    with pytest.raises(ValueError, match=r"ema=1\.0"):
        BOUNDS["dv"](ema=1.0)
    with pytest.raises(ValueError, match="bound='tuba'"):
        get_bound("tuba")
    # and through the estimator, which builds its bound from its own settings
    with pytest.raises(ValueError, match=r"ema=1\.5"):
        E.get_estimator("mine", ema=1.5)


def test_pooling_refuses_a_statistic_without_a_rule():
    with pytest.raises(ValueError, match="'mean_f' has no pooling rule"):
        pool_stats([{"mean_f": torch.tensor(1.0)}])


# --------------------------------------------------------------------------- the trainer


class _LineObjective:
    """Least squares of a line through the origin, with a loss that is NaN on the first
    ``nan_runs`` runs: a model that is not a critic, to show the trainer is generic."""

    selection_label = "held-out minus squared error"

    def __init__(self, nan_runs: int):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(400, 1, generator=g)
        self.y = 3.0 * self.x + 0.1 * torch.randn(400, 1, generator=g)
        self.held = torch.arange(300, 400).view(2, 50)
        self.nan_runs, self.runs = nan_runs, 0

    def build(self):
        self.runs += 1
        return torch.nn.Linear(1, 1, bias=False)

    def new_state(self):
        return None

    def loss(self, model, idx, state):
        loss = ((model(self.x[idx]) - self.y[idx]) ** 2).mean()
        return loss * float("nan") if self.runs <= self.nan_runs else loss

    @torch.no_grad()
    def evaluate(self, model):
        per_batch = [-float(((model(self.x[b]) - self.y[b]) ** 2).mean()) for b in self.held]
        return sum(per_batch) / 2, sum(per_batch) / 2, per_batch

    def train_value(self, model, train_idx):
        return None

    def readings(self, model):
        return {"slope": float(model.weight.detach())}

    def judged(self, fit):
        return 0.0


def test_generic_trainer_restarts_at_a_tenth_of_the_rate():
    trainer = HeldOutTrainer(steps=200, batch_size=32, lr=1.0, eval_every=10, patience=None,
                             progress=False, owner="Line")
    objective = _LineObjective(nan_runs=1)
    fit, lr, failed = trainer.fit(objective, torch.arange(300), 0, torch.Generator())
    assert failed == [1.0] and lr == pytest.approx(0.1) and objective.runs == 2
    assert fit["readings"]["slope"] == pytest.approx(3.0, abs=0.05)
    assert fit["steps_run"] == 200 and len(fit["curve_values"]) == 20
    with pytest.raises(NeuralTrainingError, match="Line training diverged at every learning"):
        trainer.fit(_LineObjective(nan_runs=3), torch.arange(300), 0, torch.Generator())
