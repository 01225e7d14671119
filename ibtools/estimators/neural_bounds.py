"""The variational bounds of the neural estimators, one class each.

A critic f(x, y) scores pairs; every bound reads one (B, B) score matrix whose entry [i, j]
is f(x_i, y_j).  The diagonal holds pairs drawn from the joint p(x, y); the off-diagonal
entries pair x_i with the y of another row, i.e. samples of p(x) p(y).  One batch therefore
gives B joint samples and B (B - 1) product samples for the price of the critic's forward
pass (Poole et al. 2019).

A :class:`Bound` says three things about a critic's scores, and holds its own settings:

* :meth:`Bound.value`: the number reported, from pooled statistics of held-out scores;
* :meth:`Bound.training_loss`: what one training batch minimises (with per-run state such as
  MINE's moving average, made by :meth:`Bound.new_state`);
* :meth:`Bound.selection`: what held-out selection maximises (the bound itself for a lower
  bound; SMILE's critics are compared by their Jensen-Shannon objective).

The generic trainer (:mod:`~ibtools.estimators.neural_training`) and the critic's held-out
evaluation (:mod:`~ibtools.estimators.neural_critics`) read only this interface, so a new
bound is one subclass here or in a file of its own, plus an estimator class naming it.

References
----------
.. [1] Poole, Ozair, van den Oord, Alemi, Tucker, "On Variational Bounds of Mutual
   Information", ICML 2019.
.. [2] Song, Ermon, "Understanding the Limitations of Variational Mutual Information
   Estimators", ICLR 2020.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
import torch.nn.functional as F

from ibtools.errors import InputError
from ibtools.estimators.validation import check_positive

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
    meaning of the bound.  ``tau`` adds the log-sum-exp of scores clipped to [-tau, tau].

    Keys are pooled by their prefix (:func:`pool_stats`): ``n_`` and ``sum_`` add up,
    ``lse_`` combine by log-sum-exp, ``batch`` takes the smallest.
    """
    r = scores.shape[0]
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
    """Pool :func:`score_stats` of several blocks into one (by each key's prefix)."""
    out = {}
    for key in blocks[0]:
        if key == "batch":
            out[key] = min(s[key] for s in blocks)
        elif key.startswith("n_"):
            out[key] = sum(s[key] for s in blocks)
        elif key.startswith("sum_"):
            out[key] = torch.stack([s[key] for s in blocks]).sum()
        elif key.startswith("lse_"):
            out[key] = torch.logsumexp(torch.stack([s[key] for s in blocks]), 0)
        else:
            raise InputError(f"statistic {key!r} has no pooling rule; name it n_*, sum_*, "
                             f"lse_* or batch")
    return out


def _dv(stats: dict, lse_key: str = "lse_off") -> torch.Tensor:
    """E_P[f] - ln E_Q[e^f] from pooled statistics."""
    return stats["sum_diag"] / stats["n_diag"] - (stats[lse_key] - math.log(stats["n_off"]))


def js_objective(stats: dict) -> torch.Tensor:
    """The Jensen-Shannon (f-GAN) objective, higher is better: -E_P[softplus(-f)] -
    E_Q[softplus(f)]; its optimum is the log density ratio."""
    return -(stats["sum_js_pos"] / stats["n_diag"] + stats["sum_js_neg"] / stats["n_off"])


def js_loss(scores: torch.Tensor) -> torch.Tensor:
    """Minus :func:`js_objective` of one training batch, positives and negatives weighted
    equally (Song & Ermon's training objective for SMILE: low-variance gradients)."""
    diag = scores.diagonal()
    off = _without_positives(scores)
    n_off = off.numel() - diag.numel()
    return F.softplus(-diag).mean() + F.softplus(off).sum() / n_off


# --------------------------------------------------------------------------- the bounds


class Bound:
    """One variational bound on critic scores (subclass; see the module docstring).

    Class attributes: ``key`` (short name), ``label`` (``details["bound"]``),
    ``is_lower_bound``, ``selection_label`` (what held-out selection compares) and
    ``settings`` (the estimator settings the bound takes, passed to ``__init__``).
    """

    key: ClassVar[str] = ""
    label: ClassVar[str] = ""
    is_lower_bound: ClassVar[bool] = True
    selection_label: ClassVar[str] = "held-out bound"
    settings: ClassVar[tuple] = ()

    #: Clip of the scores that :func:`score_stats` also summarises (SMILE's tau), or None.
    clip: float | None = None

    def block_stats(self, scores: torch.Tensor, offset: int = 0,
                    batch: int | None = None) -> dict:
        """Statistics of one block of scores, pooled by :func:`pool_stats`."""
        return score_stats(scores, self.clip, offset=offset, batch=batch)

    def value(self, stats: dict) -> torch.Tensor:
        """The bound's value (nats) from pooled statistics."""
        raise NotImplementedError(f"{type(self).__name__} must define value(stats)")

    def selection(self, stats: dict) -> torch.Tensor:
        """What held-out selection maximises; for a lower bound, the bound itself."""
        return self.value(stats)

    def new_state(self):
        """State kept across the training steps of one run (None: no state)."""

    def training_loss(self, scores: torch.Tensor, state) -> torch.Tensor:
        """The loss one training batch of (B, B) scores minimises; default: minus the bound."""
        return -self.value(score_stats(scores, None))

    def ceiling(self, batch: int) -> float | None:
        """The most the bound can read with held-out batches of ``batch`` rows (None: none)."""
        return None

    def readings(self, pooled: Callable[[], dict]) -> dict:
        """Other readings of the chosen critic on the held-out rows (``pooled()`` gives their
        pooled statistics); each joins the details and, being a reading of the same
        critic, the trainer's check for a blown-up run."""
        return {}

    def details(self) -> dict:
        """The bound's settings as result details."""
        return {}

    def flags(self, value: float, details: dict) -> list:
        """Plain-language flags about a value of this bound."""
        return []


class DonskerVaradhan(Bound):
    """I >= E_P[f] - ln E_Q[e^f] (MINE), trained with an optional moving-average
    correction of the gradient's denominator (``ema``, Belghazi et al. 2018, section 3.2)."""

    key = "dv"
    label = "Donsker-Varadhan (MINE)"
    settings = ("ema",)

    def __init__(self, ema: float = 0.0):
        check_positive(ema, "ema", allow_zero=True)
        if not ema < 1:
            raise InputError(f"ema={ema!r} must be in [0, 1): the decay of the moving "
                             f"average (0 turns the correction off)")
        self.ema = float(ema)

    def value(self, stats):
        return _dv(stats)

    def new_state(self):
        return MovingAverageDV(self.ema)

    def training_loss(self, scores, state):
        return state.loss(scores)


class NguyenWainwrightJordan(Bound):
    """I >= E_P[f] - E_Q[e^(f - 1)], unbiased in its minibatch form."""

    key = "nwj"
    label = "Nguyen-Wainwright-Jordan (NWJ)"

    def value(self, stats):
        mean_diag = stats["sum_diag"] / stats["n_diag"]
        return mean_diag - torch.exp(stats["lse_off"] - math.log(stats["n_off"]) - 1.0)


#: InfoNCE values within this many nats of ln(batch size) are flagged.  On the 20 + 20-dim
#: Gaussian with batch 256, even the exact critic reads 10 % low at 4 nats (3.60 = ln B - 1.9)
#: and 22 % low at 6 nats (4.67 = ln B - 0.9): the bound bends well before its cap.
INFONCE_MARGIN = 1.5


class InfoNCEBound(Bound):
    """I >= E[f(x_i, y_i) - ln (1/B) sum_j e^f(x_i, y_j)], capped at ln B."""

    key = "infonce"
    label = "InfoNCE"

    def value(self, stats):
        return stats["sum_nce"] / stats["n_diag"]

    def ceiling(self, batch):
        return math.log(batch)

    def flags(self, value, details):
        cap = details["ceiling"]
        if value <= cap - INFONCE_MARGIN:
            return []
        return [(f"near the InfoNCE ceiling: {value:.3f} nats is within {INFONCE_MARGIN:g} "
                 f"nats of ln(batch size) = {cap:.3f}; InfoNCE cannot exceed that and reads low "
                 f"well before it (even with the exact critic), so the true MI may be much "
                 f"larger. Use a larger batch_size or another bound")]


class SmileBound(Bound):
    """E_P[f] - ln E_Q[clip(e^f, e^-tau, e^tau)] with a critic trained and selected on the
    Jensen-Shannon objective; not a bound (it reads high at large MI)."""

    key = "smile"
    label = "SMILE (clipped Donsker-Varadhan, JS-trained critic)"
    is_lower_bound = False
    selection_label = "held-out Jensen-Shannon objective"
    settings = ("tau",)

    def __init__(self, tau: float = 5.0):
        check_positive(tau, "tau")
        self.tau = tau
        self.clip = float(tau)

    def value(self, stats):
        return _dv(stats, "lse_off_clip")

    def selection(self, stats):
        # SMILE is not a bound, and a critic that inflates its scores inflates the clipped
        # estimate, so the largest SMILE value would select for overestimation; the JS
        # objective is a proper scoring rule whose optimum is the log density ratio
        return js_objective(stats)

    def training_loss(self, scores, state):
        return js_loss(scores)

    def readings(self, pooled):
        # the unclipped DV reading of the same critic on the same held-out rows: a lower
        # bound in expectation, free of the clip's bias
        return {"dv_value": float(_dv(pooled()))}

    def details(self):
        return {"tau": float(self.tau)}

    def flags(self, value, details):
        if value <= self.clip - 1.0:
            return []
        return [(f"clip-limited: the SMILE value {value:.3f} nats is within 1 nat of tau="
                 f"{self.clip:g}; the clip at e^tau drops the large density ratios of the "
                 f"partition term, so the value reads high (the unclipped DV reading of the "
                 f"same critic is {details['dv_value']:.3f}). Use a larger tau, or MINE")]


#: The built-in bounds by key (for :func:`get_bound` and the functional helpers).
BOUNDS = {cls.key: cls for cls in (DonskerVaradhan, NguyenWainwrightJordan, InfoNCEBound,
                                   SmileBound)}


def get_bound(bound) -> Bound:
    """``bound`` itself when it is a :class:`Bound`, else the built-in bound of that key with
    default settings."""
    if isinstance(bound, Bound):
        return bound
    if bound not in BOUNDS:
        raise InputError(f"bound={bound!r} is not known; use a Bound or one of {list(BOUNDS)}")
    return BOUNDS[bound]()


# --------------------------------------------------------------------------- MINE's state


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
