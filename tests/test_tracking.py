"""IB tracking during training (ibtools.track and the framework adapters).

Ground truths: a tracked run's weights equal an untracked run's bit for bit; the tracker's
rows for a step equal what ibtools.analyze measures on the same weights; background rows
equal foreground rows; TensorBoard scalars equal the table's values.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ibtools
from ibtools.estimators.spec import EstimatorSpec
from ibtools.models import build_model
from ibtools.models.data import load_digits_split
from ibtools.tracking import preserved_training_state

ESTIMATORS = ["binning:n_bins=10,n_permutations=0", "kde:noise_var=0.5,n_permutations=0"]
LAYERS = ["layers.0", "layers.1"]


class NoisyInEval(nn.Module):
    """Draws from the global RNG in every forward pass, eval mode included (as some
    stochastic layers do): a measurement that did not restore the RNG would shift training."""

    def forward(self, x):
        return x + 1e-3 * torch.randn_like(x)


def _model(seed=0, noisy=True):
    torch.manual_seed(seed)
    model = build_model("mlp", widths=(16, 8))
    if noisy:
        model.layers[0].act = nn.Sequential(nn.Tanh(), NoisyInEval(), nn.Dropout(0.2))
    model.layers[1].norm.eval()  # a frozen part stays in eval mode while the rest trains
    return model


def _train(model, steps, tracker=None, seed=0):
    data = load_digits_split()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        batch = torch.randint(0, len(data.y_train), (32,), generator=gen)
        loss = F.cross_entropy(model(data.x_train[batch]), data.y_train[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        np.random.rand(), random.random()  # the loop's own draws must not be disturbed
        if tracker is not None:
            tracker.step(step + 1, train_loss=loss.item())
    return model


def test_state_is_restored():
    model = _model()
    model.train()
    model.layers[1].norm.eval()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    with torch.enable_grad():
        with preserved_training_state(model):
            torch.rand(5), np.random.rand(7), random.random()
            model.eval()
            torch.set_grad_enabled(False)
        assert torch.is_grad_enabled()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2]
    assert model.training and not model.layers[1].norm.training and model.layers[0].training


def test_tracked_training_is_bit_identical(tmp_path):
    plain = _train(_model(), 12)
    tracked = _model()
    with ibtools.track(tracked, "digits", layers=LAYERS, estimators=ESTIMATORS[:1], every=4,
                       max_samples=120, out=tmp_path / "run") as tracker:
        tracked.train()
        tracked.layers[1].norm.eval()
        _train(tracked, 12, tracker)
        assert tracked.training and not tracked.layers[1].norm.training
    assert tracker.steps == [4, 8, 12]
    for (name, a), (_, b) in zip(plain.state_dict().items(), tracked.state_dict().items()):
        assert torch.equal(a, b), name


def test_rows_per_step_match_analyze(tmp_path):
    model = _model(noisy=False)  # deterministic in eval mode, so analyze sees the same T
    out = tmp_path / "run"
    snapshots = {}
    tracker = ibtools.track(model, "digits", layers=LAYERS, estimators=ESTIMATORS, every=3,
                            max_samples=450, out=out, betas=[0.1, 1.0], name="mlp-small",
                            batch_size=64)
    tracker.measure(0)
    snapshots[0] = copy.deepcopy(model)
    data = load_digits_split()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(1, 7):
        loss = F.cross_entropy(model(data.x_train[:64]), data.y_train[:64])
        opt.zero_grad(), loss.backward(), opt.step()
        if tracker.step(step):
            snapshots[step] = copy.deepcopy(model)
    table = tracker.close()
    assert tracker.steps == [0, 3, 6]
    # steps x layers x settings x betas
    assert len(table) == 3 * 2 * 2 * 2
    assert sorted(table["step"].unique()) == [0, 3, 6]
    assert set(table["checkpoint"]) == {"mlp-small@step0", "mlp-small@step3", "mlp-small@step6"}
    on_disk = pd.read_csv(out / "results.csv")
    assert len(on_disk) == len(table) and not (out / "results.partial.jsonl").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["tracking"] is True and config["settings"]["every"] == 3
    # plug-in I(T;Y) cannot exceed H(Y) of the sample, nor I(X;T) ln n
    assert (table["i_ty"] <= math.log(10) + 1e-6).all()
    assert (table.loc[table["estimator"] == "binning", "i_xt"] <= math.log(450) + 1e-6).all()
    for step in (0, 6):  # the first and the last state (a third analyze adds little)
        snap = snapshots[step]
        ref = ibtools.analyze([snap], data="digits", layers=LAYERS, estimators=ESTIMATORS,
                              betas=[0.1, 1.0], max_samples=450, seed=0)
        got = table[table["step"] == step].sort_values(["layer", "setting", "beta"])
        ref = ref.sort_values(["layer", "setting", "beta"])
        # both run the estimators on one thread ("auto"), so even float32 sums agree
        for column in ("i_xt", "i_ty", "i_prev_t", "ib_value"):
            np.testing.assert_allclose(got[column].to_numpy(), ref[column].to_numpy(),
                                       rtol=1e-5, atol=1e-6, err_msg=f"{column} at step {step}")


def test_report_draws_training_steps(tmp_path):
    model = _model()
    out = tmp_path / "run"
    with ibtools.track(model, "digits", layers=LAYERS, estimators=ESTIMATORS[:1], every=2,
                       max_samples=100, out=out) as tracker:
        _train(model, 4, tracker)
    written = ibtools.write_report(out, pdf=None)
    html = written["html"].read_text(encoding="utf-8")
    assert "training step" in html  # the information plane is coloured by step, not by file
    assert "2, 4" in html  # the steps listed in the run settings


def test_background_gives_the_foreground_rows(tmp_path):
    """Rows estimated in a worker thread or a worker process equal the training thread's;
    a measurement failing in the worker process raises on the training thread at close, and
    the steps before it are written."""
    tables, weights, cpu = [], [], []
    for background in (False, True, "process"):
        model = _model()
        out = tmp_path / str(background)
        tracker = ibtools.track(model, "digits", layers=LAYERS, estimators=ESTIMATORS, every=2,
                                max_samples=150, background=background, out=out)
        _train(model, 6, tracker)
        tracker.wait()
        tables.append(tracker.table.drop(columns=["seconds"]))
        weights.append(model.state_dict())
        cpu.append(tracker.worker_cpu_seconds)
        if background == "process":
            bad = EstimatorSpec("binning", {"n_bins": 0})  # refused when the worker builds it
            tracker._process.job = dataclasses.replace(tracker._job, specs=(bad,))
            tracker.measure(100)
            with pytest.raises(ValueError, match="n_bins"):
                tracker.close()
        tracker.close()
        assert tracker.closed
        written = ibtools.load_results(out).drop(columns=["seconds"])
        assert sorted(written["step"].unique()) == [2, 4, 6] and len(written) == len(tables[-1])
    pd.testing.assert_frame_equal(tables[0], tables[1])
    pd.testing.assert_frame_equal(tables[0], tables[2])  # estimated in another process
    assert len(tables[0]) == 3 * 2 * 2 and "train_loss" in tables[0]
    assert cpu[0] is None and cpu[1] is None and cpu[2] > 0
    # the workers' estimators draw from their own generators, not training's
    plain = _train(_model(), 6).state_dict()
    for name in plain:
        assert torch.equal(weights[1][name], plain[name]), name
        assert torch.equal(weights[2][name], plain[name]), name


def test_resume_and_refusals(tmp_path):
    out = tmp_path / "run"
    model = _model()
    kw = dict(layers=LAYERS, estimators=ESTIMATORS[:1], every=2, max_samples=100, out=out)
    with ibtools.track(model, "digits", **kw) as tracker:
        tracker.measure(0), tracker.measure(2)
    with pytest.raises(ValueError, match="already holds results.*resume=True"):
        ibtools.track(model, "digits", **kw)
    with pytest.raises(ValueError, match="other tracking settings.*max_samples"):
        ibtools.track(model, "digits", resume=True, **dict(kw, max_samples=120))
    with ibtools.track(model, "digits", resume=True, **kw) as tracker:
        tracker.measure(2, train_loss=0.5)  # training resumed from step 2: replaces its rows
        tracker.measure(4)
    table = ibtools.load_results(out)
    assert sorted(table["step"].unique()) == [0, 2, 4] and len(table) == 3 * 2
    assert table.loc[table["step"] == 2, "train_loss"].eq(0.5).all()


@pytest.mark.parametrize("kwargs, error, words", [
    ({"every": 0}, ValueError, "every=0"),
    ({"layers": "nope.*"}, ValueError, "nope"),
    ({"estimators": ["mine"], "background": True}, ValueError, "background=True"),
    ({"background": "fork"}, ValueError, "background='fork'.*'process'"),
    ({"reference": "output"}, ValueError, "reference='output'"),
    ({"tensorboard": "yes"}, TypeError, "tensorboard='yes'"),
])
def test_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        ibtools.track(_model(), "digits", **kwargs)


def test_bad_step_and_metric():
    tracker = ibtools.track(_model(), "digits", layers=LAYERS, estimators=ESTIMATORS[:1],
                            max_samples=50)
    with pytest.raises(ValueError, match="step=-1"):
        tracker.step(-1)
    with pytest.raises(TypeError, match="metric loss='low'"):
        tracker.step(0, loss="low")
    tracker.close()
    with pytest.raises(RuntimeError, match="closed"):
        tracker.measure(5)


def test_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _model()
    out = tmp_path / "run"
    with ibtools.track(model, "digits", layers=LAYERS, estimators=ESTIMATORS[:1], every=2,
                       max_samples=100, out=out, tensorboard=True) as tracker:
        _train(model, 4, tracker)
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    setting = tracker.table["setting"].iloc[0]
    tag = f"ib/{setting}/layers.1/i_ty"
    assert tag in acc.Tags()["scalars"]
    events = acc.Scalars(tag)
    assert [e.step for e in events] == [2, 4]
    rows = tracker.table[tracker.table["layer"] == "layers.1"].sort_values("step")
    np.testing.assert_allclose([e.value for e in events], rows["i_ty"], rtol=1e-6)


def test_lightning_callback(tmp_path):
    pl = pytest.importorskip("lightning.pytorch")
    from ibtools.integrations.lightning import IBCallback

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = build_model("mlp", widths=(16, 8))

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.model(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = load_digits_split()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(data.x_train[:256], data.y_train[:256]), batch_size=32)
    callback = IBCallback("digits", submodule="model", layers=LAYERS, estimators=ESTIMATORS[:1],
                          every=3, max_samples=100, out=tmp_path / "run")
    trainer = pl.Trainer(max_steps=7, callbacks=[callback], logger=False,
                         enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu")
    trainer.fit(Module(), loader)
    assert callback.tracker.closed and callback.tracker.steps == [0, 3, 6, 7]
    table = ibtools.load_results(tmp_path / "run")
    assert sorted(table["step"].unique()) == [0, 3, 6, 7] and set(table["layer"]) == set(LAYERS)


def test_hf_callback_hooks(tmp_path):
    pytest.importorskip("transformers")
    from transformers import TrainerControl, TrainerState

    from ibtools.integrations.hf import IBTrainerCallback

    model = build_model("gpt", n_layer=2, n_embd=16, n_head=2, block_size=16)
    callback = IBTrainerCallback("text", layers="blocks.*", estimators=ESTIMATORS[:1], every=2,
                                 max_samples=200, out=tmp_path / "run")
    state, control = TrainerState(), TrainerControl()
    callback.on_train_begin(None, state, control, model=model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    idx = torch.randint(0, 256, (4, 17), generator=torch.Generator().manual_seed(0))
    for _ in range(5):  # what Trainer does between the hooks
        logits = model(idx[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), idx[:, 1:].reshape(-1))
        opt.zero_grad(), loss.backward(), opt.step()
        state.global_step += 1
        callback.on_step_end(None, state, control, model=model)
    callback.on_train_end(None, state, control, model=model)
    assert callback.tracker.closed and callback.tracker.steps == [0, 2, 4, 5]
    table = ibtools.load_results(tmp_path / "run")
    assert set(table["layer"]) == {"blocks.0", "blocks.1"} and (table["n_samples"] == 200).all()
    assert (table["i_ty"] <= math.log(256) + 1e-6).all()
    with pytest.raises(TypeError, match="model is not an argument"):
        IBTrainerCallback("text", model=model)


def test_gpt_example_quick(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "track_gpt_training.py"
    proc = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(tmp_path / "results.csv")
    assert sorted(table["step"].unique()) == [0, 20, 40]
    assert list(dict.fromkeys(table["layer"])) == ["wte", "blocks.0", "blocks.1", "ln_f"]
    assert len(table) == 3 * 4 * 2 and (table["n_samples"] == 300).all()
    assert (table["i_ty"] <= math.log(256) + 1e-6).all()  # Y is a byte
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_probe_data_as_arrays_or_batches_gives_the_spec_rows():
    from ibtools.probes import load_dataset

    model = _model(noisy=False)
    digits = load_dataset("digits", model=model)
    x, y = digits.inputs.numpy(), digits.targets.numpy()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(digits.inputs, digits.targets), batch_size=100)
    tables = []
    for probe in ("digits", (x, y), loader):
        tracker = ibtools.track(model, probe, layers=LAYERS, estimators=ESTIMATORS[:1],
                                max_samples=450)
        tracker.measure(0)
        tables.append(tracker.close().drop(columns=["seconds"]))
    assert len(tables[0]) == 2 and (tables[0]["n_samples"] == 450).all()
    for other in tables[1:]:
        pd.testing.assert_frame_equal(tables[0], other)
    small = ibtools.track(model, (x, y), layers=LAYERS, max_samples=100, seed=3)
    assert small.data.n_samples == 100  # a seeded subset, fixed for every measurement
    assert torch.equal(small.data.inputs, torch.as_tensor(x)[np.sort(
        np.random.default_rng(3).choice(450, 100, replace=False))])
    small.close()
