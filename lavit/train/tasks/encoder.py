"""Stage 0 (from-scratch presets): pretrain the tokenizer's ViT on ShapesWorld (``lavit train encoder``).

LaVIT's tokenizer reconstructs the features of a frozen, language-supervised EVA-CLIP, so its
codes are semantic. No such weights exist for ShapesWorld, and a frozen *random* ViT makes the
tiny tokenizer's codes lose which kind each shape is (measured: 3% of scenes kept by the pixel
head, 2.4% (colour, kind) probe accuracy). This stage gives the tiny encoder what EVA-CLIP
gives LaVIT: features that name what is in each patch. Each patch is labelled with the colour,
kind and size of the shape covering it (:func:`lavit.data.annotations.patch_labels`, from train
scenes only); three linear heads read the last block's features, as the tokenizer will. The
labels come from the scenes, so every ``data`` source must be ``kind: shapes``. The saved
``vit.safetensors`` is what ``encoder.weights`` of the tokenizer preset points at.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lavit.checkpoint import save_model_dir
from lavit.config import EncoderConfig, EncoderRunConfig
from lavit.data.annotations import PATCH_ATTRIBUTES, patch_labels, require_scenes
from lavit.data.preprocess import MappedDataset, MappedStream, preprocess
from lavit.data.sample import Sample
from lavit.train.tasks.images import sample_data, take
from tokenizer.encoder import PatchReadout, VisionEncoder


class PatchLabelled:
    """A ShapesWorld sample -> (image (3, S, S) in [0, 1], labels (3, N) of :func:`patch_labels`)."""

    def __init__(self, size: int, patch: int) -> None:
        self.size, self.patch = size, patch

    def __call__(self, sample: Sample, counter: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = patch_labels(sample.meta, self.size, self.patch)
        return preprocess(sample.image, self.size), torch.from_numpy(labels).flatten(1)


READOUT_CLASSES: list[int] = [1 + n for _, n in PATCH_ATTRIBUTES]  # 0 = no shape


class PatchClassifier(nn.Module):
    """A trainable :class:`VisionEncoder` with one linear head per attribute (0 = no shape)."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.encoder = VisionEncoder(dataclasses.replace(cfg, frozen=False))
        self.readout = PatchReadout(self.encoder.dim, READOUT_CLASSES)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) -> per attribute (B, N, 1 + n) logits."""
        return self.readout(self.encoder(images))


class EncoderTask:
    name = "encoder"
    block_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, cfg: EncoderRunConfig) -> None:
        require_scenes(cfg.data, "encoder pretraining (it learns ShapesWorld patch labels)")
        self.cfg = cfg

    def build_model(self) -> nn.Module:
        return PatchClassifier(self.cfg.model)

    def _data(self, split: str) -> MappedDataset | MappedStream:
        return sample_data(self.cfg.data, split, PatchLabelled(self.cfg.model.image_size, self.cfg.model.patch_size))

    def train_dataset(self) -> MappedDataset | MappedStream:
        return self._data("train")

    def collate(self, items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {"images": torch.stack([im for im, _ in items]), "labels": torch.stack([lb for _, lb in items])}

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int):
        logits = model(batch["images"])
        logs: dict[str, torch.Tensor] = {}
        loss = 0.0
        for (name, _), lg, target in zip(PATCH_ATTRIBUTES, logits, batch["labels"].unbind(1), strict=True):
            part = F.cross_entropy(lg.flatten(0, 1).float(), target.flatten())
            loss = loss + part
            logs[f"{name}_loss"] = part.detach()
        return loss, logs

    @torch.no_grad()
    def evaluate(self, model: PatchClassifier, step: int, batch_size: int = 100) -> dict[str, float]:
        """Held-out (val) scenes: per-attribute accuracy on the patches a shape covers, and the
        share of those patches with all three right (background patches are easy and many)."""
        if not self.cfg.data.val:
            return {}  # no held-out source named
        val = take(self._data("val"), self.cfg.eval_images)
        device = next(model.parameters()).device
        right = torch.zeros(len(PATCH_ATTRIBUTES))
        all_right = covered = background_right = background = 0
        for start in range(0, len(val), batch_size):
            items = val[start : start + batch_size]
            images, labels = (t.to(device) for t in self.collate(items).values())
            pred = torch.stack([lg.argmax(-1) for lg in model(images)], dim=1)  # (B, 3, N)
            shape = labels[:, 0] > 0
            ok = pred == labels
            right += ok.permute(1, 0, 2)[:, shape].float().sum(dim=1).cpu()
            all_right += int(ok.all(dim=1)[shape].sum())
            covered += int(shape.sum())
            background_right += int((pred[:, 0] == 0)[~shape].sum())
            background += int((~shape).sum())
        metrics = {
            f"{name}_acc": float(r) / max(covered, 1) for (name, _), r in zip(PATCH_ATTRIBUTES, right, strict=True)
        }
        metrics["shape_patch_acc"] = all_right / max(covered, 1)
        metrics["background_acc"] = background_right / max(background, 1)
        return metrics

    def save(self, model: PatchClassifier, directory: Path) -> None:
        """``vit.safetensors`` (the timm ViT alone, loadable as ``encoder.weights``),
        ``readout.safetensors`` (the heads, loadable as the tokenizer's ``readout_weights``) and
        config.yaml."""
        save_model_dir(directory, self.cfg.model, {"vit": model.encoder.vit, "readout": model.readout})
