"""The diffusion detokenizer: tokenizer code embeddings -> conditioner -> UNet denoiser.

    codes (B x variable) --tokenizer.code_embeddings (or its feature decoder)--> (B, L, W), mask
      --QueryConditioner--> sequence (B, Q, D) + pooled (B, D)
      (+ with patch_features: the rebuilt per-patch features on the query grid, through an MLP)
      --UNet2DConditionModel(x_t, t, cross-attention=sequence, class embedding=pooled)--> eps / v

The denoiser is ``diffusers.UNet2DConditionModel``, in pixel space (tiny presets: images in
[-1, 1], as patch_size x patch_size patches stacked on channels) or in the latent space of a frozen ``AutoencoderKL`` loaded from a local folder.
Classifier-free guidance uses a learned null condition (sequence and pooled vector).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from detokenizer.diffusion.config import DiffusionConfig
from lavit.layers import QueryConditioner, grid_to_seq, seq_to_grid

# LaVIT's aspect-ratio buckets (SDXL's, at 1024 px) as (height, width); transposes added below.
LAVIT_BUCKETS = [(1024, 1024), (896, 1152), (832, 1216), (768, 1344)]


def build_conditioner(cfg: DiffusionConfig) -> QueryConditioner:
    """Learned queries read the code embeddings and become a fixed-length conditioning sequence."""
    c = cfg.conditioner
    return QueryConditioner(cfg.code_dim, c.width, c.depth, c.heads, c.num_queries, c.cond_dim, cfg.max_codes)


class DiffusionDetokenizer(nn.Module):
    """Conditioner + UNet (+ frozen VAE in latent space).

    Args:
        cfg: the model config.
        vae: the AutoencoderKL for latent space (default: loaded from ``cfg.vae_path``).
    """

    def __init__(self, cfg: DiffusionConfig, vae: AutoencoderKL | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.conditioner = build_conditioner(cfg)
        self.patch_in = None
        if cfg.patch_features:
            d = cfg.conditioner.cond_dim
            self.patch_in = nn.Sequential(nn.Linear(cfg.patch_features, d), nn.SiLU(), nn.Linear(d, d))
            nn.init.zeros_(self.patch_in[-1].weight)  # grown into a trained decoder: starts as a no-op
            nn.init.zeros_(self.patch_in[-1].bias)
        self.vae = None
        # Pixel space is denoised as non-overlapping patch_size^2 patches stacked on channels
        # (pixel unshuffle), which makes a 64 px UNet as cheap as a 16 px one.
        channels, down = 3 * cfg.patch_size**2, cfg.patch_size
        if cfg.space == "latent":
            self.vae = vae if vae is not None else load_vae(cfg.vae_path)
            self.vae.requires_grad_(False).eval()
            channels = self.vae.config.latent_channels
            down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.channels, self.space_factor = channels, down
        u = cfg.unet
        self.spatial = None
        if cfg.spatial_channels:
            self.spatial = nn.Conv2d(cfg.conditioner.cond_dim, cfg.spatial_channels, kernel_size=1)
        self.unet = UNet2DConditionModel(
            sample_size=cfg.resolution // down,
            in_channels=channels + cfg.spatial_channels,
            out_channels=channels,
            block_out_channels=tuple(u.block_out_channels),
            down_block_types=tuple(u.down_block_types),
            up_block_types=tuple(u.up_block_types),
            mid_block_type="UNetMidBlock2DCrossAttn",
            layers_per_block=u.layers_per_block,
            attention_head_dim=u.attention_heads,
            norm_num_groups=u.norm_num_groups,
            cross_attention_dim=cfg.conditioner.cond_dim,
            class_embed_type="projection",
            projection_class_embeddings_input_dim=cfg.conditioner.cond_dim,
        )
        # Sizes must survive every UNet downsampling (and the VAE's).
        self.multiple = down * 2 ** (len(u.block_out_channels) - 1)

    def train(self, mode: bool = True) -> DiffusionDetokenizer:
        super().train(mode)
        if self.vae is not None:
            self.vae.eval()  # frozen: never in training mode
        return self

    # --- conditions ------------------------------------------------------------------------------

    def condition(
        self,
        emb: torch.Tensor,
        mask: torch.Tensor,
        drop: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, Q, D) conditioning; rows where ``drop`` is True get the learned null condition.
        With ``cfg.patch_features``, ``patches`` are the tokenizer's rebuilt per-patch features
        (B, N, patch_features), N a square grid in raster order."""
        cond = self.conditioner(emb, mask)
        if self.patch_in is not None:
            if patches is None:
                raise ValueError(
                    "this detokenizer also reads the tokenizer's rebuilt patch features (patch_features="
                    f"{self.cfg.patch_features}): pass patches=tokenizer.decode_features(codes), as decode_codes does"
                )
            cond = cond + self.patch_in(to_grid(patches, math.isqrt(cond.shape[1])).to(cond.dtype))
        if drop is not None:
            cond = torch.where(drop[:, None, None], self.conditioner.null.to(cond.dtype), cond)
        return cond

    @property
    def resolution(self) -> int:
        """Side of the square bucket, in pixels."""
        return self.cfg.resolution

    def null_condition(self, batch: int) -> torch.Tensor:
        return self.conditioner.null.expand(batch, -1, -1)

    def predict(self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """The prediction (epsilon, v or x0) for (B, C, h, w) noisy inputs at ``timesteps``, given
        (B, Q, D) conditioning (its mean is the pooled vector added to the time embedding; with
        ``spatial_channels`` it is also laid out on its grid and stacked on the input)."""
        if self.spatial is not None:
            layout = self.spatial(seq_to_grid(cond))
            layout = F.interpolate(layout, size=noisy.shape[2:], mode="bilinear", align_corners=False)
            noisy = torch.cat([noisy, layout.to(noisy.dtype)], dim=1)
        return self.unet(noisy, timesteps, encoder_hidden_states=cond, class_labels=cond.mean(dim=1)).sample

    def forward(
        self,
        noisy: torch.Tensor,
        timesteps: torch.Tensor,
        emb: torch.Tensor,
        mask: torch.Tensor,
        drop: torch.Tensor | None = None,
        patches: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Training forward: condition on code embeddings (and rebuilt patch features; rows in
        ``drop`` unconditioned), predict."""
        return self.predict(noisy, timesteps, self.condition(emb, mask, drop, patches))

    # --- pixels <-> denoiser space ------------------------------------------------------------

    def to_space(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> what the UNet denoises (pixels in [-1, 1] or scaled latents)."""
        x = images * 2 - 1
        if self.vae is None:
            return F.pixel_unshuffle(x, self.space_factor)
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mode() * self.vae.config.scaling_factor

    def from_space(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_space`: -> (B, 3, H, W) in [0, 1]."""
        if self.vae is not None:
            x = self.vae.decode(x / self.vae.config.scaling_factor).sample
        else:
            x = F.pixel_shuffle(x, self.space_factor)
        return ((x + 1) / 2).clamp(0, 1)

    # --- sizes ---------------------------------------------------------------------------------

    def buckets(self) -> list[tuple[int, int]]:
        """LaVIT's SDXL buckets (and transposes) scaled to ``cfg.resolution``, as (height, width)
        multiples of what the UNet and VAE need."""
        scale, m = self.cfg.resolution / 1024, self.multiple
        out: list[tuple[int, int]] = []
        for h, w in LAVIT_BUCKETS + [(w, h) for h, w in LAVIT_BUCKETS[1:]]:
            size = (max(m, round(h * scale / m) * m), max(m, round(w * scale / m) * m))
            if size not in out:
                out.append(size)
        return out

    def size_for(self, ratio: str | float | None = None, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(height, width) for an aspect ratio ``width:height`` (nearest bucket) or an explicit
        size (which must be a positive multiple of :attr:`multiple`)."""
        return bucket_size(self.buckets(), self.multiple, ratio, size)


def to_grid(patches: torch.Tensor, side: int) -> torch.Tensor:
    """(B, N, C) vectors of a square patch grid in raster order -> (B, side * side, C), the grid
    resized (bilinear) to ``side`` x ``side``, in raster order."""
    x = seq_to_grid(patches)
    if x.shape[-1] != side:
        x = F.interpolate(x.float(), size=(side, side), mode="bilinear", align_corners=False).to(patches.dtype)
    return grid_to_seq(x)


def bucket_size(
    buckets: list, multiple: int, ratio: str | float | None = None, size: tuple[int, int] | None = None
) -> tuple[int, int]:
    """(height, width): an explicit ``size`` (positive multiples of ``multiple``), else the
    (height, width) bucket whose aspect ratio is nearest ``ratio`` (``width:height``, default 1:1)."""
    if size is not None:
        h, w = size
        if h <= 0 or w <= 0 or h % multiple or w % multiple:
            raise ValueError(
                f"unsupported size {h}x{w}: height and width must be positive multiples of {multiple} "
                f"for this detokenizer; buckets: {buckets}"
            )
        return h, w
    target = parse_ratio("1:1" if ratio is None else ratio)
    h, w = min(buckets, key=lambda hw: abs(math.log(hw[1] / hw[0]) - math.log(target)))
    return h, w


def parse_ratio(ratio: str | float) -> float:
    """'16:9' (width:height), '1.5' or 1.5 -> width / height."""
    try:
        if isinstance(ratio, str) and ":" in ratio:
            w, h = (float(x) for x in ratio.split(":"))
            value = w / h
        else:
            value = float(ratio)
    except (ValueError, ZeroDivisionError):
        value = float("nan")
    if not value > 0 or math.isinf(value):
        raise ValueError(f"bad aspect ratio {ratio!r}: use width:height such as '1:1' or '4:3', or a positive number")
    return value


def load_vae(path: str | None) -> AutoencoderKL:
    """A diffusers AutoencoderKL from a local folder (``model.vae_path``), with a clear error
    when it is not one."""
    from detokenizer.diffusion.vae import open_autoencoder

    return open_autoencoder(path, "vae_path")
