"""Readers for the zero-shot benchmarks LaVIT reports, in their official file formats.

Captioning: :class:`KarpathyCaptionsDataset` (COCO and Flickr30k Karpathy splits); NoCaps is in
the COCO captions format and reads with :class:`lavit.data.readers.CocoCaptionsDataset` (its
``meta["domain"]`` gives the in/near/out-domain breakdown). VQA: :class:`VizWizDataset` and
:class:`GQADataset`; OK-VQA is in the VQAv2 format and reads with
:class:`lavit.data.readers.VQAv2Dataset`. Text-to-image: :class:`CocoPromptsDataset` yields
:class:`Prompt` items (caption + reference image path for FID), not images.

The image readers share :class:`lavit.data.readers._ImageRecordDataset`: annotations are parsed
and validated in ``__init__`` (an :class:`AnnotationError` names the file and the entry), images
are decoded lazily, ``on_bad_image`` / ``max_pixels`` / ``scan()`` behave as for every reader,
and ``key(i)`` / ``image_path(i)`` let an evaluation runner shard and resume without decoding.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from lavit.data.image_io import DEFAULT_MAX_PIXELS
from lavit.data.readers import (
    AnnotationError,
    _entries,
    _ImageRecordDataset,
    _load_json_object,
    _read_coco_captions,
    _Record,
)
from lavit.data.sample import QA

KARPATHY_SPLITS = ("train", "val", "test", "restval")


class KarpathyCaptionsDataset(_ImageRecordDataset):
    """Karpathy-split captions (``dataset_coco.json``, ``dataset_flickr30k.json``): one sample per image.

    Only images whose ``split`` equals ``split`` are kept, in file order. The image file is
    ``image_root / filepath / filename`` (COCO entries carry ``filepath``, e.g. ``"val2014"``;
    Flickr30k entries do not: ``image_root / filename``). ``image_id`` (and ``key``) is
    ``str(cocoid)`` when present, else ``str(imgid)``; ``captions`` are the ``raw`` sentences;
    ``meta`` is ``{"file_name": "<filepath>/<filename>", "imgid": ...}``.

    Args:
        annotation_file: the Karpathy split JSON.
        image_root: folder holding ``filepath/filename`` (COCO) or ``filename`` (Flickr30k).
        split: one of :data:`KARPATHY_SPLITS`; zero-shot captioning reports ``"test"``.
        on_bad_image, max_pixels: as for every reader (see :mod:`lavit.data.readers`).

    Raises:
        AnnotationError: the file is malformed (naming the file and ``images[i]``).
        ValueError: ``split`` is unknown or no image of the file is in it.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        split: str = "test",
        *,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if split not in KARPATHY_SPLITS:
            raise ValueError(f"split={split!r} is not one of {KARPATHY_SPLITS}")
        ann_path = Path(annotation_file)
        data = _load_json_object(ann_path, required=("images",))
        images = _entries(data, "images", ann_path, keys=("filename", "split", "sentences", "imgid"))
        root = Path(image_root)
        split_counts: dict[str, int] = {}
        records = []
        for i, image in enumerate(images):
            where = f"{ann_path}: images[{i}]"
            # Validate every entry, not only the requested split's: a broken file fails the same way for every split.
            image_split = _string(image, "split", where)
            if image_split not in KARPATHY_SPLITS:
                raise AnnotationError(f"{where}: 'split' is {image_split!r}, not one of {KARPATHY_SPLITS}.")
            split_counts[image_split] = split_counts.get(image_split, 0) + 1
            filename = _string(image, "filename", where)
            file_name = f"{_string(image, 'filepath', where)}/{filename}" if "filepath" in image else filename
            captions = _strings_in(image["sentences"], "raw", "sentences", where)
            if image_split != split:
                continue
            records.append(
                _Record(
                    image_path=root / file_name,
                    image_id=str(image.get("cocoid", image["imgid"])),
                    captions=captions,
                    meta={"file_name": file_name, "imgid": image["imgid"]},
                )
            )
        if not records:
            raise ValueError(
                f"{ann_path}: no image is in split {split!r} (images per split: {split_counts}). "
                f"Pass one of the splits the file has."
            )
        super().__init__(records, source=str(ann_path), on_bad_image=on_bad_image, max_pixels=max_pixels)


def _strings_in(items: Any, field: str, name: str, where: str) -> list[str]:
    """``[item[field] for item in items]`` for a list of objects each holding a string ``field``
    (Karpathy ``sentences`` -> ``raw``, VizWiz ``answers`` -> ``answer``), checking the structure."""
    if not isinstance(items, list) or not all(isinstance(x, dict) and isinstance(x.get(field), str) for x in items):
        raise AnnotationError(f'{where}: \'{name}\' must be a list of {{"{field}": "<text>", ...}} objects.')
    return [x[field] for x in items]


class VizWizDataset(_ImageRecordDataset):
    """VizWiz VQA (``val.json``): a JSON list with one question per image.

    Each sample has ``qa=[QA(question, answers=<the 10 raw answers>, question_id=<stem>)]``
    where ``<stem>`` is the image file name without extension (``"VizWiz_val_00000000"``); that
    stem is also the ``key``. ``image_id`` is the ``image`` value as written. ``meta`` holds
    ``answer_type`` and ``answerable`` when present. A file without ``answers`` (the test
    split) gives ``answers=[]``; either every entry has ``answers`` or none does.

    Args:
        annotation_file: e.g. ``val.json``.
        image_root: folder holding the ``image`` files (e.g. ``val/``).
        on_bad_image, max_pixels: as for every reader (see :mod:`lavit.data.readers`).

    Raises:
        AnnotationError: the file is malformed (naming the file and ``entry i``).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        *,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        path = Path(annotation_file)
        entries = _load_json_list(path)
        expected = '{"image": ..., "question": ..., "answers": [{"answer": ...}, ...]}'
        with_answers = bool(entries) and isinstance(entries[0], dict) and "answers" in entries[0]
        root = Path(image_root)
        records = []
        for i, entry in enumerate(entries):
            where = f"{path}: entry {i}"
            _require_keys(entry, ("image", "question"), where, expected)
            _same_optional_key(entry, "answers", with_answers, where)
            image = _string(entry, "image", where)
            answers = _strings_in(entry["answers"], "answer", "answers", where) if with_answers else []
            stem = Path(image).stem
            records.append(
                _Record(
                    image_path=root / image,
                    image_id=image,
                    qa=[QA(question=_string(entry, "question", where), answers=answers, question_id=stem)],
                    meta={k: entry[k] for k in ("answer_type", "answerable") if k in entry},
                    key=stem,
                )
            )
        super().__init__(records, source=str(path), on_bad_image=on_bad_image, max_pixels=max_pixels)


class GQADataset(_ImageRecordDataset):
    """GQA questions (``testdev_balanced_questions.json``): ``{qid: {...}}``, one sample per question.

    Questions keep the file's order. The image file is ``image_root / f"{imageId}.jpg"``;
    ``image_id`` is ``imageId``; each sample has ``qa=[QA(question, [answer], qid)]`` and
    ``key`` is ``qid``. ``meta`` holds ``fullAnswer`` and ``types`` (structural / semantic /
    detailed, for per-type accuracy) when present. A file without ``answer`` (the test
    submission questions) gives ``answers=[]``; either every question has ``answer`` or none does.

    Args:
        questions_file: e.g. ``testdev_balanced_questions.json``.
        image_root: folder holding ``<imageId>.jpg``.
        on_bad_image, max_pixels: as for every reader (see :mod:`lavit.data.readers`).

    Raises:
        AnnotationError: the file is malformed (naming the file, the entry index and its qid).
    """

    def __init__(
        self,
        questions_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        *,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        path = Path(questions_file)
        data = _load_json_object(path, required=())
        expected = '{"<qid>": {"imageId": ..., "question": ..., "answer": ...}}'
        first = next(iter(data.values()), None)
        with_answers = isinstance(first, dict) and "answer" in first
        root = Path(image_root)
        records = []
        for i, (qid, entry) in enumerate(data.items()):
            where = f"{path}: entry {i} (question {qid!r})"
            _require_keys(entry, ("imageId", "question"), where, expected)
            _same_optional_key(entry, "answer", with_answers, where)
            image_id = _string(entry, "imageId", where)
            answers = [_string(entry, "answer", where)] if with_answers else []
            records.append(
                _Record(
                    image_path=root / f"{image_id}.jpg",
                    image_id=image_id,
                    qa=[QA(question=_string(entry, "question", where), answers=answers, question_id=qid)],
                    meta={k: entry[k] for k in ("fullAnswer", "types") if k in entry},
                    key=qid,
                )
            )
        super().__init__(records, source=str(path), on_bad_image=on_bad_image, max_pixels=max_pixels)


@dataclass(frozen=True)
class Prompt:
    """One text-to-image prompt.

    Attributes:
        key: stable unique id, ``"<image_id>_<j>"`` with ``j`` the caption's index among its
            image's captions in annotation order.
        text: the caption, surrounding whitespace stripped.
        reference_image: the real image the caption describes (for FID), or ``None`` when the
            dataset was built without an image root. Never opened or checked by the reader.
    """

    key: str
    text: str
    reference_image: Path | None


class CocoPromptsDataset(Dataset[Prompt]):
    """Text-to-image prompts from a COCO captions JSON (``captions_val2014.json``).

    Images are ordered by id (images without captions are left out). Default, ``seed=None``:
    the first ``limit`` images and, of each, its first ``per_image`` captions in annotation
    order. With an integer ``seed``: ``limit`` images drawn at random (then ordered by id) and
    ``per_image`` captions of each drawn at random (kept in annotation order), both from
    ``random.Random(seed)`` -- the usual "30K random captions" FID protocol. An image with
    fewer than ``per_image`` captions gives all it has. Nothing is read but the JSON.

    Args:
        annotation_file: the COCO captions JSON.
        image_root: folder holding the images' ``file_name``; gives ``Prompt.reference_image``.
        per_image: captions (prompts) per image, at least 1.
        limit: number of images to use (all when ``None`` or larger than the file).
        seed: ``None`` for the first images/captions, an int for a seeded random choice.

    Raises:
        AnnotationError: the file is malformed (naming the file and the entry).
        ValueError: ``per_image`` or ``limit`` is below 1.
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str] | None = None,
        per_image: int = 1,
        limit: int | None = None,
        seed: int | None = None,
    ) -> None:
        if per_image < 1:
            raise ValueError(f"per_image must be at least 1, got {per_image}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1 or None, got {limit}")
        ann_path = Path(annotation_file)
        images = sorted(((im, caps) for im, caps in _read_coco_captions(ann_path) if caps), key=_image_order)
        rng = random.Random(seed) if seed is not None else None
        if limit is not None and limit < len(images):
            images = sorted(rng.sample(images, limit), key=_image_order) if rng is not None else images[:limit]

        root = Path(image_root) if image_root is not None else None
        self._prompts: list[Prompt] = []
        for image, captions in images:
            count = min(per_image, len(captions))
            chosen = sorted(rng.sample(range(len(captions)), count)) if rng is not None else list(range(count))
            reference = root / image["file_name"] if root is not None else None
            self._prompts += [Prompt(f"{image['id']}_{j}", captions[j].strip(), reference) for j in chosen]
        if len({p.key for p in self._prompts}) != len(self._prompts):
            raise AnnotationError(
                f'{ann_path}: two image ids have the same text form (e.g. 1 and "1"), so prompt keys repeat. '
                f"Use unique image ids."
            )
        self.source = str(ann_path)

    def __len__(self) -> int:
        return len(self._prompts)

    def __getitem__(self, index: int) -> Prompt:
        n = len(self._prompts)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} prompts")
        return self._prompts[index]

    def key(self, i: int) -> str:
        """The stable unique id of prompt ``i`` (``"<image_id>_<j>"``; see :class:`Prompt`).

        Raises:
            IndexError: ``i`` is out of range (negative indices count from the end).
        """
        return self[i].key


def _image_order(pair: tuple[dict[str, Any], list[str]]) -> tuple[int, int, str]:
    """Sort key for COCO images by id: integer ids numerically, then any other ids as text."""
    image_id = pair[0]["id"]
    if isinstance(image_id, int) and not isinstance(image_id, bool):
        return (0, image_id, "")
    return (1, 0, str(image_id))


def _load_json_list(path: Path) -> list[Any]:
    """Parse a JSON file that must hold a list at the top level."""
    with path.open(encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}: invalid JSON ({e}). Is the file complete?") from e
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: not UTF-8 text (byte {e.start}); is it the JSON annotation file?") from None
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: expected a JSON list at the top level, got {type(data).__name__}.")
    return data


def _require_keys(entry: Any, keys: tuple[str, ...], where: str, expected: str) -> None:
    """Check ``entry`` is an object holding ``keys``; ``expected`` shows the right shape."""
    if not isinstance(entry, dict):
        raise AnnotationError(f"{where}: expected a JSON object, got {type(entry).__name__}. Expected {expected}.")
    for key in keys:
        if key not in entry:
            raise AnnotationError(f"{where}: missing key {key!r}. Expected {expected}.")


def _same_optional_key(entry: dict[str, Any], key: str, first_has: bool, where: str) -> None:
    """An optional key (answers) must be in every entry or in none, as decided by the first entry."""
    if first_has and key not in entry:
        raise AnnotationError(f"{where}: missing key {key!r} (the first entry has it; every entry must).")
    if not first_has and key in entry:
        raise AnnotationError(
            f"{where}: has key {key!r} but the first entry does not; either every entry has it or none does."
        )


def _string(entry: dict[str, Any], key: str, where: str) -> str:
    """``entry[key]``, which must be a string."""
    value = entry[key]
    if not isinstance(value, str):
        raise AnnotationError(f"{where}: {key!r} must be a string, got {type(value).__name__}.")
    return value
