"""Difference of entropies (DoE): I(X;Y) = H(Y) - H(Y|X) with two trained density models.

McAllester & Stratos (2020) estimate each entropy by the cross-entropy of a model fitted by
maximum likelihood: a model q(y) of the marginal and a model q(y|x) of the conditional, so
that I is read as E[ln q(y|x) - ln q(y)] on rows the models never saw.  Here both models
are trained together by :class:`~ibtools.estimators.neural_training.HeldOutTrainer` (the
trainer the neural bounds use), chosen by their held-out log-likelihood, and read on the
held-out rows:

* a continuous y: q(y) = N(mu, L L^T) and q(y|x) = N(m(x), C C^T), full covariances through
  their Cholesky factors and m an MLP with a linear shortcut;
* a discrete y (class ids): q(y) a learned categorical and q(y|x) a softmax classifier.

Both models start at the same distribution (m and the classifier's last layer start at
zero), so an untrained pair reads 0 nats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ibtools.estimators.neural_critics import Encoder
from ibtools.estimators.neural_heldout import (
    TRAINING_DEFAULTS,
    HeldOutEstimator,
    parse_hidden,
)


def _cholesky(raw: torch.Tensor) -> torch.Tensor:
    """A lower-triangular factor with a positive diagonal from an unconstrained square."""
    return torch.tril(raw, -1) + torch.diag_embed(torch.exp(torch.diagonal(raw)))


def _gaussian_log_density(y: torch.Tensor, mean: torch.Tensor, raw: torch.Tensor):
    """ln N(y; mean, L L^T) per row, L = :func:`_cholesky` of ``raw``."""
    factor = _cholesky(raw)
    z = torch.linalg.solve_triangular(factor, (y - mean).T, upper=False)  # (d, B)
    d = y.shape[1]
    return (-0.5 * (z * z).sum(0) - torch.diagonal(raw).sum()
            - 0.5 * d * math.log(2.0 * math.pi))


class GaussianPair(nn.Module):
    """q(y) = N(mu, L L^T) and q(y|x) = N(m(x), C C^T); :meth:`forward` gives both
    log-densities per row."""

    def __init__(self, x_dim: int, y_dim: int, hidden: tuple):
        super().__init__()
        self.mean = Encoder(x_dim, hidden, y_dim)
        nn.init.zeros_(self.mean.mlp[-1].weight)
        nn.init.zeros_(self.mean.mlp[-1].bias)
        self.mu = nn.Parameter(torch.zeros(y_dim))
        self.raw_marginal = nn.Parameter(torch.zeros(y_dim, y_dim))
        self.raw_conditional = nn.Parameter(torch.zeros(y_dim, y_dim))

    def forward(self, x, y):
        log_marginal = _gaussian_log_density(y, self.mu, self.raw_marginal)
        log_conditional = _gaussian_log_density(y, self.mean(x), self.raw_conditional)
        return log_marginal, log_conditional


class CategoricalPair(nn.Module):
    """q(y) a learned categorical over ``classes`` ids and q(y|x) a softmax classifier."""

    def __init__(self, x_dim: int, classes: int, hidden: tuple):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(classes))
        self.classifier = Encoder(x_dim, hidden, classes)
        nn.init.zeros_(self.classifier.mlp[-1].weight)
        nn.init.zeros_(self.classifier.mlp[-1].bias)

    def forward(self, x, y):
        log_marginal = F.log_softmax(self.logits, 0)[y]
        log_conditional = F.log_softmax(self.classifier(x), 1).gather(1, y[:, None])[:, 0]
        return log_marginal, log_conditional


class DensityPairObjective:
    """The two models as :class:`~ibtools.estimators.neural_training.HeldOutTrainer` fits
    them: the loss is the negative log-likelihood of both on a training batch; the value
    of a held-out batch is the mean of ln q(y|x) - ln q(y), its selection score the mean
    of ln q(y) + ln q(y|x)."""

    selection_label = "held-out log-likelihood of q(y) and q(y|x)"

    def __init__(self, x, y, y_classes, hidden: tuple, eval_batches: torch.Tensor):
        self.x, self.y, self.y_classes, self.hidden = x, y, y_classes, hidden
        self.eval_batches = eval_batches

    def build(self) -> nn.Module:
        x_dim = int(self.x.shape[1])
        if self.y_classes is None:
            model = GaussianPair(x_dim, int(self.y.shape[1]), self.hidden)
        else:
            model = CategoricalPair(x_dim, self.y_classes, self.hidden)
        return model.to(device=self.x.device, dtype=self.x.dtype)

    def new_state(self):
        return None

    def loss(self, model, idx, state) -> torch.Tensor:
        log_marginal, log_conditional = model(self.x[idx], self.y[idx])
        return -(log_marginal.mean() + log_conditional.mean())

    @torch.no_grad()
    def _log_densities(self, model, rows):
        return model(self.x[rows.reshape(-1)], self.y[rows.reshape(-1)])

    @torch.no_grad()
    def evaluate(self, model):
        log_marginal, log_conditional = self._log_densities(model, self.eval_batches)
        shape = self.eval_batches.shape
        per_batch = (log_conditional - log_marginal).view(shape).mean(1)
        numbers = torch.cat([per_batch.mean()[None],
                             (log_marginal + log_conditional).mean()[None],
                             per_batch]).cpu().tolist()
        return numbers[0], numbers[1], numbers[2:]

    @torch.no_grad()
    def train_value(self, model, train_idx) -> float:
        rows = train_idx[: self.eval_batches.numel()]
        log_marginal, log_conditional = self._log_densities(model, rows)
        return float((log_conditional - log_marginal).mean())

    @torch.no_grad()
    def readings(self, model) -> dict:
        log_marginal, log_conditional = self._log_densities(model, self.eval_batches)
        return {"h_y": float(-log_marginal.mean()),
                "h_y_given_x": float(-log_conditional.mean())}

    def judged(self, fit: dict) -> float:
        return fit["value"]


class DoE(HeldOutEstimator):
    """Difference of entropies: I(X;Y) = H(Y) - H(Y|X), each entropy the held-out
    cross-entropy of a trained model (Gaussian for a continuous y, categorical for labels).

    Settings
    --------
    hidden : int or tuple of int
        Hidden widths of the MLP of m(x) (or of the classifier); an int ``h`` means
        ``(h, h)``.
    lr : float
        Adam learning rate (default 1e-2); divided by 10 on divergence, as for the bounds.
    batch_size, steps, val_fraction, eval_every, patience, progress, transform
        Training and held-out evaluation, as for the neural bounds
        (:class:`~ibtools.estimators.neural.NeuralEstimator`); the models are chosen by
        their held-out log-likelihood, never by the value.

    Notes
    -----
    Bias: not a bound in either direction.  A cross-entropy is never below the entropy it
    estimates, so a misfit of q(y) (a non-Gaussian or multimodal y) reads H(Y) high and the
    value high, and a misfit of q(y|x) (noise whose spread depends on x, or any conditional
    that is not Gaussian) reads H(Y|X) high and the value low.  The conditional's covariance
    does not depend on x, so heteroscedastic dependence is seen only through the mean.
    When both families hold the truth, as for jointly Gaussian data, the estimate is
    consistent; at small n the MLP's overfitting of q(y|x) is checked on held-out rows, and
    the selection by held-out likelihood stops it, but the remaining error pulls the value
    low.  ``details["h_y"]`` and ``details["h_y_given_x"]`` are the two cross-entropies in
    the transformed (by default standardized) coordinates.

    References
    ----------
    .. [1] McAllester, Stratos, "Formal Limitations on the Measurement of Mutual
       Information", AISTATS 2020.
    """

    name = "doe"
    limitations = (
        "Difference of two trained cross-entropies (Gaussian or categorical models): not a "
        "bound; a misfit marginal reads high, a misfit conditional reads low.")
    #: lr 1e-2, ten times the critics': the models start at q(y|x) = q(y) and their
    #: likelihood gradients are smooth, and at 1e-3 a few hundred steps left the held-out
    #: value still rising and well below the truth of small Gaussian cases.
    defaults = {"hidden": (64, 64), **TRAINING_DEFAULTS, "lr": 1e-2}

    def _check_settings(self) -> None:
        self._hidden = parse_hidden(self.hidden)
        super()._check_settings()

    def _objective(self, x, y, y_classes, eval_batches):
        return DensityPairObjective(x, y, y_classes, self._hidden, eval_batches)

    def _model_details(self, objective, fit, b_eval):
        kind = ("Gaussian q(y) and q(y|x) = N(m(x), C C^T)" if objective.y_classes is None
                else "categorical q(y) and softmax classifier q(y|x)")
        return {"model": kind, "lower_bound": False, "hidden": list(self._hidden)}
