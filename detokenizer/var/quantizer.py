"""VAR's multi-scale residual quantizer (Tian et al., NeurIPS 2024), written out.

Encoding a latent ``f`` (B, C, h, w): ``r = f``, ``f_hat = 0``; for each scale side ``p_k``
the residual is area-downsampled to ``p_k x p_k``, each position takes its nearest code, the
code map is bicubic-upsampled back to ``h x w`` and passed through a phi conv
(``(1 - r) h + r conv(h)``, ``num_phi`` of them shared across scales by nearest tick), then
``f_hat += h`` and ``r -= h``. Decoding reads ``f_hat`` once.

The next-scale transformer's input for scale ``k + 1`` is the cumulative ``f_hat`` after scales
``<= k``, area-downsampled to ``p_{k+1}``: :meth:`MultiScaleQuantizer.step` builds it, and both
teacher forcing (:meth:`~MultiScaleQuantizer.teacher_forcing_inputs`) and sampling call it, so
the two cannot drift apart.

Training: straight-through estimator; the codebook and phi convs learn from
``mse(f_hat, sg(f))``, the encoder from ``beta * mse(sg(f_hat), f)`` (VAR's losses); codes whose
EMA use falls below ``dead_code_threshold`` restart from random latent vectors of the batch
(VAR's users report collapse at the smallest scales: per-scale usage is returned for logging).
``znorm`` picks codes by cosine instead of L2 (VAR's ``using_znorm``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class Phi(nn.Conv2d):
    """``h -> (1 - ratio) * h + ratio * conv3x3(h)``."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__(dim, dim, kernel_size=3, padding=1)
        self.ratio = ratio

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.mul(1 - self.ratio) + super().forward(h).mul(self.ratio)


def phi_index(k: int, num_scales: int, num_phi: int) -> int:
    """The phi conv shared by scale ``k`` of ``num_scales``: the nearest of ``num_phi`` evenly
    spaced ticks in (0, 1) to ``k / (num_scales - 1)``, exactly as VAR's PhiPartiallyShared
    picks it (ticks ``1/(3K)`` from the ends for K = 4, ``1/(2K)`` otherwise).

    The arithmetic is VAR's too, float64 numpy: with 10 scales ``2/9`` and ``7/9`` fall midway
    between two of the 4 ticks, and only float64 rounding decides (phi 1 and 3; float32 gives
    0 and 2, and a converted VAR VQ-VAE's codes then disagree from the 4x4 scale on)."""
    if num_phi == 1:
        return 0
    edge = 1 / 3 / num_phi if num_phi == 4 else 1 / 2 / num_phi
    ticks = np.linspace(edge, 1 - edge, num_phi)
    at = k / max(num_scales - 1, 1)
    return int(np.argmin(np.abs(ticks - at)))


class MultiScaleQuantizer(nn.Module):
    def __init__(
        self,
        dim: int,
        codebook_size: int,
        scales: list[int],
        num_phi: int = 4,
        phi_ratio: float = 0.5,
        commitment_weight: float = 0.25,
        dead_code_threshold: float = 0.0,
        usage_decay: float = 0.99,
        znorm: bool = False,
    ) -> None:
        super().__init__()
        self.dim, self.codebook_size, self.scales = dim, codebook_size, list(scales)
        self.commitment_weight = commitment_weight
        self.dead_code_threshold, self.usage_decay = dead_code_threshold, usage_decay
        self.znorm = znorm
        self.codebook = nn.Embedding(codebook_size, dim)
        nn.init.uniform_(self.codebook.weight, -1 / codebook_size, 1 / codebook_size)
        self.phis = nn.ModuleList(Phi(dim, phi_ratio) for _ in range(num_phi))
        self.phi_of_scale = [phi_index(k, len(self.scales), num_phi) for k in range(len(self.scales))]
        self.register_buffer("usage", torch.ones(codebook_size))  # EMA of uses per step

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    @property
    def side(self) -> int:
        return self.scales[-1]

    def tokens_per_scale(self) -> list[int]:
        return [p * p for p in self.scales]

    # ----------------------------------------------------------------------------------------
    # Shared pieces
    # ----------------------------------------------------------------------------------------

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, p, p) -> (B, p, p) indices of the nearest codes (squared L2, or cosine with
        ``znorm``)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.dim).float()  # (N, C)
        book = self.codebook.weight.float()  # (V, C)
        if self.znorm:
            idx = (F.normalize(flat, dim=1) @ F.normalize(book, dim=1).T).argmax(dim=1)
        else:
            # |z|^2 + |e|^2 - 2 z.e in VAR's order of operations (one addmm), so that a
            # converted VAR VQ-VAE breaks near-ties as VAR does: (N, V)
            dist2 = flat.square().sum(1, keepdim=True) + book.square().sum(1)
            idx = dist2.addmm_(flat, book.T, alpha=-2, beta=1).argmin(dim=1)
        return idx.view(z.shape[0], z.shape[2], z.shape[3])

    def embed_up(self, indices: torch.Tensor, k: int) -> torch.Tensor:
        """Scale ``k``'s (B, p_k, p_k) indices -> its (B, C, side, side) contribution ``h``."""
        # (B, C, p, p), made contiguous: a permuted map is channels-last, and the phi conv then
        # rounds differently from VAR's (whose f_hat a converted VAR VQ-VAE must reproduce)
        h = self.codebook(indices).permute(0, 3, 1, 2).contiguous()
        if self.scales[k] != self.side:
            h = F.interpolate(h, size=(self.side, self.side), mode="bicubic")
        return self.phis[self.phi_of_scale[k]](h)

    def step(self, f_hat: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Add scale ``k``'s codes to the cumulative ``f_hat``; return it and the next scale's
        transformer input ``(B, p_{k+1}^2, C)`` (None after the last scale). Used by teacher
        forcing and by sampling alike."""
        f_hat = f_hat + self.embed_up(indices, k)
        if k + 1 == self.num_scales:
            return f_hat, None
        p = self.scales[k + 1]
        nxt = F.interpolate(f_hat, size=(p, p), mode="area")
        return f_hat, nxt.flatten(2).transpose(1, 2)

    def usage_share(self, indices: torch.Tensor) -> torch.Tensor:
        """The share of the book that ``indices`` use, as a tensor on their device (computed
        without reading them back: ``unique()`` is a host round trip per call)."""
        hit = torch.zeros(self.codebook_size, device=indices.device).scatter_(0, indices.flatten(), 1.0)
        return hit.mean()

    # ----------------------------------------------------------------------------------------
    # Encoding / decoding
    # ----------------------------------------------------------------------------------------

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, dict]:
        """Quantize a latent. f: (B, C, side, side).

        Returns:
            f_hat with straight-through gradients to ``f``; per scale the (B, p_k, p_k) indices;
            the VQ loss (codebook + beta * commitment, averaged over scales); logs (per-scale
            code usage in this batch, and how many dead codes were restarted).
        """
        if f.shape[1] != self.dim or tuple(f.shape[2:]) != (self.side, self.side):
            raise ValueError(
                f"latent must be (B, {self.dim}, {self.side}, {self.side}) for this quantizer, got {tuple(f.shape)}"
            )
        f_nograd = f.detach()
        rest = f_nograd.clone()
        f_hat = torch.zeros_like(f_nograd)
        indices: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []  # what each scale quantized: the pool for dead-code restarts
        loss = f.new_zeros(())
        for k, p in enumerate(self.scales):
            z = rest if p == self.side else F.interpolate(rest, size=(p, p), mode="area")
            inputs.append(z)
            idx = self.nearest(z)
            h = self.embed_up(idx, k)
            f_hat = f_hat + h
            rest = rest - h.detach()
            indices.append(idx)
            loss = loss + F.mse_loss(f_hat, f_nograd) + self.commitment_weight * F.mse_loss(f_hat.detach(), f)
        loss = loss / self.num_scales
        logs = {f"usage_scale{p}": self.usage_share(idx) for p, idx in zip(self.scales, indices, strict=True)}
        if self.training and torch.is_grad_enabled():
            logs["dead_codes_restarted"] = torch.tensor(float(self._restart_dead_codes(indices, inputs)))
        return f + (f_hat - f).detach(), indices, loss, logs  # value f_hat, gradient to f only

    @torch.no_grad()
    def _restart_dead_codes(self, indices: list[torch.Tensor], inputs: list[torch.Tensor]) -> int:
        """Move codes whose EMA use fell below the threshold onto vectors that a scale just
        quantized. The scale is drawn uniformly, not in proportion to its token count: drawn
        from the whole latent, restarts land where the finest scales live (a 16x16 map has 16x
        the tokens of a 4x4 one) and the coarse scales' usage starves."""
        device = inputs[0].device
        counts = torch.zeros(self.codebook_size, device=device)
        for idx in indices:  # index_add_, not bincount: on a GPU bincount reads the max back first
            counts.index_add_(0, idx.flatten(), torch.ones(idx.numel(), device=device))
        self.usage.mul_(self.usage_decay).add_(counts, alpha=1 - self.usage_decay)
        dead = self.usage < self.dead_code_threshold
        n = int(dead.sum())
        if n:
            pool = torch.cat([z.permute(0, 2, 3, 1).reshape(-1, self.dim) for z in inputs])
            # each scale's vectors share weight 1, so a draw picks a scale uniformly (one op on
            # the device, no per-code host round trip)
            weights = torch.cat([torch.full((z[:, 0].numel(),), 1.0 / z[:, 0].numel(), device=device) for z in inputs])
            pick = torch.multinomial(weights, n, replacement=True)
            self.codebook.weight.data[dead] = pool[pick].to(self.codebook.weight.dtype)
            self.usage[dead] = 1.0
        if dist.is_available() and dist.is_initialized():  # every rank, every step: keep rank 0's
            dist.broadcast(self.codebook.weight.data, src=0)
            dist.broadcast(self.usage, src=0)
        return n

    def indices_to_fhat(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale indices (all scales) -> the (B, C, side, side) ``f_hat`` the decoder reads."""
        if len(indices) != self.num_scales:
            raise ValueError(f"need indices for all {self.num_scales} scales, got {len(indices)}")
        b = indices[0].shape[0]
        f_hat = self.codebook.weight.new_zeros(b, self.dim, self.side, self.side)
        for k, idx in enumerate(indices):
            f_hat, _ = self.step(f_hat, idx, k)
        return f_hat

    def teacher_forcing_inputs(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale ground-truth indices -> the transformer's inputs for scales 1..K-1,
        concatenated: (B, sum_{k>=1} p_k^2, C). Scale 0's input is the condition."""
        b = indices[0].shape[0]
        f_hat = self.codebook.weight.new_zeros(b, self.dim, self.side, self.side)
        inputs = []
        for k, idx in enumerate(indices[:-1]):
            f_hat, nxt = self.step(f_hat, idx, k)
            inputs.append(nxt)
        return torch.cat(inputs, dim=1)
