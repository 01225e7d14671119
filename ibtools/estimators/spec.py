"""Estimator specifications as users write them: ``"kde:noise_var=0.1"``, a dict, or a pair.

A spec names a method and its settings.  The analysis runs every spec on the same
activations, so sweeps (several noise variances, bin counts, k) are simply several specs.
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field

from ibtools.errors import IbtoolsError, InputError, InputTypeError
from ibtools.estimators import get_estimator_class, registered_methods

SPEC_FORM = ("METHOD[:SETTING=VALUE[,SETTING=VALUE...]], e.g. 'ksg', 'kde:noise_var=0.1', "
             "'binning:n_bins=30,miller_madow=True'")


@dataclass(frozen=True)
class EstimatorSpec:
    """One estimator and its settings."""

    method: str
    settings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``kde(noise_var=0.1)``."""
        if not self.settings:
            return self.method
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.settings.items()))
        return f"{self.method}({inner})"

    @property
    def spec_string(self) -> str:
        """The spec in the form :func:`parse_estimator_spec` reads back."""
        if not self.settings:
            return self.method
        inner = ",".join(f"{k}={v!r}" for k, v in sorted(self.settings.items()))
        return f"{self.method}:{inner}"

    @property
    def params_json(self) -> str:
        return json.dumps(self.settings, sort_keys=True, default=str)

    def build(self, **overrides):
        """The estimator object, with run-wide ``overrides`` (seed, device) filled in where
        the spec does not set them and the estimator accepts them."""
        cls = get_estimator_class(self.method)
        accepted = cls.accepted_settings()
        merged = {k: v for k, v in overrides.items() if k in accepted}
        merged.update(self.settings)
        return cls(**merged)


def _parse_value(text: str):
    low = text.strip()
    if low.lower() in ("none", "null"):
        return None
    if low.lower() in ("true", "false"):
        return low.lower() == "true"
    try:
        return ast.literal_eval(low)
    except (ValueError, SyntaxError):
        return low


def _split_settings(text: str) -> list[str]:
    """Split on commas that are not inside brackets (so ``range=(-1,1)`` survives)."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in (s.strip() for s in parts) if p]


def parse_estimator_spec(spec) -> EstimatorSpec:
    """Read ``"method:key=value,..."``, ``{"method": ..., **settings}``, ``(method, settings)``
    or an :class:`EstimatorSpec`; check the method and setting names."""
    if isinstance(spec, EstimatorSpec):
        out = spec
    elif isinstance(spec, str):
        text = spec.strip()
        method, _, rest = text.partition(":")
        settings = {}
        for item in _split_settings(rest):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise InputError(f"estimator spec {spec!r}: {item!r} is not SETTING=VALUE; the "
                                 f"accepted form is {SPEC_FORM}")
            settings[key.strip()] = _parse_value(value)
        out = EstimatorSpec(method.strip().lower(), settings)
    elif isinstance(spec, dict):
        if "method" not in spec:
            raise InputError(f"estimator spec {spec!r} has no 'method' key; the accepted form is "
                             f"{{'method': 'kde', 'noise_var': 0.1}} or {SPEC_FORM}")
        settings = {k: v for k, v in spec.items() if k != "method"}
        out = EstimatorSpec(str(spec["method"]).lower(), settings)
    elif isinstance(spec, (tuple, list)) and len(spec) == 2 and isinstance(spec[1], dict):
        out = EstimatorSpec(str(spec[0]).lower(), dict(spec[1]))
    else:
        raise InputTypeError(f"estimator spec {spec!r} is not understood; give a string "
                             f"({SPEC_FORM}), a dict with 'method', or a (method, settings) pair")
    if out.method not in registered_methods():
        raise InputError(f"estimator spec {spec!r}: method {out.method!r} is not known; use one "
                         f"of {list(registered_methods())}")
    accepted = get_estimator_class(out.method).accepted_settings()
    unknown = sorted(set(out.settings) - set(accepted))
    if unknown:
        raise InputError(f"estimator spec {spec!r}: unknown setting(s) {unknown} for "
                         f"{out.method!r}; accepted: {sorted(accepted)}")
    # build once so bad values fail now, before any model is loaded; an estimator's own check
    # that still raises a plain ValueError/TypeError is about these settings too
    try:
        out.build()
    except IbtoolsError:
        raise
    except TypeError as exc:
        raise InputTypeError(str(exc)) from exc
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return out


def parse_estimator_specs(specs) -> list[EstimatorSpec]:
    if specs is None:
        return []
    if isinstance(specs, (str, dict, EstimatorSpec)):
        specs = [specs]
    parsed = [parse_estimator_spec(s) for s in specs]
    labels = [p.label for p in parsed]
    dupes = sorted({lab for lab in labels if labels.count(lab) > 1})
    if dupes:
        raise InputError(f"estimators: the same setting is listed twice: {dupes}")
    return parsed
