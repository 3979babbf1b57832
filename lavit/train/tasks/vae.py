"""Stage 3a, part 0: the AutoencoderKL of latent-space diffusion on images (``lavit train vae``).

Loss: L1 + L2 on pixels in [-1, 1] (weighted towards outlines and, with ``focus_weight``, towards
named ShapesWorld shapes) plus ``kl_weight`` times the per-element KL. Evaluation: PSNR of the
latent mode's reconstruction and, on ShapesWorld, the share of held-out scenes whose shapes
(colour and kind) the parser finds in it (a ceiling for any decoder in this latent space). On saving, ``scaling_factor`` is
calibrated on training images, unless the encoder was frozen (``freeze_encoder``: the latents,
and so ``init_from``'s factor, are unchanged).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detokenizer.diffusion.config import VAERunConfig
from detokenizer.diffusion.vae import VAETrainer, calibrate_scaling, load_vae_weights, save_vae
from lavit.data.annotations import focus_mask, require_scenes
from lavit.data.preprocess import MappedDataset, MappedStream, preprocess
from lavit.data.sample import Sample
from lavit.train.tasks.autoencoder import AutoencoderTask
from lavit.train.tasks.images import sample_data, take


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

    def __init__(self, cfg: VAERunConfig) -> None:
        super().__init__(cfg)
        if cfg.model.focus_weight > 0:
            require_scenes(cfg.data, "model.focus_weight > 0 (a loss focused on named shapes)")

    def train_dataset(self) -> MappedDataset | MappedStream:
        m = self.cfg.model
        if m.focus_weight == 0:
            return super().train_dataset()
        return sample_data(self.cfg.data, "train", FocusItem(m.resolution, m.focus_shapes))

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
            images = take(super().train_dataset(), self.cfg.calibration_images)
            device = next(model.parameters()).device
            calibrate_scaling(model.vae, torch.stack(images).to(device))
        save_vae(model.vae, directory)


class FocusItem:
    """A ShapesWorld sample -> (image (3, R, R) in [0, 1], focus mask (1, R, R) float): the mask
    covers the boxes of the shapes that fit ``descriptions`` (:func:`lavit.data.annotations.focus_mask`)."""

    def __init__(self, resolution: int, descriptions: list[str]) -> None:
        self.resolution, self.descriptions = resolution, list(descriptions)

    def __call__(self, sample: Sample, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        return preprocess(sample.image, self.resolution), focus_mask(sample.meta, self.resolution, self.descriptions)
