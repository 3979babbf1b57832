"""What the image-autoencoder stages share (``var-vqvae``, ``vae``): ``data.train`` images in
[0, 1] as the batches (a random square crop of a real photo), the model's own loss, and a
held-out evaluation of the reconstructions on ``data.val``: PSNR, and where the val source is
ShapesWorld the share of scenes whose shapes, colour and kind, the parser finds in them.

A subclass says how a model reconstructs a batch (:meth:`AutoencoderTask.reconstruct`) and may
add metrics gathered on the way (:meth:`AutoencoderTask.extra_metrics`).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import nn

from lavit.data.annotations import judge_images
from lavit.data.preprocess import MappedDataset, MappedStream
from lavit.train.tasks.images import train_images, val_batches


class AutoencoderTask(ABC):
    block_types: tuple[type[nn.Module], ...] = ()
    train_crop = "random"  # a square of a real photo at a random offset (ShapesWorld: untouched)

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    def train_dataset(self) -> MappedDataset | MappedStream:
        return train_images(self.cfg.data, self.cfg.model.resolution, self.train_crop)

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
        if not self.cfg.data.val:
            return {}  # no held-out source named
        device = next(model.parameters()).device
        sq_err, kept, n, judged = 0.0, 0, 0, False
        for images, metas in val_batches(self.cfg.data, self.cfg.eval_images, self.cfg.model.resolution):
            images = images.to(device)
            recon = self.reconstruct(model, images)
            sq_err += float(((recon - images) ** 2).mean(dim=(1, 2, 3)).sum())
            n += len(images)
            if metas is not None:  # ShapesWorld: does the parser find the scene again?
                kept, judged = kept + judge_images(metas, recon)[0], True
        metrics = {"psnr": 10 * math.log10(1 / max(sq_err / n, 1e-12))}
        return {**metrics, **({"scene_kept": kept / n} if judged else {}), **self.extra_metrics()}
