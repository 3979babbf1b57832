"""The data layer's entry point: sources chosen by name in the run config, built into datasets.

    data:
      train:
        - {kind: webdataset, path: "laion/{00000..00099}.tar", weight: 3}
        - {kind: jsonl, path: vqa.jsonl}
        - {kind: shapes}
      val: [{kind: coco_captions, path: captions_val2014.json, image_root: val2014}]

``build_data(cfg, "train")`` gives one map-style ``Dataset[Sample]`` (one map-style source,
or a :class:`MixtureDataset` of several) or an endless, resumable stream (a :class:`ShardStream`,
or a :class:`MixtureStream` when any source is one). A training task reads fields of
:class:`Sample`, never which source it came from. On the command line, ``data.train=PATH``
(through :func:`expand_shorthand`) is one source whose kind is inferred from the path.

Bad input fails when the source is built, in one line naming the file, line or key: a path
that does not exist, a malformed JSONL line, images a map-style source lists but the disk lacks,
a file that is not a tar shard, an unknown kind, an empty source, bad mixture weights.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from lavit.config import SOURCE_KINDS, ConfigError, DataConfig, ShapesWorldConfig, SourceConfig
from lavit.data.image_io import DEFAULT_MAX_PIXELS
from lavit.data.mixture import MixtureDataset, MixtureStream, normalise_weights
from lavit.data.readers import (
    IMAGE_EXTENSIONS,
    AnnotationError,
    CocoCaptionsDataset,
    ImageFolderDataset,
    JsonlDataset,
    VQAv2Dataset,
)
from lavit.data.refcoco import RefCOCODataset
from lavit.data.sample import Sample
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.shards import ShardStream, list_shards

KINDS = SOURCE_KINDS
MISSING_SHOWN = 3  # missing images named in the error (the count is always given)


def expand_shorthand(overrides: list[str], keys: tuple[str, ...] = ("data.train", "data.val")) -> list[str]:
    """Turn ``data.train=PATH`` into ``data.train=[{kind: auto, path: PATH}]`` (lists pass as is).

    Args:
        overrides: command-line ``key=value`` strings.
        keys: the source-list keys that accept a bare path.

    Returns:
        The overrides, shorthand expanded, in the same order.
    """
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() in keys and value.strip() and not value.lstrip().startswith("["):
            item = f"{key}=[{{kind: auto, path: {json.dumps(value.strip())}}}]"  # JSON string = YAML string
        out.append(item)
    return out


def resolve_kind(cfg: SourceConfig) -> str:
    """The concrete kind of a source: ``cfg.kind``, or for ``auto`` inferred from the path.

    ``shapes`` -> shapes; ``*.jsonl`` -> jsonl; ``*.tar``, a brace pattern or a folder holding
    ``.tar`` files -> webdataset; a folder of images -> image_folder.

    Raises:
        ConfigError: the path is missing or tells nothing (a ``.json`` may be COCO or VQAv2).
    """
    if cfg.kind != "auto":
        return cfg.kind
    path = cfg.path or ""
    if path == "shapes":
        return "shapes"
    if path.endswith(".jsonl"):
        return "jsonl"
    if path.endswith(".tar") or ("{" in path and ".tar" in path):
        return "webdataset"
    if os.path.isdir(path):
        names = os.listdir(path)
        if any(n.endswith(".tar") for n in names):
            return "webdataset"
        if any(n.lower().endswith(IMAGE_EXTENSIONS) for _, _, files in os.walk(path) for n in files):
            return "image_folder"
        raise ConfigError(f"{path}: folder holds neither .tar shards nor images; set kind explicitly")
    if not os.path.exists(path):
        raise ConfigError(f"data path {path!r} does not exist; check the path (kind: auto infers from it)")
    raise ConfigError(
        f"cannot infer the kind of {path!r}; set kind to one of {', '.join(KINDS)} (a .json is coco_captions or vqav2)"
    )


def build_source(
    cfg: SourceConfig,
    *,
    on_bad_image: str = "skip",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 1000,
    max_bad_fraction: float = 0.01,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    shapes: ShapesWorldConfig | None = None,
    where: str = "source",
) -> Dataset[Sample] | ShardStream:
    """Build one source.

    Args:
        cfg: the source.
        on_bad_image: map-style readers' policy for an image that fails to decode.
        seed, rank, world_size, shuffle_buffer, max_bad_fraction: for a webdataset stream.
        max_pixels: decompression-bomb limit of every image.
        shapes: the ShapesWorld a ``kind: shapes`` source draws from (default: the default one).
        where: how errors name the source (``data.train[1]``).

    Returns:
        A map-style ``Dataset[Sample]`` (shapes, jsonl, coco_captions, vqav2, image_folder,
        refcoco) or a :class:`ShardStream` (webdataset).

    Raises:
        ConfigError / AnnotationError: one line naming the file, line or key and the fix.
    """
    kind = resolve_kind(cfg)
    if kind == "shapes":
        ds: Any = ShapesWorld(shapes or ShapesWorldConfig(), cfg.split)
        return Subset(ds, range(min(cfg.limit, len(ds)))) if cfg.limit else ds
    for key in ("path", "questions", "image_root"):
        value = getattr(cfg, key)
        if value is not None and "{" not in value and not os.path.exists(value):
            raise ConfigError(f"{where}.{key}: {value} does not exist; check the path ({kind} source)")
    for key in ("path", "questions") if kind in ("jsonl", "coco_captions", "vqav2") else ():
        value = getattr(cfg, key)
        if value is not None and not os.path.isfile(value):
            raise ConfigError(f"{where}.{key}: {value} is not a file; a {kind} source reads an annotation file")
    if kind == "webdataset":
        if cfg.limit is not None:
            raise ConfigError(f"{where}.limit: applies to map-style sources; for shards, list fewer shards")
        return ShardStream(
            list_shards(str(cfg.path)),
            seed=seed,
            rank=rank,
            world_size=world_size,
            shuffle_buffer=shuffle_buffer,
            max_bad_fraction=max_bad_fraction,
            max_pixels=max_pixels,
        )
    common = {"on_bad_image": on_bad_image, "max_pixels": max_pixels}
    if kind == "jsonl":
        ds = JsonlDataset(str(cfg.path), cfg.image_root, **common)
    elif kind == "coco_captions":
        ds = CocoCaptionsDataset(str(cfg.path), cfg.image_root or Path(str(cfg.path)).parent, **common)
    elif kind == "vqav2":
        root = cfg.image_root or Path(str(cfg.questions)).parent
        ds = VQAv2Dataset(str(cfg.questions), cfg.path, image_root=root, **common)
    elif kind == "refcoco":  # path: the set's folder, or one refs(*).p in it
        ds = RefCOCODataset(str(cfg.path), str(cfg.image_root), cfg.split, **common)
    else:
        try:
            ds = ImageFolderDataset(str(cfg.path), **common)
        except ValueError as e:  # not a folder, or no image in it
            raise ConfigError(f"{where}: {e}") from None
    n = min(cfg.limit or len(ds), len(ds))
    if n == 0:
        raise ConfigError(f"{where}: {cfg.path or cfg.questions} holds no samples; give a non-empty {kind} source")
    _check_images_exist(ds, n, where)
    return Subset(ds, range(n)) if n < len(ds) else ds


def build_data(cfg: DataConfig, split: str = "train", *, rank: int = 0, world_size: int = 1, length: int | None = None):
    """Build ``cfg.train`` or ``cfg.val``: one source -> itself, several -> a weighted mixture.

    Args:
        cfg: the run's data config (sources, seed, shard reading, the ShapesWorld of its shapes
            sources).
        split: ``"train"`` or ``"val"``.
        rank, world_size: this process among the data-parallel ranks (streams split by them).
        length: items of a :class:`MixtureDataset` (default: its sources' total).

    Returns:
        A map-style ``Dataset[Sample]`` (use the trainer's StepBatchSampler) or an endless stream
        (``ShardStream`` / ``MixtureStream``; use ``.resumed(...)`` to resume, see shards.py).
    """
    assert split in ("train", "val"), split
    cfgs, where = getattr(cfg, split), f"data.{split}"
    if not cfgs:
        raise ConfigError(f"{where}: no sources; name at least one")
    names = [f"{where}[{i}]" for i in range(len(cfgs))]
    weights = [c.weight for c in cfgs]
    normalise_weights(weights, names)  # raises on a negative weight or all zeros
    stream = {"seed": cfg.seed, "rank": rank, "world_size": world_size}
    reading = {"shuffle_buffer": cfg.shuffle_buffer, "max_bad_fraction": cfg.max_bad_fraction, "shapes": cfg.shapes}
    sources = [build_source(c, where=n, **reading, **stream) for c, n in zip(cfgs, names, strict=True)]
    if len(sources) == 1:
        return sources[0]
    if any(isinstance(s, ShardStream) for s in sources):
        return MixtureStream(sources, weights, **stream)
    return MixtureDataset(sources, weights, seed=cfg.seed, length=length)


def _check_images_exist(ds: Any, n: int, where: str) -> None:
    """Every image the first ``n`` records name must exist: a wrong image root fails now, not
    (silently skipped) mid-run."""
    missing = [i for i in range(n) if not ds.image_path(i).is_file()]
    if not missing:
        return
    lines = getattr(ds, "lines", None)
    shown = ", ".join(
        f"{ds.image_path(i)} ({f'line {lines[i]}' if lines else f'key {ds.key(i)}'})" for i in missing[:MISSING_SHOWN]
    )
    raise AnnotationError(
        f"{ds.source}: {len(missing)} of {n} images do not exist, e.g. {shown}. "
        f"Check {where}.image_root or the image paths in the file."
    )
