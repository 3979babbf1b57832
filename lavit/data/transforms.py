"""PIL images <-> model tensors. Images enter every model as float (B, 3, H, W) in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from lavit.data.image_io import to_rgb


def to_tensor(image: Image.Image, size: int | None = None) -> torch.Tensor:
    """PIL image (any mode) -> (3, size, size) float in [0, 1]; resized (bicubic) when ``size``
    differs. Non-square images are centre-cropped to a square first."""
    image = to_rgb(image)
    if size is not None and image.size != (size, size):
        w, h = image.size
        s = min(w, h)
        image = image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def to_pil(image: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> RGB PIL image (clamped)."""
    arr = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)
