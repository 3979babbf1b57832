"""Tests for lavit.data.refcoco on a tiny RefCOCO folder written to ``tmp_path``.

The fixture is the lichengunc/refer layout: ``refcoco/instances.json`` (COCO format) and
``refcoco/refs(unc).p`` (a pickle of plain dicts), with the images in a separate COCO folder.
Each image is filled with its own colour, so a test can tell which file a sample came from.
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import pickle
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from lavit.config import REFCOCO_SPLITS, ConfigError, SourceConfig
from lavit.data import refcoco
from lavit.data.image_io import ImageLoadError
from lavit.data.readers import AnnotationError, JsonlDataset
from lavit.data.refcoco import Expression, RefCOCODataset, load_refs
from lavit.data.sources import build_source

# id -> (width, height, colour); image 4 has no ref, so no split shows it.
IMAGES = {1: (40, 30, (255, 0, 0)), 2: (32, 32, (0, 255, 0)), 3: (20, 24, (0, 0, 255)), 4: (16, 16, (0, 0, 0))}
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 2, "name": "chair"}]


def _file_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def _annotations() -> list[dict[str, Any]]:
    return [
        {"id": 101, "image_id": 1, "bbox": [2, 3, 10, 5], "category_id": 1},
        {"id": 102, "image_id": 1, "bbox": [20.5, 10, 20.2, 20], "category_id": 2},  # 0.2 px over: clipped
        {"id": 201, "image_id": 2, "bbox": [0, 0, 32, 32], "category_id": 2},
        {"id": 301, "image_id": 3, "bbox": [1.5, 1, 5, 6.25], "category_id": 1},
        {"id": 401, "image_id": 4, "bbox": [50, 50, 0, 0], "category_id": 1},  # bad, but no ref uses it
    ]


def _refs() -> list[dict[str, Any]]:
    def ref(ref_id: int, ann_id: int, image_id: int, split: str, sents: list[str]) -> dict[str, Any]:
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "split": split,
            "sentences": [{"sent": s, "tokens": s.split(), "sent_id": 10 * ref_id + k} for k, s in enumerate(sents)],
            "category_id": 1,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",  # the refs' name: not a real file
            "sent_ids": [10 * ref_id + k for k in range(len(sents))],
        }

    return [
        ref(0, 101, 1, "train", ["man on left", "guy at the left"]),
        ref(1, 102, 1, "train", ["chair right"]),
        ref(2, 201, 2, "val", ["green chair"]),
        ref(3, 301, 3, "testA", ["small person", "top left person"]),
        ref(4, 201, 2, "val", ["whole image"]),
    ]


def write_refcoco(
    root: Path,
    *,
    annotations: list[dict[str, Any]] | None = None,
    refs: list[dict[str, Any]] | None = None,
    refs_names: tuple[str, ...] = ("refs(unc).p",),
) -> tuple[Path, Path]:
    """``root/refcoco`` (instances.json + the refs files) and ``root/train2014`` (the images)."""
    folder, images = root / "refcoco", root / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    images.mkdir(parents=True, exist_ok=True)
    for image_id, (w, h, colour) in IMAGES.items():
        Image.new("RGB", (w, h), colour).save(images / _file_name(image_id))
    instances = {
        "images": [{"id": i, "file_name": _file_name(i), "width": w, "height": h} for i, (w, h, _) in IMAGES.items()],
        "annotations": _annotations() if annotations is None else annotations,
        "categories": CATEGORIES,
    }
    (folder / "instances.json").write_text(json.dumps(instances))
    for name in refs_names:
        with (folder / name).open("wb") as f:
            pickle.dump(_refs() if refs is None else refs, f, protocol=2)  # refer's files are Python 2 pickles
    return folder, images


def _colour(image: Image.Image) -> tuple[int, ...]:
    """The centre pixel snapped to 0/255 per channel (JPEG is slightly lossy)."""
    return tuple(255 if c > 127 else 0 for c in image.getpixel((image.width // 2, image.height // 2)))


@pytest.fixture
def refcoco_dir(tmp_path: Path) -> tuple[Path, Path]:
    return write_refcoco(tmp_path)


# ---------------------------------------------------------------- samples, boxes, expressions


def test_one_sample_per_image_of_the_split_with_all_its_refs(refcoco_dir) -> None:
    folder, images = refcoco_dir
    train = RefCOCODataset(folder, images, "train")
    assert len(train) == 1 and train.key(0) == "1" and train.image_path(0) == images / _file_name(1)
    sample = train[0]
    assert sample.image_id == "1" and sample.image.size == (40, 30) and _colour(sample.image) == (255, 0, 0)
    assert sample.captions == [] and sample.qa == []
    assert sample.meta["file_name"] == _file_name(1) and sample.meta["image_size"] == [40, 30]
    # xywh -> xyxy float pixels; 102 overruns the 40 px width by 0.2 px (within tolerance) and is clipped.
    assert sample.meta["regions"] == [
        {
            "box": [2.0, 3.0, 12.0, 8.0],
            "phrases": ["man on left", "guy at the left"],
            "ref_id": 0,
            "category": "person",
        },
        {"box": [20.5, 10.0, 40.0, 30.0], "phrases": ["chair right"], "ref_id": 1, "category": "chair"},
    ]
    assert all(isinstance(v, float) for r in sample.meta["regions"] for v in r["box"])
    json.dumps(sample.meta)  # JSON-able, so it survives the codes cache

    val = RefCOCODataset(folder, images, "val")
    assert [val.key(i) for i in range(len(val))] == ["2"] and _colour(val[0].image) == (0, 255, 0)
    assert [r["ref_id"] for r in val.regions(0)] == [2, 4]  # both refs of image 2, in file order
    assert [r["phrases"] for r in val.regions(0)] == [["green chair"], ["whole image"]]

    test_a = RefCOCODataset(folder, images, "testA")
    assert test_a.regions(0) == [
        {
            "box": [1.5, 1.0, 6.5, 7.25],
            "phrases": ["small person", "top left person"],
            "ref_id": 3,
            "category": "person",
        }
    ]


def test_expressions_flatten_samples_regions_and_phrases(refcoco_dir) -> None:
    ds = RefCOCODataset(*refcoco_dir, "train")
    assert ds.expressions() == [
        Expression(0, 0, "man on left", [2.0, 3.0, 12.0, 8.0], 0),
        Expression(0, 0, "guy at the left", [2.0, 3.0, 12.0, 8.0], 0),
        Expression(0, 1, "chair right", [20.5, 10.0, 40.0, 30.0], 1),
    ]
    for e in ds.expressions():
        assert ds.regions(e.index)[e.region]["box"] == e.box and e.phrase in ds.regions(e.index)[e.region]["phrases"]


def test_a_caller_editing_boxes_does_not_edit_the_dataset(refcoco_dir) -> None:
    ds = RefCOCODataset(*refcoco_dir, "train")
    before = copy.deepcopy(ds.regions(0))
    ds[0].meta["regions"][0]["box"][0] = 99.0  # e.g. a crop moving the boxes in place
    ds.regions(0)[0]["phrases"].append("x")
    ds.expressions()[0].box[0] = 99.0
    assert ds.regions(0) == before and ds[0].meta["regions"] == before


def test_an_image_of_another_size_than_instances_json_is_a_bad_image(refcoco_dir) -> None:
    folder, images = refcoco_dir
    Image.new("RGB", (30, 40), (255, 0, 0)).save(images / _file_name(1))  # rotated: boxes would be misplaced
    with pytest.raises(ImageLoadError, match=r"decodes to 30x40 but instances.json gives 40x30"):
        RefCOCODataset(folder, images, "train")[0]
    skip = RefCOCODataset(folder, images, "train", on_bad_image="skip")
    assert skip.scan() == 1 and len(skip) == 0 and "40x30" in skip.bad_images[str(images / _file_name(1))]


# ---------------------------------------------------------------- the refs pickle


class _Call:
    """A pickle payload: unpickling it with a plain ``pickle.load`` calls ``func(*args)``."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize(
    ("payload", "global_name"),
    [
        (lambda marker: _Call(os.system, f"touch {marker}"), r"posix\.system"),
        # Protocol 2 reaches a method through getattr, and names builtins as Python 2 did.
        (lambda marker: _Call(pathlib.Path.touch, pathlib.Path(marker)), r"__builtin__\.getattr"),
        (lambda marker: _Call(print, "PAYLOAD RAN"), r"__builtin__\.print"),
    ],
    ids=["os.system", "Path.touch", "builtins.print"],
)
def test_a_pickle_asking_for_a_global_is_refused_and_nothing_runs(tmp_path, capfd, payload, global_name) -> None:
    marker = tmp_path / "MARKER"
    refs = _refs()
    refs[1]["sentences"][0]["sent"] = payload(marker)  # the payload hides inside an otherwise good file
    folder, images = write_refcoco(tmp_path, refs=refs)
    with pytest.raises(AnnotationError, match=rf"refs\(unc\)\.p: the pickle asks for the global {global_name},") as e:
        RefCOCODataset(folder, images, "train")
    assert "\n" not in str(e.value) and "nothing was run" in str(e.value)
    assert not marker.exists() and "PAYLOAD RAN" not in capfd.readouterr().out
    pickle.loads((folder / "refs(unc).p").read_bytes())  # control: a plain load does run the payload
    assert marker.exists() or "PAYLOAD RAN" in capfd.readouterr().out


def test_python2_strings_and_corrupt_pickles(tmp_path) -> None:
    # Protocol 2 as Python 2 writes a str: SHORT_BINSTRING with UTF-8 bytes -> decoded as UTF-8.
    py2 = tmp_path / "py2.p"
    py2.write_bytes(b"\x80\x02]}U\x04sentU\x05caf\xc3\xa9sa.")
    assert load_refs(py2) == [{"sent": "café"}]
    corrupt = tmp_path / "corrupt.p"
    corrupt.write_bytes(pickle.dumps(_refs())[:50])
    with pytest.raises(AnnotationError, match=r"corrupt\.p: not a readable refs pickle"):
        load_refs(corrupt)
    not_a_list = tmp_path / "dict.p"
    not_a_list.write_bytes(pickle.dumps({"refs": []}))
    with pytest.raises(AnnotationError, match=r"dict\.p: expected a list of ref dicts, got dict"):
        load_refs(not_a_list)


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("bbox", "match"),
    [
        ([2, 3, 0, 5], r"annotation 101 \(ref 0\): bbox \[2, 3, 0, 5\] is empty .* drop the refs"),
        ([2, 3, 10, -1], r"annotation 101 \(ref 0\): bbox .* is empty"),
        ([35, 3, 6.5, 5], r"annotation 101 \(ref 0\): bbox .* reaches outside its 40x30 image 1\. Fix the box"),
        ([-2, 3, 10, 5], r"annotation 101 .* reaches outside"),
        ([2, 3, 10], r"annotation 101 .* 'bbox' must be \[x, y, width, height\]"),
    ],
    ids=["zero-width", "negative-height", "past-right-edge", "past-left-edge", "three-numbers"],
)
def test_bad_boxes_name_the_annotation_and_the_fix(tmp_path, bbox, match) -> None:
    annotations = _annotations()
    annotations[0]["bbox"] = bbox
    folder, images = write_refcoco(tmp_path, annotations=annotations)
    with pytest.raises(AnnotationError, match=match):
        RefCOCODataset(folder, images, "val")  # every ref is checked, whichever split is read


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("ann_id", 999, r"ref 2 refers to ann_id 999, which is not in .*instances\.json"),
        ("image_id", 999, r"ref 2 refers to image_id 999, which is not in .*instances\.json"),
        ("image_id", 3, r"ref 2 is on image 3 but its annotation 201 is on image 2"),
        ("sentences", ["a string"], r"ref 2: 'sentences' must be a list of \{\"sent\""),
        ("ref_id", 0, r"refs\[2\]: 'ref_id' 0 is not an integer or repeats"),
        ("sentences", [], r"ref 2 has no sentences"),
    ],
)
def test_refs_that_do_not_match_instances_json_are_named(tmp_path, key, value, match) -> None:
    refs = _refs()
    refs[2][key] = value
    folder, images = write_refcoco(tmp_path, refs=refs)
    with pytest.raises(AnnotationError, match=match):
        RefCOCODataset(folder, images, "train")


def test_a_split_the_file_lacks_lists_the_splits_it_has(refcoco_dir) -> None:
    for split in ("test", "testB", "testC"):
        with pytest.raises(
            ConfigError, match=rf"no ref is in split '{split}' \(refs per split: .*'train': 2, 'val': 2, 'testA': 1"
        ):
            RefCOCODataset(*refcoco_dir, split)


# ---------------------------------------------------------------- which refs file


def test_which_refs_file_is_read(tmp_path) -> None:
    refcoco_like, images = write_refcoco(tmp_path / "a", refs_names=("refs(google).p", "refs(unc).p"))
    assert RefCOCODataset(refcoco_like, images).refs_path.name == "refs(unc).p"  # the default wins
    refcocog, images = write_refcoco(tmp_path / "b", refs_names=("refs(google).p", "refs(umd).p"))
    with pytest.raises(ConfigError, match=r"cannot tell which refs file .*refs\(google\)\.p, refs\(umd\)\.p"):
        RefCOCODataset(refcocog, images)
    assert RefCOCODataset(refcocog, images, refs_file="refs(umd).p").refs_path.name == "refs(umd).p"
    assert RefCOCODataset(refcocog / "refs(google).p", images).refs_path.name == "refs(google).p"  # path = the file
    with pytest.raises(FileNotFoundError, match=r"refs\(unc\)\.p does not exist; the folder has"):
        RefCOCODataset(refcocog, images, refs_file="refs(unc).p")
    (refcocog / "refs(google).p").unlink()
    assert RefCOCODataset(refcocog, images).refs_path.name == "refs(umd).p"  # the only one
    (refcocog / "refs(umd).p").unlink()
    with pytest.raises(ConfigError, match=r"holds none of refs\(unc\)\.p, refs\(umd\)\.p, refs\(google\)\.p"):
        RefCOCODataset(refcocog, images)
    (refcoco_like / "instances.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"instances\.json does not exist"):
        RefCOCODataset(refcoco_like, images)


# ---------------------------------------------------------------- the source kind


def test_build_source_reads_a_refcoco_source(refcoco_dir) -> None:
    folder, images = refcoco_dir
    ds = build_source(SourceConfig(kind="refcoco", path=str(folder), image_root=str(images), split="val"))
    assert isinstance(ds, RefCOCODataset) and len(ds) == 1 and ds[0].meta["regions"][0]["phrases"] == ["green chair"]
    (images / _file_name(2)).unlink()
    with pytest.raises(AnnotationError, match=r"1 of 1 images do not exist.*data\.val\[0\]\.image_root"):
        build_source(
            SourceConfig(kind="refcoco", path=str(folder), image_root=str(images), split="val"), where="data.val[0]"
        )


def test_the_split_check_depends_on_the_kind(tmp_path) -> None:
    assert REFCOCO_SPLITS == refcoco.SPLITS
    root = str(tmp_path)
    for split in REFCOCO_SPLITS:
        SourceConfig(kind="refcoco", path=root, image_root=root, split=split)
    with pytest.raises(
        ConfigError, match=r"'testC' for 'split': use one of \['train', 'val', 'testA', 'testB', 'test'\]"
    ):
        SourceConfig(kind="refcoco", path=root, image_root=root, split="testC")
    with pytest.raises(
        ConfigError, match=r"'testA' for 'split': use one of \['test', 'train', 'val'\] \(kind shapes\)"
    ):
        SourceConfig(kind="shapes", split="testA")
    with pytest.raises(ConfigError, match=r"'image_root': refcoco needs the COCO images"):
        SourceConfig(kind="refcoco", path=root, split="val")


def test_jsonl_regions_pass_into_meta(tmp_path) -> None:
    """The JSONL reader copies unknown keys into meta, so a grounding JSONL line carries regions."""
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    regions = [{"box": [0.0, 1.0, 4.0, 5.0], "phrases": ["the top left"]}]
    (tmp_path / "g.jsonl").write_text(json.dumps({"image": "a.png", "text": "x", "regions": regions}) + "\n")
    assert JsonlDataset(tmp_path / "g.jsonl")[0].meta["regions"] == regions
