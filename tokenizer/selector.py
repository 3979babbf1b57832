"""LaVIT's token selector: which patches to keep.

Per patch, an MLP scores keep/drop from a local half and a global (mean-pooled) half of its
projected features. Training samples a hard mask with Gumbel-softmax (straight-through
gradients); inference is deterministic (keep where the keep margin exceeds a threshold
calibrated on training images, see ``DynamicVisualTokenizer.calibrate_keep``) unless sampling is
asked for. LaVIT samples at inference too, so its token count changes from call to call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TokenSelector(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        assert dim % 4 == 0, "selector width must be divisible by 4"
        self.in_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.GELU())
        self.head = nn.Sequential(
            nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, dim // 4), nn.GELU(), nn.Linear(dim // 4, 2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, C) -> (B, N, 2) logits of [keep, drop]."""
        h = self.in_proj(x)
        local, glob = h.chunk(2, dim=-1)
        glob = glob.mean(dim=1, keepdim=True).expand_as(local)  # (B, N, C/2) image context
        return self.head(torch.cat([local, glob], dim=-1))


def sample_keep(logits: torch.Tensor, tau: float, noise: bool) -> torch.Tensor:
    """Training mask: (B, N, 2) logits -> (B, N) hard {0, 1} with straight-through gradients.

    With ``noise`` it is Gumbel-softmax (hard); without, a deterministic threshold at
    p(keep) = 0.5 whose gradient is that of the softmax.
    """
    if noise:
        return F.gumbel_softmax(logits, tau=tau, hard=True)[..., 0]
    soft = logits.softmax(-1)[..., 0]
    hard = (soft > 0.5).to(soft.dtype)
    return hard + soft - soft.detach()


def infer_keep(margin: torch.Tensor, generator: torch.Generator | None = None, sample: bool = False) -> torch.Tensor:
    """Inference mask: (B, N) keep margin (logit of p(keep) minus the calibrated threshold) ->
    (B, N) bool; at least one patch kept per image.

    Deterministic (margin > 0) unless ``sample``, which draws keep ~ Bernoulli(sigmoid(margin)).
    """
    if sample:
        keep = torch.rand(margin.shape, generator=generator, device=margin.device) < margin.sigmoid()
    else:
        keep = margin > 0
    # An image whose every patch scores "drop" keeps its most confident patch.
    none = ~keep.any(dim=1)
    if none.any():
        keep[none, margin[none].argmax(dim=1)] = True
    return keep
