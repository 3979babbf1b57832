"""The vision encoder: any timm ViT, features of the last block *before* the final norm.

LaVIT reads EVA-CLIP ViT-g/14 this way (CLS dropped, no final norm). timm's
``forward_features`` applies the norm, so we use ``forward_intermediates(norm=False)``.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from lavit.checkpoint import load_weights
from lavit.config import ConfigError, EncoderConfig


class PatchReadout(nn.Module):
    """Linear read-outs of what each patch shows: a LayerNorm then one head per attribute.

    The from-scratch encoder is pretrained through it (``lavit train encoder``: colour, kind and
    size of the shape covering each patch); frozen, it then tells the tokenizer whether rebuilt
    features still *say* what the originals said (``TokenizerConfig.semantic_loss_weight``).
    """

    def __init__(self, dim: int, classes: list[int]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.heads = nn.ModuleList(nn.Linear(dim, n) for n in classes)

    def forward(self, feats: torch.Tensor) -> list[torch.Tensor]:
        """(B, N, C) encoder features -> per attribute (B, N, classes) logits."""
        h = self.norm(feats)
        return [head(h) for head in self.heads]


class VisionEncoder(nn.Module):
    """timm ViT wrapper: (B, 3, H, W) images in [0, 1] -> (B, N, C) patch features."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kwargs = {"pretrained": False, "num_classes": 0, "img_size": cfg.image_size, "patch_size": cfg.patch_size}
        kwargs.update(
            {
                k: v
                for k, v in (
                    ("embed_dim", cfg.embed_dim),
                    ("depth", cfg.depth),
                    ("num_heads", cfg.num_heads),
                    ("mlp_ratio", cfg.mlp_ratio),
                    ("global_pool", cfg.global_pool),
                )
                if v is not None
            }
        )
        if not timm.is_model(cfg.name):
            raise ConfigError(f"encoder.name={cfg.name!r} is not a timm model; pick one from timm.list_models('vit_*')")
        self.vit = timm.create_model(cfg.name, **kwargs)
        if not hasattr(self.vit, "forward_intermediates"):
            raise ConfigError(f"encoder.name={cfg.name!r} has no forward_intermediates; use a timm ViT or EVA model")
        if cfg.weights:
            if not Path(cfg.weights).is_file():
                raise ConfigError(
                    f"encoder.weights={cfg.weights!r}: no such file. Pretrain it first (the tiny preset's: "
                    "lavit train encoder --config configs/train/encoder_tiny.yaml), point it at a local "
                    "safetensors file, or set encoder.weights=null for a random encoder"
                )
            load_weights(self.vit, cfg.weights)
        self.dim = self.vit.embed_dim
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)
        if cfg.frozen:
            self.vit.requires_grad_(False)
            self.vit.eval()

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if self.cfg.frozen:
            self.vit.eval()  # a frozen encoder never uses dropout / drop-path
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) in [0, 1] -> (B, N, C) last-block features, prefix tokens dropped."""
        x = (images - self.mean) / self.std
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.cfg.frozen):
            (feats,) = self.vit.forward_intermediates(
                x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True
            )
        return feats
