"""The held-out trainer shared by the neural bounds and the trained density models.

:class:`HeldOutTrainer` fits any *objective*, an object with

* ``build()`` -> a fresh ``nn.Module`` on the working device (called under the trainer's
  seeded random state, so initialisation depends only on the seed);
* ``new_state()`` -> state kept across the steps of one run (MINE's moving average), or None;
* ``loss(model, idx, state)`` -> the scalar to minimise on the training rows ``idx``;
* ``evaluate(model)`` -> ``(value, selection, per_batch)`` on the held-out rows: the number
  reported, the score held-out selection maximises, and the value of each held-out batch;
* ``train_value(model, train_idx)`` -> the same value on training rows (or None);
* ``readings(model)`` -> other readings of the chosen model on the held-out rows (a dict);
* ``judged(fit)`` -> the number that, below ``ABSURD_HELDOUT``, marks a run as failed;
* ``selection_label``: what ``selection`` is, in words.

One run: Adam with a cosine learning-rate decay on shuffled epochs of the training rows, a
held-out evaluation every ``eval_every`` steps, the model with the best trailing mean of
held-out selection scores kept, early stopping after ``patience`` evaluations without a new
best, and ``None`` when the loss or a held-out number turns non-finite.
:meth:`HeldOutTrainer.fit` restarts such a run, and one judged absurd, with a ten times
smaller learning rate, and raises :class:`NeuralTrainingError` when every try fails: such a
number is never returned.
"""

from __future__ import annotations

import math
import sys

import torch

from ibtools.errors import NeuralTrainingError

#: Held-out evaluations averaged for early stopping.  Picking the single best of dozens of
#: noisy evaluations and reporting that same number biases the result upward; comparing
#: trailing means picks a good model without rewarding a lucky evaluation.
SMOOTHING_WINDOW = 3
#: Learning-rate tries: lr, lr/10, lr/100.
MAX_ATTEMPTS = 3
#: A held-out value below this (nats) is a failed run, not an estimate.  Every bound here
#: reads near 0 for a fresh critic, and the model kept is the one with the best trailing
#: mean of held-out evaluations, so a sound run cannot end far below 0; an overfit critic
#: at independence reads a few hundredths below.  A blown-up one reads anything (lr=1e6
#: gave -1.5e34 nats), which is not "no dependence".
ABSURD_HELDOUT = -1.0


def progress_bar(progress, total: int, desc: str):
    """A tqdm bar when ``progress`` is True, or "auto" and stderr is a terminal; else None."""
    show = progress is True or (progress == "auto" and sys.stderr.isatty())
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False)


class _Selection:
    """The held-out curve and the best model so far, by trailing mean of selection scores."""

    def __init__(self):
        self.steps, self.values, self.select = [], [], []
        self.smoothed, self.value, self.step = -math.inf, None, 0
        self.state, self.per_batch, self.since_best = None, None, 0

    def add(self, step, value, select, per_batch, model) -> None:
        self.steps.append(step)
        self.values.append(value)
        self.select.append(select)
        window = self.select[-SMOOTHING_WINDOW:]
        smoothed = sum(window) / len(window)
        if smoothed > self.smoothed:
            self.smoothed, self.value, self.step, self.per_batch = smoothed, value, step, per_batch
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self.since_best = 0
        else:
            self.since_best += 1


class HeldOutTrainer:
    """Trains an objective (see the module docstring) with held-out selection and restarts.

    ``steps``, ``batch_size``, ``lr``, ``eval_every`` (None: ``max(1, steps // 40)``),
    ``patience`` (None: no early stop) and ``progress`` mean what the estimators' settings of
    the same names say; ``owner`` names the estimator in errors, ``desc`` labels the
    progress bar.
    """

    def __init__(self, *, steps: int, batch_size: int, lr: float, eval_every, patience,
                 progress, owner: str, desc: str = "training"):
        self.steps, self.batch_size, self.lr = int(steps), int(batch_size), float(lr)
        self.eval_every = eval_every or max(1, self.steps // 40)
        self.patience, self.progress, self.owner, self.desc = patience, progress, owner, desc

    def fit(self, objective, train_idx, init_seed: int, rng: torch.Generator):
        """``(fit, lr used, learning rates that failed)``: :meth:`run` from ``lr``, restarted
        at a ten times smaller rate when a run diverges (non-finite loss or held-out number)
        or is judged below ``ABSURD_HELDOUT``."""
        lr, failed = self.lr, []
        for _ in range(MAX_ATTEMPTS):
            fit = self.run(objective, train_idx, lr, init_seed, rng)
            worst = None if fit is None else objective.judged(fit)
            if worst is not None and worst >= ABSURD_HELDOUT:
                return fit, lr, [rate for rate, _ in failed]
            failed.append((lr, worst))
            lr /= 10.0
        tried = "; ".join(f"lr={rate:g}: " + ("non-finite" if v is None else f"{v:.4g} nats")
                          for rate, v in failed)
        raise NeuralTrainingError(
            f"{self.owner} training diverged at every learning rate tried ({tried}); "
            f"a held-out value that is not finite or below {ABSURD_HELDOUT:g} nat comes from a "
            f"model that blew up, not from the data. Lower lr (now lr={self.lr:g}), "
            f"standardize the inputs (transform='standardize'), or use a smaller model")

    def run(self, objective, train_idx, lr: float, init_seed: int, rng: torch.Generator):
        """One training run; None if it diverged."""
        with torch.random.fork_rng(devices=[]):
            # initialise from our own seed without disturbing the caller's global RNG
            torch.manual_seed(init_seed)
            model = objective.build()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        steps = self.steps
        # Cosine decay of the learning rate to zero over `steps`: the bounds' gradients are
        # noisy (the log-partition term is dominated by a few large scores), and at several
        # nats a constant rate keeps the critic jumping between held-out values that differ
        # by a nat; decaying it lets the critic settle (measured in benchmarks/neural.py).
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps)))
        state = objective.new_state()
        curve = _Selection()
        bad = torch.zeros((), dtype=torch.bool, device=train_idx.device)
        step = 0
        bar = progress_bar(self.progress, steps, self.desc)
        try:
            for step, idx in enumerate(self._batches(train_idx, rng), 1):
                loss = objective.loss(model, idx, state)
                bad = bad | ~torch.isfinite(loss)  # a flag, not .item(): no sync per step
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if bar is not None:
                    bar.update(1)
                if step % self.eval_every and step != steps:
                    continue
                value, select, per_batch = objective.evaluate(model)
                if bool(bad) or not (math.isfinite(value) and math.isfinite(select)):
                    return None
                curve.add(step, value, select, per_batch, model)
                if bar is not None:
                    bar.set_postfix(heldout=f"{value:.4f}")
                if self.patience is not None and curve.since_best >= self.patience:
                    break
        finally:
            if bar is not None:
                bar.close()
        return self._result(objective, model, curve, step, train_idx)

    def _batches(self, train_idx, rng):
        """``steps`` batches of training rows, reshuffled at every epoch."""
        n_train = int(train_idx.numel())
        batch = min(self.batch_size, n_train)
        order = train_idx[torch.randperm(n_train, generator=rng, device=train_idx.device)]
        pos = 0
        for _ in range(self.steps):
            if pos + batch > n_train:  # new epoch: reshuffle the training rows
                order = train_idx[torch.randperm(n_train, generator=rng,
                                                 device=train_idx.device)]
                pos = 0
            yield order[pos:pos + batch]
            pos += batch

    @staticmethod
    def _result(objective, model, curve: _Selection, steps_run: int, train_idx) -> dict:
        """The chosen model's numbers and the curve that chose it."""
        model.load_state_dict(curve.state)
        train_value = objective.train_value(model, train_idx)
        return {"value": curve.value, "per_batch": curve.per_batch, "best_step": curve.step,
                "steps_run": steps_run, "curve_steps": curve.steps,
                "curve_values": curve.values, "curve_select": curve.select,
                "train_value": train_value, "readings": objective.readings(model),
                "model": model}
