"""A tiny GPT-2-style byte-level language model (Radford et al., 2019), nanoGPT naming.

With ``noise_std > 0`` Gaussian noise follows every block (Goldfeld et al. 2019's noisy
network; see :class:`~ibtools.models.MLP`).
"""

from __future__ import annotations

import math

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

__all__ = ["GPT"]


class GPTBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, norm, noise: nn.Module | None = None) -> None:
        super().__init__()
        self.ln_1 = norm(n_embd)
        self.attn = SelfAttention(n_embd, n_head, causal=True)
        self.ln_2 = norm(n_embd)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(n_embd, 4 * n_embd))
        self.mlp.add_module("gelu", nn.GELU(approximate="tanh"))
        self.mlp.add_module("c_proj", nn.Linear(4 * n_embd, n_embd))
        if noise is not None:
            self.noise = noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        return self.noise(x) if hasattr(self, "noise") else x


class GPT(ReferenceModel):
    """GPT-2-style LM; module names ``wte``, ``wpe``, ``blocks.{i}`` (``.ln_1``, ``.attn``, ``.ln_2``, ``.mlp``, ``.noise``), ``ln_f``, ``lm_head``.

    Takes byte ids ``(B, T)`` (``T <= block_size``) and returns logits ``(B, T, vocab_size)``.
    ``lm_head`` shares its weight with ``wte``.

    Parameters
    ----------
    vocab_size : int
        256 for bytes.
    block_size : int
        Longest context (learned positions).
    n_layer, n_head, n_embd : int
        Depth, heads and width.
    norm : str or type
        ``"layer"`` (default), ``"rms"``, ``"batch"`` (over batch and time), ``"none"``,
        ``"ib-S"``/``"ib-L"``/``"ib-T"`` (IBNorm, LayerNorm flavour) or a norm class.
    lam : float, optional
        IBNorm strength; default 1.0 for IBNorm, 0 otherwise.
    norm_order : {"compress_first", "standardize_first"}
        IBNorm order.
    noise_std : float, default 0
        Standard deviation of Gaussian noise added to every block's output, residual stream
        included (``blocks.{i}.noise``, at every position), in training and in evaluation; 0
        builds the noiseless model exactly as before (same parameters, same outputs, no
        config entry).  See :class:`~ibtools.models.MLP`.
    noise_seed : int, default 0
        Seed of the model's noise stream (``model.noise_source``).
    """

    name = "gpt"
    input_kind = "tokens"

    def __init__(self, vocab_size: int = 256, block_size: int = 64, n_layer: int = 2, n_head: int = 4,
                 n_embd: int = 64, norm="layer", lam: float | None = None,
                 norm_order: str = "compress_first", noise_std: float = 0.0, noise_seed: int = 0) -> None:
        super().__init__()
        noise = noise_config(noise_std, noise_seed)
        if n_layer < 1 or block_size < 1 or vocab_size < 2:
            raise InputError(f"GPT needs n_layer >= 1, block_size >= 1, vocab_size >= 2, got "
                             f"n_layer={n_layer}, block_size={block_size}, vocab_size={vocab_size}")
        lam = resolve_lam(norm, lam)
        self.config = {"vocab_size": int(vocab_size), "block_size": int(block_size), "n_layer": int(n_layer),
                       "n_head": int(n_head), "n_embd": int(n_embd), "norm": norm_config(norm), "lam": lam,
                       "norm_order": norm_order, **noise}
        self.noise_source = NoiseSource(noise_seed) if noise else None

        def norm_layer(c: int) -> nn.Module:
            return make_norm(norm, c, family="layer", layout="sequence", lam=lam, order=norm_order)

        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(
            GPTBlock(n_embd, n_head, norm_layer,
                     GaussianNoise(noise_std, self.noise_source) if noise else None)
            for _ in range(n_layer))
        self.ln_f = norm_layer(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                # GPT-2: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer).
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("proj.weight") else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith(".bias") and "ln_" not in name:
                nn.init.zeros_(p)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _check_tokens(idx, self.config["block_size"])
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # (B, T, vocab)


def _check_tokens(idx: torch.Tensor, block_size: int | None) -> None:
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
        got = f"{tuple(idx.shape)} {idx.dtype}" if isinstance(idx, torch.Tensor) else type(idx).__name__
        raise InputError(f"idx must be an integer tensor of shape (B, T), got {got}")
    if block_size is not None and idx.shape[1] > block_size:
        raise InputError(f"sequence length {idx.shape[1]} exceeds block_size {block_size}")
