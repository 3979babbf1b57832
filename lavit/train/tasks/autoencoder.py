"""What the image-autoencoder stages share (``var-vqvae``, ``vae``): ShapesWorld train images in
[0, 1] as the batches, the model's own loss, and a held-out evaluation of the reconstructions
(PSNR and the share of val scenes whose shapes, colour and kind, the parser finds in them).

A subclass says how a model reconstructs a batch (:meth:`AutoencoderTask.reconstruct`) and may
add metrics gathered on the way (:meth:`AutoencoderTask.extra_metrics`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn
from torch.utils.data import Dataset

from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.shapes_parser import attributes_kept, parse_scene
from lavit.data.transforms import to_pil
from lavit.train.tasks.tokenizer import ShapesImages


class AutoencoderTask(ABC):
    block_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def train_dataset(self) -> Dataset:
        return ShapesImages(ShapesWorld(self.cfg.data, "train"), self.cfg.model.resolution)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def training_step(self, model: nn.Module, images: torch.Tensor, step: int):
        out = model(images)
        return out.loss, out.logs

    @abstractmethod
    def reconstruct(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [0, 1] -> the model's reconstruction, in [0, 1]."""

    def extra_metrics(self) -> dict[str, float]:
        """Metrics gathered by :meth:`reconstruct` during the last evaluation."""
        return {}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, step: int, batch_size: int = 50) -> dict[str, float]:
        world = ShapesWorld(self.cfg.data, "val")
        n = min(self.cfg.eval_images, len(world))
        data = ShapesImages(world, self.cfg.model.resolution)
        device = next(model.parameters()).device
        sq_err, kept = 0.0, 0
        for start in range(0, n, batch_size):
            idx = range(start, min(start + batch_size, n))
            images = torch.stack([data[i] for i in idx]).to(device)
            recon = self.reconstruct(model, images)
            sq_err += float(((recon - images) ** 2).mean(dim=(1, 2, 3)).sum())
            kept += sum(
                attributes_kept(world.scene(i), parse_scene(to_pil(r))) for i, r in zip(idx, recon, strict=True)
            )
        return {"psnr": 10 * math.log10(1 / max(sq_err / n, 1e-12)), "scene_kept": kept / n, **self.extra_metrics()}
