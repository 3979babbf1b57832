"""RefCOCO, RefCOCO+ and RefCOCOg (lichengunc/refer) as a reader of grounding samples.

A set's folder holds ``instances.json`` (COCO format: the images, and the annotations whose
``bbox`` is ``[x, y, width, height]`` in pixels) and a refs pickle: ``refs(unc).p`` (RefCOCO,
RefCOCO+; RefCOCO also ships ``refs(google).p``), ``refs(umd).p`` or ``refs(google).p``
(RefCOCOg). Each ref names one annotation (``ann_id``), its image, its split and the sentences
that refer to it. The images are COCO train2014, in ``image_root``.

:class:`RefCOCODataset` yields one :class:`Sample` per image of a split, every ref of that image
in ``meta["regions"]``, so comprehension (phrase -> box) and generation (box -> phrase) train on
the same samples; :meth:`RefCOCODataset.expressions` is the flat per-phrase view evaluation
scores.

The refs file is a pickle, and unpickling can run code. It holds only lists, dicts, strings and
numbers, which need no global, so it is read with an unpickler that refuses every global: a
file that asks for one (a class, a function such as ``os.system``) fails before anything runs.
"""

from __future__ import annotations

import copy
import math
import os
import pickle
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from lavit.config import ConfigError
from lavit.data.benchmark_readers import _strings_in
from lavit.data.image_io import DEFAULT_MAX_PIXELS, ImageLoadError
from lavit.data.readers import AnnotationError, _entries, _ImageRecordDataset, _load_json_object, _Record
from lavit.data.sample import Sample

SPLITS = ("train", "val", "testA", "testB", "test")  # unc: train/val/testA/testB; umd: train/val/test
REFS_FILES = ("refs(unc).p", "refs(umd).p", "refs(google).p")
DEFAULT_REFS_FILE = "refs(unc).p"
INSTANCES_FILE = "instances.json"
# COCO boxes are floats traced by hand; a box may overrun the image by a fraction of a pixel.
BOX_TOLERANCE = 1.0


class Expression(NamedTuple):
    """One referring expression: phrase ``phrase`` of region ``region`` of sample ``index``.

    ``box`` is that region's ``[x0, y0, x1, y1]`` (as in ``regions(index)``) and ``ref_id`` the
    ref it belongs to.
    """

    index: int
    region: int
    phrase: str
    box: list[float]
    ref_id: int


class RefCOCODataset(_ImageRecordDataset):
    """One sample per image of a RefCOCO / RefCOCO+ / RefCOCOg split, with its referred regions.

    Samples follow the order of ``images`` in ``instances.json``, keeping the images that have
    a ref in ``split``. ``image_id`` (and ``key``) is ``str(COCO image id)``; ``captions`` and
    ``qa`` are empty; ``meta`` is::

        {"file_name": "COCO_train2014_000000581857.jpg", "image_size": [width, height],
         "regions": [{"box": [x0, y0, x1, y1], "phrases": ["the woman on the left", ...],
                      "ref_id": 3, "category": "person"}, ...]}

    one region per ref of the image in ``split``, in refs-file order. ``box`` is the referred
    annotation's COCO box converted to corners, in float pixels of the image as stored (clipped
    to it), and ``phrases`` are the ref's ``sent`` strings. Every ref of the file is validated,
    whichever split is read, so a broken file fails the same way for every split.

    A decoded image whose size differs from ``instances.json``'s width and height (a resized
    copy, or an EXIF rotation the annotators did not see) would misplace every box: it counts
    as a bad image (``on_bad_image``).

    Args:
        path: the set's folder (``refcoco/``, ``refcoco+/``, ``refcocog/``), or one refs file
            in it (``refcocog/refs(umd).p``).
        image_root: the COCO train2014 image folder.
        split: one of :data:`SPLITS` that the refs file has (unc: train, val, testA, testB;
            umd: train, val, test; google: train, val).
        refs_file: the refs file's name in ``path``; default ``refs(unc).p`` if present, else
            the one ``refs(*).p`` file there.
        on_bad_image, max_pixels: as for every reader (see :mod:`lavit.data.readers`).

    Raises:
        ConfigError: no refs file, or several and none chosen, or ``split`` is not in the file.
        AnnotationError: a malformed file, a box outside its image or empty, a ref whose
            annotation or image is not in ``instances.json``, a pickle asking for a global.
        FileNotFoundError: ``instances.json`` or the chosen refs file is missing.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        image_root: str | os.PathLike[str],
        split: str = "train",
        *,
        refs_file: str | None = None,
        on_bad_image: str = "raise",
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        refs_path = _find_refs_file(Path(path), refs_file)
        inst_path = refs_path.parent / INSTANCES_FILE
        if not inst_path.is_file():
            raise FileNotFoundError(
                f"{inst_path} does not exist; a RefCOCO folder holds {INSTANCES_FILE} beside {refs_path.name} "
                f"(as distributed by lichengunc/refer)"
            )
        images, regions_by_image = _read_refs(inst_path, refs_path, split)
        root = Path(image_root)
        records = [
            _Record(
                image_path=root / image["file_name"],
                image_id=str(image["id"]),
                meta={
                    "file_name": image["file_name"],
                    "image_size": [image["width"], image["height"]],
                    "regions": regions_by_image[image["id"]],
                },
            )
            for image in images
            if image["id"] in regions_by_image
        ]
        self.refs_path = refs_path
        self.split = split
        super().__init__(records, source=str(refs_path), on_bad_image=on_bad_image, max_pixels=max_pixels)

    def __getitem__(self, index: int) -> Sample:
        sample = super().__getitem__(index)
        # A copy: a transform that moves the boxes (crop, flip) must not move the dataset's own.
        sample.meta["regions"] = copy.deepcopy(sample.meta["regions"])
        return sample

    def regions(self, i: int) -> list[dict[str, Any]]:
        """The regions of record ``i`` (a copy of ``meta["regions"]``), without opening its image."""
        return copy.deepcopy(self._record(i).meta["regions"])

    def image_size(self, i: int) -> tuple[int, int]:
        """(width, height) of record ``i``'s image, from instances.json (the image is not opened)."""
        width, height = self._record(i).meta["image_size"]
        return width, height

    def expressions(self) -> list[Expression]:
        """Every (sample, region, phrase) of the dataset, in sample, region, phrase order.

        The flat view comprehension is scored on: one item per sentence, its ground-truth box
        ``self.regions(e.index)[e.region]["box"]`` (also ``e.box``). Indices are those of the
        current records: after a ``scan()`` that dropped images, call it again.
        """
        return [
            Expression(index=i, region=j, phrase=phrase, box=list(region["box"]), ref_id=region["ref_id"])
            for i, record in enumerate(self._records)
            for j, region in enumerate(record.meta["regions"])
            for phrase in region["phrases"]
        ]

    def _try_load(self, record: _Record) -> Image.Image | None:
        """The base class's load, plus: the image must have the size the boxes were drawn on."""
        image = super()._try_load(record)
        if image is None or list(image.size) == record.meta["image_size"]:
            return image
        width, height = record.meta["image_size"]
        error = ImageLoadError(
            f"{record.image_path}: decodes to {image.size[0]}x{image.size[1]} but {INSTANCES_FILE} gives "
            f"{width}x{height}, so its boxes would be misplaced; use the original COCO train2014 image "
            f"(not a resized or rotated copy).",
            path=str(record.image_path),
        )
        if self.on_bad_image == "raise":
            raise error
        self.bad_images[str(record.image_path)] = str(error)
        return None


def _find_refs_file(path: Path, refs_file: str | None) -> Path:
    """The refs pickle named by ``path`` (a folder or the file itself) and ``refs_file``."""
    if path.is_file():
        if refs_file is not None:
            raise ConfigError(f"{path} is a file: give either the refs file as path, or the folder and refs_file")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist; pass the RefCOCO folder (instances.json + refs(*).p)")
    if refs_file is not None:
        if not (path / refs_file).is_file():
            raise FileNotFoundError(f"{path / refs_file} does not exist; the folder has {_refs_names(path)}")
        return path / refs_file
    names = _refs_names(path)
    if DEFAULT_REFS_FILE in names:
        return path / DEFAULT_REFS_FILE
    if len(names) == 1:
        return path / names[0]
    found = f"it holds {', '.join(names)}" if names else f"it holds none of {', '.join(REFS_FILES)}"
    raise ConfigError(f"{path}: cannot tell which refs file to read ({found}); name one, e.g. {path / REFS_FILES[1]}")


def _refs_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("refs(*).p") if p.is_file())


class _NoGlobalsUnpickler(pickle.Unpickler):
    """An unpickler for plain data: any global (class, function) is refused before it is looked
    up, so no code named by the file can run (REDUCE, BUILD and the like need one first)."""

    def __init__(self, file: Any, path: Path) -> None:
        # Python 2's str (the refs files were written by Python 2) is decoded as UTF-8.
        super().__init__(file, encoding="utf-8")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        raise AnnotationError(
            f"{self.path}: the pickle asks for the global {module}.{name}, which a refs file (plain lists, "
            f"dicts, strings and numbers) never needs; refused, nothing was run. Use the refs file from lichengunc/refer."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise AnnotationError(f"{self.path}: the pickle holds a persistent id, which a refs file never does; refused.")


def load_refs(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a refs pickle (a list of ref dicts) without running any code it may hold.

    Raises:
        AnnotationError: the file asks for a global or a persistent id (refused, naming it), is
            not a readable pickle, or holds something other than a list of dicts.
    """
    path = Path(path)
    with path.open("rb") as f:
        try:
            refs = _NoGlobalsUnpickler(f, path).load()
        except AnnotationError:
            raise
        except Exception as e:  # a truncated or foreign file can make the unpickler raise many kinds
            raise AnnotationError(f"{path}: not a readable refs pickle ({type(e).__name__}: {e}).") from None
    if not isinstance(refs, list) or not all(isinstance(ref, dict) for ref in refs):
        raise AnnotationError(f"{path}: expected a list of ref dicts, got {type(refs).__name__}.")
    return refs


def _read_refs(
    inst_path: Path, refs_path: Path, split: str
) -> tuple[list[dict[str, Any]], dict[Any, list[dict[str, Any]]]]:
    """Parse and cross-check ``instances.json`` and the refs file.

    Returns:
        The ``images`` entries, and per image id its regions in ``split`` (see RefCOCODataset).
    """
    data = _load_json_object(inst_path, required=("images", "annotations", "categories"))
    images = _entries(data, "images", inst_path, keys=("id", "file_name", "width", "height"))
    annotations = _entries(data, "annotations", inst_path, keys=("id", "image_id", "bbox", "category_id"))
    categories = _entries(data, "categories", inst_path, keys=("id", "name"))
    images_by_id: dict[Any, dict[str, Any]] = {}
    for i, image in enumerate(images):
        where = f"{inst_path}: images[{i}]"
        if image["id"] in images_by_id:
            raise AnnotationError(f"{where} repeats image id {image['id']!r}.")
        if not isinstance(image["file_name"], str):
            raise AnnotationError(f"{where}: 'file_name' must be a string.")
        if not all(_is_int(image[k]) and image[k] > 0 for k in ("width", "height")):
            raise AnnotationError(f"{where}: 'width' and 'height' must be positive pixel counts.")
        images_by_id[image["id"]] = image
    anns_by_id = {ann["id"]: ann for ann in annotations}
    if len(anns_by_id) != len(annotations):
        raise AnnotationError(f"{inst_path}: annotation ids repeat; each annotation needs its own 'id'.")
    category_names = {c["id"]: str(c["name"]) for c in categories}

    refs = load_refs(refs_path)
    ref_ids: set[int] = set()
    split_counts: dict[str, int] = {}
    regions: dict[Any, list[dict[str, Any]]] = {}
    # Every ref is checked, not only the split's: a broken file fails the same way for every split.
    for i, ref in enumerate(refs):
        where = f"{refs_path}: refs[{i}]"
        for key in ("ref_id", "ann_id", "image_id", "split", "sentences"):
            if key not in ref:
                raise AnnotationError(f"{where} is missing key {key!r}.")
        ref_id = ref["ref_id"]
        if not _is_int(ref_id) or ref_id in ref_ids:
            raise AnnotationError(f"{where}: 'ref_id' {ref_id!r} is not an integer or repeats an earlier ref's.")
        ref_ids.add(ref_id)
        where = f"{refs_path}: ref {ref_id}"
        if not isinstance(ref["split"], str):
            raise AnnotationError(f"{where}: 'split' must be a string, got {type(ref['split']).__name__}.")
        phrases = _strings_in(ref["sentences"], "sent", "sentences", where)
        if not phrases:
            raise AnnotationError(f"{where} has no sentences; a ref needs at least one referring expression.")
        ann = anns_by_id.get(ref["ann_id"])
        if ann is None:
            raise AnnotationError(
                f"{where} refers to ann_id {ref['ann_id']!r}, which is not in {inst_path}; use the "
                f"{INSTANCES_FILE} of the same set as {refs_path.name}."
            )
        image = images_by_id.get(ref["image_id"])
        if image is None:
            raise AnnotationError(
                f"{where} refers to image_id {ref['image_id']!r}, which is not in {inst_path}; use the "
                f"{INSTANCES_FILE} of the same set as {refs_path.name}."
            )
        if ann["image_id"] != ref["image_id"]:
            raise AnnotationError(
                f"{where} is on image {ref['image_id']!r} but its annotation {ann['id']!r} is on image "
                f"{ann['image_id']!r} in {inst_path}; use files of the same set."
            )
        box = _corner_box(ann, image, f"{inst_path}: annotation {ann['id']!r} (ref {ref_id})")
        if ann["category_id"] not in category_names:
            raise AnnotationError(
                f"{inst_path}: annotation {ann['id']!r} has category_id {ann['category_id']!r}, which is not in 'categories'."
            )
        split_counts[ref["split"]] = split_counts.get(ref["split"], 0) + 1
        if ref["split"] == split:
            region = {"box": box, "phrases": phrases, "ref_id": ref_id, "category": category_names[ann["category_id"]]}
            regions.setdefault(ref["image_id"], []).append(region)
    if not regions:
        raise ConfigError(
            f"{refs_path}: no ref is in split {split!r} (refs per split: {split_counts}); pass one of the splits the file has"
        )
    return images, regions


def _corner_box(ann: dict[str, Any], image: dict[str, Any], where: str) -> list[float]:
    """COCO ``[x, y, w, h]`` -> ``[x0, y0, x1, y1]`` float pixels, clipped to the image, after
    checking it is non-empty and inside the image (within :data:`BOX_TOLERANCE` pixels)."""
    bbox = ann["bbox"]
    if not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)
    ):
        raise AnnotationError(f"{where}: 'bbox' must be [x, y, width, height] (4 numbers, pixels), got {bbox!r}.")
    x, y, w, h = (float(v) for v in bbox)
    width, height = image["width"], image["height"]
    if w <= 0 or h <= 0:
        raise AnnotationError(
            f"{where}: bbox {bbox} is empty (width and height must be > 0; COCO boxes are [x, y, width, height]). "
            f"Fix the box in {INSTANCES_FILE} or drop the refs on this annotation."
        )
    tol = BOX_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        raise AnnotationError(
            f"{where}: bbox {bbox} (x, y, width, height) reaches outside its {width}x{height} image "
            f"{image['id']!r}. Fix the box or the image's width/height in {INSTANCES_FILE}, or drop the refs on it."
        )
    return [max(x, 0.0), max(y, 0.0), min(x + w, float(width)), min(y + h, float(height))]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
