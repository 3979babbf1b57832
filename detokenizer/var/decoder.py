"""The VAR decoder: codes -> the tokenizer's code embeddings -> next-scale transformer -> the
multi-scale VQ-VAE's decoder -> pixels. Plugs into the pipeline beside the diffusion decoder.
With a class-conditional transformer (``transformer.condition: class``, VAR's published
models converted by ``lavit convert var``) it draws images of ImageNet classes instead."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detokenizer.var.config import VARDecoderConfig, VARSamplingConfig
from detokenizer.var.transformer import NextScaleTransformer
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.checkpoint import load_model_dir, save_model_dir
from lavit.generate import Generators, seeded_generators


class VARDecoder(nn.Module):
    def __init__(self, cfg: VARDecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vqvae = MultiScaleVQVAE(cfg.vqvae).requires_grad_(False).eval()
        self.transformer = NextScaleTransformer(cfg.transformer, cfg.vqvae)

    def train(self, mode: bool = True) -> VARDecoder:
        super().train(mode)
        self.vqvae.eval()  # frozen: no dead-code restarts, no dropout
        return self

    @property
    def resolution(self) -> int:
        return self.cfg.vqvae.resolution

    def forward(
        self, images: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Training loss: cross-entropy of every scale's tokens of ``images`` (teacher forcing)
        given the (B, L, D) code embeddings ``emb`` and their (B, L) mask."""
        with torch.no_grad():
            indices = self.vqvae.encode(images)
        logits = self.transformer(emb, mask, indices, self.vqvae.quantizer, drop)
        return self.transformer.loss(logits, indices)

    @torch.no_grad()
    def generate(
        self,
        emb: torch.Tensor,
        mask: torch.Tensor,
        sampling: VARSamplingConfig,
        generator: Generators = None,
        previews: bool = False,
        forced: list[torch.Tensor | None] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, L, D) code embeddings -> (B, 3, R, R) images in [0, 1]; with ``previews`` also
        the image decoded after each scale (a list of K such batches). ``forced``: per-scale
        token maps to take instead of sampling (None entries are sampled)."""
        out = self.transformer.sample(emb, mask, self.vqvae.quantizer, sampling, generator, forced=forced)
        images = self.vqvae.decode_fhat(out.f_hat)
        if not previews:
            return images
        return images, [self.vqvae.decode_fhat(f) for f in out.f_hats]


@torch.no_grad()
def generate_classes(model: VARDecoder, labels: list[int], sampling: VARSamplingConfig, seed: int = 0) -> torch.Tensor:
    """Class ids -> (B, 3, R, R) images in [0, 1] from a class-conditional VAR decoder, with
    classifier-free guidance against the null class batched with the conditional half; image j
    is drawn with seed ``seed + j`` whatever else shares its batch."""
    n = model.transformer.cfg.num_classes
    bad = [c for c in labels if not 0 <= c < n]
    if bad:
        raise ValueError(f"class {bad[0]} is not one of this model's {n} classes (0..{n - 1})")
    param = next(model.parameters())
    ids = torch.tensor(labels, device=param.device)
    generators = seeded_generators(len(labels), seed, param.device)
    out = model.transformer.sample_classes(ids, model.vqvae.quantizer, sampling, generators)
    return model.vqvae.decode_fhat(out.f_hat)


def decode_codes_var(
    model: VARDecoder,
    tokenizer,
    codes: list[torch.Tensor],
    sampling: VARSamplingConfig,
    *,
    size: tuple[int, int] | None = None,
    generator: Generators = None,
    forced: list[torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Variable-length code sequences (one per image) -> (B, 3, R, R) images in [0, 1]. Empty or
    out-of-range code sequences raise (through the tokenizer's ``pad_codes``). ``forced``: per-scale
    token maps to take instead of sampling (None entries are sampled; diagnostics)."""
    res = model.resolution
    if size is not None and tuple(size) != (res, res):
        raise ValueError(f"the VAR decoder renders {res}x{res} images only, not {size[0]}x{size[1]}")
    tokenizer.check_reader(model.cfg.transformer.cond_dim, "VAR decoder", "var")
    emb, mask = tokenizer.code_embeddings(codes)
    param = next(model.parameters())
    return model.generate(emb.to(param.device, param.dtype), mask.to(param.device), sampling, generator, forced=forced)


def save_var_decoder(model: VARDecoder, directory: str | Path) -> Path:
    return save_model_dir(directory, model.cfg, {"var": model})


def load_var_decoder(directory: str | Path, device: str = "cpu", root: str | Path | None = None) -> VARDecoder:
    """Rebuild from the saved config, load strictly (every file inside ``root``, default
    ``directory``), and return in eval mode."""
    _, modules = load_model_dir(directory, VARDecoderConfig, lambda c: {"var": VARDecoder(c)}, root=root)
    return modules["var"].to(device).eval()
