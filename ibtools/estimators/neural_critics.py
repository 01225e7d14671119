"""Critic networks, their held-out evaluation, and the objective the trainer fits.

A critic f(x, y) scores pairs (a (B, B) matrix per batch; see
:mod:`~ibtools.estimators.neural_bounds` for what the bounds read from it).
:class:`CriticObjective` joins a critic and a :class:`~ibtools.estimators.neural_bounds.Bound`
into what :class:`~ibtools.estimators.neural_training.HeldOutTrainer` trains: a loss on
training rows and an evaluation on held-out rows.

References
----------
.. [1] Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual
   Information", ICML 2019.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ibtools.errors import InputError
from ibtools.estimators.neural_bounds import (  # noqa: F401  (re-exported)
    MovingAverageDV,
    _without_positives,
    get_bound,
    pool_stats,
    score_stats,
)

CRITICS = ("separable", "joint")


def _mlp(in_dim: int, hidden: tuple, out_dim: int) -> nn.Sequential:
    # SiLU rather than ReLU: the optimal critic (the log density ratio) is smooth, e.g.
    # quadratic for Gaussians, and in our runs smooth units reached a higher held-out
    # bound sooner and overfitted later than ReLU units at the same width.
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.SiLU()]
        width = h
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """An MLP plus a linear shortcut: e(v) = W v + MLP(v).

    Through the shortcuts the separable critic holds a bilinear term x^T W_x^T W_y y,
    which is the dependent part of the log density ratio of jointly Gaussian data and the
    first-order part of any smooth one, without the MLP having to learn to pass its
    input through.  The shortcut starts at zero so the initial critic is the plain MLP's.
    """

    def __init__(self, in_dim: int, hidden: tuple, out_dim: int):
        super().__init__()
        self.mlp = _mlp(in_dim, hidden, out_dim)
        self.shortcut = nn.Linear(in_dim, out_dim, bias=False)
        nn.init.zeros_(self.shortcut.weight)

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.mlp(v) + self.shortcut(v)


class SeparableCritic(nn.Module):
    """f(x, y) = g(x) . h(y): two encoders and a dot product.

    All B x B scores of a batch cost two encoder passes and one (B, E) @ (E, B) product.
    Each encoder is an MLP with a linear shortcut (:class:`Encoder`).  A discrete y (class
    ids 0..K-1) is encoded by a learned table of K vectors: any function of a discrete
    variable is a table, so an MLP on top would add nothing.
    """

    def __init__(self, x_dim: int, y_dim: int, y_classes: int | None, hidden: tuple,
                 embed_dim: int):
        super().__init__()
        self.x_net = Encoder(x_dim, hidden, embed_dim)
        if y_classes is None:
            self.y_net = Encoder(y_dim, hidden, embed_dim)
        else:
            self.y_net = nn.Embedding(y_classes, embed_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.x_net(x) @ self.y_net(y).T  # (B, B)


class JointCritic(nn.Module):
    """f(x, y) = MLP([x, y]): one network on the concatenated pair.

    More expressive than the separable form, but a batch's B x B scores need B^2 passes.
    The first layer is split as W [x; y] = W_x x + W_y y, so it runs on B rows of each
    side and is broadcast to the B^2 pairs; only the deeper layers see B^2 rows.  A
    discrete y enters through a learned embedding of width ``embed_dim``.
    """

    def __init__(self, x_dim: int, y_dim: int, y_classes: int | None, hidden: tuple,
                 embed_dim: int):
        super().__init__()
        self.y_embed = None if y_classes is None else nn.Embedding(y_classes, embed_dim)
        y_in = y_dim if y_classes is None else embed_dim
        first = hidden[0]
        self.x_in = nn.Linear(x_dim, first)
        self.y_in = nn.Linear(y_in, first, bias=False)
        self.rest = _mlp(first, tuple(hidden[1:]), 1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.y_embed is not None:
            y = self.y_embed(y)
        hx = self.x_in(x)  # (B, H)
        hy = self.y_in(y)  # (B, H)
        h = F.silu(hx[:, None, :] + hy[None, :, :])  # (B, B, H)
        return self.rest(h).squeeze(-1)  # (B, B)


def build_critic(kind: str, x_dim: int, y_dim: int, y_classes: int | None, hidden: tuple,
                 embed_dim: int) -> nn.Module:
    if kind == "separable":
        return SeparableCritic(x_dim, y_dim, y_classes, hidden, embed_dim)
    if kind == "joint":
        return JointCritic(x_dim, y_dim, y_classes, hidden, embed_dim)
    raise InputError(f"critic={kind!r} is not accepted; use one of {list(CRITICS)}")




# --------------------------------------------------------------------------- held-out evaluation

#: Rows per held-out group for a separable critic: each held-out row meets every other row
#: of its group as a negative (about 2 000 instead of batch_size - 1), which makes the
#: log-mean-exp of DV, NWJ and SMILE much less noisy at a cost linear in the held-out size.
GROUP_ROWS = 2048


def critic_groups(batches: torch.Tensor, kind: str) -> list:
    """Held-out batches joined into groups whose rows all serve as each other's negatives.

    A joint critic costs one network pass per pair, so it keeps batch-sized groups.
    """
    n_batches, b = int(batches.shape[0]), int(batches.shape[1])
    per_group = 1 if kind == "joint" else max(1, GROUP_ROWS // b)
    return [batches[i:i + per_group].reshape(-1) for i in range(0, n_batches, per_group)]


@torch.no_grad()
def block_stats(bound, critic, x, y, groups, b_eval) -> list:
    """The bound's statistics of every held-out batch against its whole group."""
    stats = []
    for rows in groups:
        scores = critic(x[rows], y[rows])  # (G, G)
        for start in range(0, int(rows.numel()), b_eval):
            stats.append(bound.block_stats(scores[start:start + b_eval], offset=start,
                                           batch=b_eval))
    return stats


@torch.no_grad()
def evaluate_critic(bound, critic, x, y, groups, b_eval):
    """(value, selection score, per-batch values) of the critic under ``bound``."""
    stats = block_stats(bound, critic, x, y, groups, b_eval)
    pooled = pool_stats(stats)
    numbers = torch.stack([bound.value(pooled), bound.selection(pooled),
                           *(bound.value(s) for s in stats)]).cpu().tolist()
    return numbers[0], numbers[1], numbers[2:]


# --------------------------------------------------------------------------- by key


def bound_value(bound, stats: dict) -> torch.Tensor:
    """The value (nats) of ``bound`` (a Bound or a built-in key) from pooled statistics."""
    return get_bound(bound).value(stats)


def selection_value(bound, stats: dict) -> torch.Tensor:
    """The held-out objective held-out selection maximises for ``bound`` (a Bound or key)."""
    return get_bound(bound).selection(stats)


def training_loss(bound, scores: torch.Tensor, state):
    """Loss to minimise for one batch of scores under ``bound`` (a Bound or key), with the
    bound's per-run ``state``; every training step of a critic goes through here."""
    return get_bound(bound).training_loss(scores, state)


# --------------------------------------------------------------------------- the objective


class CriticObjective:
    """A critic trained on a bound: the model, loss and evaluation the trainer needs.

    ``x`` and ``y`` are all rows (a discrete y as class ids, ``y_classes`` of them);
    ``eval_batches`` (n_batches, b_eval) are the held-out row indices.
    """

    def __init__(self, bound, kind: str, x, y, y_classes, hidden: tuple, embed_dim: int,
                 eval_batches: torch.Tensor):
        self.bound, self.kind, self.x, self.y = bound, kind, x, y
        self.y_classes, self.hidden, self.embed_dim = y_classes, hidden, embed_dim
        self.b_eval = int(eval_batches.shape[1])
        self.eval_rows = int(eval_batches.numel())
        self.groups = critic_groups(eval_batches, kind)
        self.selection_label = bound.selection_label

    def build(self) -> nn.Module:
        y_dim = 1 if self.y_classes is not None else int(self.y.shape[1])
        critic = build_critic(self.kind, int(self.x.shape[1]), y_dim, self.y_classes,
                              self.hidden, self.embed_dim)
        return critic.to(device=self.x.device, dtype=self.x.dtype)

    def new_state(self):
        return self.bound.new_state()

    def loss(self, critic, idx, state) -> torch.Tensor:
        return training_loss(self.bound, critic(self.x[idx], self.y[idx]), state)

    def evaluate(self, critic):
        return evaluate_critic(self.bound, critic, self.x, self.y, self.groups, self.b_eval)

    def train_value(self, critic, train_idx) -> float | None:
        """The held-out statistic on as many training rows, to expose overfitting."""
        n_rows = min(self.eval_rows, (int(train_idx.numel()) // self.b_eval) * self.b_eval)
        if n_rows < self.b_eval:
            return None
        groups = critic_groups(train_idx[:n_rows].view(-1, self.b_eval), self.kind)
        return evaluate_critic(self.bound, critic, self.x, self.y, groups, self.b_eval)[0]

    def readings(self, critic) -> dict:
        return self.bound.readings(lambda: pool_stats(block_stats(
            self.bound, critic, self.x, self.y, self.groups, self.b_eval)))

    def judged(self, fit: dict) -> float:
        """The lowest reading of the chosen critic; a run reading absurdly low failed.
        SMILE is judged by its unclipped DV reading too: its clipped value is not a bound,
        and a blown-up critic can make it absurdly high (lr=1e4 gave 1.3e27 nats, with a DV
        reading of -1.9e28)."""
        return min([fit["value"], *fit["readings"].values()])
