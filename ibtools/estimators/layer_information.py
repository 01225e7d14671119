"""The analysis seam: the three information quantities of one layer from one estimator.

:meth:`ibtools.estimators.base.Estimator.layer_information` is what :func:`ibtools.analyze`
(through :func:`ibtools.layer_rows.layer_rows`) calls per layer and estimator setting.  Its
default makes three plain :meth:`~ibtools.estimators.base.Estimator.mutual_information`
calls; an estimator that can share work among them (KDE's whole-sample kernel sums, the
mixture estimator's Monte Carlo draws) overrides it.

Each quantity is an :class:`~ibtools.estimators.result.EstimateResult` or, when the
estimator could not compute it, the exception that says why (one of
:data:`ibtools.errors.ESTIMATOR_FAILURES`); any other exception is a bug and propagates.
"""

from __future__ import annotations

from typing import NamedTuple

from ibtools.errors import ESTIMATOR_FAILURES


class LayerInformation(NamedTuple):
    """I(X;T), I(T_prev;T) (``None`` when no T_prev was given) and I(T;Y) of one layer."""

    i_xt: object
    i_prev_t: object
    i_ty: object

    @staticmethod
    def failed(outcome) -> bool:
        """Whether a quantity's outcome is a failure rather than a result."""
        return isinstance(outcome, BaseException)


def attempt(estimate, a, b, **kwargs):
    """``estimate(a, b, **kwargs)``, or the exception when it is an estimator failure."""
    try:
        return estimate(a, b, **kwargs)
    except ESTIMATOR_FAILURES as exc:
        return exc


def plain_layer_information(est, x, t, t_prev, y, chain=None) -> LayerInformation:
    """The default seam: I(T;Y) (``y`` as class labels), I(X;T) and I(T_prev;T), in that
    order, each from its own ``mutual_information`` call; ``chain`` (an object with
    ``mutual_information``) estimates I(T_prev;T) when it is not ``est`` itself."""
    i_ty = attempt(est.mutual_information, t, y, discrete_y=True)
    i_xt = attempt(est.mutual_information, x, t)
    i_prev = None if t_prev is None else attempt((chain or est).mutual_information, t_prev, t)
    return LayerInformation(i_xt=i_xt, i_prev_t=i_prev, i_ty=i_ty)
