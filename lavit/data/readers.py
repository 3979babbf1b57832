"""Readers for the dataset formats real users have: JSONL, COCO captions, VQAv2, image folders.

Every reader is a map-style :class:`torch.utils.data.Dataset` of :class:`Sample`. Annotation
files are parsed (and validated, with errors naming the file and the line or entry) in
``__init__``; images are decoded lazily in ``__getitem__`` through
:func:`lavit.data.image_io.load_image`.

Bad images: ``on_bad_image="raise"`` (default) raises :class:`ImageLoadError`; ``"skip"``
records the failure in ``dataset.bad_images`` (path -> message) and returns the next good
sample, scanning forward and wrapping around. ``scan()`` checks every image up front and, in
skip mode, drops the bad records. ``max_pixels`` is passed to :func:`load_image`. DataLoader
workers each hold their own ``bad_images``; call ``scan()`` first for a global count.

Sharding and resuming without decoding: ``key(i)`` is a stable id of record ``i`` (unique in
the dataset) and ``image_path(i)`` its image file; neither opens the image. Keys are the
question id for question datasets (VQAv2) and the ``image_id`` otherwise (see
:meth:`_ImageRecordDataset.key` for the rule on repeats).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import Dataset

from lavit.data.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image
from lavit.data.sample import QA, Sample

ON_BAD_IMAGE_CHOICES = ("raise", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
VQA_IMAGE_PATTERN = "COCO_{split}_{image_id:012d}.jpg"
# Image keys copied into a COCO-format sample's ``meta`` when present: NoCaps marks each image
# in-, near- or out-domain (results are reported per domain) and gives its Open Images id.
COCO_IMAGE_META_KEYS = ("domain", "open_images_id")


class AnnotationError(ValueError):
    """An annotation file is malformed; the message names the file and the line or entry."""


@dataclass
class _Record:
    """Everything about one sample except the decoded image."""

    image_path: Path
    image_id: str
    captions: list[str] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    # The reader's id for the record (e.g. the question id); None means ``image_id``. The base
    # class replaces it with the final, de-duplicated key.
    key: str | None = None


class _ImageRecordDataset(Dataset[Sample]):
    """Shared lazy loading and bad-image handling; subclasses only build ``_records``.

    Args:
        records: one record per sample, in a deterministic order.
        source: the annotation file or folder, named in error messages.
        on_bad_image: "raise" or "skip" (see the module docstring).
        max_pixels: passed to :func:`load_image`.
    """

    def __init__(self, records: list[_Record], *, source: str, on_bad_image: str, max_pixels: int) -> None:
        if on_bad_image not in ON_BAD_IMAGE_CHOICES:
            raise ValueError(f"on_bad_image={on_bad_image!r} is not one of {ON_BAD_IMAGE_CHOICES}")
        _assign_unique_keys(records)
        self._records = records
        self.source = source
        self.on_bad_image = on_bad_image
        self.max_pixels = max_pixels
        self.bad_images: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._records)

    def key(self, i: int) -> str:
        """A stable id of record ``i``, unique within the dataset; the image is not opened.

        The reader's id (the question id for question datasets, else the ``image_id``). When
        the same id occurs more than once (e.g. a JSONL listing one image twice), the first
        occurrence keeps it and the n-th occurrence, in file order, gets ``"<id>#<n>"``
        (``"a.png"``, ``"a.png#2"``, ``"a.png#3"``; a suffix already taken is skipped). Keys
        are fixed in ``__init__``: ``scan()`` may drop records and shift indices, but never
        changes a record's key. In skip mode ``self[i]`` may return a later record; call
        ``scan()`` first when indices and keys must line up with the samples.

        Raises:
            IndexError: ``i`` is out of range (negative indices count from the end).
        """
        key = self._record(i).key
        assert key is not None  # set by _assign_unique_keys
        return key

    def image_path(self, i: int) -> Path:
        """The image file of record ``i``, without opening it (it may not exist).

        Raises:
            IndexError: ``i`` is out of range (negative indices count from the end).
        """
        return self._record(i).image_path

    def captions(self, i: int) -> list[str]:
        """The reference captions of record ``i``, without opening its image."""
        return self._record(i).captions

    def qa(self, i: int) -> list[QA]:
        """The questions (with reference answers) of record ``i``, without opening its image."""
        return self._record(i).qa

    def _record(self, index: int) -> _Record:
        n = len(self._records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        return self._records[index]

    def __getitem__(self, index: int) -> Sample:
        n = len(self._records)
        self._record(index)  # range check
        # Skip mode: scan forward from `index`, wrapping around, for the next loadable image.
        for offset in range(n):
            record = self._records[(index + offset) % n]
            image = self._try_load(record)
            if image is not None:
                return Sample(
                    image=image,
                    image_id=record.image_id,
                    captions=list(record.captions),
                    qa=list(record.qa),
                    meta=dict(record.meta),
                )
        first_error = next(iter(self.bad_images.values()), "no error recorded")
        raise ImageLoadError(
            f"{self.source}: every one of the {n} images failed to load (e.g. {first_error}). "
            f"Check the image root and the paths in the annotations.",
            path=self.source,
        )

    def scan(self) -> int:
        """Open and decode every image once; in skip mode drop the records that fail.

        Returns:
            The number of records dropped (always 0 in raise mode, which raises instead).

        Raises:
            ImageLoadError: in raise mode, at the first bad image.
        """
        good = [record for record in self._records if self._try_load(record) is not None]
        dropped = len(self._records) - len(good)
        self._records = good
        return dropped

    def _try_load(self, record: _Record) -> Image.Image | None:
        """The record's RGB image, or None (with the reason in ``bad_images``) in skip mode."""
        key = str(record.image_path)
        if key in self.bad_images:
            return None
        try:
            return load_image(record.image_path, max_pixels=self.max_pixels)
        except ImageLoadError as e:
            if self.on_bad_image == "raise":
                raise
            self.bad_images[key] = str(e)
            return None


def _assign_unique_keys(records: list[_Record]) -> None:
    """Set every ``record.key`` to its id (``key`` or ``image_id``), suffixing repeats with ``#n``."""
    base = [record.key if record.key is not None else record.image_id for record in records]
    taken = set(base)  # a repeat never takes a key some record holds as its own id
    counts: dict[str, int] = {}
    seen: set[str] = set()
    for record, key in zip(records, base, strict=True):
        if key not in seen:
            seen.add(key)
            record.key = key
            continue
        n = counts.get(key, 1)
        candidate = key
        while candidate in taken:
            n += 1
            candidate = f"{key}#{n}"
        counts[key] = n
        taken.add(candidate)
        record.key = candidate


class JsonlDataset(_ImageRecordDataset):
    """JSONL with caption lines, question lines, or both in one line::

        {"image": "a.jpg", "text": "a caption"}                    # text: a string or a list
        {"image": "a.jpg", "question": "what colour?", "answers": ["red"], "question_id": 7}

    ``answers`` may be a string or a list (default none); other keys go to ``Sample.meta``.
    ``lines[i]`` is record i's line number (before any ``scan()``).

    Args:
        path: the JSONL file.
        image_root: folder the image paths are relative to (default: the file's folder).
        on_bad_image, max_pixels: as for every reader (see the module docstring).
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
                records.append(_jsonl_record(_json_line(line, where), root, where))
                self.lines.append(lineno)
        super().__init__(records, source=str(path), on_bad_image=on_bad_image, max_pixels=max_pixels)


def _json_line(line: str, where: str) -> dict[str, Any]:
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


class CocoCaptionsDataset(_ImageRecordDataset):
    """COCO captions (``captions_train2014.json``): one sample per image with all its captions.

    Images keep the order of the ``images`` list; an image without annotations gets no
    captions. ``image_id`` (and ``key``) is ``str(COCO id)`` and ``meta`` is
    ``{"file_name": ...}`` plus the image keys in :data:`COCO_IMAGE_META_KEYS` that are present.
    NoCaps (``nocaps_val_4500_captions.json``) is in this format: its ``meta["domain"]`` is
    ``"in-domain"``, ``"near-domain"`` or ``"out-domain"``.

    Args:
        annotation_file: the COCO captions JSON.
        image_root: folder holding the ``file_name`` of each image.
        on_bad_image, max_pixels: as for every reader (see the module docstring).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        *,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        ann_path = Path(annotation_file)
        records = [
            _Record(
                image_path=Path(image_root) / image["file_name"],
                image_id=str(image["id"]),
                captions=captions,
                meta={"file_name": image["file_name"]} | {k: image[k] for k in COCO_IMAGE_META_KEYS if k in image},
            )
            for image, captions in _read_coco_captions(ann_path)
        ]
        super().__init__(records, source=str(ann_path), on_bad_image=on_bad_image, max_pixels=max_pixels)


def _read_coco_captions(ann_path: Path) -> list[tuple[dict[str, Any], list[str]]]:
    """Parse and validate a COCO captions JSON.

    Returns:
        ``(image entry, its captions in annotation order)`` per image, in ``images`` order.

    Raises:
        AnnotationError: naming the file and the entry (``images[i]`` / ``annotations[i]``).
    """
    data = _load_json_object(ann_path, required=("images", "annotations"))
    images = _entries(data, "images", ann_path, keys=("id", "file_name"))
    annotations = _entries(data, "annotations", ann_path, keys=("image_id", "caption"))

    captions: dict[Any, list[str]] = {}
    for i, image in enumerate(images):
        if image["id"] in captions:
            raise AnnotationError(f"{ann_path}: images[{i}] repeats image id {image['id']!r}.")
        if not isinstance(image["file_name"], str):
            raise AnnotationError(f"{ann_path}: images[{i}]: 'file_name' must be a string.")
        captions[image["id"]] = []
    for i, ann in enumerate(annotations):
        if ann["image_id"] not in captions:
            raise AnnotationError(
                f"{ann_path}: annotations[{i}] refers to image_id {ann['image_id']!r}, which is not "
                f"in 'images'. Is this the captions file that matches these images?"
            )
        if not isinstance(ann["caption"], str):
            raise AnnotationError(f"{ann_path}: annotations[{i}]: 'caption' must be a string.")
        captions[ann["image_id"]].append(ann["caption"])
    return [(image, captions[image["id"]]) for image in images]


class VQAv2Dataset(_ImageRecordDataset):
    """VQAv2 official questions (+ optional annotations): one sample per question.

    Each sample has ``qa=[QA(question, answers=<the 10 raw answers>, question_id)]``; with no
    annotations file (test split) ``answers=[]``. ``key`` is ``str(question_id)``. OK-VQA
    (``OpenEnded_mscoco_val2014_questions.json`` + ``mscoco_val2014_annotations.json``) is in
    this format and reads unchanged. ``meta`` holds ``multiple_choice_answer``,
    ``question_type`` and ``answer_type`` when annotations are given.

    Args:
        questions_file: e.g. ``v2_OpenEnded_mscoco_val2014_questions.json``.
        annotations_file: e.g. ``v2_mscoco_val2014_annotations.json``; ``None`` for test.
        image_root: folder holding the COCO images.
        image_pattern: file name from ``{split}`` and ``{image_id}``.
        split: fills ``{split}``; default: the questions file's ``data_subtype``, with
            ``test-dev2015`` mapped to ``test2015`` (test-dev images are a subset of test2015).
        on_bad_image, max_pixels: as for every reader (see the module docstring).
    """

    def __init__(
        self,
        questions_file: str | os.PathLike[str],
        annotations_file: str | os.PathLike[str] | None = None,
        *,
        image_root: str | os.PathLike[str],
        image_pattern: str = VQA_IMAGE_PATTERN,
        split: str | None = None,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        q_path = Path(questions_file)
        q_data = _load_json_object(q_path, required=("data_subtype", "questions"))
        questions = _entries(q_data, "questions", q_path, keys=("image_id", "question", "question_id"))
        if split is None:
            split = "test2015" if q_data["data_subtype"] == "test-dev2015" else str(q_data["data_subtype"])

        by_qid = {} if annotations_file is None else _vqa_annotations(Path(annotations_file), q_path, questions)
        root = Path(image_root)
        records = []
        for q in questions:
            ann = by_qid.get(q["question_id"], {"answers": []})  # no annotations: test split
            answers = [a["answer"] for a in ann["answers"]]
            meta = {k: ann[k] for k in ("multiple_choice_answer", "question_type", "answer_type") if k in ann}
            records.append(
                _Record(
                    image_path=root / _format_pattern(image_pattern, split, q["image_id"]),
                    image_id=str(q["image_id"]),
                    qa=[QA(question=q["question"], answers=answers, question_id=str(q["question_id"]))],
                    meta=meta,
                    key=str(q["question_id"]),
                )
            )
        super().__init__(records, source=str(q_path), on_bad_image=on_bad_image, max_pixels=max_pixels)


def _vqa_annotations(a_path: Path, q_path: Path, questions: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    """Index the annotations by question id, checking they cover exactly the questions."""
    a_data = _load_json_object(a_path, required=("annotations",))
    annotations = _entries(a_data, "annotations", a_path, keys=("question_id", "image_id", "answers"))
    by_qid = {ann["question_id"]: ann for ann in annotations}
    q_ids = {q["question_id"] for q in questions}
    if q_ids != set(by_qid) or len(by_qid) != len(annotations):
        only_q = sorted(q_ids - set(by_qid), key=str)[:5]
        only_a = sorted(set(by_qid) - q_ids, key=str)[:5]
        raise AnnotationError(
            f"question ids differ between {q_path} ({len(q_ids)} questions) and {a_path} "
            f"({len(annotations)} annotations, {len(by_qid)} distinct ids); only in questions: "
            f"{only_q}, only in annotations: {only_a}. Use the questions and annotations of the same split."
        )
    for i, q in enumerate(questions):
        ann = by_qid[q["question_id"]]
        if ann["image_id"] != q["image_id"]:
            raise AnnotationError(
                f"question {q['question_id']} is on image {q['image_id']} in {q_path} (questions[{i}]) "
                f"but on image {ann['image_id']} in {a_path}. Use files of the same split and version."
            )
        if not isinstance(ann["answers"], list) or not all(
            isinstance(a, dict) and "answer" in a for a in ann["answers"]
        ):
            raise AnnotationError(
                f"{a_path}: annotation for question {q['question_id']}: 'answers' must be a list of "
                f'{{"answer": ...}} objects.'
            )
    return by_qid


def _format_pattern(pattern: str, split: str, image_id: Any) -> str:
    try:
        return pattern.format(split=split, image_id=int(image_id))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(
            f"image_pattern {pattern!r} cannot be filled for image_id={image_id!r} ({type(e).__name__}: {e}). "
            f"It may use only {{split}} and {{image_id}}, e.g. {VQA_IMAGE_PATTERN!r}."
        ) from e


class ImageFolderDataset(_ImageRecordDataset):
    """Every image file under a folder, sorted; no text.

    ``image_id`` is the path relative to ``root`` in posix form. Hidden files and folders
    (names starting with "."; e.g. macOS ``._x.jpg`` resource forks) are ignored.
    Extensions match case-insensitively; symlinked folders are followed once.

    Args:
        root: the folder.
        extensions: file name endings that count as images.
        recursive: also look in sub-folders.
        on_bad_image, max_pixels: as for every reader (see the module docstring).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
        recursive: bool = True,
        *,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise ValueError(f"{root_path}: not a folder. Pass the folder that holds the images.")
        suffixes = tuple(e.lower() for e in extensions)
        relative = sorted(p.as_posix() for p in _find_files(root_path, suffixes, recursive))
        if not relative:
            msg = f"no image files found (extensions {suffixes}, recursive={recursive})"
            raise ValueError(f"{root_path}: {msg}. Check the folder or pass extensions=.")
        records = [_Record(image_path=root_path / rel, image_id=rel) for rel in relative]
        super().__init__(records, source=str(root_path), on_bad_image=on_bad_image, max_pixels=max_pixels)


def _find_files(root: Path, suffixes: tuple[str, ...], recursive: bool) -> Iterator[Path]:
    """Yield image paths relative to ``root``, skipping hidden entries and symlink cycles."""
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(suffixes):
                yield Path(dirpath, name).relative_to(root)


def _load_json_object(path: Path, *, required: tuple[str, ...]) -> dict[str, Any]:
    """Parse a JSON file that must be an object holding the ``required`` keys."""
    with path.open(encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise AnnotationError(f"{path}: invalid JSON ({e}). Is the file complete?") from e
        except UnicodeDecodeError as e:
            raise AnnotationError(f"{path}: not UTF-8 text (byte {e.start}); is it the JSON annotation file?") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}.")
    for key in required:
        if key not in data:
            raise AnnotationError(f"{path}: missing top-level key {key!r} (found {sorted(data)[:10]}).")
    return data


def _entries(data: dict[str, Any], list_key: str, path: Path, *, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """Return ``data[list_key]``, checking it is a list of objects each holding ``keys``."""
    entries = data[list_key]
    if not isinstance(entries, list):
        raise AnnotationError(f"{path}: {list_key!r} must be a list, got {type(entries).__name__}.")
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise AnnotationError(f"{path}: {list_key}[{i}] must be an object, got {type(entry).__name__}.")
        for key in keys:
            if key not in entry:
                raise AnnotationError(f"{path}: {list_key}[{i}] is missing key {key!r}.")
    return entries
