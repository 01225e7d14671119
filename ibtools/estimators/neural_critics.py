"""Critic networks and the variational bounds they are trained on.

A critic f(x, y) scores pairs; every bound below reads one (B, B) score matrix whose
entry [i, j] is f(x_i, y_j).  The diagonal holds pairs drawn from the joint p(x, y); the
off-diagonal entries pair x_i with the y of another row, i.e. samples of p(x) p(y).  One
batch therefore gives B joint samples and B (B - 1) product samples for the price of the
critic's forward pass (Poole et al. 2019).

References
----------
.. [1] Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual
   Information", ICML 2019.
.. [2] Song, Ermon, "Understanding the Limitations of Variational Mutual Information
   Estimators", ICLR 2020.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

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
    raise ValueError(f"critic={kind!r} is not accepted; use one of {list(CRITICS)}")


# --------------------------------------------------------------------------- batch statistics


def _without_positives(scores: torch.Tensor, offset: int = 0) -> torch.Tensor:
    """The (R, C) score matrix with its positives [i, offset + i] set to -inf, flattened.

    Log-sum-exps and softplus sums over it count only the product-of-marginals samples
    (exp(-inf) = softplus(-inf) = 0), and it is built by one copy and a strided fill, where
    gathering the off-diagonal entries through a boolean mask cost most of a held-out
    evaluation.  Gradients at the positives are zero, as they should be.
    """
    masked = scores.clone()
    masked.diagonal(offset).fill_(-math.inf)
    return masked.reshape(-1)


def score_stats(scores: torch.Tensor, tau: float | None, offset: int = 0,
                batch: int | None = None) -> dict:
    """Sufficient statistics of one block of scores, to pool over held-out blocks.

    ``scores`` is (R, C) with R <= C: row i pairs x_i with the C column rows' y, and its
    positive (joint) pair sits at column ``offset + i``; every other entry is a
    product-of-marginals sample.  In training the block is the square (B, B) batch.  In
    the held-out evaluation it is B rows against a larger group of columns, so each row
    has many more negatives than a batch gives.  ``lse_off`` is the log-sum-exp of all
    product scores: pooling blocks by log-sum-exp gives log E_Q[e^f] over every product
    sample at once, which is less biased than averaging per-block logarithms.  InfoNCE
    uses only the (R, ``batch``) sub-block at ``offset`` so its value keeps the ln(batch)
    meaning of the bound.
    """
    r, c = scores.shape
    batch = r if batch is None else batch
    rows = torch.arange(r, device=scores.device)
    diag = scores[rows, rows + offset]
    off = _without_positives(scores, offset)
    nce_block = scores[:, offset:offset + batch]
    stats = {
        "sum_diag": diag.sum(),
        "n_diag": r,
        "lse_off": torch.logsumexp(off, 0),
        "n_off": off.numel() - r,
        # InfoNCE row terms: f_ii - log(1/B sum_j f_ij), each at most ln B
        "sum_nce": (diag - torch.logsumexp(nce_block, 1)).sum() + r * math.log(batch),
        "batch": batch,
        # the Jensen-Shannon (f-GAN) objective SMILE's critic is trained on, as sums
        "sum_js_pos": F.softplus(-diag).sum(),
        "sum_js_neg": F.softplus(off).sum(),
    }
    if tau is not None:
        stats["lse_off_clip"] = torch.logsumexp(
            _without_positives(scores.clamp(-tau, tau), offset), 0)
    return stats


def pool_stats(blocks: list[dict]) -> dict:
    """Pool :func:`score_stats` of several blocks into one."""
    out = {"n_diag": sum(s["n_diag"] for s in blocks), "n_off": sum(s["n_off"] for s in blocks),
           "batch": min(s["batch"] for s in blocks)}
    for key in ("sum_diag", "sum_nce", "sum_js_pos", "sum_js_neg"):
        out[key] = torch.stack([s[key] for s in blocks]).sum()
    for key in ("lse_off", "lse_off_clip"):
        if key in blocks[0]:
            out[key] = torch.logsumexp(torch.stack([s[key] for s in blocks]), 0)
    return out


def bound_value(bound: str, stats: dict) -> torch.Tensor:
    """The bound's value (nats) from pooled statistics."""
    mean_diag = stats["sum_diag"] / stats["n_diag"]
    log_n_off = math.log(stats["n_off"])
    if bound == "dv":
        return mean_diag - (stats["lse_off"] - log_n_off)
    if bound == "nwj":
        return mean_diag - torch.exp(stats["lse_off"] - log_n_off - 1.0)
    if bound == "smile":
        return mean_diag - (stats["lse_off_clip"] - log_n_off)
    if bound == "infonce":
        return stats["sum_nce"] / stats["n_diag"]
    raise ValueError(f"unknown bound {bound!r}")


def selection_value(bound: str, stats: dict) -> torch.Tensor:
    """The held-out value of the objective the critic is trained on (higher is better).

    Early stopping compares critics by this number.  For the three lower bounds it is the
    bound itself: a larger held-out lower bound is a better critic.  SMILE is not a bound,
    and a critic that inflates its scores inflates the clipped estimate, so picking the
    largest SMILE value would select for overestimation; SMILE's critics are compared by
    the held-out Jensen-Shannon objective instead, a proper scoring rule whose optimum is
    the log density ratio.
    """
    if bound == "smile":
        return -(stats["sum_js_pos"] / stats["n_diag"] + stats["sum_js_neg"] / stats["n_off"])
    return bound_value(bound, stats)


# --------------------------------------------------------------------------- training losses


class MovingAverageDV:
    """MINE's training objective: the DV bound with a bias-corrected gradient.

    The gradient of log E_Q[e^f] is E_Q[e^f grad f] / E_Q[e^f]; estimated on a minibatch,
    the denominator makes it biased.  MINE (Belghazi et al. 2018, section 3.2) divides by a
    moving average of E_Q[e^f] instead.  The surrogate exp(lme - log_ema) with log_ema held
    fixed has exactly that gradient; the average is kept in log space so large scores do
    not overflow.  ``decay=0`` turns the correction off (plain minibatch DV gradient).
    """

    def __init__(self, decay: float):
        self.decay = float(decay)
        self.log_ema: torch.Tensor | None = None

    def loss(self, scores: torch.Tensor) -> torch.Tensor:
        off = _without_positives(scores)
        lme = torch.logsumexp(off, 0) - math.log(off.numel() - scores.shape[0])
        mean_diag = scores.diagonal().mean()
        if self.decay == 0.0:
            return -(mean_diag - lme)
        current = lme.detach()
        if self.log_ema is None:
            self.log_ema = current
        else:
            self.log_ema = torch.logaddexp(self.log_ema + math.log(self.decay),
                                           current + math.log1p(-self.decay))
        return -(mean_diag - torch.exp(lme - self.log_ema))


def training_loss(bound: str, scores: torch.Tensor, mine_state: MovingAverageDV | None):
    """Loss to minimise for one batch of scores."""
    if bound == "dv":
        return mine_state.loss(scores)
    if bound == "nwj":
        return -bound_value("nwj", score_stats(scores, None))
    if bound == "infonce":
        return -bound_value("infonce", score_stats(scores, None))
    if bound == "smile":
        # Song & Ermon train the critic on the Jensen-Shannon (f-GAN) objective, whose
        # gradients have low variance, and read the value off the clipped DV bound; with
        # positives and negatives weighted equally the JS optimum is the log density ratio.
        diag = scores.diagonal()
        off = _without_positives(scores)
        n_off = off.numel() - diag.numel()
        return F.softplus(-diag).mean() + F.softplus(off).sum() / n_off
    raise ValueError(f"unknown bound {bound!r}")
