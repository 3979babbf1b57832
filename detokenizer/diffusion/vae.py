"""A small ``diffusers.AutoencoderKL`` trained from scratch, for latent-space diffusion.

Stable Diffusion's VAE is what LaVIT's detokenizer denoises in; ShapesWorld has no pretrained
one, so ``lavit train vae`` makes one: L1 + L2 on pixels in [-1, 1] (optionally weighted towards
outlines, :func:`edge_weights`) plus a small KL term, then ``scaling_factor`` set to 1 / (the
latents' standard deviation) over training images, as Stable Diffusion's 0.18215 was. The result
is a plain diffusers folder (``save_pretrained``), which ``space: latent`` reads through
``vae_path`` like any other AutoencoderKL.

A trained VAE can be fine-tuned decoder-only (``init_from`` + ``freeze_encoder``, optionally with
the loss focused on named shapes, ``focus_weight``): its latents stay, so a diffusion detokenizer
trained in them takes the new decoder as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from torch import nn

from detokenizer.diffusion.config import VAEConfig
from lavit.checkpoint import state_mismatch
from lavit.config import ConfigError


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

    def freeze_encoder(self) -> None:
        """Train the decoder only: the encoder and its ``quant_conv`` (so every latent) stay."""
        for module in (self.vae.encoder, self.vae.quant_conv):
            module.requires_grad_(False)

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.vae.encoder.parameters())

    def forward(self, images: torch.Tensor, focus: torch.Tensor | None = None) -> VAEOutput:
        """``images`` (B, 3, R, R) in [0, 1]; ``focus`` (B, 1, R, R) in {0, 1}, where the loss
        weighs ``1 + cfg.focus_weight`` times more (:class:`VAEConfig`)."""
        target = images * 2 - 1
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            posterior = self.vae.encode(target).latent_dist
        latent = posterior.sample() if self.cfg.sample_posterior else posterior.mode()
        recon = self.vae.decode(latent).sample
        squared, absolute = (recon - target) ** 2, (recon - target).abs()
        err = squared + absolute
        w = pixel_weights(target, self.cfg, focus)
        pixel = err.mean() if w is None else (err * w).sum() / (w.sum() * err.shape[1])
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
def pixel_weights(target: torch.Tensor, cfg: VAEConfig, focus: torch.Tensor | None) -> torch.Tensor | None:
    """The pixel loss's (B, 1, H, W) weights for targets in [-1, 1]: :func:`edge_weights` times
    ``1 + cfg.focus_weight * focus``; None for a plain mean."""
    w = edge_weights(target, cfg.edge_weight) if cfg.edge_weight > 0 else None
    if cfg.focus_weight > 0:
        if focus is None:
            raise ValueError("focus_weight > 0 needs the batch's focus masks (VAETask gives them)")
        extra = 1 + cfg.focus_weight * focus.to(target.dtype)
        w = extra if w is None else w * extra
    return w


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


def open_autoencoder(path: str | Path | None, key: str) -> AutoencoderKL:
    """A diffusers AutoencoderKL from a local folder, safetensors only (a
    ``diffusion_pytorch_model.bin`` is refused rather than unpickled).

    Raises:
        ConfigError: naming ``key=path``: no such folder (diffusers would take a missing path for
            a hub name), no config.json, or weights that do not load.
    """
    if not path or not (Path(path) / "config.json").is_file():
        what = "no such folder" if not path or not Path(path).is_dir() else "no config.json"
        raise ConfigError(
            f"{key}={str(path)!r} is not an AutoencoderKL folder ({what}); save one with "
            f"AutoencoderKL.save_pretrained(DIR) (or save_vae) and point {key} at DIR"
        )
    try:
        return AutoencoderKL.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ConfigError(
            f"{key}={str(path)!r} does not load as an AutoencoderKL folder with safetensors weights ({first}); "
            "convert .bin weights with AutoencoderKL.save_pretrained(DIR, safe_serialization=True)"
        ) from None


def load_vae_weights(vae: AutoencoderKL, directory: str | Path) -> None:
    """Load a saved AutoencoderKL folder's weights and ``scaling_factor`` into ``vae``.

    Raises:
        ConfigError: the folder does not load, or its architecture differs from ``vae``'s.
    """
    source = open_autoencoder(directory, "init_from")
    mine, theirs = vae.state_dict(), source.state_dict()
    bad = state_mismatch(mine, theirs)
    if bad:
        raise ConfigError(
            f"init_from={str(directory)!r}: its architecture differs from model's ({len(bad)} tensors, e.g. "
            f"{bad[:3]}); give model the block_out_channels, layers_per_block and latent_channels of "
            f"{directory}/config.json"
        )
    vae.load_state_dict(theirs)
    vae.register_to_config(scaling_factor=source.config.scaling_factor)


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
