"""What the image stages (tokenizer, encoder, VAE, VAR VQ-VAE) share: their images read through
the data layer (``data: DataConfig``) and :mod:`lavit.data.preprocess`, and the held-out
batches of ``data.val`` with their annotations where every val source gives scenes (judged
through :mod:`lavit.data.annotations`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import Dataset

from lavit.config import DataConfig
from lavit.data.annotations import Meta, scenes_known
from lavit.data.preprocess import MappedDataset, MappedStream, map_samples, preprocess
from lavit.data.sample import Sample
from lavit.data.shards import ResumableStream
from lavit.data.sources import build_data
from lavit.train.distributed import init_distributed


def sample_data(cfg: DataConfig, split: str, fn: Callable[[Sample, int], Any]) -> MappedDataset | MappedStream:
    """``build_data(cfg, split)`` for this rank, each sample through ``fn(sample, counter)``."""
    info = init_distributed()
    world = (info.rank, info.world_size) if split == "train" else (0, 1)
    return map_samples(build_data(cfg, split, rank=world[0], world_size=world[1]), fn)


def train_images(cfg: DataConfig, size: int, crop: str) -> MappedDataset | MappedStream:
    """The training images as (3, size, size) tensors in [0, 1] (a random crop is keyed by
    ``cfg.seed``, the sample's id and the epoch or reader position)."""

    def item(sample: Sample, counter: int) -> torch.Tensor:
        return preprocess(sample.image, size, crop, seed=cfg.seed, key=sample.image_id, counter=counter)

    return sample_data(cfg, "train", item)


def take(data: Dataset | ResumableStream, n: int) -> list[Any]:
    """The first ``n`` items (fewer if a map-style dataset is shorter)."""
    if isinstance(data, ResumableStream):
        return list(itertools.islice(iter(data), n))
    return [data[i] for i in range(min(n, len(data)))]  # type: ignore[arg-type]


def val_batches(
    cfg: DataConfig, n: int, size: int, crop: str = "centre", batch_size: int = 50
) -> Iterator[tuple[torch.Tensor, list[Meta] | None]]:
    """The first ``n`` held-out images of ``cfg.val`` in batches: ``(images (B, 3, S, S) in
    [0, 1], their metas or None)``; metas only when every val source gives scenes
    (:func:`lavit.data.annotations.scenes_known`), for the annotation judges."""
    judged = scenes_known(cfg, "val")

    def item(sample: Sample, counter: int) -> tuple[torch.Tensor, Meta | None]:
        meta = sample.meta if judged else None
        return preprocess(sample.image, size, crop, seed=cfg.seed, key=sample.image_id), meta

    data = sample_data(cfg, "val", item)
    items = iter(data) if isinstance(data, ResumableStream) else (data[i] for i in range(min(n, len(data))))
    items = itertools.islice(items, n)
    while batch := list(itertools.islice(items, batch_size)):
        images = torch.stack([im for im, _ in batch])
        yield images, ([s for _, s in batch] if judged else None)
