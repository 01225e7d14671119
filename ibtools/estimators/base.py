"""The estimator base class: settings, the public methods, intervals and the permutation null.

An estimator subclasses :class:`Estimator`, declares its settings in ``defaults`` and
implements ``_mi(x, y, x_discrete, y_discrete)`` and/or ``_entropy(x, discrete)`` on
prepared tensors (2-D, on the working device, in the working dtype, transformed).  The
public methods :meth:`Estimator.mutual_information` and :meth:`Estimator.entropy` do the
rest, so every estimator validates, times, flags and builds intervals the same way.

The pieces live by concern: the result type in :mod:`~ibtools.estimators.result`, input and
setting checks in :mod:`~ibtools.estimators.validation`, devices, dtypes and memory budgets
in :mod:`~ibtools.estimators.memory`; their names are re-exported here so existing imports
keep working.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import numpy as np
import torch

from ibtools.errors import (
    EstimatorRefused,
    InputError,
    InputTypeError,
    NumericalFailure,
)
from ibtools.estimators import _jit
from ibtools.estimators.intervals import (
    PermutationNull,
    bias_dominates,
    bias_flag,
    independence_flag,
    interval_scheme,
)
from ibtools.estimators.layer_information import (
    LayerInformation,
    plain_layer_information,
)
from ibtools.estimators.memory import (  # noqa: F401  (re-exported)
    chunk_rows,
    default_memory_budget,
    parse_bytes,
    resolve_device,
    resolve_dtype,
)
from ibtools.estimators.result import LN2, EstimateResult, _jsonable  # noqa: F401
from ibtools.estimators.settings import COMMON_DEFAULTS, Settings
from ibtools.estimators.transforms import TRANSFORMS, apply_transform
from ibtools.estimators.validation import (  # noqa: F401  (re-exported)
    LABEL_LIKE_MAX_VALUES,
    LABEL_LIKE_ROWS,
    check_choice,
    check_int,
    check_positive,
    encode_discrete,
    label_like_flag,
    prepare,
    to_numpy_or_tensor,
)

# --------------------------------------------------------------------------- estimator base

_COMMON_DEFAULTS = COMMON_DEFAULTS


class Estimator(Settings):
    """Base class.  ``__init__`` stores and checks settings and does no work.

    Common settings (every estimator)
    ---------------------------------
    seed : int
        Seeds every random choice (tie-breaking noise, resamples, permutations, training).
    device : None, "auto", "cpu", "cuda[:N]"
        Where to compute; ``None`` is the device of the inputs (CPU for numpy).
    dtype : "float32" or "float64"
        Working precision of continuous inputs.
    memory_budget : int, str or None
        Scratch memory a pairwise block may use (``"512MiB"``); default 256 MiB on CPU and
        a quarter of free memory on CUDA.
    ci : None or str
        Interval kind: one of the estimator's ``interval_kinds`` (``"subsample"``,
        ``"seeds"``, ``"bootstrap"``) or ``"auto"`` for its preferred kind.
    n_resamples : int
        Resamples (or seeds) behind the interval.
    confidence : float
        Interval coverage, in (0, 1).
    n_permutations : int or "auto"
        If > 0, estimate the value under a permutation null (y rows shuffled) that many times
        and report its mean, spread, 95% quantile and a p-value in ``details["null"]``: the
        estimator's bias at independence; a p-value above 0.05 adds the flag "not
        distinguishable from independence".  ``"auto"`` (the default) runs the estimator's
        own small check (``auto_permutations`` shuffles, or :meth:`_independence_check`) when
        its value is positive and within reach of its bias at independence, and nothing
        for estimators too costly to rerun; ``0`` turns every check off.
    """

    name: ClassVar[str] = ""
    defaults: ClassVar[dict] = {}
    #: Interval kinds this estimator offers; the first is its "auto" choice.
    interval_kinds: ClassVar[tuple] = ("bootstrap",)
    #: Whether the ``transform`` setting applies (kNN, KDE, Gaussian).
    supports_transform: ClassVar[bool] = False
    #: What the estimator cannot do or gets wrong, in one or two plain sentences; reports
    #: list it under the caveats of every table that used the estimator.
    limitations: ClassVar[str] = ""
    #: Which (x_discrete, y_discrete) combinations ``_mi`` handles after the base has moved a
    #: discrete variable into the y slot.
    handles_discrete_x: ClassVar[bool] = False
    handles_entropy_of_discrete: ClassVar[bool] = False
    #: Whether seeds change the value (so "seeds" intervals make sense).
    stochastic: ClassVar[bool] = False
    #: Whether the estimate is a function of the sample's empirical distribution, so it
    #: cannot exceed ln n (see :mod:`ibtools.estimators.bounds`).
    bounded_by_sample_size: ClassVar[bool] = False
    #: Shuffles of the permutation null run by ``n_permutations="auto"``; 0 for estimators
    #: too costly to rerun that often (they may override :meth:`_independence_check`).
    auto_permutations: ClassVar[int] = 0
    #: Whether an estimate seeds the process-wide torch RNG (forked and restored, as a trained
    #: model's initialisation does), so it must not run in a thread beside training.
    forks_global_rng: ClassVar[bool] = False
    #: Whether a call may run on fewer torch threads while other processes keep the cores
    #: busy (:func:`ibtools.estimators._jit.call_threads`); only for estimators whose numbers
    #: do not depend on the thread count.
    threads_follow_load: ClassVar[bool] = True
    #: A thread count every call runs on exactly, whatever the caller's and the load (for
    #: estimators whose numbers depend on it); None: ``threads_follow_load`` decides.
    fixed_threads: ClassVar[int | None] = None

    def __init__(self, **settings):
        self._init_settings(settings)

    # -- settings (declared once: see :mod:`ibtools.estimators.settings`) ------------------

    def _validate(self) -> None:
        self._check_common()
        self._check_settings()

    def _check_common(self) -> None:
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool):
            raise InputTypeError(f"seed must be an int; got {self.seed!r}")
        resolve_dtype(self.dtype)
        if self.device is not None:
            resolve_device(self.device)
        if self.memory_budget is not None:
            parse_bytes(self.memory_budget)
        if self.ci is not None and self.ci != "auto" and self.ci not in self.interval_kinds:
            raise InputError(f"ci={self.ci!r} is not offered by {type(self).__name__}; use None, "
                             f"'auto' or one of {list(self.interval_kinds)}")
        check_int(self.n_resamples, "n_resamples", minimum=2)
        if self.n_permutations != "auto":
            check_int(self.n_permutations, "n_permutations", minimum=0)
        if not (isinstance(self.confidence, (float, int)) and 0 < self.confidence < 1):
            raise InputError(f"confidence={self.confidence!r} must be a number in (0, 1)")
        if self.supports_transform and self.transform not in TRANSFORMS:
            raise InputError(f"transform={self.transform!r} is not accepted; use one of "
                             f"{list(TRANSFORMS)}")

    def _check_settings(self) -> None:
        """Estimator-specific checks; raise ValueError/TypeError naming the setting."""

    def _repr_html_(self) -> str:
        """Jupyter view: the class and every setting, changed ones in bold."""
        from ibtools.notebook import estimator_html

        return estimator_html(self)

    # -- hooks for subclasses -------------------------------------------------------------

    def _mi(self, x: torch.Tensor, y: torch.Tensor, x_discrete: bool, y_discrete: bool,
            rng: torch.Generator):
        """Return ``(value_nats, details: dict, flags: list[str])``."""
        raise InputTypeError(f"{type(self).__name__} does not estimate mutual information")

    def _entropy(self, x: torch.Tensor, discrete: bool, rng: torch.Generator):
        """Return ``(value_nats, details: dict, flags: list[str])``."""
        raise InputTypeError(f"{type(self).__name__} does not estimate entropy")

    def _min_samples(self) -> int:
        return 2

    def _user_name(self, slot: str) -> str:
        """The caller's name ("x" or "y") of the variable in ``slot`` of ``_mi``: a discrete x
        is moved into the y slot, and messages must name the argument the caller passed."""
        if getattr(self, "_swapped_arguments", False):
            return {"x": "y", "y": "x"}[slot]
        return slot

    # -- plumbing --------------------------------------------------------------------------

    @property
    def working_device(self) -> torch.device | None:
        return None if self.device is None else resolve_device(self.device)

    def _budget(self, device: torch.device) -> int:
        if self.memory_budget is None:
            return default_memory_budget(device)
        return parse_bytes(self.memory_budget)

    def _generator(self, device: torch.device, offset: int = 0) -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(int(self.seed) + 1_000_003 * offset)
        return g

    def _transform(self, t: torch.Tensor, discrete: bool) -> torch.Tensor:
        if discrete or not self.supports_transform or self.transform is None:
            return t
        return apply_transform(t, self.transform)

    def _check_n(self, n: int) -> None:
        need = self._min_samples()
        if n < need:
            raise EstimatorRefused(f"n={n} samples is too few for {type(self).__name__} with "
                                   f"these settings; it needs at least {need}")

    # -- public API ------------------------------------------------------------------------

    @_jit.follows_load
    def mutual_information(self, x, y, *, discrete_x=None, discrete_y=None) -> EstimateResult:
        """Estimate I(X;Y) in nats.

        Parameters
        ----------
        x, y : array-like or Tensor, shape (n, ...)
            Paired samples, one row each; trailing dimensions are flattened.
        discrete_x, discrete_y : bool or None
            Whether the variable is discrete (class or token ids).  ``None`` decides from the
            dtype: integer/bool/string columns are discrete, floats continuous.
        """
        x0 = to_numpy_or_tensor(x, "x")
        y0 = to_numpy_or_tensor(y, "y")
        device = self.working_device or resolve_device(None, x0, y0)
        dtype = resolve_dtype(self.dtype)
        xt, xd = prepare(x0, "x", discrete=discrete_x, device=device, dtype=dtype)
        yt, yd = prepare(y0, "y", discrete=discrete_y, device=device, dtype=dtype)
        notes = [f for f in (label_like_flag(xt, "x", discrete_x),
                             label_like_flag(yt, "y", discrete_y)) if f]
        if xt.shape[0] != yt.shape[0]:
            raise InputError(f"x and y must have the same number of rows (samples); got "
                             f"x: {xt.shape[0]} and y: {yt.shape[0]}")
        n = int(xt.shape[0])
        self._check_n(n)
        dims = (1 if xd else int(xt.shape[1]), 1 if yd else int(yt.shape[1]))
        swapped = False
        if xd and not yd:  # MI is symmetric: keep a discrete variable in the y slot
            xt, yt, xd, yd, swapped = yt, xt, yd, xd, True
        self._swapped_arguments = swapped  # read by _user_name for messages
        if xd and yd and not self.handles_discrete_x:
            raise EstimatorRefused(f"method {self.name!r} needs at least one continuous variable; "
                                   f"both x and y are discrete here. Use method='binning' "
                                   f"(plug-in), or pass discrete_x=False / discrete_y=False if "
                                   f"a variable is continuous")
        xt = self._transform(xt, xd)
        yt = self._transform(yt, yd)

        def run(xs, ys, offset):
            return self._mi(xs, ys, xd, yd, self._generator(device, offset))

        result = self._finish("mutual_information", run, (xt, yt), n, dims, device,
                              extra={"swapped_arguments": swapped} if swapped else {})
        result.flags.extend(notes)
        from ibtools.estimators.bounds import check_ceilings

        discrete = {self._user_name(slot): t for slot, t, d in (("x", xt, xd), ("y", yt, yd))
                    if d}
        check_ceilings(result, n, discrete, self.bounded_by_sample_size)
        return result

    def layer_information(self, x, t, t_prev, y, *, chain=None) -> LayerInformation:
        """I(X;T), I(T_prev;T) and I(T;Y) of one layer T: the analysis' one call per layer.

        ``t_prev`` is the previous layer (``None``: no I(T_prev;T)), ``y`` class labels,
        ``chain`` the estimator of I(T_prev;T) when it is not this one (a noisy chain).  Each
        quantity is a result or the estimator failure that prevented it (see
        :mod:`~ibtools.estimators.layer_information`).  This default makes the three plain
        calls; an estimator that can share work among them overrides it.
        """
        return plain_layer_information(self, x, t, t_prev, y, chain=chain)

    @_jit.follows_load
    def entropy(self, x, *, discrete=None) -> EstimateResult:
        """Estimate the entropy H(X) (differential for continuous X) in nats."""
        x0 = to_numpy_or_tensor(x, "x")
        device = self.working_device or resolve_device(None, x0)
        xt, xd = prepare(x0, "x", discrete=discrete, device=device, dtype=resolve_dtype(self.dtype))
        if xd and not self.handles_entropy_of_discrete:
            raise EstimatorRefused(f"method {self.name!r} estimates differential entropy of "
                                   f"continuous data; x is discrete (integer ids). Use "
                                   f"method='binning', or pass discrete=False")
        n = int(xt.shape[0])
        self._check_n(n)
        xt = self._transform(xt, xd)

        def run(xs, offset):
            return self._entropy(xs, xd, self._generator(device, offset))

        return self._finish("entropy", run, (xt,), n, (1 if xd else int(xt.shape[1]),), device)

    def _finish(self, quantity, run, tensors, n, dims, device, extra=None) -> EstimateResult:
        start = time.perf_counter()
        value, details, flags = run(*tensors, 0)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        details = dict(details)
        details.update(extra or {})
        flags = list(flags)
        value = float(value)
        if not math.isfinite(value):
            raise NumericalFailure(f"{type(self).__name__} produced a non-finite value "
                                   f"({value}); details: {details}")
        result = EstimateResult(value=value, quantity=quantity, method=self.name,
                                params=_jsonable(self.get_params()), n=n, dims=tuple(dims),
                                seconds=seconds, flags=flags, details=details)
        if self.ci is not None:
            self._attach_interval(result, run, tensors, device)
        if quantity == "mutual_information":
            self._attach_null(result, run, tensors, device)
        return result

    def _attach_interval(self, result, run, tensors, device) -> None:
        """Interval, ``ci_method`` and bias details; it always contains the value."""
        kind = self.interval_kinds[0] if self.ci == "auto" else self.ci
        low, high, samples, info = self._interval_scheme(kind).interval(self, run, tensors,
                                                                        result, device)
        low, high = min(float(low), result.value), max(float(high), result.value)
        result.ci, result.ci_kind, result.confidence = (low, high), kind, float(self.confidence)
        result.details["resample_values"] = samples
        result.details.update(info)
        result.flags.extend(self._interval_flags(result, info))

    def _interval_flags(self, result, info) -> list:
        """Flags about what the interval means; by default, that it is of the estimator's
        value when the bias the resamples reveal exceeds their spread."""
        return [bias_flag(info, result.n, result.quantity)] if bias_dominates(info) else []

    def _attach_null(self, result, run, tensors, device) -> None:
        """The permutation null (``n_permutations`` > 0) or the automatic check."""
        if self.n_permutations == "auto":
            if result.value > 0:
                check = self._independence_check(run, tensors, result, device)
                if check is not None:
                    result.details["null"] = check
        elif self.n_permutations:
            result.details["null"] = self._permutation_null(run, tensors, result.value, device,
                                                            self.n_permutations)
        null = result.details.get("null")
        if null is not None and null["p_value"] > 0.05 and result.value > 0:
            result.flags.append(independence_flag(null, null.get("statistic", "the value "
                                                                  "under shuffled pairs")))

    def _independence_check(self, run, tensors, result, device) -> dict | None:
        """The ``n_permutations="auto"`` check: ``auto_permutations`` shuffles when
        :meth:`_null_needed` says the value is within reach of the bias at independence."""
        if not self.auto_permutations or not self._null_needed(result):
            return None
        null = self._permutation_null(run, tensors, result.value, device,
                                      self.auto_permutations)
        null["automatic"] = True
        return null

    def _null_needed(self, result) -> bool:
        """Whether the value could come from independent data (default: always)."""
        return True

    # -- intervals and null ---------------------------------------------------------------

    def _interval_scheme(self, kind: str):
        """The :class:`~ibtools.estimators.intervals.IntervalScheme` of interval kind
        ``kind`` (one of ``interval_kinds``); an estimator with a kind of its own overrides
        this."""
        return interval_scheme(kind)

    def _permutation_null(self, run, tensors, value, device, count):
        """``count`` values with y's rows shuffled (same shuffles for every estimator)."""
        return PermutationNull().run(self, run, tensors, value, device, count)

    def _null_values(self, run, x, y, perms) -> list:
        """The estimate on ``(x, y[perm])`` for each shuffle; estimators that can reuse
        work across shuffles (binning's symbols) override this."""
        return [float(run(x, y[perm], 10_000 + b)[0]) for b, perm in enumerate(perms, 1)]


def entropy_from_counts(counts: torch.Tensor, miller_madow: bool = False) -> float:
    """Plug-in entropy (nats) of a histogram; Miller-Madow adds (K-1)/(2n)."""
    counts = counts[counts > 0].to(torch.float64)
    n = counts.sum()
    p = counts / n
    h = float(-(p * torch.log(p)).sum())
    if miller_madow:
        h += (int(counts.numel()) - 1) / (2.0 * float(n))
    return h
