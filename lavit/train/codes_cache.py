"""Codes of ShapesWorld train scenes from a frozen tokenizer, extracted once to safetensors.

Every stage trained on a frozen tokenizer's codes (the LM, the detokenizers) shares this cache.
It is keyed by a fingerprint of the tokenizer's weights and config and of the data config, so a
retrained tokenizer with the same codebook size, or the same one set to keep a different share of
patches (``selector.target_keep``, which lives in its config, not its weights), never silently
reuses stale codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lavit.checkpoint import atomic_write
from lavit.config import ConfigError, ShapesWorldConfig
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.transforms import to_tensor
from tokenizer import DynamicVisualTokenizer


def train_world(data: ShapesWorldConfig, num_scenes: int) -> ShapesWorld:
    """The ShapesWorld train split, checked to hold ``num_scenes`` scenes."""
    world = ShapesWorld(data, "train")
    if num_scenes > len(world):
        raise ConfigError(
            f"num_scenes={num_scenes} exceeds the ShapesWorld train split ({len(world)} scenes); "
            f"lower num_scenes or raise data.train_size"
        )
    return world


def fingerprint(tokenizer: DynamicVisualTokenizer, tokenizer_dir: str | Path, world: ShapesWorld) -> str:
    """sha256 of the tokenizer's weights file and config plus the data config."""
    h = hashlib.sha256()
    with open(Path(tokenizer_dir) / "tokenizer.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    h.update(repr((dataclasses.asdict(tokenizer.cfg), dataclasses.asdict(world.cfg))).encode())
    return h.hexdigest()


@torch.no_grad()
def cached_codes(
    tokenizer: DynamicVisualTokenizer,
    tokenizer_dir: str | Path,
    world: ShapesWorld,
    n: int,
    path: str | Path,
    batch_size: int = 256,
) -> list[torch.Tensor]:
    """Codes of scenes ``0..n-1`` of ``world``: read from ``path`` when it was written by the same
    tokenizer and data config with at least ``n`` scenes, else extracted and written."""
    path = Path(path)
    size = tokenizer.cfg.encoder.image_size
    key = fingerprint(tokenizer, tokenizer_dir, world)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            same = (f.metadata() or {}).get("fingerprint") == key
        if same:
            saved = load_file(path)
            if len(saved["lengths"]) >= n:
                return unpack_codes(saved["flat"], saved["lengths"])[:n]
    device = next(tokenizer.parameters()).device
    codes: list[torch.Tensor] = []
    for start in range(0, n, batch_size):
        images = torch.stack([to_tensor(world.image(i), size) for i in range(start, min(start + batch_size, n))])
        codes += [c.cpu() for c in tokenizer.encode(images.to(device))]
    tensors = pack_codes(codes)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"fingerprint": key}))
    return codes


def pack_codes(codes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Variable-length code sequences as two tensors: ``flat`` (all of them concatenated) and
    ``lengths``; :func:`unpack_codes` undoes it."""
    return {"flat": torch.cat(codes), "lengths": torch.tensor([c.numel() for c in codes])}


def unpack_codes(flat: torch.Tensor, lengths: torch.Tensor | list[int]) -> list[torch.Tensor]:
    """The sequences of :func:`pack_codes` (``lengths`` as its tensor or as a list of ints)."""
    return list(torch.split(flat, lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)))
