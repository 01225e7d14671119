"""The neural staircase benchmark's own arithmetic: its exact critic, and the tables that
judge ibtools against torch-mist (benchmarks/neural.py; the training runs themselves are
too slow for the suite)."""

import importlib.util
import math
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "neural.py"
_spec = importlib.util.spec_from_file_location("neural_staircase", _PATH)
staircase = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(staircase)


@pytest.mark.parametrize("level", [2.0, 6.0])
def test_staircase_data_has_the_stated_mi(level):
    # Closed form from the sample correlations of the 20 coordinate pairs.
    x, y = staircase.staircase_data(20_000, 20, level, seed=3)
    rho = [float(((x[:, j] - x[:, j].mean()) * (y[:, j] - y[:, j].mean())).mean()
                 / (x[:, j].std() * y[:, j].std())) for j in range(20)]
    mi = -0.5 * sum(math.log(1 - r * r) for r in rho)
    assert mi == pytest.approx(level, rel=0.02)


def test_exact_critic_readings_match_each_bound():
    """With the true log density ratio, DV and NWJ read the truth (unbiased at 2 nats),
    InfoNCE reads below it and below ln(batch), SMILE at tau=5 reads above DV at 6 nats
    (the clip's upward bias), and a large tau brings SMILE back to DV."""
    cfg = {"val_fraction": 0.2, "batch_size": 256}
    specs = ["mine", "mine:ema=0.99", "nwj", "infonce", "smile", "smile:tau=30"]
    x, y = staircase.staircase_data(20_000, 20, 2.0, seed=0)
    two = staircase.exact_critic_values(specs, x, y, 2.0, cfg, seed=0)
    assert set(two) == {"mine", "nwj", "infonce", "smile", "smile:tau=30"}  # ema: one reading
    assert two["mine"] == pytest.approx(2.0, abs=0.1)
    assert two["nwj"] == pytest.approx(2.0, abs=0.1)
    assert two["infonce"] < min(two["mine"], math.log(256))
    x, y = staircase.staircase_data(20_000, 20, 6.0, seed=0)
    six = staircase.exact_critic_values(["mine", "smile", "smile:tau=30"], x, y, 6.0, cfg,
                                        seed=0)
    assert six["smile"] > six["mine"] + 0.3
    assert six["smile:tau=30"] == pytest.approx(six["mine"], abs=1e-6)


def _records():
    recs = []
    for seed, (ib, mist) in enumerate([(3.8, 4.4), (4.1, 3.5), (3.9, 4.0)]):
        base = {"level": 4.0, "seed": seed, "steps": 100}
        recs += [{**base, "estimator": "ibtools smile", "value": ib, "seconds": 1.0,
                  "flags": ["clip-limited"] if ib > 4 else []},
                 {**base, "estimator": "torch-mist smile", "value": mist, "seconds": 6.0},
                 {**base, "estimator": "exact critic, smile's evaluation", "value": 4.3},
                 {**base, "estimator": "ibtools mine:ema=0.99", "value": 3.0, "seconds": 1.0},
                 {**base, "estimator": "torch-mist mine", "value": 3.9, "seconds": 6.0},
                 {**base, "estimator": "exact critic, mine's evaluation", "value": 4.0}]
    return recs


def test_summary_and_verdicts():
    rows = {r["estimator"]: r for r in staircase.summarize(_records())}
    smile = rows["ibtools smile"]
    assert smile["seeds"] == 3
    assert smile["mean"] == pytest.approx(3.9333, abs=1e-4)
    assert smile["bias"] == pytest.approx((3.9333 - 4) / 4, abs=1e-4)
    assert smile["mae"] == pytest.approx((0.2 + 0.1 + 0.1) / 3 / 4)
    assert smile["ms_step"] == pytest.approx(10.0)
    assert smile["flags"] == {"clip-limited": 1}
    # torch-mist's mean is nearer the truth (3.967) but its runs scatter more: judged on
    # the mean absolute error, ibtools is no worse.
    pairs = staircase.compare(list(rows.values()))
    assert [(p["spec"], p["no_worse"]) for p in pairs] == [("smile", True)]
    assert pairs[0]["exact"]["mean"] == pytest.approx(4.3)
    # "mine:ema=0.99" has no torch-mist counterpart of the same spec: no comparison row
    table = staircase.render(_records(), "test setup")
    assert "ibtools no worse on 1 of 1 rows." in table
    worse = [dict(r, value=r["value"] - 1.0) if r["estimator"] == "ibtools smile" else r
             for r in _records()]
    assert "worse on: smile at 4 nats." in staircase.render(worse, "test setup")


def test_method_specs():
    assert staircase.parse_method("smile:tau=10") == ("smile", {"tau": 10.0})
    assert staircase.parse_method("mine") == ("mine", {})
    assert staircase.exact_label("mine:ema=0.99") == "mine"
    assert staircase.exact_label("smile:tau=10") == "smile:tau=10"
    with pytest.raises(ValueError, match="SETTING=VALUE"):
        staircase.parse_method("smile:tau")
