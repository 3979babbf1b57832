"""Real-image preprocessing in one place: a PIL image -> a (3, H, W) float tensor in [0, 1] (the
convention of :func:`lavit.data.transforms.to_tensor` that every model here takes).

    preprocess(image, 64, "centre")                  eval: shorter side -> 64, centre square
    preprocess(image, 64, "random", seed=0, key=k, counter=c)
                                                     train: a square at a random offset
    preprocess(image, 64, "resize")                  no crop: squeezed to 64 x 64 (LaVIT's tokenizer)
    to_bucket(image, 256)                            decoders: the nearest SDXL aspect bucket

A random crop is a pure function of ``(seed, key, counter)`` (the sample's id and a count the
caller keeps, e.g. the epoch or the reader position), never of the global RNG, so a resumed
run, and any DataLoader worker, crops exactly as an uninterrupted run would. A square image of
the target side goes through every mode untouched, so ShapesWorld images come out exactly as
``to_tensor`` gives them.

:func:`map_samples` turns the data layer's ``Dataset[Sample]`` or stream into one of a task's
items (the same map applied to either), keeping the stream's exact resume.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lavit.data.image_io import to_rgb
from lavit.data.sample import Sample
from lavit.data.shards import ResumableStream
from lavit.data.transforms import to_tensor

CROPS = ("centre", "random", "resize")
# SDXL's training buckets (width, height) at a 1024 base (LaVIT's diffusion detokenizer trains
# on them); :func:`buckets` adds the transposes and scales them to a base side.
SDXL_BUCKETS: tuple[tuple[int, int], ...] = ((1024, 1024), (896, 1152), (832, 1216), (768, 1344))
_CROP_STREAM = 0xC209  # a separate RNG stream key for crops


def crop_rng(seed: int, key: str, counter: int) -> np.random.Generator:
    """The generator of one sample's random crop: keyed by (seed, key, counter) alone."""
    digest = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng([seed, digest, counter, _CROP_STREAM])


def crop_box(
    width: int, height: int, out_w: int, out_h: int, crop: str, rng: np.random.Generator | None = None
) -> tuple[int, int, int, int]:
    """The largest ``out_w:out_h`` box in a ``width x height`` image, centred (``crop="centre"``)
    or at an offset drawn from ``rng`` (``"random"``); ``(left, top, right, bottom)``."""
    assert crop in ("centre", "random"), crop
    scale = min(width / out_w, height / out_h)
    w, h = min(width, round(out_w * scale)), min(height, round(out_h * scale))
    if crop == "centre":
        left, top = (width - w) // 2, (height - h) // 2
    else:
        assert rng is not None, "a random crop needs its generator (crop_rng)"
        left, top = int(rng.integers(width - w + 1)), int(rng.integers(height - h + 1))
    return left, top, left + w, top + h


def _resize_crop(
    image: Image.Image, out_w: int, out_h: int, crop: str, seed: int, key: str, counter: int
) -> torch.Tensor:
    image = to_rgb(image)
    if image.size != (out_w, out_h):
        if crop != "resize":
            rng = crop_rng(seed, key, counter) if crop == "random" else None
            box = crop_box(*image.size, out_w, out_h, crop, rng)
            if box != (0, 0, *image.size):
                image = image.crop(box)
        image = image.resize((out_w, out_h), Image.Resampling.BICUBIC)
    return to_tensor(image)


def preprocess(
    image: Image.Image, size: int, crop: str = "centre", *, seed: int = 0, key: str = "", counter: int = 0
) -> torch.Tensor:
    """A PIL image (any mode) -> (3, size, size) float in [0, 1].

    Args:
        image: the image.
        size: the output side S.
        crop: ``"centre"`` / ``"random"``: the largest square (centred / at a random offset),
            resized (bicubic) to S, i.e. the shorter side resized to S and an S x S crop;
            ``"resize"``: the whole image resized to S x S (aspect not kept).
        seed, key, counter: what a random crop is a function of (the run's data seed, the
            sample's ``image_id``, a count the caller keeps); ignored by the other modes.

    Returns:
        (3, S, S) float tensor in [0, 1]; equal to ``to_tensor(image, S)`` for a square image
        (and, with ``"centre"``, for any image).
    """
    if crop not in CROPS:
        raise ValueError(f"crop={crop!r}: use one of {', '.join(CROPS)}")
    return _resize_crop(image, size, size, crop, seed, key, counter)


def buckets(base: int, multiple: int = 8) -> list[tuple[int, int]]:
    """SDXL's aspect buckets and their transposes, scaled from a 1024 base to ``base`` and
    rounded to a ``multiple`` (the decoder's downsampling); ``(width, height)``, landscape to
    portrait (sorted by aspect ratio)."""

    def side(x: int) -> int:
        return max(multiple, round(x * base / 1024 / multiple) * multiple)

    out = {(side(bw), side(bh)) for w, h in SDXL_BUCKETS for bw, bh in ((w, h), (h, w))}
    return sorted(out, key=lambda wh: -wh[0] / wh[1])


def nearest_bucket(width: int, height: int, choices: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is nearest the image's (in log ratio, so 2:1 and 1:2 are
    equally far from 1:1); ties go to the squarer bucket."""
    ratio = np.log(width / height)
    return min(choices, key=lambda wh: (abs(np.log(wh[0] / wh[1]) - ratio), abs(np.log(wh[0] / wh[1]))))


def to_bucket(
    image: Image.Image,
    base: int,
    multiple: int = 8,
    crop: str = "centre",
    *,
    seed: int = 0,
    key: str = "",
    counter: int = 0,
) -> torch.Tensor:
    """A PIL image -> (3, H, W) in [0, 1] at its nearest aspect bucket (:func:`buckets`): the
    largest box of the bucket's aspect (centred or random, as :func:`preprocess`), resized.

    Returns:
        (3, H, W) float tensor in [0, 1], (W, H) = :func:`nearest_bucket` of the image.
    """
    if crop not in ("centre", "random"):
        raise ValueError(f"crop={crop!r}: a bucket crop is centre or random")
    image = to_rgb(image)
    out_w, out_h = nearest_bucket(*image.size, buckets(base, multiple))
    return _resize_crop(image, out_w, out_h, crop, seed, key, counter)


# ------------------------------------------------------------------------------ samples -> items

SampleFn = Callable[[Sample, int], Any]  # (sample, counter) -> a task's item


class MappedDataset(Dataset):
    """A map-style ``Dataset[Sample]`` through ``fn(sample, counter)``. An index may come as
    ``(index, epoch)`` (``StepBatchSampler(with_epoch=True)``): the epoch is the counter."""

    takes_epoch = True  # the trainer's sampler passes (index, epoch)

    def __init__(self, dataset: Dataset, fn: SampleFn) -> None:
        self.dataset, self.fn = dataset, fn

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: int | tuple[int, int]) -> Any:
        index, epoch = item if isinstance(item, tuple) else (item, 0)
        return self.fn(self.dataset[index], epoch)


class MappedStream(ResumableStream):
    """A :class:`ResumableStream` of samples through ``fn(sample, position)``, the position being
    the sample's place in its reader's sequence (so a resumed reader maps as before)."""

    def __init__(self, stream: ResumableStream, fn: SampleFn) -> None:
        self.stream, self.fn = stream, fn

    def _reset(self) -> None:
        self.stream._reset()

    def iter_from(self, worker: int, num_workers: int, position: int) -> Iterator[Any]:
        for p, sample in enumerate(self.stream.iter_from(worker, num_workers, position), start=position):
            yield self.fn(sample, p)


def map_samples(data: Dataset | ResumableStream, fn: SampleFn) -> MappedDataset | MappedStream:
    """``build_data``'s dataset or stream -> the same through ``fn(sample, counter)``."""
    if isinstance(data, ResumableStream):
        return MappedStream(data, fn)
    return MappedDataset(data, fn)
