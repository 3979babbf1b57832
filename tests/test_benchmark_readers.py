"""Tests for lavit.data.benchmark_readers and the readers' ``key`` / ``image_path`` on tiny fixtures.

Every fixture is written to ``tmp_path`` in the benchmark's official layout (a few entries each);
images are 8x8 and filled with their own colour, so a test can tell which file a sample came
from by one pixel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import write_image

from lavit.data.benchmark_readers import (
    CocoPromptsDataset,
    GQADataset,
    KarpathyCaptionsDataset,
    Prompt,
    VizWizDataset,
)
from lavit.data.readers import (
    AnnotationError,
    CocoCaptionsDataset,
    ImageFolderDataset,
    JsonlDataset,
    VQAv2Dataset,
)
from lavit.data.sample import QA, Sample

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _colour(sample: Sample) -> tuple[int, ...]:
    """The centre pixel snapped to 0/255 per channel (JPEG fixtures are slightly lossy)."""
    assert sample.image.mode == "RGB" and sample.image.size == (8, 8)
    return tuple(255 if c > 127 else 0 for c in sample.image.getpixel((4, 4)))


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


def _keys(ds: Any) -> list[str]:
    return [ds.key(i) for i in range(len(ds))]


# ---------------------------------------------------------------- key / image_path on the base readers


def test_jsonl_repeated_images_get_numbered_keys(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    lines = ["a.png", "b.png", "a.png", "a.png#2", "a.png"]  # "a.png#2" is also a real file name
    path.write_text("".join(json.dumps({"image": name, "text": "x"}) + "\n" for name in lines))
    ds = JsonlDataset(path)
    # First occurrence keeps the id; repeats get #n, skipping a suffix that is some record's own id.
    assert _keys(ds) == ["a.png", "b.png", "a.png#3", "a.png#2", "a.png#4"]
    assert len(set(_keys(ds))) == len(ds)
    assert ds.image_path(2) == tmp_path / "a.png"  # no image exists: nothing was decoded
    assert ds.key(-1) == "a.png#4"
    with pytest.raises(IndexError):
        ds.key(5)
    with pytest.raises(IndexError):
        ds.image_path(-6)


def test_keys_are_stable_when_scan_drops_records(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", RED)
    (tmp_path / "b.png").write_text("not an image")
    write_image(tmp_path / "c.png", BLUE)
    ds = ImageFolderDataset(tmp_path, on_bad_image="skip")
    assert _keys(ds) == ["a.png", "b.png", "c.png"]
    assert ds.scan() == 1
    assert _keys(ds) == ["a.png", "c.png"] and ds.image_path(1) == tmp_path / "c.png"
    assert ds[1].image_id == ds.key(1)


def test_vqav2_key_is_question_id_and_coco_key_is_image_id(tmp_path: Path) -> None:
    questions = _write_json(
        tmp_path / "q.json",
        {
            "data_subtype": "val2014",
            "questions": [
                {"image_id": 42, "question": "a?", "question_id": 42000},
                {"image_id": 42, "question": "b?", "question_id": 42001},
            ],
        },
    )
    vqa = VQAv2Dataset(questions, image_root=tmp_path)
    assert _keys(vqa) == ["42000", "42001"]
    assert vqa.image_path(1) == tmp_path / "COCO_val2014_000000000042.jpg"
    coco = CocoCaptionsDataset(_nocaps(tmp_path, write_images=False), tmp_path / "nocaps")
    assert _keys(coco) == ["0", "1", "2"]


# ---------------------------------------------------------------- Karpathy (COCO, Flickr30k)


def _sentences(*raws: str) -> list[dict[str, Any]]:
    return [{"raw": raw, "tokens": raw.lower().split(), "imgid": 0, "sentid": i} for i, raw in enumerate(raws)]


def _karpathy_coco(tmp_path: Path) -> Path:
    write_image(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000042.jpg", RED)
    write_image(tmp_path / "coco" / "train2014" / "COCO_train2014_000000000007.jpg", GREEN)
    write_image(tmp_path / "coco" / "val2014" / "COCO_val2014_000000000099.jpg", BLUE)
    images = [
        ("val2014", "COCO_val2014_000000000042.jpg", "test", 0, 42, ("A red square.", "Red.")),
        ("train2014", "COCO_train2014_000000000007.jpg", "train", 1, 7, ("A green square.",)),
        ("val2014", "COCO_val2014_000000000099.jpg", "test", 2, 99, ("Blue.",)),
    ]
    return _write_json(
        tmp_path / "dataset_coco.json",
        {
            "dataset": "coco",
            "images": [
                {
                    "filepath": filepath,
                    "filename": filename,
                    "split": split,
                    "sentences": _sentences(*raws),
                    "imgid": imgid,
                    "cocoid": cocoid,
                    "sentids": list(range(len(raws))),
                }
                for filepath, filename, split, imgid, cocoid, raws in images
            ],
        },
    )


def _karpathy_flickr(tmp_path: Path) -> Path:
    write_image(tmp_path / "flickr" / "1000092795.jpg", GREEN)
    write_image(tmp_path / "flickr" / "10002456.jpg", BLUE)
    return _write_json(
        tmp_path / "dataset_flickr30k.json",
        {
            "dataset": "flickr30k",
            "images": [
                {"filename": "1000092795.jpg", "split": "test", "sentences": _sentences("Green."), "imgid": 0},
                {"filename": "10002456.jpg", "split": "val", "sentences": _sentences("Blue."), "imgid": 1},
                {"filename": "1001.jpg", "split": "train", "sentences": _sentences("Not here."), "imgid": 2},
            ],
        },
    )


def test_karpathy_coco_test_split(tmp_path: Path) -> None:
    ds = KarpathyCaptionsDataset(_karpathy_coco(tmp_path), tmp_path / "coco")
    assert len(ds) == 2 and _keys(ds) == ["42", "99"]
    red, blue = ds[0], ds[1]
    assert (red.image_id, red.captions, _colour(red)) == ("42", ["A red square.", "Red."], RED)
    assert red.meta == {"file_name": "val2014/COCO_val2014_000000000042.jpg", "imgid": 0}
    assert ds.image_path(1) == tmp_path / "coco" / "val2014" / "COCO_val2014_000000000099.jpg"
    assert (blue.captions, _colour(blue)) == (["Blue."], BLUE)
    train = KarpathyCaptionsDataset(_karpathy_coco(tmp_path), tmp_path / "coco", split="train")
    assert _keys(train) == ["7"] and _colour(train[0]) == GREEN


def test_karpathy_flickr30k_without_filepath_uses_imgid(tmp_path: Path) -> None:
    ds = KarpathyCaptionsDataset(_karpathy_flickr(tmp_path), tmp_path / "flickr")
    assert len(ds) == 1
    sample = ds[0]
    assert (sample.image_id, sample.captions, _colour(sample)) == ("0", ["Green."], GREEN)
    assert ds.image_path(0) == tmp_path / "flickr" / "1000092795.jpg"
    assert KarpathyCaptionsDataset(_karpathy_flickr(tmp_path), tmp_path / "flickr", split="val").key(0) == "1"


def test_karpathy_bad_split_argument(tmp_path: Path) -> None:
    path = _karpathy_flickr(tmp_path)
    with pytest.raises(ValueError, match="'testing' is not one of"):
        KarpathyCaptionsDataset(path, tmp_path, split="testing")
    with pytest.raises(ValueError, match="no image is in split 'restval'") as info:
        KarpathyCaptionsDataset(path, tmp_path, split="restval")
    assert str(path) in str(info.value) and "'test': 1" in str(info.value)


def test_karpathy_malformed_entries_name_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "dataset_coco.json"
    path.write_text('{"images": [{"filename": ')
    with pytest.raises(AnnotationError, match="invalid JSON") as info:
        KarpathyCaptionsDataset(path, tmp_path)
    assert str(path) in str(info.value)
    good = {"filename": "a.jpg", "split": "test", "sentences": _sentences("x"), "imgid": 0}
    cases = [
        ({"filename": "b.jpg", "split": "test", "imgid": 1}, r"images\[1\] is missing key 'sentences'"),
        (good | {"sentences": ["just a string"]}, r"images\[1\]: 'sentences' must be a list"),
        (good | {"split": "dev"}, r"images\[1\]: 'split' is 'dev'"),
        (good | {"filepath": 2014}, r"images\[1\]: 'filepath' must be a string"),
    ]
    for bad, expected in cases:
        _write_json(path, {"dataset": "coco", "images": [good, bad]})
        with pytest.raises(AnnotationError, match=expected) as info:
            KarpathyCaptionsDataset(path, tmp_path)
        assert str(path) in str(info.value)


# ---------------------------------------------------------------- NoCaps (COCO captions format)


def _nocaps(tmp_path: Path, write_images: bool = True) -> Path:
    images = [
        (0, "0013ea2087020901.jpg", "in-domain", RED),
        (1, "00223fe3a3f4bbb5.jpg", "near-domain", GREEN),
        (2, "0037a2e3f2f8a1c4.jpg", "out-domain", BLUE),
    ]
    if write_images:
        for _, name, _, colour in images:
            write_image(tmp_path / "nocaps" / name, colour)
    return _write_json(
        tmp_path / "nocaps_val_4500_captions.json",
        {
            "licenses": [],
            "info": {"version": "0.1"},
            "images": [
                {
                    "id": image_id,
                    "file_name": name,
                    "height": 8,
                    "width": 8,
                    "coco_url": f"https://example/{name}",
                    "license": 1,
                    "date_captured": "2018-11-06 11:04:33",
                    "domain": domain,
                    "open_images_id": name.removesuffix(".jpg"),
                }
                for image_id, name, domain, _ in images
            ],
            "annotations": [
                {"image_id": image_id, "id": 10 * image_id + k, "caption": f"{domain} caption {k}"}
                for image_id, _, domain, _ in images
                for k in range(2)
            ],
        },
    )


def test_nocaps_reads_with_coco_reader_and_keeps_domain(tmp_path: Path) -> None:
    ds = CocoCaptionsDataset(_nocaps(tmp_path), tmp_path / "nocaps")
    assert len(ds) == 3
    near = ds[1]
    assert (near.image_id, near.captions, _colour(near)) == (
        "1",
        ["near-domain caption 0", "near-domain caption 1"],
        GREEN,
    )
    assert near.meta == {
        "file_name": "00223fe3a3f4bbb5.jpg",
        "domain": "near-domain",
        "open_images_id": "00223fe3a3f4bbb5",
    }
    assert [ds[i].meta["domain"] for i in range(3)] == ["in-domain", "near-domain", "out-domain"]


# ---------------------------------------------------------------- OK-VQA (VQAv2 format)


def test_okvqa_reads_with_vqav2_reader(tmp_path: Path) -> None:
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000297.jpg", BLUE)
    questions = _write_json(
        tmp_path / "OpenEnded_mscoco_val2014_questions.json",
        {
            "license": {},
            "data_subtype": "val2014",
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "info": {},
            "questions": [
                {"image_id": 297, "question": "What sport can you use this for?", "question_id": 2971},
                {"image_id": 297, "question": "Which season is it?", "question_id": 2972},
            ],
        },
    )
    answers = {2971: ["racing"] * 6 + ["motocross"] * 4, 2972: ["winter"] * 10}
    annotations = _write_json(
        tmp_path / "mscoco_val2014_annotations.json",
        {
            "license": {},
            "data_subtype": "val2014",
            "annotations": [
                {
                    "image_id": 297,
                    "answer_type": "other",
                    "question_type": "eight",
                    "question_id": qid,
                    "confidence": 3,
                    "answers": [
                        {"answer_id": k + 1, "raw_answer": a, "answer_confidence": "yes", "answer": a}
                        for k, a in enumerate(ans)
                    ],
                }
                for qid, ans in answers.items()
            ],
        },
    )
    ds = VQAv2Dataset(questions, annotations, image_root=tmp_path / "val2014")
    assert len(ds) == 2 and _keys(ds) == ["2971", "2972"]
    first = ds[0]
    assert first.qa == [QA("What sport can you use this for?", answers[2971], "2971")]
    assert first.meta == {"question_type": "eight", "answer_type": "other"}  # OK-VQA has no multiple_choice_answer
    assert first.image_id == "297" and _colour(first) == BLUE


# ---------------------------------------------------------------- VizWiz


def _vizwiz_entry(index: int, question: str, answer: str) -> dict[str, Any]:
    return {
        "image": f"VizWiz_val_{index:08d}.jpg",
        "question": question,
        "answers": [{"answer": answer, "answer_confidence": "yes"}] * 9 + [{"answer": "x", "answer_confidence": "no"}],
        "answer_type": "other",
        "answerable": 1,
    }


def _vizwiz(tmp_path: Path) -> Path:
    write_image(tmp_path / "val" / "VizWiz_val_00000000.jpg", RED)
    write_image(tmp_path / "val" / "VizWiz_val_00000001.jpg", GREEN)
    unanswerable = _vizwiz_entry(1, "What is this?", "unanswerable") | {"answer_type": "unanswerable", "answerable": 0}
    return _write_json(tmp_path / "val.json", [_vizwiz_entry(0, "What colour is this?", "red"), unanswerable])


def test_vizwiz_one_question_per_image(tmp_path: Path) -> None:
    ds = VizWizDataset(_vizwiz(tmp_path), tmp_path / "val")
    assert len(ds) == 2 and _keys(ds) == ["VizWiz_val_00000000", "VizWiz_val_00000001"]
    red, other = ds[0], ds[1]
    assert red.image_id == "VizWiz_val_00000000.jpg" and _colour(red) == RED
    assert red.qa == [QA("What colour is this?", ["red"] * 9 + ["x"], "VizWiz_val_00000000")]
    assert red.meta == {"answer_type": "other", "answerable": 1}
    assert other.meta == {"answer_type": "unanswerable", "answerable": 0} and _colour(other) == GREEN
    assert ds.image_path(1) == tmp_path / "val" / "VizWiz_val_00000001.jpg"


def test_vizwiz_test_split_without_answers(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "test.json", [{"image": "VizWiz_test_00000000.jpg", "question": "What is it?"}])
    write_image(tmp_path / "VizWiz_test_00000000.jpg", BLUE)
    ds = VizWizDataset(path, tmp_path)
    assert ds.key(0) == "VizWiz_test_00000000" and ds[0].qa == [QA("What is it?", [], "VizWiz_test_00000000")]
    assert ds[0].meta == {}


def test_vizwiz_malformed_entries_name_file_and_entry(tmp_path: Path) -> None:
    path = tmp_path / "val.json"
    path.write_text("[{")
    with pytest.raises(AnnotationError, match="val.json: invalid JSON"):
        VizWizDataset(path, tmp_path)
    _write_json(path, {"image": "a.jpg"})
    with pytest.raises(AnnotationError, match="val.json: expected a JSON list"):
        VizWizDataset(path, tmp_path)
    good = _vizwiz_entry(0, "q?", "a")
    cases = [
        ({k: v for k, v in good.items() if k != "question"}, "val.json: entry 3: missing key 'question'"),
        ({k: v for k, v in good.items() if k != "answers"}, "val.json: entry 3: missing key 'answers'"),
        (good | {"answers": ["a", "b"]}, "val.json: entry 3: 'answers' must be a list"),
        (good | {"image": 7}, "val.json: entry 3: 'image' must be a string"),
        (["VizWiz_val_00000003.jpg"], "val.json: entry 3: expected a JSON object"),
    ]
    for bad, expected in cases:
        _write_json(path, [good, good, good, bad])
        with pytest.raises(AnnotationError, match=expected) as info:
            VizWizDataset(path, tmp_path)
        assert str(path) in str(info.value)


# ---------------------------------------------------------------- GQA


def _gqa(tmp_path: Path) -> Path:
    write_image(tmp_path / "images" / "n161313.jpg", RED)
    write_image(tmp_path / "images" / "n235859.jpg", BLUE)

    def question(image_id: str, text: str, answer: str) -> dict[str, Any]:
        return {
            "semantic": [],
            "entailed": [],
            "equivalent": [],
            "question": text,
            "imageId": image_id,
            "isBalanced": True,
            "groups": {"global": None, "local": "13-shape"},
            "answer": answer,
            "semanticStr": "select: square",
            "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
            "types": {"detailed": "colorObj", "semantic": "attr", "structural": "query"},
            "fullAnswer": f"The square is {answer}.",
        }

    return _write_json(
        tmp_path / "testdev_balanced_questions.json",
        {
            "201307251": question("n161313", "What colour is the square?", "red"),
            "201640614": question("n235859", "What colour is the square?", "blue"),
            "20968379": question("n161313", "Is the square small?", "yes"),
        },
    )


def test_gqa_one_sample_per_question(tmp_path: Path) -> None:
    ds = GQADataset(_gqa(tmp_path), tmp_path / "images")
    assert len(ds) == 3 and _keys(ds) == ["201307251", "201640614", "20968379"]
    first, second = ds[0], ds[1]
    assert first.image_id == "n161313" and _colour(first) == RED
    assert first.qa == [QA("What colour is the square?", ["red"], "201307251")]
    assert first.meta == {
        "fullAnswer": "The square is red.",
        "types": {"detailed": "colorObj", "semantic": "attr", "structural": "query"},
    }
    assert _colour(second) == BLUE and ds.image_path(2) == tmp_path / "images" / "n161313.jpg"


def test_gqa_malformed_entries_name_file_and_question(tmp_path: Path) -> None:
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text('{"1": {"imageId": ')
    with pytest.raises(AnnotationError, match="invalid JSON") as info:
        GQADataset(path, tmp_path)
    assert str(path) in str(info.value)
    good = {"imageId": "n1", "question": "q?", "answer": "a"}
    cases = [
        ({"question": "q?", "answer": "a"}, r"entry 1 \(question '202'\): missing key 'imageId'"),
        ({"imageId": "n1", "question": "q?"}, r"entry 1 \(question '202'\): missing key 'answer'"),
        (good | {"answer": ["a"]}, r"entry 1 \(question '202'\): 'answer' must be a string"),
        ("n1", r"entry 1 \(question '202'\): expected a JSON object"),
    ]
    for bad, expected in cases:
        _write_json(path, {"201": good, "202": bad})
        with pytest.raises(AnnotationError, match=expected) as info:
            GQADataset(path, tmp_path)
        assert str(path) in str(info.value)
    _write_json(path, [good])
    with pytest.raises(AnnotationError, match="expected a JSON object at the top level"):
        GQADataset(path, tmp_path)


# ---------------------------------------------------------------- COCO prompts (text-to-image)


def _coco_prompts(tmp_path: Path) -> Path:
    return _write_json(
        tmp_path / "captions_val2014.json",
        {
            "images": [
                {"id": 99, "file_name": "COCO_val2014_000000000099.jpg"},
                {"id": 7, "file_name": "COCO_val2014_000000000007.jpg"},
                {"id": 42, "file_name": "COCO_val2014_000000000042.jpg"},
                {"id": 5, "file_name": "COCO_val2014_000000000005.jpg"},  # no captions: left out
            ],
            "annotations": [
                {"image_id": 42, "id": 1, "caption": "A red square. "},
                {"image_id": 7, "id": 2, "caption": "A green square.\n"},
                {"image_id": 42, "id": 3, "caption": "Something red."},
                {"image_id": 99, "id": 4, "caption": "Blue."},
                {"image_id": 42, "id": 5, "caption": "Red again."},
                {"image_id": 7, "id": 6, "caption": "Green again."},
            ],
        },
    )


def test_coco_prompts_first_captions_sorted_by_image_id(tmp_path: Path) -> None:
    path = _coco_prompts(tmp_path)
    ds = CocoPromptsDataset(path, tmp_path / "val2014")  # no image exists: prompts never need them
    assert list(ds) == [
        Prompt("7_0", "A green square.", tmp_path / "val2014" / "COCO_val2014_000000000007.jpg"),
        Prompt("42_0", "A red square.", tmp_path / "val2014" / "COCO_val2014_000000000042.jpg"),
        Prompt("99_0", "Blue.", tmp_path / "val2014" / "COCO_val2014_000000000099.jpg"),
    ]
    two = CocoPromptsDataset(path, per_image=2, limit=2)
    assert _keys(two) == ["7_0", "7_1", "42_0", "42_1"]
    assert [p.text for p in two] == ["A green square.", "Green again.", "A red square.", "Something red."]
    assert all(p.reference_image is None for p in two)
    assert two[-1] == two[3] and two.key(-1) == "42_1"
    with pytest.raises(IndexError):
        two[4]
    everything = CocoPromptsDataset(path, per_image=10, limit=100)
    assert len(everything) == 6 and len(set(_keys(everything))) == 6  # fewer captions than asked: all of them


def test_coco_prompts_seeded_choice_is_deterministic(tmp_path: Path) -> None:
    path = _coco_prompts(tmp_path)
    a = CocoPromptsDataset(path, per_image=2, limit=2, seed=3)
    b = CocoPromptsDataset(path, per_image=2, limit=2, seed=3)
    assert list(a) == list(b)
    image_ids = [int(k.split("_")[0]) for k in _keys(a)]
    assert image_ids == sorted(image_ids) and len(set(image_ids)) == 2 and set(image_ids) <= {7, 42, 99}
    captions = {7: 2, 42: 3, 99: 1}
    assert all(image_ids.count(i) == min(2, captions[i]) for i in set(image_ids))
    assert len(set(_keys(a))) == len(a)
    seeds = {tuple(_keys(CocoPromptsDataset(path, per_image=1, limit=1, seed=s))) for s in range(20)}
    assert len(seeds) > 1  # the seed changes the choice


def test_coco_prompts_bad_arguments_and_file(tmp_path: Path) -> None:
    path = _coco_prompts(tmp_path)
    with pytest.raises(ValueError, match="per_image must be at least 1"):
        CocoPromptsDataset(path, per_image=0)
    with pytest.raises(ValueError, match="limit must be at least 1"):
        CocoPromptsDataset(path, limit=0)
    _write_json(path, {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1}]})
    with pytest.raises(AnnotationError, match=r"annotations\[0\] is missing key 'caption'") as info:
        CocoPromptsDataset(path)
    assert str(path) in str(info.value)
    path.write_text('{"images": [')
    with pytest.raises(AnnotationError, match="invalid JSON"):
        CocoPromptsDataset(path)
