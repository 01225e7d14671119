"""A fully connected classifier with shrinking widths, as in the information-plane studies.

Shwartz-Ziv & Tishby (2017) and Saxe et al. (2018) analysed funnel-shaped MLPs (12-10-7-5-
4-3-2, tanh or ReLU).  This one takes the 64 pixels of a scikit-learn digit and narrows to
``widths`` before the 10-way head; every hidden layer is Linear -> norm -> activation, then,
with ``noise_std > 0``, Gaussian noise (Goldfeld et al. 2019's noisy network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ibtools.errors import InputError
from ibtools.models.layers import (GaussianNoise, NoiseSource, ReferenceModel, make_norm,
                                   noise_config, norm_config, resolve_lam)

__all__ = ["MLP"]

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


class MLPBlock(nn.Module):
    def __init__(self, in_features: int, out_features: int, norm: nn.Module, activation: str,
                 noise: nn.Module | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.norm = norm
        self.act = _ACTIVATIONS[activation]()
        if noise is not None:
            self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm(self.linear(x)))
        return self.noise(x) if hasattr(self, "noise") else x


class MLP(ReferenceModel):
    """Funnel MLP classifier; module names ``layers.{i}`` (``.linear``, ``.norm``, ``.act``), ``head``.

    Parameters
    ----------
    in_features : int
        Input size (64 for digits); inputs of shape ``(n, ...)`` are flattened.
    widths : sequence of int
        Hidden widths, e.g. ``(32, 24, 16, 12)``.
    n_classes : int
        Number of classes.
    activation : {"tanh", "relu"}
        Tanh as in Shwartz-Ziv & Tishby, ReLU as in Saxe et al.
    norm : str or type
        ``"layer"`` (default), ``"rms"``, ``"batch"``, ``"none"``, ``"ib-S"``/``"ib-L"``/
        ``"ib-T"`` (IBNorm, LayerNorm flavour) or a norm class.
    lam : float, optional
        IBNorm strength; default 1.0 for IBNorm, 0 otherwise.
    norm_order : {"compress_first", "standardize_first"}
        IBNorm order.
    noise_std : float, default 0
        Standard deviation of Gaussian noise added to every hidden block's output
        (``layers.{i}.noise``, after the activation), in training and in evaluation: a noisy
        network as in Goldfeld et al. (2019).  0 builds the noiseless model exactly as
        before (no noise module, no config entry).
    noise_seed : int, default 0
        Seed of the model's noise stream (one per device, shared by its blocks); a model
        rebuilt from its config starts the same stream again.  ``model.noise_source.reseed()``
        restarts it.
    """

    name = "mlp"
    input_kind = "vector"

    def __init__(self, in_features: int = 64, widths: Sequence[int] = (32, 24, 16, 12),
                 n_classes: int = 10, activation: str = "tanh", norm="layer", lam: float | None = None,
                 norm_order: str = "compress_first", noise_std: float = 0.0,
                 noise_seed: int = 0) -> None:
        super().__init__()
        noise = noise_config(noise_std, noise_seed)
        widths = [int(w) for w in widths]
        if not widths or min(widths) < 1 or in_features < 1 or n_classes < 2:
            raise InputError(f"MLP needs in_features >= 1, non-empty widths >= 1 and n_classes >= 2, got "
                             f"in_features={in_features}, widths={widths}, n_classes={n_classes}")
        if activation not in _ACTIVATIONS:
            raise InputError(f"activation must be one of {tuple(_ACTIVATIONS)}, got {activation!r}")
        lam = resolve_lam(norm, lam)
        self.config = {"in_features": int(in_features), "widths": widths, "n_classes": int(n_classes),
                       "activation": activation, "norm": norm_config(norm), "lam": lam,
                       "norm_order": norm_order, **noise}
        sizes = [int(in_features)] + widths
        self.noise_source = NoiseSource(noise_seed) if noise else None
        self.layers = nn.ModuleList(
            MLPBlock(a, b, make_norm(norm, b, family="layer", layout="vector", lam=lam, order=norm_order),
                     activation, GaussianNoise(noise_std, self.noise_source) if noise else None)
            for a, b in zip(sizes[:-1], sizes[1:]))
        self.head = nn.Linear(widths[-1], n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (n, in_features)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)  # (n, n_classes)
