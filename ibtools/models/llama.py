"""A tiny LLaMA-style byte-level language model (Touvron et al., 2023).

Pre-norm RMSNorm blocks, SwiGLU feed-forward (Shazeer, 2020), rotary positions (Su et al.,
2021), no biases, untied output head.  With ``noise_std > 0`` Gaussian noise follows every
block (Goldfeld et al. 2019's noisy network; see :class:`~ibtools.models.MLP`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ibtools.errors import InputError
from ibtools.models.attention import SelfAttention
from ibtools.models.gpt import _check_tokens
from ibtools.models.layers import (
    GaussianNoise,
    NoiseSource,
    ReferenceModel,
    make_norm,
    noise_config,
    norm_config,
    resolve_lam,
)

__all__ = ["Llama"]


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate = nn.Linear(dim, hidden, bias=False)
        self.up = nn.Linear(dim, hidden, bias=False)
        self.down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    def __init__(self, dim: int, n_head: int, hidden: int, norm,
                 noise: nn.Module | None = None) -> None:
        super().__init__()
        self.attn_norm = norm(dim)
        self.attn = SelfAttention(dim, n_head, causal=True, bias=False)
        self.mlp_norm = norm(dim)
        self.mlp = SwiGLU(dim, hidden)
        if noise is not None:
            self.noise = noise

    def forward(self, x: torch.Tensor, rotary) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), rotary)
        x = x + self.mlp(self.mlp_norm(x))
        return self.noise(x) if hasattr(self, "noise") else x


class Llama(ReferenceModel):
    """LLaMA-style LM; module names ``embed``, ``layers.{i}`` (``.attn_norm``, ``.attn``, ``.mlp_norm``, ``.mlp``, ``.noise``), ``norm``, ``lm_head``.

    Takes byte ids ``(B, T)`` and returns logits ``(B, T, vocab_size)``.

    Parameters
    ----------
    vocab_size : int
        256 for bytes.
    block_size : int
        Training context length (rotary positions work for any length).
    n_layer, n_head, dim : int
        Depth, heads and width.
    hidden_dim : int, optional
        SwiGLU hidden size; default ``8 * dim / 3`` rounded up to a multiple of 8.
    rope_theta : float
        Rotary base.
    norm : str or type
        ``"rms"`` (default), ``"layer"``, ``"batch"`` (over batch and time), ``"none"``,
        ``"ib-S"``/``"ib-L"``/``"ib-T"`` (IBRMSNorm) or a norm class.
    lam : float, optional
        IBNorm strength; default 1.0 for IBNorm, 0 otherwise.
    norm_order : {"compress_first", "standardize_first"}
        IBNorm order.
    noise_std : float, default 0
        Standard deviation of Gaussian noise added to every block's output, residual stream
        included (``layers.{i}.noise``, at every position), in training and in evaluation; 0
        builds the noiseless model exactly as before (same parameters, same outputs, no
        config entry).  See :class:`~ibtools.models.MLP`.
    noise_seed : int, default 0
        Seed of the model's noise stream (``model.noise_source``).
    """

    name = "llama"
    input_kind = "tokens"

    def __init__(self, vocab_size: int = 256, block_size: int = 64, n_layer: int = 2, n_head: int = 4,
                 dim: int = 64, hidden_dim: int | None = None, rope_theta: float = 10000.0, norm="rms",
                 lam: float | None = None, norm_order: str = "compress_first", noise_std: float = 0.0,
                 noise_seed: int = 0) -> None:
        super().__init__()
        noise = noise_config(noise_std, noise_seed)
        if n_layer < 1 or vocab_size < 2 or dim % n_head or (dim // n_head) % 2:
            raise InputError(f"Llama needs n_layer >= 1, vocab_size >= 2 and an even head size dim/n_head, got "
                             f"n_layer={n_layer}, vocab_size={vocab_size}, dim={dim}, n_head={n_head}")
        hidden_dim = int(hidden_dim) if hidden_dim is not None else 8 * ((8 * dim // 3 + 7) // 8)
        lam = resolve_lam(norm, lam)
        self.config = {"vocab_size": int(vocab_size), "block_size": int(block_size), "n_layer": int(n_layer),
                       "n_head": int(n_head), "dim": int(dim), "hidden_dim": hidden_dim,
                       "rope_theta": float(rope_theta), "norm": norm_config(norm), "lam": lam,
                       "norm_order": norm_order, **noise}
        self.noise_source = NoiseSource(noise_seed) if noise else None

        def norm_layer(c: int) -> nn.Module:
            return make_norm(norm, c, family="rms", layout="sequence", lam=lam, order=norm_order)

        self.embed = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(
            LlamaBlock(dim, n_head, hidden_dim, norm_layer,
                       GaussianNoise(noise_std, self.noise_source) if noise else None)
            for _ in range(n_layer))
        self.norm = norm_layer(dim)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def _rotary(self, T: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Recomputed in float32 each call: cheap, and unaffected by model.half().
        head_dim = self.config["dim"] // self.config["n_head"]
        inv_freq = self.config["rope_theta"] ** (
            -torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(T, device=device, dtype=torch.float32), inv_freq)
        return angles.cos().to(dtype), angles.sin().to(dtype)  # (T, head_dim / 2)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        _check_tokens(idx, None)
        x = self.embed(idx)  # (B, T, C)
        rotary = self._rotary(idx.shape[1], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x, rotary)
        return self.lm_head(self.norm(x))  # (B, T, vocab)
