"""Evaluation sets: every supported data format turned into one list of :class:`Item`.

An item is what one prediction needs: a key, a lazy image loader, and the references (captions,
a question with its answers, a prompt, a ShapesWorld scene). Building the list reads only the
annotation files, never an image, so ranks can shard and skip finished items cheaply.

Formats (``data.format``): ShapesWorld's held-out scenes for every task; COCO / Flickr30k
Karpathy splits, NoCaps and COCO captions files for captioning; VQAv2, OK-VQA, VizWiz and GQA
for VQA; COCO captions as text-to-image prompts; an image folder for reconstruction.

Everything wrong with the files given is an error naming the file and the fix before any item
is predicted: a path that is not there (or is a folder where a file belongs), a file that is not
UTF-8 JSON, a malformed entry, an empty question, a caption set without references. Only the
images are read later, one by one (an unreadable one is a missing item, not an error).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from PIL import Image

import lavit.data.annotations as annotations
from lavit.config import ConfigError
from lavit.data.benchmark_readers import CocoPromptsDataset, GQADataset, KarpathyCaptionsDataset, VizWizDataset
from lavit.data.image_io import load_image
from lavit.data.readers import (
    AnnotationError,
    CocoCaptionsDataset,
    ImageFolderDataset,
    JsonlDataset,
    VQAv2Dataset,
)
from lavit.data.refcoco import RefCOCODataset
from lavit.data.shapes import Scene
from lavit.data.shapes import text as shapes_text
from lavit.data.shapes.dataset import ShapesWorld
from lavit.evaluation.config import EvalDataConfig


@dataclass
class Item:
    """One thing to predict. ``image()`` decodes lazily (and may raise ImageLoadError)."""

    key: str
    image: Callable[[], Image.Image] | None = None
    captions: list[str] = field(default_factory=list)
    question: str | None = None
    answers: list[str] = field(default_factory=list)
    prompt: str | None = None
    scene: Scene | None = None  # ShapesWorld only: the ground truth the parser is checked against
    reference: Callable[[], Image.Image] | None = None  # text2image: the real image for FID
    # grounding / visual_prompts: the sample's annotations (lavit.data.annotations: a scene, or
    # regions and the image size), which of its regions, the phrase that refers to it, and the
    # question asked (visual_prompts) or whether generation is asked too (RefCOCO: once a region).
    meta: dict | None = None
    region: int | None = None
    phrase: str | None = None
    variant: int | None = None


def build_items(task: str, data: EvalDataConfig) -> list[Item]:
    """The items of ``task`` from the set described by ``data`` (first ``data.limit`` of them)."""
    if task in ("grounding", "visual_prompts"):
        items = grounding_items(task, data)
    else:
        items = _shapes_items(task, data) if data.format == "shapes" else _file_items(task, data)
    return items[: data.limit] if data.limit is not None else items


def _shapes_items(task: str, data: EvalDataConfig) -> list[Item]:
    world = ShapesWorld(data.shapes, data.split)
    # Only as many scenes as the limit can use (VQA has several questions per scene).
    n = len(world) if data.limit is None else min(len(world), data.limit)
    items = []
    for i in range(n):
        key, image, scene = f"shapes-{data.split}-{i}", partial(world.image, i), world.scene(i)
        captions, qas, prompt = world.words(i)
        if task == "vqa":
            items += [
                Item(f"{key}-q{j}", image, question=qa.question, answers=qa.answers, scene=scene)
                for j, qa in enumerate(qas)
            ]
        elif task == "text2image":
            items.append(Item(key, prompt=prompt, scene=scene, reference=image))
        else:  # caption, reconstruct
            items.append(Item(key, image, captions=captions, scene=scene))
    return items


FILES = ("annotations", "questions")  # the data keys that name a file; image_root names a folder


def _need(data: EvalDataConfig, *names: str) -> None:
    for name in names:
        if getattr(data, name) is None:
            raise ConfigError(f"data.format={data.format} needs data.{name} (a local path); set data.{name}=PATH")


def _check_paths(data: EvalDataConfig) -> None:
    """Every path given is there and of the right kind (a file, or the image folder)."""
    for name in FILES:
        path = getattr(data, name)
        if path is not None and not Path(path).is_file():
            what = "is a folder" if Path(path).is_dir() else "does not exist"
            raise ConfigError(f"data.{name}={path} {what}; set data.{name} to the {data.format} {name} file")
    root = data.image_root
    if root is not None and not Path(root).is_dir():
        what = "is a file" if Path(root).exists() else "does not exist"
        raise ConfigError(f"data.image_root={root} {what}; set it to the folder that holds the {data.format} images")


def _read(data: EvalDataConfig, build: Callable[[], object]):
    """``build()`` (a reader over the data files), its input errors as one-line errors naming the file."""
    try:
        return build()
    except (AnnotationError, ConfigError):  # already one line naming the file or key
        raise
    except OSError as e:  # permission denied and the like (absence was checked before)
        raise AnnotationError(
            f"{e.filename}: cannot read it ({e.strerror or e}); check the file and its permissions"
        ) from None
    except ValueError as e:  # the readers' own checks (a split absent from the file, an empty folder)
        raise AnnotationError(" ".join(str(e).split())) from None


def _file_items(task: str, data: EvalDataConfig) -> list[Item]:
    _check_paths(data)
    items = _read(data, lambda: _read_items(task, data))
    if task == "vqa":
        empty = [it.key for it in items if not (it.question or "").strip()]
        if empty:
            file = data.questions or data.annotations
            raise AnnotationError(f"{file}: question {empty[0]} is empty ({len(empty)} in all); fix or drop it")
    if task == "text2image":
        empty = [it.key for it in items if not (it.prompt or "").strip()]
        if empty:
            raise AnnotationError(
                f"{data.annotations}: prompt {empty[0]} is empty ({len(empty)} in all); fix or drop it"
            )
    if task == "caption":
        bare = [it.key for it in items if not it.captions]
        if bare:
            raise AnnotationError(
                f"{data.annotations}: image {bare[0]} has no reference caption ({len(bare)} in all), and captions "
                "are scored against references; use an annotation file with them (e.g. the val split)"
            )
    return items


def _read_items(task: str, data: EvalDataConfig) -> list[Item]:
    fmt = data.format
    if fmt == "coco_prompts":
        _need(data, "annotations")
        prompts = CocoPromptsDataset(data.annotations, data.image_root)
        items = []
        for i in range(len(prompts)):
            p = prompts[i]
            ref = partial(load_image, p.reference_image) if p.reference_image is not None else None
            items.append(Item(p.key, prompt=p.text, reference=ref))
        return items

    if fmt in ("coco_karpathy", "flickr30k"):
        _need(data, "annotations", "image_root")
        ds = KarpathyCaptionsDataset(data.annotations, data.image_root, split=data.split)
    elif fmt in ("nocaps", "coco"):
        _need(data, "annotations", "image_root")
        ds = CocoCaptionsDataset(data.annotations, data.image_root)
    elif fmt in ("vqav2", "okvqa"):
        _need(data, "questions", "image_root")  # no annotations (test-dev): predictions only
        ds = VQAv2Dataset(data.questions, data.annotations, image_root=data.image_root)
    elif fmt == "vizwiz":
        _need(data, "annotations", "image_root")
        ds = VizWizDataset(data.annotations, data.image_root)
    elif fmt == "gqa":
        _need(data, "questions", "image_root")
        ds = GQADataset(data.questions, data.image_root)
    elif fmt == "image_folder":
        _need(data, "image_root")
        ds = ImageFolderDataset(data.image_root)
    elif fmt == "jsonl":  # caption and/or VQA lines; images relative to the file (or image_root)
        _need(data, "annotations")
        ds = JsonlDataset(data.annotations, data.image_root)
        want = (lambda i: bool(ds.qa(i))) if task == "vqa" else (lambda i: bool(ds.captions(i)))
        kept = [i for i in range(len(ds)) if want(i)]
        if not kept:
            what = "question" if task == "vqa" else "caption"
            raise AnnotationError(f"{data.annotations}: no {what} lines for the {task} task")
        return [_item(task, ds, i) for i in kept]
    else:
        raise ConfigError(f"unknown data.format {fmt!r}")

    return [_item(task, ds, i) for i in range(len(ds))]


def _item(task: str, ds, i: int) -> Item:
    """Record ``i`` of a reader as an evaluation item (its image loaded lazily)."""
    image = partial(load_image, ds.image_path(i))
    if task == "vqa":
        (qa,) = ds.qa(i)  # question datasets hold one question per record
        return Item(ds.key(i), image, question=qa.question, answers=qa.answers)
    return Item(ds.key(i), image, captions=ds.captions(i))


def grounding_items(task: str, data: EvalDataConfig) -> list[Item]:
    """The items of ``grounding`` / ``visual_prompts`` from ``data`` (ShapesWorld or RefCOCO)."""
    if data.format == "refcoco":
        return _refcoco_items(data)
    world = ShapesWorld(data.shapes, data.split)
    n = len(world) if data.limit is None else min(len(world), data.limit)
    items = []
    for i in range(n):
        scene, image = world.scene(i), partial(world.image, i)
        meta = {"scene": scene.to_dict()}
        for j in range(len(scene.shapes)):
            key = f"shapes-{data.split}-{i}-r{j}"
            if task == "grounding":
                phrase = shapes_text.referring_phrases(scene, j)[0]
                items.append(Item(key, image, scene=scene, meta=meta, region=j, phrase=phrase))
            else:
                items += [
                    Item(f"{key}-q{k}", image, scene=scene, meta=meta, region=j, variant=k)
                    for k in range(len(annotations.MARKED_QUESTIONS))
                ]
    return items


def _refcoco_items(data: EvalDataConfig) -> list[Item]:
    _need(data, "annotations", "image_root")
    _check_paths(data)
    ds = _read(data, lambda: RefCOCODataset(data.annotations, data.image_root, data.split))
    items, described, count = [], set(), {}
    for e in ds.expressions():
        count[e.ref_id] = count.get(e.ref_id, -1) + 1  # a ref may repeat a sentence: keys by position
        meta = {"regions": ds.regions(e.index), "image_size": list(ds.image_size(e.index))}
        # Generation is asked once per region (its first phrase's item), against all its phrases.
        first = (e.index, e.region) not in described
        described.add((e.index, e.region))
        image = partial(load_image, ds.image_path(e.index))
        items.append(
            Item(
                f"ref{e.ref_id}-s{count[e.ref_id]}",
                image,
                meta=meta,
                region=e.region,
                phrase=e.phrase,
                variant=int(first),
            )
        )
    return items
