"""Adapters that run :func:`ibtools.track` from training frameworks' callback systems.

- :class:`ibtools.integrations.lightning.IBCallback`: PyTorch Lightning
  (``pip install 'ibtools[lightning]'``).
- :class:`ibtools.integrations.hf.IBTrainerCallback`: the Hugging Face ``Trainer``
  (``pip install 'ibtools[hf]'``).

Both create the tracker when training starts (measuring the starting weights), call
:meth:`ibtools.tracking.Tracker.step` with the framework's global optimizer step, measure the
final weights and close the tracker when training ends.  Only the main process of a
distributed run measures.  Each module imports its framework, so importing this package
needs neither.
"""

from __future__ import annotations

from torch import nn

from ibtools.errors import InputError, InputTypeError


def resolve_submodule(module: nn.Module, submodule: str | None, where: str) -> nn.Module:
    """``module`` itself, or its submodule named ``submodule`` (a dotted attribute path such
    as ``"model"``): the network whose layers the probe data is fed through."""
    if submodule is None:
        return module
    if not isinstance(submodule, str) or not submodule:
        raise InputTypeError(f"submodule={submodule!r} is not accepted; give a dotted attribute "
                             f"name such as 'model', or None for the {where} itself")
    try:
        target = module.get_submodule(submodule)
    except AttributeError:
        names = [n for n, _ in module.named_children()]
        raise InputError(f"submodule={submodule!r} is not a submodule of {type(module).__name__}; "
                         f"its children are {names}") from None
    return target


def split_track_kwargs(probe_data, submodule, kwargs: dict) -> dict:
    """Check the adapter's arguments now (not when training starts) and return them."""
    if probe_data is None:
        raise InputError("probe_data is required: a dataset spec ('digits', 'text:PATH', ...), "
                         "a pair (inputs, targets) or an iterable of batches")
    if "model" in kwargs:
        raise InputTypeError("model is not an argument of the callback: the framework passes the "
                             "model; use submodule='name' to track a part of it")
    return dict(kwargs)
