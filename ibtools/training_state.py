"""Leaving a training run as it was found: work done between optimizer steps (a probe forward
pass, estimators drawing random numbers) must not change what training does next.

:func:`preserved_training_state` saves and restores everything such work could touch: the
torch CPU and CUDA random generators, numpy's and Python's global random states, every
module's train/eval flag (not just the top module's: a frozen BatchNorm inside a training
model stays frozen) and whether autograd is enabled.
"""

from __future__ import annotations

import contextlib
import random

import numpy as np
import torch
from torch import nn

__all__ = ["preserved_training_state"]


@contextlib.contextmanager
def preserved_training_state(model: nn.Module):
    """Restore RNG states, every module's train/eval flag and grad mode on exit.

    The torch CPU generator, the CUDA generators (when CUDA is initialised), numpy's global
    ``RandomState`` and Python's ``random`` are saved and put back, so whatever runs inside
    (a forward pass of a model with stochastic layers, an estimator drawing random numbers)
    changes nothing the training loop will draw next.
    """
    modes = [(m, m.training) for m in model.modules()]
    grad = torch.is_grad_enabled()
    cpu_state = torch.get_rng_state()
    cuda_states = (torch.cuda.get_rng_state_all()
                   if torch.cuda.is_available() and torch.cuda.is_initialized() else None)
    np_state = np.random.get_state()
    py_state = random.getstate()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        torch.set_grad_enabled(grad)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)
