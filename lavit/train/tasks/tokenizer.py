"""Stage 1: the dynamic visual tokenizer on images (``lavit train tokenizer``).

Images come from ``data.train`` resized whole to the encoder's side (LaVIT's tokenizer does not
crop); the evaluation reads ``data.val``, and adds what the ShapesWorld scenes tell (the code
probe, scenes the pixel head keeps) where every val source is ShapesWorld.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from lavit.config import ConfigError, TokenizerRunConfig
from lavit.data.annotations import code_probe, judge_images
from lavit.data.preprocess import MappedDataset, MappedStream
from lavit.layers import CrossBlock
from lavit.train.tasks.images import take, train_images, val_batches
from tokenizer import DynamicVisualTokenizer, save_tokenizer
from tokenizer.model import code_stats, patchify


class TokenizerTask:
    """Two phases (LaVIT): before ``vq_start_step`` the decoder reads continuous features, after
    it the quantized codes (k-means initialises the codebook on the first quantized batch)."""

    name = "tokenizer"
    block_types = (CrossBlock,)
    crop = "resize"  # the whole image squeezed to the encoder's side, as LaVIT's tokenizer does

    def __init__(self, cfg: TokenizerRunConfig) -> None:
        m = cfg.model
        if m.semantic_loss_weight > 0 and not m.readout_weights:
            # Only a saved tokenizer may build its read-out empty (its weights come with it);
            # training against a random frozen read-out would be a meaningless loss.
            raise ConfigError(
                f"model.semantic_loss_weight={m.semantic_loss_weight} trains against the encoder's frozen "
                "read-out, but model.readout_weights is null: point it at the encoder stage's "
                "readout.safetensors (e.g. runs/encoder_tiny/model/readout.safetensors) or set "
                "model.semantic_loss_weight=0"
            )
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        model = DynamicVisualTokenizer(self.cfg.model)
        if self.cfg.model.encoder.frozen:
            model.calibrate(torch.stack(take(self.train_dataset(), self.cfg.calibration_images)))
        return model

    def train_dataset(self) -> MappedDataset | MappedStream:
        return train_images(self.cfg.data, self.cfg.model.encoder.image_size, self.crop)

    def collate(self, items: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(items)

    def training_step(self, model: nn.Module, images: torch.Tensor, step: int):
        out = model(images, quantize=step >= self.cfg.vq_start_step)
        return out.loss, out.logs

    @torch.no_grad()
    def evaluate(self, model: DynamicVisualTokenizer, step: int, batch_size: int = 50) -> dict[str, float]:
        """Held-out (``data.val``) images: codebook usage and perplexity over all their codes,
        mean kept fraction, cosine similarity of the features rebuilt from codes
        (deterministic), what a ridge probe reads of the pixels from them; on ShapesWorld also
        what a linear probe reads of the scene from the bag of codes (:func:`code_probe`), and
        with a pixel head the share of scenes whose shapes (colour and kind) the parser finds in
        the image rebuilt from the codes alone."""
        if not bool(model.quantizer._codebook.initted):
            return {"quantized": 0.0}  # no quantized step yet: no codes (encoding must not initialise them)
        if not self.cfg.data.val:
            return {"quantized": 1.0}  # no held-out source named
        self.calibrate_keep(model)
        device = next(model.parameters()).device
        all_codes, kept, cos, rebuilt_all, pixels_all, scenes = [], [], [], [], [], []
        kept_scenes = 0
        sq_err = sq_tot = 0.0
        size, judged = self.cfg.model.encoder.image_size, True
        for images, batch_scenes in val_batches(self.cfg.data, self.cfg.eval_images, size, self.crop, batch_size):
            images = images.to(device)
            codes = model.encode(images)
            all_codes += codes
            kept += [c.numel() / self.cfg.model.encoder.num_patches for c in codes]
            target = model.standardise(model.encoder(images))
            rebuilt = model.decode_features(codes).float()
            cos.append(torch.nn.functional.cosine_similarity(rebuilt, target, dim=-1).mean(dim=1))
            sq_err += float(((rebuilt - target) ** 2).sum())
            sq_tot += float(((target - target.mean(dim=(0, 1))) ** 2).sum())
            rebuilt_all.append(rebuilt.cpu())
            judged = batch_scenes is not None
            scenes += batch_scenes or []
            if judged and self.cfg.model.pixel_loss_weight > 0:  # does the image survive the codes?
                kept_scenes += judge_images(batch_scenes, model.decode_pixels(codes))[0]
            pixels_all.append(patchify(images, self.cfg.model.encoder.patch_size).cpu())
        n = len(all_codes)
        stats = code_stats(torch.cat(all_codes), model.codebook_size)
        lengths = torch.tensor([c.numel() for c in all_codes], dtype=torch.float)
        return {
            "feature_r2": 1.0 - sq_err / max(sq_tot, 1e-12),
            "pixel_probe_psnr": pixel_probe_psnr(torch.cat(rebuilt_all), torch.cat(pixels_all)),
            # The same probe on constant features: what a collapsed tokenizer would score.
            "pixel_probe_baseline_psnr": pixel_probe_psnr(
                torch.zeros_like(torch.cat(rebuilt_all)[..., :1]), torch.cat(pixels_all)
            ),
            "code_usage": float(stats["code_usage"]),
            "perplexity": float(stats["perplexity"]),
            "keep_frac": float(sum(kept) / len(kept)),
            "tokens_mean": float(lengths.mean()),
            "tokens_min": float(lengths.min()),
            "tokens_max": float(lengths.max()),
            "recon_cos": float(torch.cat(cos).mean()),
            **(code_probe(all_codes, scenes, model.codebook_size) if judged else {}),
            **({"pixel_scene_kept": kept_scenes / n} if judged and self.cfg.model.pixel_loss_weight > 0 else {}),
            "quantized": 1.0,
        }

    def calibrate_keep(self, model: DynamicVisualTokenizer) -> float:
        """The inference keep threshold from training images (never the held-out ones)."""
        device = next(model.parameters()).device
        return model.calibrate_keep(torch.stack(take(self.train_dataset(), self.cfg.calibration_images)).to(device))

    def save(self, model: DynamicVisualTokenizer, directory: Path) -> None:
        self.calibrate_keep(model)
        save_tokenizer(model, directory)


def pixel_probe_psnr(features: torch.Tensor, pixels: torch.Tensor, ridge: float = 1e-2) -> float:
    """How much of the image survives in features rebuilt from codes: a ridge-regression probe
    from each patch's rebuilt feature to its pixels, fitted on the first half of the images and
    scored (PSNR, pixels in [0, 1]) on the second half.

    Args:
        features: (B, N, C) rebuilt features; pixels: (B, N, P) patch pixels.
    """
    half = features.shape[0] // 2
    assert half >= 1, "pixel probe needs at least 2 images"
    x_fit, y_fit = features[:half].flatten(0, 1).double(), pixels[:half].flatten(0, 1).double()
    x_fit = torch.cat([x_fit, torch.ones(len(x_fit), 1, dtype=x_fit.dtype)], 1)  # bias column
    w = torch.linalg.solve(x_fit.T @ x_fit + ridge * torch.eye(x_fit.shape[1], dtype=x_fit.dtype), x_fit.T @ y_fit)
    x_test = features[half:].flatten(0, 1).double()
    x_test = torch.cat([x_test, torch.ones(len(x_test), 1, dtype=x_test.dtype)], 1)
    mse = float(((x_test @ w).clamp(0, 1) - pixels[half:].flatten(0, 1).double()).pow(2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))
