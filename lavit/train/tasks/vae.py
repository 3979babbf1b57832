"""Stage 3a, part 0: the AutoencoderKL of latent-space diffusion on images (``lavit train vae``).

Loss: L1 + L2 on pixels in [-1, 1] (weighted towards outlines and, with ``focus_weight``, towards
named shapes) plus ``kl_weight`` times the per-element KL. Evaluation: PSNR of the latent mode's
reconstruction and the share of held-out scenes whose shapes (colour and kind) the parser finds
in it (a ceiling for any decoder in this latent space). On saving, ``scaling_factor`` is
calibrated on training images, unless the encoder was frozen (``freeze_encoder``: the latents,
and so ``init_from``'s factor, are unchanged).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from detokenizer.diffusion.config import VAERunConfig
from detokenizer.diffusion.vae import VAETrainer, calibrate_scaling, load_vae_weights, save_vae
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.transforms import to_tensor
from lavit.train.tasks.autoencoder import AutoencoderTask


class VAETask(AutoencoderTask):
    name = "vae"
    cfg: VAERunConfig

    def build_model(self) -> nn.Module:
        model = VAETrainer(self.cfg.model)
        if self.cfg.init_from:
            load_vae_weights(model.vae, self.cfg.init_from)
        if self.cfg.freeze_encoder:
            model.freeze_encoder()
        return model

    def train_dataset(self) -> Dataset:
        m = self.cfg.model
        if m.focus_weight == 0:
            return super().train_dataset()
        return FocusImages(ShapesWorld(self.cfg.data, "train"), m.resolution, m.focus_shapes)

    def collate(self, items: list) -> torch.Tensor | dict[str, torch.Tensor]:
        if isinstance(items[0], torch.Tensor):
            return torch.stack(items)
        return {"images": torch.stack([im for im, _ in items]), "focus": torch.stack([f for _, f in items])}

    def training_step(self, model: nn.Module, batch: torch.Tensor | dict[str, torch.Tensor], step: int):
        out = model(batch) if isinstance(batch, torch.Tensor) else model(batch["images"], batch["focus"])
        return out.loss, out.logs

    def reconstruct(self, model: VAETrainer, images: torch.Tensor) -> torch.Tensor:
        return model.reconstruct(images)

    def save(self, model: VAETrainer, directory: Path) -> None:
        if not model.encoder_frozen:
            data = super().train_dataset()
            n = min(self.cfg.calibration_images, len(data))
            device = next(model.parameters()).device
            calibrate_scaling(model.vae, torch.stack([data[i] for i in range(n)]).to(device))
        save_vae(model.vae, directory)


class FocusImages(Dataset):
    """(image (3, R, R) in [0, 1], focus mask (1, R, R) float) per ShapesWorld scene: the mask
    covers the boxes of the shapes that fit ``descriptions`` (:meth:`ShapesWorld.focus_mask`)."""

    def __init__(self, world: ShapesWorld, resolution: int, descriptions: list[str]) -> None:
        self.world, self.resolution, self.descriptions = world, resolution, list(descriptions)

    def __len__(self) -> int:
        return len(self.world)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        mask = self.world.focus_mask(index, self.resolution, self.descriptions)
        return to_tensor(self.world.image(index), self.resolution), mask
