"""Mutual-information and entropy estimators with one interface.

>>> import numpy as np, ibtools
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(2000, 2)); y = x + rng.normal(size=(2000, 2))
>>> r = ibtools.mutual_information(x, y, method="ksg", k=3)
>>> round(r.value, 1)  # ground truth 2 * 0.5 * ln 2 = 0.69 nats
0.7

Methods: ``"auto"`` (the default: chooses among the others, see
:class:`~ibtools.estimators.auto.Auto`), ``"binning"``, ``"kde"``, ``"ksg"``, ``"renyi"``,
``"gaussian"``, ``"mixture"`` (Monte Carlo entropy of T + Gaussian noise) and the neural
bounds ``"mine"``, ``"nwj"``, ``"infonce"``, ``"smile"``.
Every estimator is also a class (``ibtools.estimators.KSG(k=5)``) whose methods return
the same :class:`EstimateResult`.
"""

from __future__ import annotations

import importlib

from ibtools.estimators.base import Estimator, EstimateResult
from ibtools.estimators.transforms import TRANSFORMS, copula, standardize

# method name -> (module, class); modules are imported on first use to keep import fast.
_METHODS = {
    "auto": ("auto", "Auto"),
    "binning": ("binning", "Binning"),
    "kde": ("kde", "KDE"),
    "mixture": ("mixture", "MixtureEntropy"),
    "ksg": ("ksg", "KSG"),
    "renyi": ("renyi", "MatrixRenyi"),
    "gaussian": ("gaussian", "Gaussian"),
    "mine": ("neural", "MINE"),
    "nwj": ("neural", "NWJ"),
    "infonce": ("neural", "InfoNCE"),
    "smile": ("neural", "SMILE"),
}

METHODS = tuple(_METHODS)


def get_estimator_class(method: str) -> type[Estimator]:
    """The estimator class registered under ``method``."""
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(f"method={method!r} is not known; use one of {list(_METHODS)}")
    module_name, class_name = _METHODS[method.lower()]
    module = importlib.import_module(f"ibtools.estimators.{module_name}")
    return getattr(module, class_name)


def get_estimator(method: str, **settings) -> Estimator:
    """Build the estimator registered under ``method`` with ``settings``."""
    return get_estimator_class(method)(**settings)


def mutual_information(x, y, method: str = "auto", *, discrete_x=None, discrete_y=None,
                       **settings) -> EstimateResult:
    """Estimate I(X;Y) in nats with the named method.

    Parameters
    ----------
    x, y : numpy array, torch tensor or list, shape (n, ...)
        Paired samples; trailing dimensions are flattened.  Integer, bool or string columns
        are discrete (class or token ids) unless ``discrete_x``/``discrete_y`` say otherwise.
    method : str, default "auto"
        One of ``ibtools.estimators.METHODS``.  ``"auto"`` picks the estimator from the
        variables' kinds and two cheap estimates (:class:`~ibtools.estimators.auto.Auto`);
        ``details["auto"]`` names the one used and why.
    **settings
        The estimator's settings (``k``, ``noise_var``, ``n_bins``, ``transform``, ``seed``,
        ``device``, ``ci``, ...); see the estimator class's docstring.

    Returns
    -------
    EstimateResult
        ``value`` (nats), ``bits``, ``ci``, ``flags``, ``details``, ``n``, ``dims``, ...
    """
    return get_estimator(method, **settings).mutual_information(
        x, y, discrete_x=discrete_x, discrete_y=discrete_y)


def entropy(x, method: str = "auto", *, discrete=None, **settings) -> EstimateResult:
    """Estimate H(X) in nats (differential entropy for continuous X) with the named method;
    ``"auto"`` is Kozachenko-Leonenko for continuous X and the Miller-Madow plug-in for
    discrete X."""
    return get_estimator(method, **settings).entropy(x, discrete=discrete)


def __getattr__(name):
    for module_name, class_name in _METHODS.values():
        if class_name == name:
            return getattr(importlib.import_module(f"ibtools.estimators.{module_name}"), name)
    raise AttributeError(f"module 'ibtools.estimators' has no attribute {name!r}")


__all__ = ["Estimator", "EstimateResult", "METHODS", "TRANSFORMS", "copula", "standardize",
           "entropy", "get_estimator", "get_estimator_class", "mutual_information"]
