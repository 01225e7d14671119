"""Multi-head self-attention shared by the transformer reference models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ibtools.errors import InputError

__all__ = ["SelfAttention", "apply_rotary"]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the head dimension by position angles.

    Su et al., "RoFormer" (2021), in the half-split form LLaMA uses.  ``x`` is
    ``(B, H, T, D)``; ``cos``/``sin`` are ``(T, D/2)``.
    """
    a, b = x.chunk(2, dim=-1)
    return torch.cat((a * cos - b * sin, a * sin + b * cos), dim=-1)


class SelfAttention(nn.Module):
    """Self-attention with fused ``qkv`` and output ``proj``; causal and rotary optional."""

    def __init__(self, dim: int, heads: int, *, causal: bool, bias: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise InputError(f"embedding size {dim} must be divisible by the number of heads {heads}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # (B, H, T, D)
        if rotary is not None:
            q, k = apply_rotary(q, *rotary), apply_rotary(k, *rotary)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))
