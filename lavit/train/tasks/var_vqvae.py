"""Stage 3b, part 1: VAR's multi-scale residual VQ-VAE on images (``lavit train var-vqvae``).

VAR never released this training code. Loss: L2 on pixels in [-1, 1] plus the quantizer's
codebook / commitment terms; dead codes restart from batch latents; every logged step carries
the per-scale code usage of its batch, every evaluation the usage over the held-out images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detokenizer.var.config import VQVAERunConfig
from detokenizer.var.io import save_vqvae
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.train.tasks.autoencoder import AutoencoderTask


class VQVAETask(AutoencoderTask):
    name = "var-vqvae"
    cfg: VQVAERunConfig

    def build_model(self) -> nn.Module:
        return MultiScaleVQVAE(self.cfg.model)

    @torch.no_grad()
    def evaluate(self, model: MultiScaleVQVAE, step: int, batch_size: int = 50) -> dict[str, float]:
        """PSNR and scenes kept (:class:`AutoencoderTask`), and per scale the share of the
        codebook used over all held-out images."""
        self._used = [torch.zeros(self.cfg.model.codebook_size, dtype=torch.bool) for _ in self.cfg.model.scales]
        return super().evaluate(model, step, batch_size)

    def reconstruct(self, model: MultiScaleVQVAE, images: torch.Tensor) -> torch.Tensor:
        indices = model.encode(images)
        for used, ind in zip(self._used, indices, strict=True):
            used[ind.flatten().cpu()] = True
        return model.decode(indices)

    def extra_metrics(self) -> dict[str, float]:
        return {
            f"usage_scale{p}": float(u.float().mean()) for p, u in zip(self.cfg.model.scales, self._used, strict=True)
        }

    def save(self, model: MultiScaleVQVAE, directory: Path) -> None:
        save_vqvae(model, directory)
