"""The data layer's entry point: sources chosen by name in the run config, built into datasets.

    data:
      train:
        - {kind: webdataset, path: "laion/{00000..00099}.tar", weight: 3}
        - {kind: jsonl, path: vqa.jsonl}
        - {kind: shapes}
      val: [{kind: coco_captions, path: captions_val2014.json, image_root: val2014}]

``build_data(cfg.train, seed)`` gives one map-style ``Dataset[Sample]`` (one map-style source,
or a :class:`MixtureDataset` of several) or an endless, resumable stream (a :class:`ShardStream`,
or a :class:`MixtureStream` when any source is one). A training task reads fields of
:class:`Sample`, never which source it came from. On the command line, ``data.train=PATH``
(through :func:`expand_shorthand`) is one source whose kind is inferred from the path.

Bad input fails when the source is built, in one line naming the file, line or key: a path
that does not exist, a malformed JSONL line, images a map-style source lists but the disk lacks,
a file that is not a tar shard, an unknown kind, an empty source, bad mixture weights.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from lavit.config import ConfigError, ShapesWorldConfig, check
from lavit.data.image_io import DEFAULT_MAX_PIXELS
from lavit.data.mixture import MixtureDataset, MixtureStream, normalise_weights
from lavit.data.readers import (
    IMAGE_EXTENSIONS,
    AnnotationError,
    CocoCaptionsDataset,
    ImageFolderDataset,
    VQAv2Dataset,
    _ImageRecordDataset,
    _Record,
)
from lavit.data.sample import QA, Sample
from lavit.data.shapes import SPLITS
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.shards import ShardStream, list_shards

KINDS = ("shapes", "jsonl", "coco_captions", "vqav2", "image_folder", "webdataset")
MISSING_SHOWN = 3  # missing images named in the error (the count is always given)


@dataclass
class SourceConfig:
    """One data source. ``kind: auto`` infers the kind from ``path`` (see :func:`resolve_kind`)."""

    kind: str = "auto"  # one of KINDS, or auto
    path: str | None = None  # jsonl file / COCO or VQAv2 annotations JSON / image folder / shards
    image_root: str | None = None  # folder the annotation's image paths are relative to
    questions: str | None = None  # vqav2: the questions JSON (path: the annotations, or none)
    split: str = "train"  # shapes: which split
    weight: float = 1.0  # share in a mixture, proportional; 0 leaves the source out
    limit: int | None = None  # map-style sources: only the first N items
    shapes: ShapesWorldConfig = field(default_factory=ShapesWorldConfig)

    def __post_init__(self) -> None:
        check(self.kind in (*KINDS, "auto"), "kind", self.kind, f"use one of {', '.join(KINDS)} or auto")
        check(self.weight >= 0, "weight", self.weight, "mixture weights are >= 0 (0 leaves the source out)")
        check(self.limit is None or self.limit >= 1, "limit", self.limit, "use a positive item count, or null for all")
        check(self.split in SPLITS, "split", self.split, f"use one of {sorted(SPLITS)}")
        needs_path = self.kind not in ("shapes", "vqav2")
        check(not needs_path or bool(self.path), "path", self.path, f"kind {self.kind} needs a path")
        check(
            self.kind != "vqav2" or bool(self.questions), "questions", self.questions, "vqav2 needs the questions JSON"
        )


@dataclass
class DataConfig:
    """Training and validation sources, and how streams are read."""

    train: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(kind="shapes", split="train")])
    val: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(kind="shapes", split="val")])
    shuffle_buffer: int = 1000  # raw samples held per reader when shuffling shards
    max_bad_fraction: float = 0.01  # share of undecodable samples past which a run stops
    seed: int = 0

    def __post_init__(self) -> None:
        check(len(self.train) > 0, "data.train", self.train, "name at least one source")
        check(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "use 1 (no shuffle) or more")
        check(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", self.max_bad_fraction, "use a share in [0, 1]")
        for name, sources in (("data.train", self.train), ("data.val", self.val)):
            weights = [s.weight for s in sources]
            check(not sources or sum(weights) > 0, f"{name}[*].weight", weights, "give one source a weight > 0")


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
    where: str = "source",
) -> Dataset[Sample] | ShardStream:
    """Build one source.

    Args:
        cfg: the source.
        on_bad_image: map-style readers' policy for an image that fails to decode.
        seed, rank, world_size, shuffle_buffer, max_bad_fraction: for a webdataset stream.
        max_pixels: decompression-bomb limit of every image.
        where: how errors name the source (``data.train[1]``).

    Returns:
        A map-style ``Dataset[Sample]`` (shapes, jsonl, coco_captions, vqav2, image_folder) or a
        :class:`ShardStream` (webdataset).

    Raises:
        ConfigError / AnnotationError: one line naming the file, line or key and the fix.
    """
    kind = resolve_kind(cfg)
    if kind == "shapes":
        ds: Any = ShapesWorld(cfg.shapes, cfg.split)
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
        ds = JsonlSource(str(cfg.path), cfg.image_root, **common)
    elif kind == "coco_captions":
        ds = CocoCaptionsDataset(str(cfg.path), cfg.image_root or Path(str(cfg.path)).parent, **common)
    elif kind == "vqav2":
        root = cfg.image_root or Path(str(cfg.questions)).parent
        ds = VQAv2Dataset(str(cfg.questions), cfg.path, image_root=root, **common)
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


def build_data(
    cfgs: list[SourceConfig],
    seed: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    shuffle_buffer: int = 1000,
    max_bad_fraction: float = 0.01,
    length: int | None = None,
    where: str = "data.train",
) -> Any:
    """Build a source list: one source -> itself, several -> a weighted mixture.

    Args:
        cfgs: the sources (``DataConfig.train`` or ``.val``).
        seed: seeds shard order, shuffle buffers and mixture draws.
        rank, world_size: this process among the data-parallel ranks (streams split by them).
        shuffle_buffer, max_bad_fraction: ``DataConfig``'s, for shard streams.
        length: items of a :class:`MixtureDataset` (default: its sources' total).
        where: how errors name the list.

    Returns:
        A map-style ``Dataset[Sample]`` (use the trainer's StepBatchSampler) or an endless stream
        (``ShardStream`` / ``MixtureStream``; use ``.resumed(...)`` to resume, see shards.py).
    """
    if not cfgs:
        raise ConfigError(f"{where}: no sources; name at least one")
    names = [f"{where}[{i}]" for i in range(len(cfgs))]
    weights = [c.weight for c in cfgs]
    normalise_weights(weights, names)  # raises on a negative weight or all zeros
    stream = {"seed": seed, "rank": rank, "world_size": world_size}
    sources = [
        build_source(c, shuffle_buffer=shuffle_buffer, max_bad_fraction=max_bad_fraction, where=n, **stream)
        for c, n in zip(cfgs, names, strict=True)
    ]
    if len(sources) == 1:
        return sources[0]
    if any(isinstance(s, ShardStream) for s in sources):
        return MixtureStream(sources, weights, **stream)
    return MixtureDataset(sources, weights, seed=seed, length=length)


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


class JsonlSource(_ImageRecordDataset):
    """JSONL with caption lines, question lines, or both in one line::

        {"image": "a.jpg", "text": "a caption"}                    # text: a string or a list
        {"image": "a.jpg", "question": "what colour?", "answers": ["red"], "question_id": 7}

    ``answers`` may be a string or a list (default none); other keys go to ``Sample.meta``.
    ``lines[i]`` is record i's line number (before any ``scan()``).
    (:class:`lavit.data.readers.JsonlDataset` reads caption lines only.)

    Args:
        path: the JSONL file.
        image_root: folder the image paths are relative to (default: the file's folder).
        on_bad_image, max_pixels: as for every reader (see lavit/data/readers.py).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | None = None,
        *,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        path = Path(path)
        root = Path(image_root) if image_root is not None else path.parent
        try:  # utf-8-sig: a byte-order mark some editors write is not part of line 1's JSON
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: not UTF-8 text (byte {e.start}); save the JSONL file as UTF-8") from None
        records, self.lines = [], []
        for lineno, line in enumerate(io.StringIO(text, newline=None), start=1):  # newlines as a text-mode file
            if line.strip():
                where = f"{path}, line {lineno}"
                records.append(_jsonl_record(json_line(line, where), root, where))
                self.lines.append(lineno)
        super().__init__(records, source=str(path), on_bad_image=on_bad_image, max_pixels=max_pixels)


def json_line(line: str, where: str) -> dict[str, Any]:
    """One JSONL line as an object, or an AnnotationError naming ``where``."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{where}: invalid JSON ({e}). Each line must be one JSON object.") from e
    if not isinstance(obj, dict):
        raise AnnotationError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    return obj


def _jsonl_record(obj: dict[str, Any], root: Path, where: str) -> _Record:
    if "image" not in obj:
        raise AnnotationError(f"{where}: missing key 'image'. Each line needs an image path and a text or question.")
    if "text" not in obj and "question" not in obj:
        raise AnnotationError(
            f"{where}: has neither 'text' nor 'question' (keys {sorted(obj)}). Give a caption as "
            '"text" or a VQA item as "question" + "answers".'
        )
    image, text, question = obj.pop("image"), obj.pop("text", []), obj.pop("question", None)
    answers, qid = obj.pop("answers", []), obj.pop("question_id", None)
    if not isinstance(image, str):
        raise AnnotationError(f"{where}: 'image' must be a path string, got {type(image).__name__}.")
    captions = [text] if isinstance(text, str) else text
    if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
        raise AnnotationError(f"{where}: 'text' must be a string or a list of strings.")
    answers = [answers] if isinstance(answers, str) else answers
    if question is not None and (
        not isinstance(question, str) or not isinstance(answers, list) or not all(isinstance(a, str) for a in answers)
    ):
        raise AnnotationError(f"{where}: 'question' must be a string and 'answers' a string or a list of strings.")
    qa = [] if question is None else [QA(question, answers, None if qid is None else str(qid))]
    key = None if qid is None else str(qid)
    return _Record(image_path=root / image, image_id=image, captions=captions, qa=qa, meta=obj, key=key)
