"""A tiny Vision Transformer for 8x8 digits (Dosovitskiy et al., 2021), pre-norm blocks.

With ``noise_std > 0`` Gaussian noise follows every block (Goldfeld et al. 2019's noisy
network; see :class:`~ibtools.models.MLP`).
"""

from __future__ import annotations

import torch
from torch import nn

from ibtools.errors import InputError
from ibtools.models.attention import SelfAttention
from ibtools.models.layers import (
    GaussianNoise,
    NoiseSource,
    ReferenceModel,
    make_norm,
    noise_config,
    norm_config,
    resolve_lam,
)

__all__ = ["ViT"]


class ViTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, norm,
                 noise: nn.Module | None = None) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.attn = SelfAttention(dim, heads, causal=False)
        self.norm2 = norm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        if noise is not None:
            self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.noise(x) if hasattr(self, "noise") else x


class ViT(ReferenceModel):
    """Tiny ViT; module names ``patch_embed``, ``blocks.{i}`` (``.norm1``, ``.attn``, ``.norm2``, ``.mlp``, ``.noise``), ``norm``, ``head``.

    Parameters
    ----------
    image_size, patch_size, in_channels : int
        Input ``(n, in_channels, image_size, image_size)`` cut into square patches; flat
        ``(n, C*H*W)`` input is reshaped.
    dim, depth, heads : int
        Embedding size, number of blocks, attention heads.
    mlp_ratio : float
        Hidden size of the block MLP relative to ``dim``.
    n_classes : int
        Number of classes (read from the class token).
    norm : str or type
        ``"layer"`` (default), ``"rms"``, ``"batch"`` (over batch and tokens), ``"none"``,
        ``"ib-S"``/``"ib-L"``/``"ib-T"`` (IBNorm, LayerNorm flavour) or a norm class.
    lam : float, optional
        IBNorm strength; default 1.0 for IBNorm, 0 otherwise.
    norm_order : {"compress_first", "standardize_first"}
        IBNorm order.
    noise_std : float, default 0
        Standard deviation of Gaussian noise added to every block's output, residual stream
        included (``blocks.{i}.noise``, on every token), in training and in evaluation; 0
        builds the noiseless model exactly as before (same parameters, same outputs, no
        config entry).  See :class:`~ibtools.models.MLP`.
    noise_seed : int, default 0
        Seed of the model's noise stream (``model.noise_source``).
    """

    name = "vit"
    input_kind = "image"

    def __init__(self, image_size: int = 8, patch_size: int = 2, in_channels: int = 1, dim: int = 32,
                 depth: int = 2, heads: int = 4, mlp_ratio: float = 2.0, n_classes: int = 10, norm="layer",
                 lam: float | None = None, norm_order: str = "compress_first", noise_std: float = 0.0,
                 noise_seed: int = 0) -> None:
        super().__init__()
        noise = noise_config(noise_std, noise_seed)
        for key, value in (("image_size", image_size), ("patch_size", patch_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"{key} must be a positive integer; got {value!r}")
        if image_size % patch_size:
            raise InputError(f"image_size {image_size} must be a multiple of patch_size {patch_size}")
        if depth < 1 or n_classes < 2:
            raise InputError(f"ViT needs depth >= 1 and n_classes >= 2, got depth={depth}, n_classes={n_classes}")
        lam = resolve_lam(norm, lam)
        self.config = {"image_size": int(image_size), "patch_size": int(patch_size),
                       "in_channels": int(in_channels), "dim": int(dim), "depth": int(depth),
                       "heads": int(heads), "mlp_ratio": float(mlp_ratio), "n_classes": int(n_classes),
                       "norm": norm_config(norm), "lam": lam, "norm_order": norm_order, **noise}
        self.noise_source = NoiseSource(noise_seed) if noise else None

        def norm_layer(c: int) -> nn.Module:
            return make_norm(norm, c, family="layer", layout="sequence", lam=lam, order=norm_order)

        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            ViTBlock(dim, heads, int(dim * mlp_ratio), norm_layer,
                     GaussianNoise(noise_std, self.noise_source) if noise else None)
            for _ in range(depth))
        self.norm = norm_layer(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = self.config["in_channels"], self.config["image_size"]
        if x.dim() == 2:
            x = x.view(-1, c, s, s)
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (n, P, dim)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed  # (n, P+1, dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])  # (n, n_classes)
