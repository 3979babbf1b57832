"""Stage 3a, part 0: the AutoencoderKL of latent-space diffusion on images (``lavit train vae``).

Loss: L1 + L2 on pixels in [-1, 1] plus ``kl_weight`` times the per-element KL. Evaluation: PSNR
of the latent mode's reconstruction and the share of held-out scenes whose shapes (colour and
kind) the parser finds in it (a ceiling for any decoder in this latent space). On saving,
``scaling_factor`` is calibrated on training images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from detokenizer.diffusion.config import VAERunConfig
from detokenizer.diffusion.vae import VAETrainer, calibrate_scaling, save_vae
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.shapes_parser import attributes_kept, parse_scene
from lavit.data.transforms import to_pil
from lavit.train.tasks.tokenizer import ShapesImages


class VAETask:
    name = "vae"
    block_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, cfg: VAERunConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        return VAETrainer(self.cfg.model)

    def train_dataset(self) -> Dataset:
        return ShapesImages(ShapesWorld(self.cfg.data, "train"), self.cfg.model.resolution)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def training_step(self, model: nn.Module, images: torch.Tensor, step: int):
        out = model(images)
        return out.loss, out.logs

    @torch.no_grad()
    def evaluate(self, model: VAETrainer, step: int, batch_size: int = 50) -> dict[str, float]:
        world = ShapesWorld(self.cfg.data, "val")
        n = min(self.cfg.eval_images, len(world))
        data = ShapesImages(world, self.cfg.model.resolution)
        device = next(model.parameters()).device
        sq_err, kept = 0.0, 0
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            images = torch.stack([data[i] for i in idx]).to(device)
            recon = model.reconstruct(images)
            sq_err += float(((recon - images) ** 2).mean(dim=(1, 2, 3)).sum())
            kept += sum(
                attributes_kept(world.scene(i), parse_scene(to_pil(r))) for i, r in zip(idx, recon, strict=True)
            )
        return {"psnr": 10 * math.log10(1 / max(sq_err / n, 1e-12)), "scene_kept": kept / n}

    def save(self, model: VAETrainer, directory: Path) -> None:
        data = ShapesImages(ShapesWorld(self.cfg.data, "train"), self.cfg.model.resolution)
        n = min(self.cfg.calibration_images, len(data))
        device = next(model.parameters()).device
        calibrate_scaling(model.vae, torch.stack([data[i] for i in range(n)]).to(device))
        save_vae(model.vae, directory)
