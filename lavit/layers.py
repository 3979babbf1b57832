"""Transformer building blocks shared by every component (tokenizer, conditioners, VAR).

Attention runs through :func:`attention`, which uses ``F.scaled_dot_product_attention`` by
default and xformers' memory-efficient kernel when asked for (CUDA only, optional install).
Masks are boolean and mean "may attend": shape broadcastable to (B, heads, Lq, Lk).
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import nn

BACKENDS = ("sdpa", "xformers")


def check_backend(backend: str) -> None:
    """Raise a clear error for an unknown or unavailable attention backend."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
    if backend == "xformers" and importlib.util.find_spec("xformers") is None:
        raise ValueError(
            "attention backend 'xformers' needs the optional package: pip install -e '.[xformers]' "
            "(CUDA only), or use attention_backend=sdpa"
        )


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, backend: str = "sdpa"
) -> torch.Tensor:
    """Scaled dot-product attention.

    Args:
        q: (B, H, Lq, D); k, v: (B, H, Lk, D).
        mask: boolean, broadcastable to (B, H, Lq, Lk); True = may attend. Every query row must
            allow at least one key.
        backend: 'sdpa' (default) or 'xformers' (CUDA tensors only).

    Returns:
        (B, H, Lq, D)
    """
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    import xformers.ops as xops  # optional dependency, imported only when chosen

    bias = None
    if mask is not None:
        b, h, lq, lk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
        bias = torch.zeros(b, h, lq, lk, dtype=q.dtype, device=q.device)
        bias.masked_fill_(~mask.expand(b, h, lq, lk), float("-inf"))
    # xformers takes (B, L, H, D).
    out = xops.memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_bias=bias)
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self- or cross-attention. ``context=None`` means self-attention."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None, backend: str = "sdpa") -> None:
        super().__init__()
        assert dim % heads == 0, f"dim {dim} not divisible by heads {heads}"
        check_backend(backend)
        self.heads, self.backend = heads, backend
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: (B, Lq, C); context: (B, Lk, Cc) or None; mask: bool (B, 1|H, Lq, Lk) -> (B, Lq, C)."""
        b, lq, c = x.shape
        ctx = x if context is None else context
        q = self.q(x).view(b, lq, self.heads, c // self.heads).transpose(1, 2)  # (B, H, Lq, D)
        k, v = self.kv(ctx).view(b, ctx.shape[1], 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        y = attention(q, k, v, mask, self.backend)  # (B, H, Lq, D)
        return self.out(y.transpose(1, 2).reshape(b, lq, c))


class MLP(nn.Module):
    """Two-layer GELU MLP."""

    def __init__(self, dim: int, ratio: float = 4.0, out_dim: int | None = None) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, out_dim or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class CrossBlock(nn.Module):
    """Pre-norm block: self-attention, cross-attention to a context sequence, MLP.

    LaVIT's token merger block (causal self-attention among kept tokens, cross-attention to the
    dropped ones) and the feature decoder's block (learned queries reading the codes) are both
    this block with different masks.
    """

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None, backend: str = "sdpa"
    ) -> None:
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim), Attention(dim, heads, backend=backend)
        self.norm2, self.norm_ctx = nn.LayerNorm(dim), nn.LayerNorm(context_dim or dim)
        self.cross_attn = Attention(dim, heads, context_dim, backend=backend)
        self.norm3, self.mlp = nn.LayerNorm(dim), MLP(dim, mlp_ratio)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, self_mask: torch.Tensor | None, context_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """x: (B, L, C); context: (B, Lc, Cc); masks: bool (B, 1, L, L) and (B, 1, L, Lc)."""
        x = x + self.self_attn(self.norm1(x), mask=self_mask)
        x = x + self.cross_attn(self.norm2(x), self.norm_ctx(context), mask=context_mask)
        return x + self.mlp(self.norm3(x))


class QueryConditioner(nn.Module):
    """Learned queries read a variable-length condition sequence (cross-attention under its
    key-padding mask; a learned position per index) and become a fixed-length one, whatever the
    sequence's length. ``null`` is the learned "no condition" output (classifier-free guidance).

    The diffusion detokenizer's conditioner, and the VAR transformer's layout reader.
    """

    def __init__(
        self, in_dim: int, width: int, depth: int, heads: int, num_queries: int, out_dim: int, max_length: int
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.pos = nn.Parameter(torch.zeros(max_length, width))
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        self.blocks = nn.ModuleList(CrossBlock(width, heads, context_dim=width) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)
        self.null = nn.Parameter(torch.randn(num_queries, out_dim) * 0.02)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """emb: (B, L, in_dim) condition sequence, mask: (B, L) bool -> (B, Q, out_dim)."""
        b, length, _ = emb.shape
        if length > self.pos.shape[0]:
            raise ValueError(
                f"{length} codes exceed the conditioner's max_codes={self.pos.shape[0]}: "
                "were these codes made by another tokenizer? Use the tokenizer this decoder was trained on"
            )
        ctx = self.inp(emb) + self.pos[:length]
        x = self.queries.expand(b, -1, -1)
        ctx_mask = mask[:, None, None, :]  # (B, 1, 1, L): queries see the real positions only
        for block in self.blocks:
            x = block(x, ctx, None, ctx_mask)
        return self.out(self.norm(x))


def seq_to_grid(x: torch.Tensor) -> torch.Tensor:
    """(B, N, C) vectors of a square grid in raster order -> the (B, C, side, side) map."""
    b, n, c = x.shape
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"{n} vectors do not form a square grid")
    return x.transpose(1, 2).reshape(b, c, side, side)


def grid_to_seq(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) map -> (B, H * W, C) vectors in raster order (inverse of :func:`seq_to_grid`)."""
    return x.flatten(2).transpose(1, 2)
