"""The base of every estimator trained on some rows and read on held-out ones.

:class:`HeldOutEstimator` owns the settings of training (steps, learning rate, batch size,
held-out fraction, early stopping), the split of the rows, the call to
:class:`~ibtools.estimators.neural_training.HeldOutTrainer`, the details and flags every such
estimator reports, and the ``"heldout"`` interval.  A subclass supplies the objective (a
model with a loss and a held-out evaluation) and its own details and flags:

* :meth:`HeldOutEstimator._objective` -> the objective the trainer fits;
* :meth:`HeldOutEstimator._model_details` -> details of the model and what it measures;
* :meth:`HeldOutEstimator._model_flags` -> flags about the value (default: none).

The neural bounds (:mod:`~ibtools.estimators.neural`) and the difference-of-entropies
estimator (:mod:`~ibtools.estimators.doe`) are such subclasses.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ibtools.errors import EstimatorRefused, InputError
from ibtools.estimators.base import Estimator, check_choice, check_int, check_positive
from ibtools.estimators.neural_training import (
    SMOOTHING_WINDOW,
    HeldOutTrainer,
    progress_bar,
)

#: The training settings every held-out estimator takes, with their defaults; a subclass
#: lists them in its ``defaults`` after its own (``{"critic": ..., **TRAINING_DEFAULTS}``).
TRAINING_DEFAULTS = {
    "batch_size": 256,
    "steps": 2000,
    "lr": 1e-3,
    "val_fraction": 0.2,
    "eval_every": None,
    "patience": 10,
    "progress": "auto",
    "transform": "standardize",
}


def parse_hidden(hidden) -> tuple:
    """Hidden widths: an int ``h`` means ``(h, h)``; a non-empty tuple of ints >= 1 as is."""
    if isinstance(hidden, (int, np.integer)) and not isinstance(hidden, bool):
        widths = (int(hidden), int(hidden))
    elif isinstance(hidden, (tuple, list)) and len(hidden) > 0:
        widths = tuple(hidden)
    else:
        raise InputError(f"hidden={hidden!r} is not accepted; give a width (int >= 1) or a "
                         f"non-empty tuple of widths such as (256, 256)")
    for w in widths:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 1:
            raise InputError(f"hidden={hidden!r} is not accepted; every width must be an "
                             f"int >= 1")
    return tuple(int(w) for w in widths)


class HeldOutEstimator(Estimator):
    """Shared split, training, details, flags and interval (use a subclass).

    Intervals: ``ci="heldout"`` (the default for ``"auto"``) is value +- z * se, where se is
    the spread of the per-batch held-out values over sqrt(number of batches): it measures
    evaluation noise of this model, not training variability.  ``ci="seeds"`` retrains
    ``n_resamples`` times with other seeds (a different split and initialisation) and takes
    the spread of their values.
    """

    interval_kinds = ("heldout", "seeds")
    supports_transform = True
    stochastic = True
    forks_global_rng = True  # the trainer seeds the model's initialisation
    #: a critic trained on 1 or 2 threads differs in the last bits (~1e-7), and its small
    #: matmuls gain nothing from a second thread: always one thread, so a seeded value is
    #: the same whatever the caller's count and the machine's load (see ``_jit``)
    fixed_threads = 1

    # -- settings --------------------------------------------------------------------------

    def _check_settings(self) -> None:
        check_int(self.batch_size, "batch_size", minimum=2)
        check_int(self.steps, "steps", minimum=1)
        check_positive(self.lr, "lr")
        if (isinstance(self.val_fraction, bool)
                or not isinstance(self.val_fraction, (float, int, np.floating))
                or not 0.0 < float(self.val_fraction) < 1.0):
            raise InputError(f"val_fraction={self.val_fraction!r} must be a number in (0, 1), "
                             f"the fraction of rows held out for evaluation (e.g. 0.2)")
        if self.eval_every is not None:
            check_int(self.eval_every, "eval_every", minimum=1)
        if self.patience is not None:
            check_int(self.patience, "patience", minimum=1)
        check_choice(self.progress, "progress", (True, False, "auto"))

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
            raise EstimatorRefused(f"ci={self.ci!r} needs at least 2 held-out batches, but n={n} with "
                             f"val_fraction={self.val_fraction} holds out {n_val} rows, one batch "
                             f"of batch_size={b_eval}; use a smaller batch_size, a larger "
                             f"val_fraction, or ci='seeds'")

    def _progress_bar(self, total: int):
        return progress_bar(self.progress, total, f"{self.name} training")

    # -- what a subclass supplies ----------------------------------------------------------

    def _objective(self, x, y, y_classes, eval_batches):
        """The objective :class:`HeldOutTrainer` fits (see its module docstring)."""
        raise NotImplementedError(f"{type(self).__name__} must define _objective")

    def _model_details(self, objective, fit: dict, b_eval: int) -> dict:
        """Details of the model and of what the value measures."""
        return {}

    def _model_flags(self, value: float, details: dict) -> list:
        """Flags about the value that only this estimator knows."""
        return []

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
        objective = self._objective(x, y, y_classes, eval_batches)
        trainer = HeldOutTrainer(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                                 eval_every=self.eval_every, patience=self.patience,
                                 progress=self.progress, owner=type(self).__name__,
                                 desc=f"{self.name} training")
        fit, lr, diverged_at = trainer.fit(objective, train_idx, init_seed, rng)
        value, per_batch = fit["value"], fit["per_batch"]
        se = float(np.std(per_batch, ddof=1) / math.sqrt(len(per_batch))) if len(per_batch) > 1 \
            else float("nan")
        curve_values = fit["curve_values"]
        details = {
            **self._model_details(objective, fit, b_eval),
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
            "heldout_se": se,
            "heldout_values": list(per_batch),
            "heldout_curve": {"step": fit["curve_steps"], "value": curve_values,
                              "selection": fit["curve_select"]},
            "selection": (f"{objective.selection_label}, trailing mean of {SMOOTHING_WINDOW} "
                          f"evaluations"),
            "heldout_summary": {"first": curve_values[0], "best": max(curve_values),
                                "selected": value, "last": curve_values[-1],
                                "evaluations": len(curve_values)},
            "train_value": fit["train_value"],
            **fit["readings"],
            "device": str(device),
        }
        return value, details, self._flags(value, details, diverged_at)

    def _flags(self, value, details, diverged_at) -> list:
        flags = self._model_flags(value, details)
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
                         f"held-out value {value:.3f}; use more rows or a smaller model")
        if value < 0:
            flags.append("negative held-out value: no dependence detected (an estimate "
                         "below 0 carries no information)")
        return flags
