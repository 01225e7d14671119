"""Estimator settings that exist once: declared, validated on every assignment, reported as set.

An estimator declares its settings as a ``defaults`` dict (merged along the class hierarchy
and with the common settings every estimator takes).  :class:`Settings` keeps one record of
them, ``self.settings``, mirrored by attributes for the computation to read:

* ``est.k = 10`` runs the same checks as ``KSG(k=10)`` (the error names the setting, the bad
  value and what is accepted) and updates :meth:`~Settings.get_params`, so a result's
  ``params`` records the settings that produced it;
* a misspelt new attribute (``est.kk = 10``) is an ``AttributeError`` naming the accepted
  settings, instead of a silent no-op;
* ``inspect.signature(KSG)`` lists the keyword settings with their defaults, so ``help()``,
  IDEs and Jupyter show them (a ``__signature__`` is built for each subclass).
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any, ClassVar

from ibtools.errors import InputTypeError

#: Settings every estimator takes (see :class:`~ibtools.estimators.base.Estimator`).
COMMON_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "device": None,
    "dtype": "float32",
    "memory_budget": None,
    "ci": None,
    "n_resamples": 20,
    "confidence": 0.95,
    "n_permutations": "auto",
}


class Settings:
    """Mixin holding an estimator's settings once; subclasses implement :meth:`_validate`."""

    defaults: ClassVar[dict] = {}
    #: Whether the ``transform`` setting applies (kNN, KDE, Gaussian, neural).
    supports_transform: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = cls._settings_signature()

    @classmethod
    def accepted_settings(cls) -> dict:
        """Every setting the class takes, with its default (common ones first)."""
        out = dict(COMMON_DEFAULTS)
        if cls.supports_transform:
            out["transform"] = None
        for klass in reversed(cls.__mro__):
            out.update(klass.__dict__.get("defaults", {}))
        return out

    @classmethod
    def _settings_signature(cls) -> inspect.Signature:
        """Keyword-only parameters: the class's own settings, then the common ones."""
        accepted = cls.accepted_settings()
        common = list(COMMON_DEFAULTS) + (["transform"] if "transform" in accepted else [])
        order = [k for k in accepted if k not in common] + common
        return inspect.Signature([inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY,
                                                    default=accepted[k]) for k in order])

    def _init_settings(self, settings: dict) -> None:
        accepted = self.accepted_settings()
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise InputTypeError(f"{type(self).__name__} got unknown setting(s) {unknown}; "
                                 f"accepted settings are {sorted(accepted)}")
        merged = dict(accepted)
        merged.update(settings)
        object.__setattr__(self, "_validating", True)
        object.__setattr__(self, "settings", merged)
        try:
            for key, value in merged.items():
                object.__setattr__(self, key, value)
            self._validate()
        finally:
            object.__setattr__(self, "_validating", False)

    def _validate(self) -> None:
        """Check every setting; raise ValueError/TypeError naming the bad one."""

    def __setattr__(self, name: str, value) -> None:
        settings = self.__dict__.get("settings")
        if settings is None or name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if name in settings:
            if self.__dict__.get("_validating"):  # a check normalising a value ("AUTO")
                settings[name] = value
                object.__setattr__(self, name, value)
                return
            self._assign_setting(name, value)
            return
        if name == "settings" or hasattr(type(self), name) or name in self.__dict__:
            object.__setattr__(self, name, value)
            return
        close = difflib.get_close_matches(name, list(settings), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}{hint}; accepted "
                             f"settings are {sorted(settings)}")

    def _assign_setting(self, name: str, value) -> None:
        """Set one setting and run the constructor's checks; on failure keep the old value."""
        settings = self.settings
        old = settings[name]
        settings[name] = value
        object.__setattr__(self, name, value)
        object.__setattr__(self, "_validating", True)
        try:
            self._validate()
        except BaseException:
            settings[name] = old
            object.__setattr__(self, name, old)
            raise
        finally:
            object.__setattr__(self, "_validating", False)

    def get_params(self) -> dict:
        """The current settings (after any assignment), as a new dict."""
        return dict(self.settings)

    def set_params(self, **settings):
        """Change several settings at once (validated together); returns the estimator."""
        accepted = self.accepted_settings()
        unknown = sorted(set(settings) - set(accepted))
        if unknown:
            raise InputTypeError(f"{type(self).__name__} got unknown setting(s) {unknown}; "
                                 f"accepted settings are {sorted(accepted)}")
        before = dict(self.settings)
        try:
            self._init_settings({**before, **settings})
        except BaseException:
            self._init_settings(before)
            raise
        return self

    def __repr__(self) -> str:
        defaults = self.accepted_settings()
        changed = {k: v for k, v in self.settings.items() if v != defaults[k]}
        inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        return f"{type(self).__name__}({inner})"
