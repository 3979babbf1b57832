"""The training target: learned queries (one per patch) read the codes and rebuild the encoder
features (LaVIT's cosine reconstruction), optionally the pixels too."""

from __future__ import annotations

import torch
from torch import nn

from lavit.layers import CrossBlock


class FeatureDecoder(nn.Module):
    def __init__(
        self,
        dim: int,
        num_patches: int,
        out_dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float,
        pixel_dim: int = 0,
        backend: str = "sdpa",
    ) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_patches, dim) * 0.02)
        # Position *within the code sequence*: the only order information codes carry.
        self.code_pos = nn.Parameter(torch.randn(1, num_patches, dim) * 0.02)
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, mlp_ratio, backend=backend) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.to_features = nn.Linear(dim, out_dim)
        self.to_pixels = nn.Linear(dim, pixel_dim) if pixel_dim else None

    def forward(self, codes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """codes: (B, L, C) code embeddings, left-aligned; mask: (B, L) bool, True = real code.

        Returns:
            ((B, N, out_dim) features, (B, N, pixel_dim) patch pixels or None)
        """
        b, length, _ = codes.shape
        memory = codes + self.code_pos[:, :length]
        q = self.queries.expand(b, -1, -1).to(codes.dtype)
        ctx_mask = mask[:, None, None, :]  # (B, 1, 1, L)
        for block in self.blocks:
            q = block(q, memory, None, ctx_mask)
        q = self.norm(q)
        return self.to_features(q), (self.to_pixels(q) if self.to_pixels is not None else None)
