"""Stage 3b, part 2: the next-scale transformer (``lavit train var``), conditioned on a frozen
tokenizer's code embeddings, predicting a frozen multi-scale VQ-VAE's token maps.

The condition is dropped (the learned null sequence) with probability ``cond_drop_prob`` for
classifier-free guidance. Codes and images come from any source of ``data.train`` (cached once,
lavit/train/codes_cache.py). Evaluation reconstructs ``data.val`` items from their tokenizer
codes: PSNR for any source, and on ShapesWorld the parser's judgement of the shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from detokenizer.var.config import VARDecoderConfig, VARRunConfig
from detokenizer.var.decoder import VARDecoder, decode_codes_var, load_var_decoder, save_var_decoder
from detokenizer.var.io import load_vqvae
from lavit.checkpoint import CheckpointError, state_mismatch
from lavit.config import ConfigError
from lavit.data.transforms import to_pil
from lavit.generate import seeded_generators
from lavit.train.tasks.diffusion import (
    CodeImages,
    batch_codes,
    collate_scene_codes,
    evaluate_reconstructions,
    stage_codes,
)
from lavit.viz import image_grid
from tokenizer import load_tokenizer


class VARTask:
    name = "var"
    block_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, cfg: VARRunConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        self.tokenizer = load_tokenizer(cfg.tokenizer_dir)
        if cfg.model.cond_dim != self.tokenizer.code_dim:
            raise ConfigError(
                f"model.cond_dim={cfg.model.cond_dim} but the tokenizer at {cfg.tokenizer_dir} has code "
                f"embeddings of width {self.tokenizer.code_dim}; set model.cond_dim={self.tokenizer.code_dim}"
            )
        self.vqvae = load_vqvae(cfg.vqvae_dir)
        self.codes = stage_codes(self, "train", cfg.num_scenes, self.vqvae.cfg.resolution)

    def build_model(self) -> nn.Module:
        model = VARDecoder(VARDecoderConfig(vqvae=self.vqvae.cfg, transformer=self.cfg.model))
        model.vqvae.load_state_dict(self.vqvae.state_dict())
        if self.cfg.init_from:
            init_transformer(model, self.cfg.init_from)
        if self.cfg.layout_init_from:
            init_layout(model, self.cfg.layout_init_from)
        if self.cfg.trainable:
            freeze_except(model.transformer, self.cfg.trainable)
        return model

    def train_dataset(self) -> Dataset:
        return CodeImages(self.codes, self.vqvae.cfg.resolution)

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
        return collate_scene_codes(items)

    def training_step(self, model: nn.Module, batch: dict, step: int):
        images = batch["images"]
        self.tokenizer.to(images.device)
        with torch.no_grad():
            emb, mask = self.tokenizer.code_embeddings(batch_codes(batch))
        drop = torch.rand(images.shape[0], device=images.device) < self.cfg.model.cond_drop_prob
        loss = model(images, emb, mask, drop)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, model: VARDecoder, step: int, batch_size: int = 50) -> dict[str, float]:
        """Reconstruct held-out (``data.val``) items from their tokenizer codes: PSNR, and on
        ShapesWorld the share whose colours and kinds the parser finds again (and whose full
        scene it recovers)."""
        cfg = self.cfg
        if not cfg.data.val:
            return {}
        device = next(model.parameters()).device
        self.tokenizer.to(device)

        def decode(codes: list[torch.Tensor], start: int) -> torch.Tensor:
            gens = seeded_generators(len(codes), start, device)  # item i is seeded i
            return decode_codes_var(model, self.tokenizer, codes, cfg.sampling, generator=gens).cpu()

        records = stage_codes(self, "val", cfg.eval_scenes, model.resolution)
        metrics, pairs = evaluate_reconstructions(records, model.resolution, decode, batch_size)
        image_grid([to_pil(x) for pair in pairs for x in pair], columns=4).save(self.out / f"recon_step{step}.png")
        return metrics

    def save(self, model: VARDecoder, directory: Path) -> None:
        save_var_decoder(model, directory)


def init_transformer(model: VARDecoder, directory: str | Path) -> None:
    """Load a trained VAR decoder's transformer into ``model``.

    Raises:
        ConfigError: the directory does not load, its VQ-VAE differs from ``model``'s, or its
            transformer from ``model``'s.
    """
    where = f"init_from={str(directory)!r}"
    try:
        source = load_var_decoder(directory)
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        raise ConfigError(
            f"{where}: not a loadable VAR decoder ({e}); pass the model/ folder of a `lavit train var` "
            "run (or a pipeline's var/ folder)"
        ) from e
    mine, theirs = model.vqvae.state_dict(), source.vqvae.state_dict()
    if mine.keys() != theirs.keys() or any(not torch.equal(mine[k], theirs[k].to(mine[k].dtype)) for k in mine):
        raise ConfigError(
            f"{where}: its VQ-VAE differs from vqvae_dir's, and the tokens it predicts are its own "
            f"VQ-VAE's; set vqvae_dir={str(directory)!r}"
        )
    own, target = source.transformer.state_dict(), model.transformer.state_dict()
    # A transformer without a layout reader or a last-scale head may grow one: their outputs
    # start at zero, so the grown model starts as the one it came from.
    grown = ()
    if source.transformer.layout is None and model.transformer.layout is not None:
        grown += ("layout.", "layout_proj.")
    if source.transformer.last_head is None and model.transformer.last_head is not None:
        grown += ("last_head.",)
    bad = state_mismatch(own, target, grown=grown)
    if bad:
        raise ConfigError(
            f"{where}: its transformer differs from model's ({len(bad)} tensors, e.g. {bad[:3]}); give "
            f"model the width, depth and heads of {directory}/config.yaml"
        )
    model.transformer.load_state_dict(own, strict=not grown)


def freeze_except(transformer: nn.Module, prefixes: list[str]) -> None:
    """Train only the transformer's parameters whose names start with one of ``prefixes``.

    Raises:
        ConfigError: a prefix matches no parameter.
    """
    names = [n for n, _ in transformer.named_parameters()]
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unmatched:
        tops = sorted({n.split(".")[0] + "." for n in names})
        raise ConfigError(
            f"trainable={list(prefixes)}: {unmatched} name no parameter of the transformer (its top-level "
            f"names: {', '.join(tops)}); grow the part first (e.g. model.last_head=64 for last_head.)"
        )
    for name, param in transformer.named_parameters():
        param.requires_grad_(any(name.startswith(p) for p in prefixes))


def init_layout(model: VARDecoder, directory: str | Path) -> None:
    """Start ``model``'s layout reader from a trained diffusion detokenizer's conditioner (same
    tokenizer codes, same sizes).

    Raises:
        ConfigError: the model has no layout reader, the directory is not a diffusion
            detokenizer, or its conditioner's sizes differ from the reader's.
    """
    from detokenizer.diffusion.io import load_detokenizer

    where = f"layout_init_from={str(directory)!r}"
    reader = model.transformer.layout
    if reader is None:
        raise ConfigError(f"{where} needs a layout reader: set model.layout_queries (e.g. 256)")
    try:
        source = load_detokenizer(directory).conditioner
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        raise ConfigError(
            f"{where}: not a loadable diffusion detokenizer ({e}); pass the model/ folder of a "
            "`lavit train diffusion` run (or a pipeline's diffusion/ folder)"
        ) from e
    bad = state_mismatch(source.state_dict(), reader.state_dict())
    if bad:
        raise ConfigError(
            f"{where}: its conditioner differs from the layout reader ({len(bad)} tensors, e.g. {bad[:3]}); "
            f"set model.layout_queries, layout_width, layout_depth and max_codes to its conditioner's "
            f"num_queries, width / cond_dim, depth and max_codes in {directory}/config.yaml"
        )
    reader.load_state_dict(source.state_dict())
