"""Grounding and visual prompts end to end: ShapesWorld regions, the LM's new tasks (trained on
from an LM without location tokens), the pipeline's methods, the two evaluations, bad input."""

import dataclasses
import json

import numpy as np
import pytest
import torch

import lavit.data.annotations as annotations
from lavit.config import ConfigError, ShapesWorldConfig, TextDecodingConfig
from lavit.data.shapes import COLOURS, KINDS, render, scene_for_index
from lavit.data.shapes.text import _where
from lavit.data.transforms import to_tensor
from lavit.evaluation import build_task, evaluate
from lavit.evaluation.config import EvalConfig
from lavit.grounding import Box, box_to_ids
from lavit.lm_io import load_lm
from lavit.pipeline import LaVITPipeline, PipelineConfig
from lavit.train.tasks.lm import GROUNDED_CAPTION, GROUNDING, MARKED_VQA, REGION, LMTask
from lavit.train.trainer import fit
from lavit.visual_prompts import Mark, mark_phrase

WORLD = ShapesWorldConfig()


def scene_meta(i: int):
    scene = scene_for_index(WORLD, "val", i)
    return scene, {"scene": scene.to_dict()}, render(scene, 64)


def fits(phrase: str, s) -> bool:
    """Whether a referring phrase ("the [size] colour kind [where]") describes shape ``s``."""
    words = phrase.removeprefix("the ").split(" ", 3)
    if words[0] in ("small", "large"):
        size, colour, kind, rest = words[0], words[1], words[2], " ".join(words[3:])
    else:
        size, colour, kind, rest = None, words[0], words[1], " ".join(words[2:])
    return (colour, kind) == (s.colour, s.kind) and size in (None, s.size) and rest in ("", _where(s))


def test_shapes_regions_name_one_shape_each_and_box_it():
    for i in range(60):
        scene, meta, image = scene_meta(i)
        found = annotations.regions(meta, image.size)
        assert [r.shape for r in found] == list(range(len(scene.shapes)))
        for r, shape in zip(found, scene.shapes, strict=True):
            assert dataclasses.astuple(r.box) == pytest.approx(tuple(v / 64 for v in shape.box(64)))
            for phrase in r.phrases:  # every phrase fits its own shape and no other
                assert [s for s in scene.shapes if fits(phrase, s)] == [shape], phrase
        caption = annotations.grounded_caption(meta)
        assert annotations.grounded_caption_right(meta, caption)
        boxes = [p for p in caption if isinstance(p, Box)]
        moved = [
            Box(min(b.x0 + 0.15, 1), b.y0, min(b.x1 + 0.15, 1), b.y1) if isinstance(b, Box) else b for b in caption
        ]
        assert not annotations.grounded_caption_right(meta, moved)  # IoU < 0.5 once shifted
        if len(boxes) > 1:
            assert not annotations.grounded_caption_right(meta, caption[:-2])  # a shape left out


def test_marked_questions_refer_through_the_mark_only():
    """The question names no colour or kind except the mark's own ("the red triangle"); the words
    version names the shape by its cell, the marked image differs from the clean one."""
    for i in range(30):
        scene, meta, image = scene_meta(i)
        q = annotations.marked_question(meta, image, np.random.default_rng(i))
        phrase = mark_phrase(q.mark)
        assert phrase in q.question
        rest = q.question.replace(phrase, "")
        assert not any(w in rest for w in (*COLOURS, *KINDS)), q.question
        assert q.answer in {getattr(s, a) for s in scene.shapes for a in ("colour", "kind", "size")}
        assert phrase not in q.worded and any(p in q.worded for p in ("top", "bottom", "left", "right", "center"))
        assert (to_tensor(q.image) != to_tensor(image)).any()


@pytest.fixture(scope="module")
def grounded_lm_dir(tmp_path_factory, tokenizer_dir, lm_dirs, lm_cfg):
    """The debug continuous LM, given 16 location tokens and trained 4 steps on every task."""
    out = tmp_path_factory.mktemp("lm_grounding")
    cfg = lm_cfg(
        out, tokenizer_dir, f"init_from={lm_dirs['continuous']}", "lm.understanding_input=continuous",
        "lm.num_locations=16", "train.steps=4", "train.eval_every=0", "mixture.grounding_prob=0.3",
        "mixture.region_prob=0.2", "mixture.grounded_caption_prob=0.2", "mixture.marked_vqa_prob=0.3",
    )  # fmt: skip
    task = LMTask(cfg)
    before, _ = load_lm(lm_dirs["continuous"])
    lm = task.build_model()
    old = before.layout.total
    assert lm.layout.num_locations == 16 and lm.layout.total == old + 16
    assert torch.equal(lm.hf.get_input_embeddings().weight[:old], before.hf.get_input_embeddings().weight[:old])
    items = task.train_dataset()
    kinds = [items.draw(j)[3] for j in range(len(items))]
    assert {GROUNDING, REGION, GROUNDED_CAPTION, MARKED_VQA} <= set(kinds)
    j = kinds.index(GROUNDING)
    seq, image = items[j]
    targets = [i for i, w in zip(seq.ids, seq.weights, strict=True) if w > 0]
    assert len(targets) == 5 and all(lm.layout.is_location_id(i) for i in targets[:4]) and image is not None
    seq, image = items[kinds.index(MARKED_VQA)]
    assert image is not None and len(seq.image_spans) == 1
    fit(task, cfg.train)
    return out / "model"


@pytest.fixture(scope="module")
def grounded_pipe(tokenizer_dir, grounded_lm_dir):
    short = TextDecodingConfig(max_new_tokens=8)
    cfg = PipelineConfig(vqa_decoding=TextDecodingConfig(max_new_tokens=3), grounded_caption_decoding=short)
    return LaVITPipeline.from_parts(tokenizer_dir, grounded_lm_dir, cfg)


def test_pipeline_grounds_describes_captions_and_reads_marks(grounded_pipe):
    _, _, image = scene_meta(0)
    boxes = grounded_pipe.ground([image, image], ["the blue circle", "the red circle"])
    assert len(boxes) == 2 and all(isinstance(b, Box) for b in boxes)
    said = grounded_pipe.describe_region([image, image], [Box(0.1, 0.1, 0.3, 0.3), (8, 9, 17, 18)])
    assert len(said) == 2 and all(isinstance(s, str) for s in said)
    (caption,) = grounded_pipe.grounded_caption([image])
    assert all(isinstance(p, (str, Box)) for p in caption)
    mark = Mark("ellipse", box=(8, 9, 17, 18), colour="red")
    (marked,) = grounded_pipe.mark_images([image], [[mark]])
    assert (np.asarray(marked) != np.asarray(image)).any()
    assert len(grounded_pipe.answer([image], ["what colour is the shape in the red ellipse?"], marks=[[mark]])) == 1
    with pytest.raises(ValueError, match=r"not inside the 64x64 image"):
        grounded_pipe.describe_region([image], [(50, 50, 70, 60)])
    with pytest.raises(ValueError, match=r"1 images for 2 lists of marks"):
        grounded_pipe.answer([image], ["what?"], marks=[[mark], []])


def test_an_lm_without_location_tokens_refuses_boxes(pipeline_dir):
    pipe = LaVITPipeline.from_pretrained(pipeline_dir)
    _, _, image = scene_meta(0)
    with pytest.raises(ValueError, match=r"no location tokens \(lm.num_locations=0\)"):
        pipe.ground([image], ["the blue circle"])
    with pytest.raises(ValueError, match=r"no location tokens"):
        box_to_ids(Box(0, 0, 1, 1), pipe.lm.layout)


@pytest.mark.parametrize("task", ["grounding", "visual_prompts"])
def test_grounding_evaluations_run_and_score(task, tokenizer_dir, grounded_lm_dir, tmp_path):
    cfg = EvalConfig(
        task=task, tokenizer=str(tokenizer_dir), lm=str(grounded_lm_dir), out_dir=str(tmp_path), batch_size=3
    )
    cfg.data.limit = 5
    report = evaluate(cfg, build_task(cfg), progress=False)
    assert report["scored"] == 5
    keys = {"grounding": ("comprehension_acc50", "generation_accuracy", "grounded_caption_accuracy"),
            "visual_prompts": ("marked_accuracy", "worded_accuracy")}[task]  # fmt: skip
    assert all(0 <= report[k] <= 100 for k in keys)


def test_grounding_tasks_need_location_tokens(tokenizer_dir, lm_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"'lm.num_locations'.*set lm.num_locations"):
        lm_cfg(tmp_path, tokenizer_dir, "mixture.grounding_prob=0.5")
    with pytest.raises(ConfigError, match=r"mixture.region_prompt"):
        lm_cfg(tmp_path, tokenizer_dir, "lm.num_locations=8", "mixture.region_prob=0.5", "mixture.region_prompt=What?")


def test_cli_ground_and_marked_vqa(tokenizer_dir, grounded_lm_dir, tmp_path, capsys):
    from lavit.cli import main

    _, _, image = scene_meta(0)
    path = tmp_path / "scene.png"
    image.save(path)
    model = ["--tokenizer", str(tokenizer_dir), "--lm", str(grounded_lm_dir), "--max-new-tokens", "4"]
    assert main(["ground", str(path), "the blue circle", "--json", "--out", str(tmp_path / "boxes.png"), *model]) == 0
    (record,) = json.loads(capsys.readouterr().out.split("wrote")[0])
    assert record["phrase"] == "the blue circle" and len(record["box"]) == 4
    assert all(0 <= v <= 64 for v in record["box"]) and (tmp_path / "boxes.png").is_file()
    assert main(["ground", str(path), "--caption", *model]) == 0
    q = "what colour is the shape in the red ellipse?"
    assert main(["vqa", str(path), q, "--mark", "ellipse:8,9,17,18:red", *model]) == 0
    capsys.readouterr()
    assert main(["vqa", str(path), q, "--mark", "blob:8,9,17,18", *model]) == 2
    assert "--mark" in capsys.readouterr().err
    assert main(["vqa", str(path), q, "--mark", "ellipse:50,50,90,60", *model]) == 2
    assert "lies outside the 64x64 image" in capsys.readouterr().err
    assert main(["ground", str(path), *model]) == 2  # neither phrases nor --caption


def test_stored_regions_map_through_the_centre_crop_and_need_the_image_size():
    meta = {"regions": [{"box": [60, 10, 110, 60], "phrases": ["the cat", "a cat"]}], "image_size": [200, 100]}
    (region,) = annotations.regions(meta)
    assert dataclasses.astuple(region.box) == pytest.approx((0.1, 0.1, 0.6, 0.6))
    assert region.phrases == ("the cat", "a cat") and region.description == "the cat" and region.shape is None
    assert annotations.region_named(meta, region, "A cat ") and not annotations.region_named(meta, region, "a dog")
    with pytest.raises(ValueError, match=r'"image_size": \[width, height\]'):
        annotations.regions({"regions": meta["regions"]})
