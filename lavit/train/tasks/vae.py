"""Stage 3a, part 0: the AutoencoderKL of latent-space diffusion on images (``lavit train vae``).

Loss: L1 + L2 on pixels in [-1, 1] plus ``kl_weight`` times the per-element KL. Evaluation: PSNR
of the latent mode's reconstruction and the share of held-out scenes whose shapes (colour and
kind) the parser finds in it (a ceiling for any decoder in this latent space). On saving,
``scaling_factor`` is calibrated on training images.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detokenizer.diffusion.config import VAERunConfig
from detokenizer.diffusion.vae import VAETrainer, calibrate_scaling, save_vae
from lavit.train.tasks.autoencoder import AutoencoderTask


class VAETask(AutoencoderTask):
    name = "vae"
    cfg: VAERunConfig

    def build_model(self) -> nn.Module:
        return VAETrainer(self.cfg.model)

    def reconstruct(self, model: VAETrainer, images: torch.Tensor) -> torch.Tensor:
        return model.reconstruct(images)

    def save(self, model: VAETrainer, directory: Path) -> None:
        data = self.train_dataset()
        n = min(self.cfg.calibration_images, len(data))
        device = next(model.parameters()).device
        calibrate_scaling(model.vae, torch.stack([data[i] for i in range(n)]).to(device))
        save_vae(model.vae, directory)
