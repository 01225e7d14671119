"""A small residual CNN with normalization where ResNet puts BatchNorm.

He et al. (2016): conv -> BN -> ReLU stem, basic blocks conv-BN-ReLU-conv-BN plus the
shortcut (1x1 conv + BN when the shape changes) and a final ReLU, global average pooling.
Sized for 8x8 digits.  With ``noise_std > 0`` Gaussian noise follows the stem and every block
(Goldfeld et al. 2019's noisy network).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ibtools.errors import InputError
from ibtools.models.layers import (GaussianNoise, NoiseSource, ReferenceModel, make_norm,
                                   noise_config, norm_config, resolve_lam)

__all__ = ["CNN"]


def _noisy(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module.noise(x)`` when the block was built with noise, else x itself."""
    return module.noise(x) if hasattr(module, "noise") else x


class Stem(nn.Module):
    def __init__(self, in_channels: int, channels: int, norm, noise: nn.Module | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        self.norm = norm(channels)
        self.act = nn.ReLU()
        if noise is not None:
            self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _noisy(self, self.act(self.norm(self.conv(x))))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int, norm,
                 noise: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = norm(channels)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = norm(channels)
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                          norm(channels))
        else:
            self.shortcut = nn.Identity()
        self.act = nn.ReLU()
        if noise is not None:
            self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return _noisy(self, self.act(out + self.shortcut(x)))


class CNN(ReferenceModel):
    """Residual CNN; module names ``stem``, ``layers.{i}`` (``.norm1``, ``.norm2``), ``pool``, ``head``.

    Parameters
    ----------
    in_channels, image_size : int
        Input ``(n, in_channels, image_size, image_size)``; flat ``(n, C*H*W)`` is reshaped.
    channels : sequence of int
        Width of each stage; every stage after the first halves the resolution.
    blocks_per_stage : int
        Basic blocks per stage.
    n_classes : int
        Number of classes.
    norm : str or type
        ``"batch"`` (default), ``"layer"``/``"rms"`` (over channels, per pixel), ``"none"``,
        ``"ib-S"``/``"ib-L"``/``"ib-T"`` (IBBatchNorm2d) or a norm class.
    lam : float, optional
        IBNorm strength; default 1.0 for IBNorm, 0 otherwise.
    norm_order : {"compress_first", "standardize_first"}
        IBNorm order.
    noise_std : float, default 0
        Standard deviation of Gaussian noise added to the output of the stem and of every
        block (``stem.noise``, ``layers.{i}.noise``), in training and in evaluation; 0 builds
        the noiseless model exactly as before.  See :class:`~ibtools.models.MLP`.
    noise_seed : int, default 0
        Seed of the model's noise stream (``model.noise_source``).
    """

    name = "cnn"
    input_kind = "image"

    def __init__(self, in_channels: int = 1, image_size: int = 8, channels: Sequence[int] = (16, 32),
                 blocks_per_stage: int = 1, n_classes: int = 10, norm="batch", lam: float | None = None,
                 norm_order: str = "compress_first", noise_std: float = 0.0,
                 noise_seed: int = 0) -> None:
        super().__init__()
        noise = noise_config(noise_std, noise_seed)
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1 or blocks_per_stage < 1 or n_classes < 2:
            raise InputError(f"CNN needs non-empty channels >= 1, blocks_per_stage >= 1, n_classes >= 2, "
                             f"got channels={channels}, blocks_per_stage={blocks_per_stage}, n_classes={n_classes}")
        lam = resolve_lam(norm, lam)
        self.config = {"in_channels": int(in_channels), "image_size": int(image_size), "channels": channels,
                       "blocks_per_stage": int(blocks_per_stage), "n_classes": int(n_classes),
                       "norm": norm_config(norm), "lam": lam, "norm_order": norm_order, **noise}
        self.noise_source = NoiseSource(noise_seed) if noise else None

        def noise_layer() -> nn.Module | None:
            return GaussianNoise(noise_std, self.noise_source) if noise else None

        def norm_layer(c: int) -> nn.Module:
            return make_norm(norm, c, family="batch", layout="image", lam=lam, order=norm_order)

        self.stem = Stem(in_channels, channels[0], norm_layer, noise_layer())
        blocks, width = [], channels[0]
        for stage, c in enumerate(channels):
            for b in range(blocks_per_stage):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(width, c, stride, norm_layer, noise_layer()))
                width = c
        self.layers = nn.ModuleList(blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, n_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.config["in_channels"], self.config["image_size"]
        if x.dim() == 2:
            x = x.view(-1, c, s, s)
        x = self.stem(x)  # (n, C0, s, s)
        for block in self.layers:
            x = block(x)
        return self.head(self.pool(x).flatten(1))  # (n, n_classes)
