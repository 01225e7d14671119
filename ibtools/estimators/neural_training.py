"""The training loop shared by the neural bounds (mixed into ``NeuralEstimator``).

One run: Adam with a cosine learning-rate decay on shuffled epochs of the training rows,
a held-out evaluation every ``eval_every`` steps, the critic with the best trailing mean
of held-out evaluations kept, early stopping after ``patience`` evaluations without a new
best, and ``None`` when the loss or the held-out value turns non-finite.
:meth:`CriticTraining._fit` restarts such a run, and one whose held-out value is absurd,
with a ten times smaller learning rate, and raises :class:`NeuralTrainingError` when every
try fails: such a number is never returned.
"""

from __future__ import annotations

import math
import sys

import torch

from ibtools.estimators import neural_critics
from ibtools.estimators.neural_critics import (
    MovingAverageDV,
    bound_value,
    build_critic,
    pool_stats,
    score_stats,
    selection_value,
)


#: Rows per held-out group for a separable critic: each held-out row meets every other
#: row of its group as a negative (about 2 000 instead of batch_size - 1), which makes the
#: log-mean-exp of DV, NWJ and SMILE much less noisy at a cost linear in the held-out size.
_GROUP_ROWS = 2048
#: Held-out evaluations averaged for early stopping.  Picking the single best of dozens of
#: noisy evaluations and reporting that same number biases the result upward; comparing
#: trailing means picks a good critic without rewarding a lucky evaluation.
SMOOTHING_WINDOW = 3
#: Learning-rate tries: lr, lr/10, lr/100.
MAX_ATTEMPTS = 3
#: A held-out value below this (nats) is a failed run, not an estimate.  Every bound here
#: reads near 0 for a fresh critic, and the critic kept is the one with the best trailing
#: mean of held-out evaluations, so a sound run cannot end far below 0; an overfit critic
#: at independence reads a few hundredths below.  A blown-up one reads anything (lr=1e6
#: gave -1.5e34 nats), which is not "no dependence".
ABSURD_HELDOUT = -1.0


class NeuralTrainingError(ValueError, RuntimeError):
    """Critic training failed at every learning rate tried (non-finite or absurd held-out
    values).  A ValueError because a setting (``lr``, the critic, the inputs' scale) is the
    cause, so the CLI reports it as a user error; a RuntimeError for callers that catch
    training failures as such."""


class CriticTraining:
    """Training and held-out evaluation of a critic; reads the estimator's settings."""

    def _fit(self, x, y, y_classes, train_idx, eval_batches, init_seed, rng):
        """``(fit, lr used, learning rates that failed)``: :meth:`_train` from ``self.lr``,
        restarted at a ten times smaller rate when a run diverges (non-finite loss or
        held-out value) or ends with a held-out value below ``ABSURD_HELDOUT``.  SMILE is
        judged by its unclipped DV reading of the same critic, a lower bound in
        expectation: its clipped value is not a bound, and a blown-up critic can make it
        absurdly high (lr=1e4 gave 1.3e27 nats, with a DV reading of -1.9e28)."""
        lr, failed = float(self.lr), []
        for _ in range(MAX_ATTEMPTS):
            fit = self._train(x, y, y_classes, train_idx, eval_batches, lr, init_seed, rng)
            worst = None if fit is None else min(
                fit["value"], math.inf if fit["dv_value"] is None else fit["dv_value"])
            if worst is not None and worst >= ABSURD_HELDOUT:
                return fit, lr, [rate for rate, _ in failed]
            failed.append((lr, worst))
            lr /= 10.0
        tried = "; ".join(f"lr={rate:g}: " + ("non-finite" if v is None else f"{v:.4g} nats")
                          for rate, v in failed)
        raise NeuralTrainingError(
            f"{type(self).__name__} training diverged at every learning rate tried ({tried}); "
            f"a held-out value that is not finite or below {ABSURD_HELDOUT:g} nat comes from a "
            f"critic that blew up, not from the data. Lower lr (now lr={float(self.lr):g}; "
            f"the default is 1e-3), standardize the inputs (transform='standardize'), or use "
            f"a smaller critic")

    def _train(self, x, y, y_classes, train_idx, eval_batches, lr, init_seed, rng):
        """One training run; None if it diverged."""
        device = x.device
        with torch.random.fork_rng(devices=[]):
            # initialise from our own seed without disturbing the caller's global RNG
            torch.manual_seed(init_seed)
            critic = build_critic(self.critic, int(x.shape[1]),
                                  1 if y_classes is not None else int(y.shape[1]),
                                  y_classes, self._hidden, int(self.embed_dim))
        critic = critic.to(device=device, dtype=x.dtype)
        optimizer = torch.optim.Adam(critic.parameters(), lr=lr)
        steps = int(self.steps)
        # Cosine decay of the learning rate to zero over `steps`: the bounds' gradients are
        # noisy (the log-partition term is dominated by a few large scores), and at several
        # nats a constant rate keeps the critic jumping between held-out values that differ
        # by a nat; decaying it lets the critic settle (measured in benchmarks/neural.py).
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, steps) / steps)))
        mine_state = MovingAverageDV(self.ema) if self.bound == "dv" else None
        tau = float(self.tau) if self.bound == "smile" else None
        groups = self._groups(eval_batches)
        b_eval = int(eval_batches.shape[1])

        n_train = int(train_idx.numel())
        batch = min(int(self.batch_size), n_train)
        eval_every = self.eval_every or max(1, steps // 40)
        order = train_idx[torch.randperm(n_train, generator=rng, device=device)]
        pos = 0
        bad = torch.zeros((), dtype=torch.bool, device=device)

        best = {"smoothed": -math.inf, "value": None, "step": 0, "state": None,
                "per_batch": None}
        curve_steps, curve_values, curve_select = [], [], []
        since_best = 0
        step = 0
        bar = self._progress_bar(steps)
        try:
            for step in range(1, steps + 1):
                if pos + batch > n_train:  # new epoch: reshuffle the training rows
                    order = train_idx[torch.randperm(n_train, generator=rng, device=device)]
                    pos = 0
                idx = order[pos:pos + batch]
                pos += batch
                loss = neural_critics.training_loss(self.bound, critic(x[idx], y[idx]), mine_state)
                # flag instead of .item(): no device sync on every step
                bad = bad | ~torch.isfinite(loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                if bar is not None:
                    bar.update(1)
                if step % eval_every and step != steps:
                    continue
                value, select, per_batch = self._evaluate(critic, x, y, groups, b_eval, tau)
                if bool(bad) or not (math.isfinite(value) and math.isfinite(select)):
                    return None
                curve_steps.append(step)
                curve_values.append(value)
                curve_select.append(select)
                if bar is not None:
                    bar.set_postfix(heldout=f"{value:.4f}")
                window = curve_select[-SMOOTHING_WINDOW:]
                smoothed = sum(window) / len(window)
                if smoothed > best["smoothed"]:
                    state = {k: v.detach().clone() for k, v in critic.state_dict().items()}
                    best = {"smoothed": smoothed, "value": value, "step": step,
                            "per_batch": per_batch, "state": state}
                    since_best = 0
                else:
                    since_best += 1
                    if self.patience is not None and since_best >= self.patience:
                        break
        finally:
            if bar is not None:
                bar.close()

        critic.load_state_dict(best["state"])
        # the same statistic on as many training rows, to expose overfitting
        n_rows = min(eval_batches.numel(), (n_train // b_eval) * b_eval)
        train_value = None
        if n_rows >= b_eval:
            train_groups = self._groups(train_idx[:n_rows].view(-1, b_eval))
            train_value, _, _ = self._evaluate(critic, x, y, train_groups, b_eval, tau)
        # SMILE's clipped number next to the unclipped DV reading of the same critic on the
        # same held-out rows: a lower bound in expectation, free of the clip's bias
        dv_value = None
        if self.bound == "smile":
            dv_value = float(bound_value("dv", self._pooled(critic, x, y, groups, b_eval, tau)))
        return {"value": best["value"], "dv_value": dv_value, "per_batch": best["per_batch"],
                "best_step": best["step"],
                "steps_run": step, "curve_steps": curve_steps, "curve_values": curve_values,
                "curve_select": curve_select, "train_value": train_value}

    def _groups(self, batches: torch.Tensor) -> list:
        """Held-out batches joined into groups whose rows all serve as each other's negatives.

        A joint critic costs one network pass per pair, so it keeps batch-sized groups.
        """
        n_batches, b = int(batches.shape[0]), int(batches.shape[1])
        per_group = 1 if self.critic == "joint" else max(1, _GROUP_ROWS // b)
        return [batches[i:i + per_group].reshape(-1) for i in range(0, n_batches, per_group)]

    @torch.no_grad()
    def _block_stats(self, critic, x, y, groups, b_eval, tau) -> list:
        """:func:`score_stats` of every held-out batch against its whole group."""
        stats = []
        for rows in groups:
            scores = critic(x[rows], y[rows])  # (G, G)
            for start in range(0, int(rows.numel()), b_eval):
                stats.append(score_stats(scores[start:start + b_eval], tau, offset=start,
                                         batch=b_eval))
        return stats

    def _pooled(self, critic, x, y, groups, b_eval, tau) -> dict:
        return pool_stats(self._block_stats(critic, x, y, groups, b_eval, tau))

    @torch.no_grad()
    def _evaluate(self, critic, x, y, groups, b_eval, tau):
        """(value, selection score, per-batch values) of the critic on the given rows."""
        stats = self._block_stats(critic, x, y, groups, b_eval, tau)
        pooled = pool_stats(stats)
        numbers = torch.stack([bound_value(self.bound, pooled),
                               selection_value(self.bound, pooled),
                               *(bound_value(self.bound, s) for s in stats)]).cpu().tolist()
        return numbers[0], numbers[1], numbers[2:]

    def _progress_bar(self, total: int):
        show = self.progress is True or (self.progress == "auto" and sys.stderr.isatty())
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"{self.name} critic", leave=False)
