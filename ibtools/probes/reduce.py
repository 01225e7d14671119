"""Reducing a conv map or a wide layer before estimation.

A conv layer's output flattened is tens of thousands of coordinates per row (CREPE's first
conv: 1024 x 32 = 32 768); no estimator resolves that from a few thousand rows, and the
pairwise ones pay for every coordinate.  A reduction is applied by the capture hook, per
batch, so the full map is never stored.  Rules (``reduce=`` of
:func:`ibtools.capture_activations` and :func:`ibtools.analyze`, ``--reduce`` of the CLI):

``"none"``
    Keep the layer as it is (flattened).
``"pool"`` (or ``"pool:mean"``)
    Spatial pooling: the global average over every axis after the channel axis, one value
    per channel: (B, C, H, W) -> (B, C).  What global-average-pooling heads see; it keeps
    which features are present and drops where.
``"pool:max"``
    Per-channel max over space (B, C, H, W) -> (B, C): the strongest response of each
    feature anywhere.
``"channels"``
    Pooling over channels at each position (B, C, H, W) -> (B, H * W): keeps where, drops
    which feature.
``"project:K"``
    A seeded Gaussian random projection of the flattened row to K dimensions,
    ``t @ R / sqrt(K)`` with ``R`` of i.i.d. N(0, 1) entries: squared distances are kept in
    expectation and within a factor ``1 +- eps`` for K of order ``log(n) / eps^2``
    (Johnson-Lindenstrauss), so distance-based estimators (KDE, KSG) see nearly the layer's
    own geometry.  ``R`` depends only on the seed, the layer's name and its width, so every
    checkpoint and batch of one run uses the same one.

A layer of two dimensions (B, D) is left as it is by the pooling rules.  ``reduce`` is one
rule for every layer, or a dict ``{layer-glob: rule}`` (first matching glob wins; layers no
glob matches are kept), e.g. ``{"conv*": "pool", "classifier": "none"}``.  The rule each
layer got is recorded in the capture's settings and the results' ``reduction`` column.
"""

from __future__ import annotations

import math
import zlib

import torch

from ibtools.errors import InputError, InputTypeError
from ibtools.probes.layers import _glob_regex

RULES = ("none", "pool", "pool:mean", "pool:max", "channels", "project:K")


def _check_rule(rule, where: str = "reduce") -> str:
    if not isinstance(rule, str):
        raise InputTypeError(f"{where}={rule!r} is not a reduction rule; use one of {list(RULES)} "
                             f"(K an int >= 1) or a dict {{layer-glob: rule}}")
    text = rule.strip().lower()
    if text in ("none", "pool", "pool:mean", "pool:max", "channels"):
        return "pool:mean" if text == "pool" else text
    if text.startswith("project:"):
        k = text.partition(":")[2]
        if k.isdigit() and int(k) >= 1:
            return f"project:{int(k)}"
    raise InputError(f"{where}={rule!r} is not accepted; use one of {list(RULES)} (K an int "
                     f">= 1) or a dict {{layer-glob: rule}}")


def parse_reduce(reduce) -> dict | None:
    """Check ``reduce`` (a rule or a dict of layer globs to rules); ``None`` when nothing is
    reduced.  Returns ``{glob: rule}`` with ``"*"`` for a single rule."""
    if reduce is None:
        return None
    if isinstance(reduce, dict):
        if not reduce:
            raise InputError("reduce={} names no layer; give a rule or {layer-glob: rule}")
        out = {}
        for glob, rule in reduce.items():
            if not isinstance(glob, str) or not glob:
                raise InputTypeError(f"reduce: key {glob!r} is not a layer name or glob string")
            out[glob] = _check_rule(rule, f"reduce[{glob!r}]")
        return out
    return {"**": _check_rule(reduce)}


def describe(reduce) -> str | dict | None:
    """A JSON-able form for configs and the resume check."""
    parsed = parse_reduce(reduce)
    if parsed is None:
        return None
    return parsed["**"] if list(parsed) == ["**"] else parsed


def from_cli(values):
    """``--reduce`` values as ``reduce``: one bare RULE is the rule of every layer;
    GLOB=RULE items make a dict, in which a bare RULE is the rule of the other layers."""
    if not values:
        return None
    pairs, rest = {}, []
    for item in values:
        glob, eq, rule = item.partition("=")
        if eq:
            if not glob.strip() or not rule.strip():
                raise InputError(f"--reduce {item!r} is not accepted; use RULE or GLOB=RULE "
                                 f"(conv*=pool)")
            pairs[glob.strip()] = _check_rule(rule.strip(), f"--reduce {glob.strip()}")
        else:
            rest.append(_check_rule(item.strip(), "--reduce"))
    if len(rest) > 1:
        raise InputError(f"--reduce: several bare rules {rest}; give one, and GLOB=RULE for "
                         f"the layers that differ")
    if not pairs:
        return rest[0]
    if rest:
        pairs["**"] = rest[0]
    return pairs


class Reducer:
    """The reductions of one capture: the rule of each layer and its projection matrices."""

    def __init__(self, reduce, seed: int = 0):
        self.rules = parse_reduce(reduce) or {}
        self.seed = int(seed)
        self._patterns = [(_glob_regex(g), r) for g, r in self.rules.items()]
        self._matrices: dict = {}

    def rule_for(self, layer: str) -> str:
        base = layer.split("#")[0]  # repeated calls of one module share its rule
        for pattern, rule in self._patterns:
            if pattern.fullmatch(base) or pattern.fullmatch(layer):
                return rule
        return "none"

    def spatial(self, t: torch.Tensor, layer: str) -> torch.Tensor:
        """The pooling rules, on the batch-first tensor as the layer returned it."""
        rule = self.rule_for(layer)
        if t.ndim <= 2 or rule in ("none",) or rule.startswith("project:"):
            return t
        if rule == "pool:mean":
            return t.flatten(2).mean(dim=2)
        if rule == "pool:max":
            return t.flatten(2).amax(dim=2)
        return t.mean(dim=1).reshape(t.shape[0], -1)  # channels

    def project(self, rows: torch.Tensor, layer: str) -> torch.Tensor:
        """The projection rule, on the flattened rows (n, D)."""
        rule = self.rule_for(layer)
        if not rule.startswith("project:"):
            return rows
        k = int(rule.partition(":")[2])
        matrix = self.matrix(layer, rows.shape[1], k, rows.device)
        return (rows.to(matrix.dtype) @ matrix).to(rows.dtype if rows.is_floating_point()
                                                   else matrix.dtype)

    def matrix(self, layer: str, width: int, k: int, device) -> torch.Tensor:
        """The (width, k) projection of ``layer``: seeded by the run's seed and the layer's
        name, scaled by 1 / sqrt(k) so squared distances are kept in expectation."""
        key = (layer, width, k, str(device))
        if key not in self._matrices:
            salt = zlib.crc32(f"{layer}|{width}|{k}".encode())
            gen = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + salt)
            r = torch.randn(width, k, generator=gen, dtype=torch.float32) / math.sqrt(k)
            self._matrices[key] = r.to(device)
        return self._matrices[key]

    def record(self, layers) -> dict:
        """``{layer: rule}`` for the layers captured."""
        return {name: self.rule_for(name) for name in layers}
