"""Small reference models with a ``norm=`` argument, their training loop and checkpoints.

==========  ==========================================  ==================  ===========
name        model                                       input               default norm
==========  ==========================================  ==================  ===========
``mlp``     funnel MLP (Shwartz-Ziv & Tishby; Saxe)     digits ``(n, 64)``  layer
``cnn``     small ResNet-style CNN                      ``(n, 1, 8, 8)``    batch
``vit``     tiny Vision Transformer                     ``(n, 1, 8, 8)``    layer
``gpt``     tiny GPT-2-style byte LM                    ids ``(B, T)``      layer
``llama``   tiny LLaMA-style byte LM (SwiGLU, rotary)   ids ``(B, T)``      rms
==========  ==========================================  ==================  ===========

Every model takes ``norm`` ("layer", "rms", "batch", "none", "ib-S", "ib-L", "ib-T" or a
class), ``lam`` and ``norm_order``, and keeps in ``model.config`` the keyword arguments that
rebuild it: ``build_model(model.name, **model.config)``.
"""

from __future__ import annotations

from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.models.checkpoint_format import (
    CHECKPOINT_FORMAT, CHECKPOINT_VERSION, checkpoint_dict, load_checkpoint_dict, save_checkpoint,
)
from ibtools.models.cnn import CNN
from ibtools.models.data import load_data, load_digits_split, load_text
from ibtools.models.gpt import GPT
from ibtools.models.layers import NORM_CHOICES, MovedDimNorm, ReferenceModel, make_norm
from ibtools.models.llama import Llama
from ibtools.models.mlp import MLP
from ibtools.models.training import TrainingHistory, evaluate, train
from ibtools.models.vit import ViT

REFERENCE_MODELS: dict[str, type[ReferenceModel]] = {"mlp": MLP, "cnn": CNN, "vit": ViT, "gpt": GPT, "llama": Llama}


def build_model(name: str, **config) -> nn.Module:
    """Build reference model ``name`` from keyword arguments (e.g. a saved ``model.config``).

    Raises
    ------
    ValueError
        If ``name`` is not in :data:`REFERENCE_MODELS`.
    TypeError
        If ``config`` has a keyword the model does not take.
    """
    if name not in REFERENCE_MODELS:
        raise InputError(f"name must be one of {sorted(REFERENCE_MODELS)}, got {name!r}")
    try:
        return REFERENCE_MODELS[name](**config)
    except TypeError as err:
        raise InputTypeError(f"bad config for model {name!r}: {err}") from None


__all__ = [
    "REFERENCE_MODELS", "build_model", "MLP", "CNN", "ViT", "GPT", "Llama", "ReferenceModel",
    "NORM_CHOICES", "make_norm", "MovedDimNorm", "train", "evaluate", "TrainingHistory",
    "save_checkpoint", "load_checkpoint_dict", "checkpoint_dict", "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION", "load_data", "load_digits_split", "load_text",
]
