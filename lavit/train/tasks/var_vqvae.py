"""Stage 3b, part 1: VAR's multi-scale residual VQ-VAE on images (``lavit train var-vqvae``).

VAR never released this training code. Loss: L2 on pixels in [-1, 1] plus the quantizer's
codebook / commitment terms; dead codes restart from batch latents; every logged step carries
the per-scale code usage of its batch, every evaluation the usage over the held-out images.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from detokenizer.var.config import VQVAERunConfig
from detokenizer.var.io import save_vqvae
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.shapes_parser import attributes_kept, parse_scene
from lavit.data.transforms import to_pil
from lavit.train.tasks.tokenizer import ShapesImages


class VQVAETask:
    name = "var-vqvae"
    block_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, cfg: VQVAERunConfig) -> None:
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        return MultiScaleVQVAE(self.cfg.model)

    def train_dataset(self) -> Dataset:
        return ShapesImages(ShapesWorld(self.cfg.data, "train"), self.cfg.model.resolution)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def training_step(self, model: nn.Module, images: torch.Tensor, step: int):
        out = model(images)
        return out.loss, out.logs

    @torch.no_grad()
    def evaluate(self, model: MultiScaleVQVAE, step: int, batch_size: int = 50) -> dict[str, float]:
        """Held-out (val) images: reconstruction PSNR, the share of scenes whose shapes
        (colour and kind) the parser finds in the reconstruction, and per scale the share of
        the codebook used over all images."""
        world = ShapesWorld(self.cfg.data, "val")
        n = min(self.cfg.eval_images, len(world))
        data = ShapesImages(world, self.cfg.model.resolution)
        device = next(model.parameters()).device
        scales = self.cfg.model.scales
        used = [torch.zeros(self.cfg.model.codebook_size, dtype=torch.bool) for _ in scales]
        sq_err, kept = 0.0, 0
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            images = torch.stack([data[i] for i in idx]).to(device)
            indices = model.encode(images)
            recon = model.decode(indices)
            sq_err += float(((recon - images) ** 2).mean(dim=(1, 2, 3)).sum())
            for k, ind in enumerate(indices):
                used[k][ind.flatten().cpu()] = True
            kept += sum(
                attributes_kept(world.scene(i), parse_scene(to_pil(r))) for i, r in zip(idx, recon, strict=True)
            )
        mse = sq_err / n
        return {
            "psnr": 10 * math.log10(1 / max(mse, 1e-12)),
            "scene_kept": kept / n,
            **{f"usage_scale{p}": float(u.float().mean()) for p, u in zip(scales, used, strict=True)},
        }

    def save(self, model: MultiScaleVQVAE, directory: Path) -> None:
        save_vqvae(model, directory)
