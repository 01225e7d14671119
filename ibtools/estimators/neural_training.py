"""The training loop shared by the neural bounds (mixed into ``NeuralEstimator``).

One run: Adam on shuffled epochs of the training rows, a held-out evaluation every
``eval_every`` steps, the best held-out critic kept, early stopping after ``patience``
evaluations without a new best, and ``None`` when the loss or the held-out value turns
non-finite so the caller can restart with a smaller learning rate.
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
)


class CriticTraining:
    """Training and held-out evaluation of a critic; reads the estimator's settings."""

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
        mine_state = MovingAverageDV(self.ema) if self.bound == "dv" else None
        tau = float(self.tau) if self.bound == "smile" else None

        n_train = int(train_idx.numel())
        batch = min(int(self.batch_size), n_train)
        steps = int(self.steps)
        eval_every = self.eval_every or max(1, steps // 40)
        order = train_idx[torch.randperm(n_train, generator=rng, device=device)]
        pos = 0
        bad = torch.zeros((), dtype=torch.bool, device=device)

        best = {"value": -math.inf, "step": 0, "state": None, "per_batch": None}
        curve_steps, curve_values = [], []
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
                if bar is not None:
                    bar.update(1)
                if step % eval_every and step != steps:
                    continue
                value, per_batch = self._evaluate(critic, x, y, eval_batches, tau)
                if bool(bad) or not math.isfinite(value):
                    return None
                curve_steps.append(step)
                curve_values.append(value)
                if bar is not None:
                    bar.set_postfix(heldout=f"{value:.4f}")
                if value > best["value"]:
                    best = {"value": value, "step": step, "per_batch": per_batch,
                            "state": {k: v.detach().clone() for k, v in critic.state_dict().items()}}
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
        n_eval = eval_batches.numel()
        train_rows = train_idx[: (min(n_eval, n_train) // eval_batches.shape[1]) * eval_batches.shape[1]]
        train_value = None
        if train_rows.numel() >= eval_batches.shape[1]:
            train_value, _ = self._evaluate(critic, x, y,
                                            train_rows.view(-1, eval_batches.shape[1]), tau)
        return {"value": best["value"], "per_batch": best["per_batch"], "best_step": best["step"],
                "steps_run": step, "curve_steps": curve_steps, "curve_values": curve_values,
                "train_value": train_value}

    @torch.no_grad()
    def _evaluate(self, critic, x, y, batches, tau):
        stats = [score_stats(critic(x[b], y[b]), tau) for b in batches]
        value = float(bound_value(self.bound, pool_stats(stats)))
        per_batch = torch.stack([bound_value(self.bound, s) for s in stats]).cpu().tolist()
        return value, per_batch

    def _progress_bar(self, total: int):
        show = self.progress is True or (self.progress == "auto" and sys.stderr.isatty())
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=f"{self.name} critic", leave=False)
