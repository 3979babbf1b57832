"""A small ``diffusers.AutoencoderKL`` trained from scratch, for latent-space diffusion.

Stable Diffusion's VAE is what LaVIT's detokenizer denoises in; ShapesWorld has no pretrained
one, so ``lavit train vae`` makes one: L1 + L2 on pixels in [-1, 1] (optionally weighted towards
outlines, :func:`edge_weights`) plus a small KL term, then ``scaling_factor`` set to 1 / (the
latents' standard deviation) over training images, as Stable Diffusion's 0.18215 was. The result
is a plain diffusers folder (``save_pretrained``), which ``space: latent`` reads through
``vae_path`` like any other AutoencoderKL.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from detokenizer.diffusion.config import VAEConfig


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups,
        sample_size=cfg.resolution,
        mid_block_add_attention=cfg.mid_attention,
    )


@dataclass
class VAEOutput:
    loss: torch.Tensor
    images: torch.Tensor  # (B, 3, R, R) reconstruction in [-1, 1]
    logs: dict[str, torch.Tensor]


class VAETrainer(nn.Module):
    """The AutoencoderKL with its training loss: ``forward(images in [0, 1]) -> VAEOutput``."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = build_vae(cfg)

    def forward(self, images: torch.Tensor) -> VAEOutput:
        target = images * 2 - 1
        posterior = self.vae.encode(target).latent_dist
        latent = posterior.sample() if self.cfg.sample_posterior else posterior.mode()
        recon = self.vae.decode(latent).sample
        squared, absolute = (recon - target) ** 2, (recon - target).abs()
        err = squared + absolute
        if self.cfg.edge_weight > 0:
            w = edge_weights(target, self.cfg.edge_weight)
            pixel = (err * w).sum() / (w.sum() * err.shape[1])
        else:
            pixel = err.mean()
        # KL per latent element (not summed over the latent as SD's trainer does, which makes the
        # weight depend on the latent size).
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        logs = {"pixel_mse": squared.mean().detach(), "pixel_l1": absolute.mean().detach(), "kl": kl.detach()}
        return VAEOutput(loss=pixel + self.cfg.kl_weight * kl, images=recon, logs=logs)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [0, 1] -> the reconstruction from the latent mode, in [0, 1]."""
        latent = self.vae.encode(images * 2 - 1).latent_dist.mode()
        return ((self.vae.decode(latent).sample + 1) / 2).clamp(0, 1)


@torch.no_grad()
def edge_weights(images: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-pixel loss weights ``1 + strength * edge`` of shape (B, 1, H, W), where ``edge`` is the
    images' gradient L1 norm |dx| + |dy| (forward differences, largest over channels, grown by one
    pixel so both sides of an edge count), scaled to [0, 1] per image. Flat regions keep weight 1,
    straight outlines 1 + strength / 2, pixels where both differences are large (corners) up to
    1 + strength: outlines and corners are what a blurry autoencoder loses first (a small cross
    read back as a diamond)."""
    gx = F.pad((images[..., :, 1:] - images[..., :, :-1]).abs(), (0, 1, 0, 0))
    gy = F.pad((images[..., 1:, :] - images[..., :-1, :]).abs(), (0, 0, 0, 1))
    edge = F.max_pool2d((gx + gy).amax(1, keepdim=True), 3, stride=1, padding=1)
    edge = edge / edge.amax(dim=(2, 3), keepdim=True).clamp_min(1e-6)
    return 1 + strength * edge


@torch.no_grad()
def calibrate_scaling(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Set ``vae.config.scaling_factor`` to 1 / std of the latents (modes) of ``images`` in
    [0, 1], so the diffusion model sees unit-variance inputs; returns it."""
    latents = vae.encode(images * 2 - 1).latent_dist.mode()
    factor = float(1.0 / latents.float().std().clamp_min(1e-6))
    vae.register_to_config(scaling_factor=factor)
    return factor


def save_vae(vae: AutoencoderKL, directory: str | Path) -> Path:
    """A diffusers AutoencoderKL folder (config.json + safetensors) for ``vae_path``."""
    directory = Path(directory)
    vae.save_pretrained(directory, safe_serialization=True)
    return directory
