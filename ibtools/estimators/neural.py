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

from typing import ClassVar

from ibtools.estimators.base import check_choice, check_int
from ibtools.estimators.neural_bounds import (
    Bound,
    DonskerVaradhan,
    InfoNCEBound,
    NguyenWainwrightJordan,
    SmileBound,
)
from ibtools.estimators.neural_critics import (
    CRITICS,
    CriticObjective,
    block_stats,
    critic_groups,
    evaluate_critic,
    pool_stats,
)
from ibtools.estimators.neural_heldout import (
    TRAINING_DEFAULTS,
    HeldOutEstimator,
    parse_hidden,
)
from ibtools.estimators.neural_training import NeuralTrainingError


class NeuralEstimator(HeldOutEstimator):
    """A critic trained on a bound (use a subclass, which names its :class:`Bound`).

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

    Plus the settings of the bound (``Bound.settings``: MINE's ``ema``, SMILE's ``tau``) and
    the common settings (``seed``, ``device``, ``dtype``, ``ci``, ``n_resamples``,
    ``confidence``, ``n_permutations``); see :class:`ibtools.estimators.base.Estimator`.

    Notes
    -----
    The critic is trained on ``1 - val_fraction`` of the rows with Adam, its learning
    rate decayed to zero over ``steps`` by a cosine schedule
    (:class:`~ibtools.estimators.neural_training.HeldOutTrainer`).  Every held-out
    evaluation splits the held-out rows into batches of ``batch_size``; with the separable
    critic up to ``2048 // batch_size`` batches form one group, and each row meets every
    other row of its group as a product-of-marginals sample (about 2 000 negatives per row
    rather than ``batch_size - 1``; the joint critic, one network pass per pair, keeps its
    batch).  Product terms are pooled over all groups by log-sum-exp.  InfoNCE reads
    each row against its own batch only, so its ln(batch_size) ceiling is unchanged.

    Early stopping and the choice of critic use the trailing mean of the last three
    held-out evaluations of the bound's selection objective (the bound itself; SMILE's
    Jensen-Shannon objective), and the reported value is the held-out value of the
    chosen critic.  Reporting the largest of dozens of noisy evaluations instead would
    bias the number upward, and for SMILE, which is not a bound, would favour critics
    that overestimate.

    Intervals: see :class:`~ibtools.estimators.neural_heldout.HeldOutEstimator`.
    """

    #: The bound the critic is trained on and read by (a :class:`Bound` subclass).
    bound_type: ClassVar[type[Bound]] = Bound
    defaults = {"critic": "separable", "hidden": (256, 256), "embed_dim": 64,
                **TRAINING_DEFAULTS}

    def _check_settings(self) -> None:
        check_choice(self.critic, "critic", CRITICS)
        self._hidden = parse_hidden(self.hidden)
        check_int(self.embed_dim, "embed_dim", minimum=1)
        super()._check_settings()
        self._make_bound()  # the bound checks its own settings

    def _make_bound(self) -> Bound:
        return self.bound_type(**{key: getattr(self, key) for key in self.bound_type.settings})

    # -- the held-out estimator's hooks ----------------------------------------------------

    def _objective(self, x, y, y_classes, eval_batches):
        return CriticObjective(self._make_bound(), self.critic, x, y, y_classes, self._hidden,
                               int(self.embed_dim), eval_batches)

    def _model_details(self, objective, fit, b_eval):
        bound = objective.bound
        groups = objective.groups
        return {"bound": bound.label, "lower_bound": bound.is_lower_bound,
                "ceiling": bound.ceiling(b_eval), "critic": self.critic,
                "hidden": list(self._hidden),
                "heldout_negatives_per_row": sum(g.numel() * (g.numel() - 1) for g in groups)
                / objective.eval_rows,
                **bound.details()}

    def _model_flags(self, value, details):
        return self._make_bound().flags(value, details)

    # -- held-out evaluation of a given critic (also used by tests and benchmarks) ---------

    def _groups(self, batches):
        return critic_groups(batches, self.critic)

    def _bound_clipped(self, tau):
        bound = self._make_bound()
        if tau is not None:
            bound.clip = float(tau)
        return bound

    def _evaluate(self, critic, x, y, groups, b_eval, tau=None):
        """(value, selection score, per-batch values) of ``critic`` under this estimator's
        bound; ``tau`` clips the scores as SMILE's does (None: the bound's own clip)."""
        return evaluate_critic(self._bound_clipped(tau), critic, x, y, groups, b_eval)

    def _pooled(self, critic, x, y, groups, b_eval, tau=None) -> dict:
        return pool_stats(block_stats(self._bound_clipped(tau), critic, x, y, groups, b_eval))


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
    bound_type = DonskerVaradhan
    defaults = {"ema": 0.0}


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
    bound_type = NguyenWainwrightJordan


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
    bound_type = InfoNCEBound


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
    bound_type = SmileBound
    defaults = {"tau": 5.0}


__all__ = ["NeuralEstimator", "NeuralTrainingError", "MINE", "NWJ", "InfoNCE", "SMILE"]
