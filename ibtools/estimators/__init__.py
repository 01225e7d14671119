"""Mutual-information and entropy estimators with one interface.

>>> import numpy as np, ibtools
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(2000, 2)); y = x + rng.normal(size=(2000, 2))
>>> r = ibtools.mutual_information(x, y, method="ksg", k=3)
>>> round(r.value, 1)  # ground truth 2 * 0.5 * ln 2 = 0.69 nats
0.7

Methods: ``"auto"`` (the default: chooses among the others, see
:class:`~ibtools.estimators.auto.Auto`), ``"binning"``, ``"kde"``, ``"ksg"``, ``"renyi"``,
``"gaussian"``, ``"mixture"`` (Monte Carlo entropy of T + Gaussian noise), the neural
bounds ``"mine"``, ``"nwj"``, ``"infonce"``, ``"smile"`` and ``"doe"`` (difference of
entropies, H(Y) - H(Y|X), from two trained density models; not a bound).
Every estimator is also a class (``ibtools.estimators.KSG(k=5)``) whose methods return
the same :class:`EstimateResult`; :func:`register` adds a class of your own under a method
name.
"""

from __future__ import annotations

import importlib
import re

from ibtools.errors import InputError, InputTypeError
from ibtools.estimators.base import Estimator, EstimateResult
from ibtools.estimators.transforms import TRANSFORMS, copula, standardize

# The registry: method name -> the class, or (module, class) for a built-in whose module is
# imported on first use (to keep ``import ibtools`` fast).
_METHODS: dict = {
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
    "doe": ("doe", "DoE"),
}


def register(name: str, cls: type[Estimator] | None = None, *, replace: bool = False):
    """Register an estimator class under a method name (the estimator extension point).

    After ``register("toy", Toy)``, ``mutual_information(x, y, method="toy")``, estimator
    specs such as ``"toy(bins=4)"`` in :func:`ibtools.analyze`, ``METHODS`` and the contract
    tests over every registered method all know it.  Also usable as a decorator:
    ``@register("toy")`` above the class.

    Parameters
    ----------
    name : str
        The method name: lower case letters, digits, ``_`` or ``-``, starting with a letter.
    cls : subclass of :class:`Estimator`
        The class; its ``name`` is set to ``name`` when it has none.
    replace : bool, default False
        Allow replacing a registered method of the same name.
    """
    if cls is None:
        return lambda klass: register(name, klass, replace=replace)
    if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_\-]*", name)):
        raise InputError(f"name={name!r} is not a method name; use lower case letters, digits, "
                         f"'_' or '-', starting with a letter (e.g. 'knife')")
    if not (isinstance(cls, type) and issubclass(cls, Estimator)):
        raise InputTypeError(f"cls={cls!r} is not a subclass of ibtools.estimators.Estimator")
    if name in _METHODS and not replace:
        raise InputError(f"method {name!r} is already registered; pass replace=True to "
                         f"replace it")
    if not cls.name:
        cls.name = name
    _METHODS[name] = cls
    return cls


def registered_methods() -> tuple:
    """Every registered method name, built-ins first, in registration order."""
    return tuple(_METHODS)


def get_estimator_class(method: str) -> type[Estimator]:
    """The estimator class registered under ``method``."""
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise InputError(f"method={method!r} is not known; use one of {list(_METHODS)}")
    entry = _METHODS[method.lower()]
    if isinstance(entry, type):
        return entry
    module_name, class_name = entry
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
    if name == "METHODS":  # live: includes estimators registered after import
        return registered_methods()
    for entry in _METHODS.values():
        if isinstance(entry, tuple) and entry[1] == name:
            return getattr(importlib.import_module(f"ibtools.estimators.{entry[0]}"), name)
    raise AttributeError(f"module 'ibtools.estimators' has no attribute {name!r}")


__all__ = ["Estimator", "EstimateResult", "METHODS", "TRANSFORMS", "copula", "standardize",
           "entropy", "get_estimator", "get_estimator_class", "mutual_information", "register",
           "registered_methods"]
