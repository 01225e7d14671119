"""Probing what modules hide: outputs of functional ops, through a ``torch.fx`` trace.

Forward hooks see modules only, so a ReLU or a max-pool called as a function inside
``forward`` (``F.relu(x)``, ``F.max_pool2d(x, 2)``, ``torch.sigmoid``) has no output to hook:
CREPE's blocks end in ``F.max_pool2d`` after ``F.relu``, and its pitch posterior is a
``torch.sigmoid`` after the classifier.  A layer specification prefixed with ``fx:`` names
the nodes of the model's ``torch.fx.symbolic_trace`` graph instead, with the same glob syntax
(node names have no dots: ``"fx:relu"``, ``"fx:max_pool2d_1"``, ``"fx:max_pool2d*"``,
``"fx:sigmoid"``).  Only when such a specification is given is the model traced; module hooks
stay the default.

How: the traced graph (a ``GraphModule`` sharing the model's parameters and buffers, so
nothing is copied) gets an identity module ``fx:<node>`` after each chosen node, and the
ordinary forward hooks of :mod:`ibtools.probes.capture` record those modules' outputs; the
layer is named ``fx:<node>`` in the results.  Other specifications in the same list select
modules of the traced graph, which keeps leaf modules (``nn.Conv2d``, ``nn.Linear``, ...)
under their names but inlines containers.  The model's forward is traced with its first
argument as the input and every later argument fixed at its default.

A model that fx cannot trace (data-dependent control flow, calls fx cannot follow) is a
ValueError naming the model and fx's failure; module layers still work on it.
"""

from __future__ import annotations

import inspect

from torch import nn

from ibtools.errors import InputError

PREFIX = "fx:"

#: Graph nodes that compute something (placeholders, constants and the output are not).
_OP_KINDS = ("call_function", "call_method", "call_module")


class Tap(nn.Module):
    """An identity whose forward hook sees a graph node's value."""

    def forward(self, x):
        return x


def fx_specs(layers) -> list[str]:
    """The ``fx:`` specifications in a layer specification (a string or a list)."""
    items = layers if isinstance(layers, list) else [layers]
    return [s for s in items if isinstance(s, str) and s.startswith(PREFIX)]


def trace(model: nn.Module):
    """``torch.fx.symbolic_trace`` of ``model`` with forward's later arguments fixed at their
    defaults; a failure is a ValueError naming the model and fx's message."""
    import torch.fx

    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    concrete = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    try:
        return torch.fx.symbolic_trace(model, concrete_args=concrete or None)
    except Exception as exc:  # fx raises TraceError, TypeError, NotImplementedError, ...
        raise InputError(f"layers with the 'fx:' prefix need a torch.fx trace of model "
                         f"{type(model).__name__}, which failed: {type(exc).__name__}: {exc}. "
                         f"Probe module outputs instead (layer names without 'fx:'), or make "
                         f"forward traceable (no Python control flow on tensor values)") from exc


def node_names(graph_module) -> list[str]:
    """Names of the computing nodes of a traced graph, in execution order."""
    return [n.name for n in graph_module.graph.nodes if n.op in _OP_KINDS]


def prepare(model: nn.Module, layers):
    """``(model, layers)`` unchanged when ``layers`` has no ``fx:`` specification; otherwise
    the traced model with a :class:`Tap` after each chosen node and the layer specification
    rewritten to name those taps.  A specification that matches no node is a ValueError
    listing the node names."""
    wanted = fx_specs(layers)
    if not wanted:
        return model, layers
    from ibtools.probes.layers import _describe_available, _glob_regex

    gm = trace(model)
    names = node_names(gm)
    chosen: list[str] = []
    for spec in wanted:
        body = spec[len(PREFIX):]
        pattern = _glob_regex(body)
        found = [n for n in names if pattern.fullmatch(n)]
        if not found:
            raise InputError(f"layers: {spec!r} matches no node of the fx graph of "
                             f"{type(model).__name__}; node names: "
                             f"{_describe_available(names)} (give them as 'fx:NAME')")
        chosen.extend(n for n in found if n not in chosen)
    nodes = {n.name: n for n in gm.graph.nodes}
    for name in chosen:
        node = nodes[name]
        tap = f"{PREFIX}{name}"
        gm.add_module(tap, Tap())
        with gm.graph.inserting_after(node):
            tapped = gm.graph.call_module(tap, (node,))
        node.replace_all_uses_with(tapped, delete_user_cb=lambda user: user is not tapped)
    gm.recompile()
    items = layers if isinstance(layers, list) else [layers]
    rewritten = [f"{PREFIX}{n}" for n in chosen] + [s for s in items if s not in wanted]
    return gm, rewritten
