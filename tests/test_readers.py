"""Tests for lavit.data.readers on tiny fixtures written to ``tmp_path``.

Each image is 8x8 and filled with its own colour, so a test can tell which file a sample came
from by one pixel.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import write_image

from lavit.data.image_io import ImageLoadError
from lavit.data.readers import (
    AnnotationError,
    CocoCaptionsDataset,
    ImageFolderDataset,
    JsonlDataset,
    VQAv2Dataset,
)
from lavit.data.sample import QA, Sample

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _bad_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not an image")
    return path


def _colour(sample: Sample) -> tuple[int, ...]:
    """The centre pixel snapped to 0/255 per channel (JPEG fixtures are slightly lossy)."""
    assert sample.image.mode == "RGB" and sample.image.size == (8, 8)
    return tuple(255 if c > 127 else 0 for c in sample.image.getpixel((4, 4)))


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data))
    return path


# ---------------------------------------------------------------- JSONL


def test_jsonl_reads_samples_relative_to_its_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "img" / "a.png", RED)
    write_image(tmp_path / "img" / "b.png", GREEN)
    path = tmp_path / "data.jsonl"
    path.write_text(
        '{"image": "img/a.png", "text": "a red square", "source": "web"}\n'
        "\n"
        '{"image": "img/b.png", "text": ["green", "a green square"]}\n'
    )
    ds = JsonlDataset(path)
    assert len(ds) == 2
    first, second = ds[0], ds[1]
    assert (first.image_id, first.captions, first.meta, first.qa) == (
        "img/a.png",
        ["a red square"],
        {"source": "web"},
        [],
    )
    assert _colour(first) == RED
    assert (second.captions, _colour(second)) == (["green", "a green square"], GREEN)


def test_jsonl_explicit_image_root(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png", BLUE)
    path = tmp_path / "meta" / "data.jsonl"
    path.parent.mkdir()
    path.write_text('{"image": "a.png", "text": "blue"}\n')
    assert _colour(JsonlDataset(path, image_root=tmp_path / "images")[0]) == BLUE


def test_jsonl_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "a.png", "text": "ok"}\n{"image": "b.png", "text": \n')
    with pytest.raises(AnnotationError, match="line 2: invalid JSON") as info:
        JsonlDataset(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"image": "a.png"}', "line 3: has neither 'text' nor 'question'"),
        ('{"text": "hi"}', "line 3: missing key 'image'"),
        ('["a.png", "hi"]', "line 3: expected a JSON object"),
        ('{"image": "a.png", "text": 5}', "line 3: 'text' must be a string or a list"),
    ],
)
def test_jsonl_bad_record_names_line_and_key(tmp_path: Path, line: str, expected: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "a.png", "text": "ok"}\n\n' + line + "\n")  # line 2 is blank
    with pytest.raises(AnnotationError, match=expected) as info:
        JsonlDataset(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------- COCO captions


def _coco(tmp_path: Path) -> Path:
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg", RED)
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000007.jpg", GREEN)
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000099.jpg", BLUE)
    return _write_json(
        tmp_path / "captions_val2014.json",
        {
            "info": {},
            "images": [
                {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 8, "height": 8},
                {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 8, "height": 8},
                {"id": 99, "file_name": "COCO_val2014_000000000099.jpg", "width": 8, "height": 8},
            ],
            "annotations": [
                {"image_id": 7, "id": 1, "caption": "a green square"},
                {"image_id": 42, "id": 2, "caption": "a red square"},
                {"image_id": 7, "id": 3, "caption": "green again"},
            ],
        },
    )


def test_coco_one_sample_per_image_with_all_captions(tmp_path: Path) -> None:
    ds = CocoCaptionsDataset(_coco(tmp_path), tmp_path / "val2014")
    assert len(ds) == 3
    red, green, blue = ds[0], ds[1], ds[2]
    assert (red.image_id, red.captions, _colour(red)) == ("42", ["a red square"], RED)
    assert (green.image_id, green.captions, _colour(green)) == ("7", ["a green square", "green again"], GREEN)
    assert green.meta == {"file_name": "COCO_val2014_000000000007.jpg"}
    assert (blue.image_id, blue.captions) == ("99", [])  # no annotations: no captions


def test_coco_malformed_json_names_file(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    path.write_text('{"images": [')
    with pytest.raises(AnnotationError, match="invalid JSON") as info:
        CocoCaptionsDataset(path, tmp_path)
    assert str(path) in str(info.value)


def test_coco_missing_keys_name_entry(tmp_path: Path) -> None:
    path = tmp_path / "captions.json"
    _write_json(path, {"annotations": []})
    with pytest.raises(AnnotationError, match="missing top-level key 'images'"):
        CocoCaptionsDataset(path, tmp_path)
    images = [{"id": 1, "file_name": "a.jpg"}]
    _write_json(path, {"images": images, "annotations": [{"image_id": 1, "caption": "x"}, {"image_id": 1}]})
    with pytest.raises(AnnotationError, match=r"annotations\[1\] is missing key 'caption'") as info:
        CocoCaptionsDataset(path, tmp_path)
    assert str(path) in str(info.value)
    _write_json(path, {"images": [{"file_name": "a.jpg"}], "annotations": []})
    with pytest.raises(AnnotationError, match=r"images\[0\] is missing key 'id'"):
        CocoCaptionsDataset(path, tmp_path)
    _write_json(path, {"images": images, "annotations": [{"image_id": 5, "caption": "x"}]})
    with pytest.raises(AnnotationError, match=r"annotations\[0\] refers to image_id 5"):
        CocoCaptionsDataset(path, tmp_path)


# ---------------------------------------------------------------- VQAv2


def _vqa_questions(tmp_path: Path, subtype: str = "val2014") -> Path:
    return _write_json(
        tmp_path / "questions.json",
        {
            "info": {},
            "task_type": "Open-Ended",
            "data_type": "mscoco",
            "data_subtype": subtype,
            "questions": [
                {"image_id": 42, "question": "What colour is it?", "question_id": 42000},
                {"image_id": 42, "question": "Is it square?", "question_id": 42001},
                {"image_id": 7, "question": "What colour is it?", "question_id": 7000},
            ],
        },
    )


def _vqa_annotation(qid: int, image_id: int, answers: list[str]) -> dict[str, Any]:
    return {
        "question_id": qid,
        "image_id": image_id,
        "question_type": "what color is the",
        "answer_type": "other",
        "multiple_choice_answer": answers[0],
        "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
    }


def _vqa_annotations(tmp_path: Path, qids: tuple[int, ...] = (42000, 42001, 7000)) -> Path:
    answers = {42000: ["red"] * 9 + ["orange"], 42001: ["yes"] * 10, 7000: ["green"] * 10}
    images = {42000: 42, 42001: 42, 7000: 7}
    return _write_json(
        tmp_path / "annotations.json",
        {"annotations": [_vqa_annotation(q, images[q], answers[q]) for q in qids]},
    )


def test_vqav2_one_sample_per_question(tmp_path: Path) -> None:
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg", RED)
    write_image(tmp_path / "val2014" / "COCO_val2014_000000000007.jpg", GREEN)
    ds = VQAv2Dataset(_vqa_questions(tmp_path), _vqa_annotations(tmp_path), image_root=tmp_path / "val2014")
    assert len(ds) == 3
    first, last = ds[0], ds[2]
    assert first.image_id == "42" and _colour(first) == RED
    assert first.qa == [QA("What colour is it?", ["red"] * 9 + ["orange"], "42000")]
    assert first.meta == {"multiple_choice_answer": "red", "question_type": "what color is the", "answer_type": "other"}
    assert last.image_id == "7" and _colour(last) == GREEN
    assert last.qa[0].question_id == "7000" and len(last.qa[0].answers) == 10


def test_vqav2_without_annotations_has_no_answers_and_maps_test_dev(tmp_path: Path) -> None:
    write_image(tmp_path / "test2015" / "COCO_test2015_000000000042.jpg", BLUE)
    write_image(tmp_path / "test2015" / "COCO_test2015_000000000007.jpg", GREEN)
    ds = VQAv2Dataset(_vqa_questions(tmp_path, "test-dev2015"), image_root=tmp_path / "test2015")
    sample = ds[1]
    assert sample.qa == [QA("Is it square?", [], "42001")] and sample.meta == {}
    assert _colour(sample) == BLUE  # test-dev questions point at test2015 image files


def test_vqav2_mismatched_question_ids_name_both_files(tmp_path: Path) -> None:
    questions = _vqa_questions(tmp_path)
    annotations = _vqa_annotations(tmp_path, qids=(42000, 7000))
    with pytest.raises(AnnotationError, match="question ids differ") as info:
        VQAv2Dataset(questions, annotations, image_root=tmp_path)
    assert str(questions) in str(info.value) and str(annotations) in str(info.value)
    assert "42001" in str(info.value)


def test_vqav2_image_mismatch_and_bad_pattern(tmp_path: Path) -> None:
    questions = _vqa_questions(tmp_path)
    annotations = _vqa_annotations(tmp_path)
    data = json.loads(annotations.read_text())
    data["annotations"][2]["image_id"] = 8
    _write_json(annotations, data)
    with pytest.raises(AnnotationError, match="question 7000 is on image 7"):
        VQAv2Dataset(questions, annotations, image_root=tmp_path)
    with pytest.raises(ValueError, match="image_pattern"):
        VQAv2Dataset(questions, image_root=tmp_path, image_pattern="{year}/{image_id}.jpg")


def test_vqav2_missing_question_key(tmp_path: Path) -> None:
    path = _write_json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [{"image_id": 1}]})
    with pytest.raises(AnnotationError, match=r"questions\[0\] is missing key 'question'"):
        VQAv2Dataset(path, image_root=tmp_path)


# ---------------------------------------------------------------- image folders


def test_image_folder_sorted_recursive_ids(tmp_path: Path) -> None:
    write_image(tmp_path / "b" / "z.png", BLUE)
    write_image(tmp_path / "a.PNG", RED)
    write_image(tmp_path / "b" / "c" / "y.jpg", GREEN)
    write_image(tmp_path / ".hidden" / "x.png", RED)
    write_image(tmp_path / "b" / "._z.png", RED)
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path)
    assert [ds[i].image_id for i in range(len(ds))] == ["a.PNG", "b/c/y.jpg", "b/z.png"]
    assert [ds[i].captions for i in range(len(ds))] == [[], [], []]
    assert _colour(ds[2]) == BLUE
    flat = ImageFolderDataset(tmp_path, recursive=False)
    assert len(flat) == 1 and flat[0].image_id == "a.PNG"


def test_image_folder_empty_or_missing(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="no image files found") as info:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(ValueError, match="not a folder"):
        ImageFolderDataset(tmp_path / "missing")


# ---------------------------------------------------------------- bad images


def _folder_with_bad(tmp_path: Path) -> Path:
    write_image(tmp_path / "a.png", RED)
    _bad_image(tmp_path / "b.png")
    write_image(tmp_path / "c.png", BLUE)
    _bad_image(tmp_path / "d.png")
    return tmp_path


def test_skip_mode_returns_next_good_sample_and_counts(tmp_path: Path) -> None:
    ds = ImageFolderDataset(_folder_with_bad(tmp_path), on_bad_image="skip")
    assert len(ds) == 4
    assert ds[1].image_id == "c.png"  # b.png is bad: scan forward
    assert ds[3].image_id == "a.png"  # d.png is bad and last: wrap around
    assert sorted(ds.bad_images) == [str(tmp_path / "b.png"), str(tmp_path / "d.png")]
    assert "not a recognised image" in ds.bad_images[str(tmp_path / "b.png")]
    assert ds[1].image_id == "c.png" and len(ds.bad_images) == 2  # deterministic, no double count


def test_skip_mode_missing_file_in_jsonl(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", GREEN)
    path = tmp_path / "d.jsonl"
    path.write_text('{"image": "missing.png", "text": "gone"}\n{"image": "a.png", "text": "here"}\n')
    ds = JsonlDataset(path, on_bad_image="skip")
    assert ds[0].captions == ["here"]
    assert list(ds.bad_images) == [str(tmp_path / "missing.png")]
    assert "no such file" in ds.bad_images[str(tmp_path / "missing.png")]


def test_skip_mode_all_bad_raises(tmp_path: Path) -> None:
    _bad_image(tmp_path / "a.png")
    _bad_image(tmp_path / "b.png")
    ds = ImageFolderDataset(tmp_path, on_bad_image="skip")
    with pytest.raises(ImageLoadError, match="every one of the 2 images failed"):
        ds[0]
    assert len(ds.bad_images) == 2


def test_raise_mode_raises_naming_the_file(tmp_path: Path) -> None:
    ds = ImageFolderDataset(_folder_with_bad(tmp_path))
    assert ds[0].image_id == "a.png"
    with pytest.raises(ImageLoadError) as info:
        ds[1]
    assert str(tmp_path / "b.png") in str(info.value)
    assert ds.bad_images == {}


def test_invalid_on_bad_image_value(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", RED)
    with pytest.raises(ValueError, match="'ignore'.*'raise', 'skip'"):
        ImageFolderDataset(tmp_path, on_bad_image="ignore")


def test_scan_drops_bad_records_in_skip_mode(tmp_path: Path) -> None:
    ds = ImageFolderDataset(_folder_with_bad(tmp_path), on_bad_image="skip")
    assert ds.scan() == 2
    assert len(ds) == 2 and len(ds.bad_images) == 2
    assert [ds[0].image_id, ds[1].image_id] == ["a.png", "c.png"]
    assert ds.scan() == 0  # idempotent


def test_scan_raises_in_raise_mode(tmp_path: Path) -> None:
    ds = ImageFolderDataset(_folder_with_bad(tmp_path))
    with pytest.raises(ImageLoadError, match="b.png"):
        ds.scan()
    assert len(ds) == 4


def test_index_out_of_range(tmp_path: Path) -> None:
    write_image(tmp_path / "a.png", RED)
    ds = ImageFolderDataset(tmp_path)
    assert ds[-1].image_id == "a.png"
    with pytest.raises(IndexError):
        ds[1]
