"""Multi-scale residual VQ-VAE (VAR's tokenizer): diffusers' VAE Encoder/Decoder around
:class:`~detokenizer.var.quantizer.MultiScaleQuantizer`.

    images (B, 3, R, R) in [0, 1] -> Encoder -> quant_conv -> f (B, Cvae, s, s)
    f -> multi-scale residual quantizer -> per-scale token maps, f_hat
    f_hat -> post_quant_conv -> Decoder -> images

VAR's published VQ-VAE (``configs/var/vqvae_ch160v4096z32.yaml``) adds attention at the
lowest-resolution level and 3x3 quant convs; :mod:`lavit.convert.var_vqvae` loads its weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import Decoder, Encoder
from torch import nn

from detokenizer.var.config import VQVAEConfig
from detokenizer.var.quantizer import MultiScaleQuantizer


@dataclass
class VQVAEOutput:
    loss: torch.Tensor
    images: torch.Tensor  # (B, 3, R, R) reconstruction, in [-1, 1] before clamping
    indices: list[torch.Tensor]  # per scale (B, p_k, p_k)
    logs: dict[str, torch.Tensor]


class MultiScaleVQVAE(nn.Module):
    def __init__(self, cfg: VQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = len(cfg.block_out_channels)
        # The lowest-resolution level is the encoder's last block and the decoder's first.
        down = ["DownEncoderBlock2D"] * n
        up = ["UpDecoderBlock2D"] * n
        if cfg.lowest_level_attention:
            down[-1], up[0] = "AttnDownEncoderBlock2D", "AttnUpDecoderBlock2D"
        common = {
            "block_out_channels": tuple(cfg.block_out_channels),
            "layers_per_block": cfg.layers_per_block,
            "norm_num_groups": cfg.norm_num_groups,
            "mid_block_add_attention": cfg.mid_attention,
        }
        self.encoder = Encoder(
            in_channels=3,
            out_channels=cfg.latent_channels,
            down_block_types=tuple(down),
            double_z=False,
            **common,
        )
        self.decoder = Decoder(in_channels=cfg.latent_channels, out_channels=3, up_block_types=tuple(up), **common)
        c, k = cfg.latent_channels, cfg.quant_conv_kernel
        self.quant_conv = nn.Conv2d(c, c, k, padding=k // 2)
        self.post_quant_conv = nn.Conv2d(c, c, k, padding=k // 2)
        self.quantizer = MultiScaleQuantizer(
            cfg.latent_channels,
            cfg.codebook_size,
            cfg.scales,
            cfg.num_phi,
            cfg.phi_ratio,
            cfg.commitment_weight,
            cfg.dead_code_threshold,
            cfg.usage_decay,
            cfg.znorm,
        )

    def check_images(self, images: torch.Tensor) -> None:
        r = self.cfg.resolution
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (r, r):
            raise ValueError(f"images must be (B, 3, {r}, {r}) in [0, 1] for this VQ-VAE, got {tuple(images.shape)}")

    def latent(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) in [0, 1] -> the continuous latent f (B, Cvae, s, s)."""
        self.check_images(images)
        return self.quant_conv(self.encoder(images * 2 - 1))

    def decode_fhat(self, f_hat: torch.Tensor) -> torch.Tensor:
        """(B, Cvae, s, s) -> images (B, 3, R, R) in [0, 1]."""
        return ((self.decoder(self.post_quant_conv(f_hat)) + 1) / 2).clamp(0, 1)

    def forward(self, images: torch.Tensor) -> VQVAEOutput:
        """Training: L2 pixel loss (+ VQ loss); L1 is logged."""
        f_hat, indices, vq_loss, logs = self.quantizer(self.latent(images))
        recon = self.decoder(self.post_quant_conv(f_hat))  # [-1, 1] space
        target = images * 2 - 1
        pixel = F.mse_loss(recon, target)
        logs = {
            **logs,
            "pixel_mse": pixel.detach(),
            "pixel_l1": F.l1_loss(recon, target).detach(),
            "vq_loss": vq_loss.detach(),
        }
        return VQVAEOutput(loss=pixel + vq_loss, images=recon, indices=indices, logs=logs)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, R, R) -> per scale (B, p_k, p_k) token maps."""
        _, indices, _, _ = self.quantizer(self.latent(images))
        return indices

    @torch.no_grad()
    def decode(self, indices: list[torch.Tensor]) -> torch.Tensor:
        """Per-scale token maps -> images (B, 3, R, R) in [0, 1]."""
        return self.decode_fhat(self.quantizer.indices_to_fhat(indices))
