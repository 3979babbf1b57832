"""Scores the training stages share when they evaluate reconstructions: PSNR for any source,
and the ShapesWorld parser's judgement of a reconstructed scene (only where the scenes are
known, i.e. the val source is ``kind: shapes``)."""

from __future__ import annotations

import math

import torch

from lavit.data.shapes import Scene
from lavit.data.shapes_parser import attributes_kept, parse_scene, scene_recovered
from lavit.data.transforms import to_pil


def psnr(images: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """Per-image PSNR (dB) of ``images`` against ``targets``, both (B, 3, H, W) in [0, 1]."""
    mse = ((images.float().cpu() - targets.float().cpu()) ** 2).flatten(1).mean(1)
    return [10 * math.log10(1 / max(float(e), 1e-12)) for e in mse]


def judge_scenes(scenes: list[Scene], images: torch.Tensor) -> tuple[int, int]:
    """(kept, recovered): how many ``images`` (B, 3, H, W) in [0, 1] the ShapesWorld parser
    reads back with every shape's colour and kind (kept), and as the whole scene (recovered)."""
    kept = recovered = 0
    for scene, image in zip(scenes, images, strict=True):
        parsed = parse_scene(to_pil(image))
        kept += attributes_kept(scene, parsed)
        recovered += scene_recovered(scene, parsed)
    return kept, recovered
