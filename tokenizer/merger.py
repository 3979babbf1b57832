"""LaVIT's token merger: fold the dropped patches into the kept ones.

Each block: causal self-attention among kept tokens in raster order, cross-attention from the
stream to the *dropped* tokens only, MLP. Computed on the full (B, N) grid with masks, so the
same code serves training (straight-through masks) and inference; a learned null key keeps the
cross-attention defined when nothing was dropped.
"""

from __future__ import annotations

import torch
from torch import nn

from lavit.layers import CrossBlock


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
