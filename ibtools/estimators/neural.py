"""Neural variational estimators of mutual information: MINE, NWJ, InfoNCE and SMILE.

One critic (``"separable"`` or ``"joint"``, see :mod:`ibtools.estimators.neural_critics`)
and one training loop serve all four bounds.  The rows are split once: the critic trains
on one part, and every reported number is computed on the held-out part, never on the
training rows.  Training stops early when the held-out estimate stops improving, and a
run whose loss turns non-finite, or whose held-out value is absurd (below -1 nat), restarts
with a ten times smaller learning rate; when every try fails a
:class:`~ibtools.estimators.neural_training.NeuralTrainingError` is raised, never a value.

These estimators scale to activations with hundreds or thousands of dimensions, where
kNN and binning estimators break down, but each number is a (possibly loose) lower
bound whose tightness depends on the critic, the batch size and the training budget.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import ClassVar

import numpy as np
import torch

from ibtools.estimators.base import Estimator, check_choice, check_int, check_positive
from ibtools.estimators.neural_critics import CRITICS
from ibtools.estimators.neural_training import (
    SMOOTHING_WINDOW,
    CriticTraining,
    NeuralTrainingError,
)

#: InfoNCE values within this many nats of ln(batch size) are flagged.  On the 20 + 20-dim
#: Gaussian with batch 256, even the exact critic reads 10 % low at 4 nats (3.60 = ln B - 1.9)
#: and 22 % low at 6 nats (4.67 = ln B - 0.9): the bound bends well before its cap.
_INFONCE_MARGIN = 1.5


class NeuralEstimator(CriticTraining, Estimator):
    """Shared settings and training loop of the neural bounds (use a subclass).

    Settings
    --------
    critic : {"separable", "joint"}
        ``"separable"``: f(x, y) = g(x) . h(y), two encoders (an MLP plus a linear
        shortcut) and a dot product; the B x B scores of a batch cost two encoder passes
        (fast; enough for Gaussian-like dependence when ``embed_dim`` exceeds the
        dimension of the shared signal).
        ``"joint"``: f(x, y) = MLP([x, y]); more expressive, B^2 network passes per batch.
    hidden : int or tuple of int
        Hidden widths of each MLP; an int ``h`` means two layers ``(h, h)``.
    embed_dim : int
        Output width of the separable encoders, and width of the learned embedding of a
        discrete y (class ids are embedded, never one-hot concatenated).
    batch_size : int
        Rows per training step.  All B (B - 1) mismatched pairs of a batch serve as
        product-of-marginals samples.  InfoNCE cannot exceed ln(batch_size).
    steps : int
        Maximum training steps (Adam).
    lr : float
        Adam learning rate; divided by 10 (at most twice) if training diverges or the
        held-out value is absurd (not finite, or below -1 nat); if all three tries fail,
        :class:`~ibtools.estimators.neural_training.NeuralTrainingError` is raised.
    val_fraction : float
        Fraction of rows held out; the estimate, early stopping and the ``"heldout"``
        interval use only these rows.
    eval_every : int or None
        Steps between held-out evaluations; ``None`` means ``max(1, steps // 40)``.
    patience : int or None
        Stop after this many held-out evaluations without a new best trailing mean;
        ``None`` trains for all ``steps``.
    progress : bool or "auto"
        tqdm progress bar; ``"auto"`` shows it only when stderr is a terminal.
    transform : None, "standardize" or "copula"
        Marginal transform of continuous inputs before training (default: standardize,
        an invertible affine map that leaves I(X;Y) unchanged and helps optimisation).

    Plus the common settings (``seed``, ``device``, ``dtype``, ``ci``, ``n_resamples``,
    ``confidence``, ``n_permutations``); see :class:`ibtools.estimators.base.Estimator`.

    Notes
    -----
    The critic is trained on ``1 - val_fraction`` of the rows with Adam, its learning
    rate decayed to zero over ``steps`` by a cosine schedule.  Every held-out evaluation
    splits the held-out rows into batches of ``batch_size``; with the separable critic up
    to ``2048 // batch_size`` batches form one group, and each row meets every other row
    of its group as a product-of-marginals sample (about 2 000 negatives per row rather
    than ``batch_size - 1``; the joint critic, one network pass per pair, keeps its
    batch).  Product terms are pooled over all groups by log-sum-exp.  InfoNCE reads
    each row against its own batch only, so its ln(batch_size) ceiling is unchanged.

    Early stopping and the choice of critic use the trailing mean of the last three
    held-out evaluations of the training objective (the bound itself; SMILE's
    Jensen-Shannon objective), and the reported value is the held-out value of the
    chosen critic.  Reporting the largest of dozens of noisy evaluations instead would
    bias the number upward, and for SMILE, which is not a bound, would favour critics
    that overestimate.

    Intervals: ``ci="heldout"`` (the default for ``"auto"``) is value +- z * se, where se
    is the spread of the per-batch held-out values over sqrt(number of batches): it
    measures evaluation noise of this critic, not training variability.  ``ci="seeds"``
    retrains ``n_resamples`` times with other seeds (a different split and
    initialisation) and takes quantiles: slower, and it covers training variability.
    """

    #: Key of the bound in :mod:`neural_critics`.
    bound: ClassVar[str] = ""
    bound_name: ClassVar[str] = ""
    is_lower_bound: ClassVar[bool] = True
    interval_kinds = ("heldout", "seeds")
    supports_transform = True
    stochastic = True
    defaults = {
        "critic": "separable",
        "hidden": (256, 256),
        "embed_dim": 64,
        "batch_size": 256,
        "steps": 2000,
        "lr": 1e-3,
        "val_fraction": 0.2,
        "eval_every": None,
        "patience": 10,
        "progress": "auto",
        "transform": "standardize",
    }

    # -- settings --------------------------------------------------------------------------

    def _check_settings(self) -> None:
        check_choice(self.critic, "critic", CRITICS)
        self._hidden = self._parse_hidden(self.hidden)
        check_int(self.embed_dim, "embed_dim", minimum=1)
        check_int(self.batch_size, "batch_size", minimum=2)
        check_int(self.steps, "steps", minimum=1)
        check_positive(self.lr, "lr")
        if (isinstance(self.val_fraction, bool)
                or not isinstance(self.val_fraction, (float, int, np.floating))
                or not 0.0 < float(self.val_fraction) < 1.0):
            raise ValueError(f"val_fraction={self.val_fraction!r} must be a number in (0, 1), "
                             f"the fraction of rows held out for evaluation (e.g. 0.2)")
        if self.eval_every is not None:
            check_int(self.eval_every, "eval_every", minimum=1)
        if self.patience is not None:
            check_int(self.patience, "patience", minimum=1)
        check_choice(self.progress, "progress", (True, False, "auto"))

    @staticmethod
    def _parse_hidden(hidden) -> tuple:
        if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
            widths = (int(hidden), int(hidden))
        elif isinstance(hidden, (tuple, list)) and len(hidden) > 0:
            widths = tuple(hidden)
        else:
            raise ValueError(f"hidden={hidden!r} is not accepted; give a width (int >= 1) or a "
                             f"non-empty tuple of widths such as (256, 256)")
        for w in widths:
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
                raise ValueError(f"hidden={hidden!r} is not accepted; every width must be an "
                                 f"int >= 1")
        return tuple(int(w) for w in widths)

    def _split_sizes(self, n: int) -> tuple[int, int, int]:
        """(n_heldout, heldout batch size, number of held-out batches) for n rows."""
        n_val = int(round(float(self.val_fraction) * n))
        n_val = min(max(n_val, 2), n - 2)
        b_eval = min(int(self.batch_size), n_val)
        return n_val, b_eval, n_val // b_eval

    def _min_samples(self) -> int:
        # at least 2 held-out rows (one product pair) and 2 training rows, whatever the fraction
        return max(8, math.ceil(2.0 / float(self.val_fraction)) + 2,
                   math.ceil(2.0 / (1.0 - float(self.val_fraction))) + 2)

    def _check_n(self, n: int) -> None:
        super()._check_n(n)
        if self.ci in ("heldout", "auto") and self._split_sizes(n)[2] < 2:
            n_val, b_eval, _ = self._split_sizes(n)
            raise ValueError(f"ci={self.ci!r} needs at least 2 held-out batches, but n={n} with "
                             f"val_fraction={self.val_fraction} holds out {n_val} rows, one batch "
                             f"of batch_size={b_eval}; use a smaller batch_size, a larger "
                             f"val_fraction, or ci='seeds'")

    # -- estimation ------------------------------------------------------------------------

    def _mi(self, x, y, x_discrete, y_discrete, rng):
        n = int(x.shape[0])
        device = x.device
        n_val, b_eval, n_batches = self._split_sizes(n)
        perm = torch.randperm(n, generator=rng, device=device)
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        eval_batches = val_idx[: n_batches * b_eval].view(n_batches, b_eval)
        init_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=rng, device=device))
        y_classes = int(y.max()) + 1 if y_discrete else None

        fit, lr, diverged_at = self._fit(x, y, y_classes, train_idx, eval_batches, init_seed,
                                         rng)
        groups = self._groups(eval_batches)
        value = fit["value"]
        per_batch = fit["per_batch"]
        se = float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch))) if len(per_batch) > 1 \
            else float("nan")
        self._last_heldout = (value, per_batch, se)

        curve_steps, curve_values = fit["curve_steps"], fit["curve_values"]
        details = {
            "bound": self.bound_name,
            "lower_bound": self.is_lower_bound,
            "ceiling": math.log(b_eval) if self.bound == "infonce" else None,
            "critic": self.critic,
            "hidden": list(self._hidden),
            "steps_run": fit["steps_run"],
            "best_step": fit["best_step"],
            "stopped_early": fit["steps_run"] < int(self.steps),
            "lr_used": lr,
            "restarts": len(diverged_at),
            "n_train": int(train_idx.numel()),
            "n_heldout": n_val,
            "heldout_rows_used": n_batches * b_eval,
            "heldout_batch_size": b_eval,
            "heldout_batches": n_batches,
            "heldout_negatives_per_row": sum(g.numel() * (g.numel() - 1) for g in groups)
            / (n_batches * b_eval),
            "heldout_se": se,
            "heldout_curve": {"step": curve_steps, "value": curve_values,
                              "selection": fit["curve_select"]},
            "selection": (("held-out Jensen-Shannon objective" if self.bound == "smile"
                           else "held-out bound")
                          + f", trailing mean of {SMOOTHING_WINDOW} evaluations"),
            "heldout_summary": {"first": curve_values[0], "best": max(curve_values),
                                "selected": value, "last": curve_values[-1],
                                "evaluations": len(curve_values)},
            "train_value": fit["train_value"],
            **({"tau": float(self.tau), "dv_value": fit["dv_value"]}
               if self.bound == "smile" else {}),
            "device": str(device),
        }
        return value, details, self._flags(value, details, diverged_at)

    def _flags(self, value, details, diverged_at) -> list:
        flags = []
        if self.bound == "infonce" and value > details["ceiling"] - _INFONCE_MARGIN:
            flags.append(
                f"near the InfoNCE ceiling: {value:.3f} nats is within {_INFONCE_MARGIN:g} nats "
                f"of ln(batch size) = {details['ceiling']:.3f}; InfoNCE cannot exceed that and "
                f"reads low well before it (even with the exact critic), so the true MI may be "
                f"much larger. Use a larger batch_size or another bound")
        if self.bound == "smile" and value > float(self.tau) - 1.0:
            flags.append(
                f"clip-limited: the SMILE value {value:.3f} nats is within 1 nat of tau="
                f"{float(self.tau):g}; the clip at e^tau drops the large density ratios of the "
                f"partition term, so the value reads high (the unclipped DV reading of the same "
                f"critic is {details['dv_value']:.3f}). Use a larger tau, or MINE")
        if diverged_at:
            flags.append(f"training diverged at lr={diverged_at} and was restarted; the value "
                         f"comes from lr={details['lr_used']:g}")
        curve = details["heldout_curve"]["value"]
        se = details["heldout_se"]
        if (not details["stopped_early"] and details["best_step"] == details["steps_run"]
                and len(curve) >= 4 and curve[-1] - curve[(3 * len(curve)) // 4 - 1]
                > max(2 * se if math.isfinite(se) else 0.0, 0.01 * abs(curve[-1]))):
            flags.append(f"not converged: the held-out estimate was still rising when steps="
                         f"{self.steps} ran out; more steps may give a higher value")
        train = details["train_value"]
        if train is not None and train - value > max(0.1, 0.1 * abs(value)):
            flags.append(f"overfitting: the training-row value {train:.3f} exceeds the "
                         f"held-out value {value:.3f}; use more rows or a smaller critic")
        if value < 0:
            flags.append("negative held-out value: no dependence detected (a lower bound "
                         "below 0 carries no information)")
        return flags

    # -- intervals -------------------------------------------------------------------------

    def _interval(self, kind, run, tensors, n, value, device):
        if kind != "heldout":
            return super()._interval(kind, run, tensors, n, value, device)
        _, per_batch, se = self._last_heldout
        z = NormalDist().inv_cdf(0.5 + float(self.confidence) / 2.0)
        return float(value - z * se), float(value + z * se), list(per_batch)


class MINE(NeuralEstimator):
    """Mutual Information Neural Estimation: the Donsker-Varadhan bound.

    I(X;Y) >= E_P[f] - ln E_Q[e^f], P the joint and Q the product of marginals.  The
    critic is trained on this bound; MINE's moving-average correction of the gradient's
    denominator is available through ``ema`` and off by default (see Notes).

    Settings
    --------
    ema : float in [0, 1)
        Decay of the moving average of E_Q[e^f] that replaces the minibatch denominator in
        the gradient (Belghazi et al., section 3.2); 0 (the default) uses the minibatch
        denominator.  Other settings: :class:`NeuralEstimator`.

    Notes
    -----
    Bias: a lower bound in expectation, tight for the optimal critic f = ln p/q + c.  The
    ln E_Q[e^f] term is dominated by rare large scores, so its variance grows roughly like
    e^I: at several nats the held-out value is noisy and the critic under-trained, which
    shows as a downward bias and a wide ``heldout`` interval.

    Why the correction is off by default: it exists because a minibatch estimate of
    E_Q[e^f] from a few negatives biases the gradient.  Here every batch gives B (B - 1)
    negatives (65 280 at B = 256), so that bias is small, while the moving average lags
    the fast changes of the partition term early in training; a batch whose E_Q[e^f]
    exceeds the lagging average then gets a gradient scaled by their ratio, unbounded.
    On the 20 + 20-dim Gaussian at 6 nats (n = 20 000, 800 steps) the held-out bound
    reached 5.3 nats with ``ema=0`` and 3.7-4.3 with ``ema=0.9`` or ``0.99`` (several
    runs); at 2 nats they agree within a few percent.

    References
    ----------
    .. [1] Belghazi et al., "Mutual Information Neural Estimation", ICML 2018.
    .. [2] Donsker, Varadhan, "Asymptotic evaluation of certain Markov process
       expectations for large time IV", Comm. Pure Appl. Math. 36, 1983.
    """

    name = "mine"
    limitations = (
        "Donsker-Varadhan lower bound with a trained critic: high variance, depends on critic "
        "training.")
    bound = "dv"
    bound_name = "Donsker-Varadhan (MINE)"
    defaults = {"ema": 0.0}

    def _check_settings(self) -> None:
        super()._check_settings()
        check_positive(self.ema, "ema", allow_zero=True)
        if not self.ema < 1:
            raise ValueError(f"ema={self.ema!r} must be in [0, 1): the decay of the moving "
                             f"average (0 turns the correction off)")


class NWJ(NeuralEstimator):
    """The Nguyen-Wainwright-Jordan bound (f-divergence / "MINE-f").

    I(X;Y) >= E_P[f] - E_Q[e^(f - 1)].

    Notes
    -----
    Bias: a lower bound, unbiased in its minibatch form (no logarithm of a mean), tight at
    f = 1 + ln p/q.  Its variance grows like e^I, so at large MI it is noisier than
    MINE and tends to underestimate; at small MI it is reliable.  Settings: see
    :class:`NeuralEstimator`.

    References
    ----------
    .. [1] Nguyen, Wainwright, Jordan, "Estimating divergence functionals and the
       likelihood ratio by convex risk minimization", IEEE Trans. Inf. Theory 56, 2010.
    .. [2] Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
    """

    name = "nwj"
    limitations = (
        "Variational lower bound with a trained critic: high variance at large MI.")
    bound = "nwj"
    bound_name = "Nguyen-Wainwright-Jordan (NWJ)"


class InfoNCE(NeuralEstimator):
    """The InfoNCE (contrastive predictive coding) bound.

    I(X;Y) >= E[f(x_i, y_i) - ln (1/B) sum_j e^f(x_i, y_j)] over batches of size B.

    Notes
    -----
    Bias: a lower bound with low variance, but it can never exceed ln(batch_size): when
    the true MI approaches or passes ln B it underestimates, whatever the critic.  The
    result states the ceiling (``details["ceiling"]``) and flags values within 1.5 nats
    of it: the bound bends well before its cap (with batch 256, the exact critic of a
    20-dim Gaussian reads 10 % low at 4 nats and 22 % low at 6).  The held-out evaluation
    uses batches of ``batch_size`` rows too, so the same ceiling applies.  Settings: see :class:`NeuralEstimator`.

    References
    ----------
    .. [1] van den Oord, Li, Vinyals, "Representation Learning with Contrastive Predictive
       Coding", arXiv:1807.03748, 2018.
    .. [2] Poole et al., "On Variational Bounds of Mutual Information", ICML 2019.
    """

    name = "infonce"
    limitations = (
        "Contrastive lower bound: can never exceed ln(batch size).")
    bound = "infonce"
    bound_name = "InfoNCE"


class SMILE(NeuralEstimator):
    """Smoothed Mutual Information "Lower-bound" Estimator (Song & Ermon 2020).

    SMILE = E_P[f] - ln E_Q[clip(e^f, e^-tau, e^tau)], with the critic trained on the
    Jensen-Shannon (f-GAN) objective, whose optimum is the log density ratio.

    Settings
    --------
    tau : float > 0
        Clipping threshold of the scores in the partition term.  Other settings:
        :class:`NeuralEstimator`.

    Notes
    -----
    Bias: clipping trades variance for bias, and the estimate is not a lower bound
    (``details["lower_bound"]`` is False).  At high MI it overestimates: the clip at
    e^tau removes the rare large ratios that carry much of E_Q[e^f], so the partition
    term reads low, even with the exact log density ratio as critic, and more the larger
    the MI (clipping from below, at e^-tau, pulls the other way, by less).  A critic with inflated scores inflates the estimate further, which
    is why critics are compared by the held-out Jensen-Shannon objective and never by
    the SMILE value.  Its variance stays bounded.  As tau grows it tends to the DV value
    of a JS-trained critic; that unclipped reading of the chosen critic, on the same
    held-out rows, is reported as ``details["dv_value"]``, and a value within 1 nat of
    tau is flagged "clip-limited".

    On a Gaussian staircase of 2 to 10 nats, tau = 5 reads close at a few nats and
    increasingly high above that, while a larger tau and MINE read low
    (``benchmarks/NEURAL.md`` has the measured errors per level); above about 6 nats
    prefer MINE or a larger tau.

    References
    ----------
    .. [1] Song, Ermon, "Understanding the Limitations of Variational Mutual Information
       Estimators", ICLR 2020.
    """

    name = "smile"
    limitations = (
        "Clipped Donsker-Varadhan bound: the clip trades bias for variance.")
    bound = "smile"
    bound_name = "SMILE (clipped Donsker-Varadhan, JS-trained critic)"
    is_lower_bound = False
    defaults = {"tau": 5.0}

    def _check_settings(self) -> None:
        super()._check_settings()
        check_positive(self.tau, "tau")


__all__ = ["NeuralEstimator", "NeuralTrainingError", "MINE", "NWJ", "InfoNCE", "SMILE"]
