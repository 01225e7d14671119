"""One layer's rows of the results table: the three information quantities under one
estimator setting, their intervals and flags, and the IB values.

Used by :func:`ibtools.analysis.analyze`, by :mod:`ibtools.tracking` and by the Dask tasks of
:mod:`ibtools.distributed`, so the three produce the same rows.
"""

from __future__ import annotations

import json
import math
import time
import warnings

from ibtools import noise_channel
from ibtools import results as results_io
from ibtools.errors import ESTIMATOR_FAILURES
from ibtools.estimators.layer_information import LayerInformation
from ibtools.estimators.resolution import auto_resolution
from ibtools.estimators.spec import EstimatorSpec


class EstimatorFailedWarning(UserWarning):
    """An estimator could not compute a quantity of one layer; its row holds NaN and a flag."""


def _outcome(quantity, outcome, where):
    """``(result, reason)`` of one quantity: a failure (an exception the seam returned) is
    ``(None, "Type: message")``, warned about naming ``where`` (checkpoint, layer, setting)."""
    if not LayerInformation.failed(outcome):
        return outcome, None
    reason = f"{type(outcome).__name__}: {outcome}"
    if where is not None:
        warnings.warn(f"{where}: {quantity} not computed ({reason}); its row holds NaN and a "
                      f"flag, the run goes on", EstimatorFailedWarning, stacklevel=3)
    return None, reason


def _layer_information(est, x, t, t_prev, y, chain):
    """The estimator's seam; a failure of the whole call fails its three quantities."""
    try:
        return est.layer_information(x, t, t_prev, y, chain=chain)
    except ESTIMATOR_FAILURES as exc:
        return LayerInformation(i_xt=exc, i_prev_t=None if t_prev is None else exc, i_ty=exc)


def _value(result):
    return float("nan") if result is None else result.value


def _ci(result):
    if result is None or result.ci is None:
        return (float("nan"), float("nan"))
    return result.ci


def _flags(label, result, error):
    if error is not None:
        return [f"{label} not computed ({error})"]
    return [f"{label}: {f}" for f in result.flags] if result is not None else []


#: A reading of I(T;Y) above I(X;T) by more than this (nats) is flagged.
PROCESSING_TOLERANCE = 0.01


def _processing_flags(i_ty: float, i_xt: float) -> list:
    """Y -> X -> T is a Markov chain (the layer sees only the input), so the data
    processing inequality gives I(T;Y) <= I(X;T); estimates that break it are flagged."""
    if math.isfinite(i_ty) and math.isfinite(i_xt) and i_ty > i_xt + PROCESSING_TOLERANCE:
        return [(f"I(T;Y) = {i_ty:.4g} exceeds I(X;T) = {i_xt:.4g} nats, which data "
                 f"processing forbids (the layer sees only the input): at least one of the two "
                 f"readings is off by {i_ty - i_xt:.3g} nats or more at this setting")]
    return []


def layer_rows(spec: EstimatorSpec, settings, x, y, t, t_prev, index, device, where=None,
               paths=None) -> list[dict]:
    """The rows of one layer under one estimator setting: I(X;T), I(T_prev;T) and I(T;Y)
    with their intervals and flags, and one IB value per beta of ``settings``
    (an :class:`~ibtools.analysis_settings.AnalysisSettings`: its betas, seed, ci and
    reference are read).

    ``t_prev`` is the previous measured layer (ignored at ``index`` 0, where T_0 = X);
    ``where`` names checkpoint, layer and setting in the warning of a failed estimate;
    ``paths`` carries a noisy network's three results computed from its noise paths
    (:mod:`ibtools.noisy`).  The estimates come from the estimator's
    :meth:`~ibtools.estimators.base.Estimator.layer_information`; a quantity it could not
    compute (:data:`ibtools.errors.ESTIMATOR_FAILURES`) is NaN with a flag, any other error
    propagates."""
    # a layer's output is a deterministic function of the input and of the previous layer:
    # KDE's I(X;T) = H(T+Z) - H(Z) needs that said (other estimators do not take the setting)
    est = spec.build(seed=settings.seed, device=device, ci=settings.ci, deterministic=True)
    # an analysis-time channel (noise_std): the layers as it presents them, and the chain
    t, t_prev, chain = noise_channel.channel_view(spec, est, t, t_prev, index, settings.seed)
    start = time.perf_counter()
    if paths is not None:  # a noisy network's layer, from noise paths (ibtools.noisy)
        (r_ty, e_ty), (r_xt, e_xt), (r_prev, e_prev) = paths
    else:
        info = _layer_information(est, x, t, None if index == 0 else t_prev, y,
                                  None if chain is est else chain)
        r_ty, e_ty = _outcome("I(T;Y)", info.i_ty, where)
        r_xt, e_xt = _outcome("I(X;T)", info.i_xt, where)
        # T_0 = X: I(T_prev;T) of the first layer is I(X;T)
        r_prev, e_prev = ((r_xt, e_xt) if index == 0
                          else _outcome("I(T_prev;T)", info.i_prev_t, where))
    seconds = time.perf_counter() - start
    flags = _flags("I(T;Y)", r_ty, e_ty) + _flags("I(X;T)", r_xt, e_xt)
    if index > 0:
        flags += _flags("I(T_prev;T)", r_prev, e_prev)
    i_ty, i_xt, i_prev = _value(r_ty), _value(r_xt), _value(r_prev)
    flags += _processing_flags(i_ty, i_xt)
    (ty_lo, ty_hi), (xt_lo, xt_hi), (pv_lo, pv_hi) = _ci(r_ty), _ci(r_xt), _ci(r_prev)
    # the compression term the IB value charges for, and its interval
    comp, c_lo, c_hi = ((i_xt, xt_lo, xt_hi) if settings.reference == "input"
                        else (i_prev, pv_lo, pv_hi))
    rows = []
    for beta in settings.betas:
        rows.append({
            "estimator": spec.method, "setting": spec.label, "params": spec.params_json,
            "i_xt": i_xt, "i_ty": i_ty, "i_prev_t": i_prev, "beta": beta,
            "ib_value": i_ty - beta * comp,
            # conservative: the worst combination of the two component intervals
            "ci_low": ty_lo - beta * c_hi, "ci_high": ty_hi - beta * c_lo,
            "ci_low_xt": xt_lo, "ci_high_xt": xt_hi, "ci_low_ty": ty_lo, "ci_high_ty": ty_hi,
            "ci_low_prev_t": pv_lo, "ci_high_prev_t": pv_hi,
            "n_samples": int(t.shape[0]), "dim": int(t[0].numel()), "seconds": seconds,
            "resolution": auto_resolution(r_ty, r_xt, r_prev),
            results_io.FLAG_COLUMN: json.dumps(flags),
        })
    return rows
