"""LaVIT's token merger: fold the dropped patches into the kept ones.

Each block: causal self-attention among kept tokens in raster order, cross-attention from the
stream to the *dropped* tokens only, MLP. Computed on the full (B, N) grid with masks, so the
same code serves training (straight-through masks) and inference.

Two variants (``TokenizerConfig.merger``):

- ``TokenMerger`` ("null_key", ours): boolean masks through SDPA; a learned null key keeps the
  cross-attention defined when nothing was dropped; each block normalises the context.
- ``LaVITMerger`` ("lavit"): the published merger. One ``ln_vision`` norm of the context, float
  masks in LaVIT's epsilon-smoothed softmax and no null key: with nothing dropped every
  cross-attention weight is (0 + eps/N) / (0 + eps) = 1/N, a uniform mean over all N values.
"""

from __future__ import annotations

import torch
from torch import nn

from lavit.layers import MLP, CrossBlock

# LaVIT's smoothing constant of the masked softmax (softmax_with_policy).
POLICY_EPS = 1e-6


class TokenMerger(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float, backend: str = "sdpa") -> None:
        super().__init__()
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, mlp_ratio, backend=backend) for _ in range(depth))
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) patch features; keep: (B, N) in {0, 1} (float, maybe straight-through).

        Returns:
            (B, N, C) merged features; rows of dropped patches are meaningless.
        """
        b, n, _ = x.shape
        keep_b = keep.detach() > 0.5  # (B, N)
        m = keep.unsqueeze(-1).to(x.dtype)
        stream, dropped = x * m, x * (1 - m)  # gradients reach the selector through m
        context = torch.cat([self.null.expand(b, -1, -1).to(x.dtype), dropped], dim=1)  # (B, 1+N, C)
        eye = torch.eye(n, dtype=torch.bool, device=x.device)
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        # (B, 1, N, N): a kept query sees kept keys at or before it; every row sees itself.
        self_mask = ((causal & keep_b[:, None, :]) | eye).unsqueeze(1)
        # (B, 1, 1, 1+N): the null key and the dropped patches.
        ctx_mask = torch.cat([keep_b.new_ones(b, 1), ~keep_b], dim=1)[:, None, None, :]
        for block in self.blocks:
            stream = block(stream, context, self_mask, ctx_mask)
        return self.norm(stream)


def policy_softmax(scores: torch.Tensor, allow: torch.Tensor, eps: float = POLICY_EPS) -> torch.Tensor:
    """LaVIT's masked softmax: (B, H, Lq, Lk) scores, float ``allow`` broadcastable to them ->
    weights (exp(s - max) * allow + eps / Lk) / (sum + eps), in fp32 like LaVIT's.

    The max runs over every key, allowed or not, and each key keeps eps / Lk of weight: a row
    that allows nothing averages all values uniformly."""
    n = scores.shape[-1]
    w = (scores - scores.amax(dim=-1, keepdim=True)).float().exp() * allow.float()
    return ((w + eps / n) / (w.sum(dim=-1, keepdim=True) + eps)).to(scores.dtype)


class PolicyAttention(nn.Module):
    """Multi-head attention weighted by :func:`policy_softmax`; q/k/v/proj Linear with bias.

    ``fused``: one ``qkv`` Linear (LaVIT's causal self-attention), else ``query``, ``key``,
    ``value`` (its cross-attention)."""

    def __init__(self, dim: int, heads: int, fused: bool) -> None:
        super().__init__()
        assert dim % heads == 0, f"dim {dim} not divisible by heads {heads}"
        self.heads, self.fused = heads, fused
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, allow: torch.Tensor) -> torch.Tensor:
        """x: (B, Lq, C); context: (B, Lk, C) (x itself when fused); allow: (B, 1, Lq|1, Lk) float."""
        b, lq, c = x.shape
        d = c // self.heads
        if self.fused:
            q, k, v = self.qkv(x).view(b, lq, 3, self.heads, d).permute(2, 0, 3, 1, 4)  # 3 x (B, H, L, D)
        else:
            lk = context.shape[1]
            q = self.query(x).view(b, lq, self.heads, d).transpose(1, 2)
            k = self.key(context).view(b, lk, self.heads, d).transpose(1, 2)
            v = self.value(context).view(b, lk, self.heads, d).transpose(1, 2)
        attn = policy_softmax((q @ k.transpose(-2, -1)) * d**-0.5, allow)  # (B, H, Lq, Lk)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, lq, c))


class LaVITMergerBlock(nn.Module):
    """norm0 -> causal self-attention, norm1 -> cross-attention to the context, norm2 -> MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm0, self.self_attn = nn.LayerNorm(dim), PolicyAttention(dim, heads, fused=True)
        self.norm1, self.cross_attn = nn.LayerNorm(dim), PolicyAttention(dim, heads, fused=False)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, mlp_ratio)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor, self_allow: torch.Tensor, ctx_allow: torch.Tensor
    ) -> torch.Tensor:
        x = x + self.self_attn(self.norm0(x), x, self_allow)
        x = x + self.cross_attn(self.norm1(x), context, ctx_allow)
        return x + self.mlp(self.norm2(x))


class LaVITMerger(nn.Module):
    """The published LaVIT merger (``causal_encoder``); same interface as :class:`TokenMerger`."""

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(LaVITMergerBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.context_norm = nn.LayerNorm(dim)  # LaVIT's ln_vision
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) patch features; keep: (B, N) in {0, 1} (float, maybe straight-through).

        Every row runs (LaVIT feeds the dropped ones too); kept rows see dropped rows only
        through the eps share of :func:`policy_softmax`.

        Returns:
            (B, N, C) merged features; rows of dropped patches are meaningless.
        """
        n = x.shape[1]
        keep_k = keep.to(x.dtype)[:, None, None, :]  # (B, 1, 1, N) over keys
        eye = torch.eye(n, dtype=x.dtype, device=x.device)
        causal = torch.ones(n, n, dtype=x.dtype, device=x.device).tril()
        # (B, 1, N, N): kept keys at or before the query, and the query itself.
        self_allow = (keep_k + (1 - keep_k) * eye) * causal
        ctx_allow = 1 - keep_k  # (B, 1, 1, N): the dropped patches only
        context = self.context_norm(x)
        for block in self.blocks:
            x = block(x, context, self_allow, ctx_allow)
        return self.norm(x)
