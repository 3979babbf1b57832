"""``lavit train vargpt`` (lavit/train/tasks/vargpt.py): VARGPT's stages train on the data layer,
resume exactly after a kill, save a folder the pipeline and the CLI run, and train only their
parts; VARGPT-style models use the same user API as LaVIT-style ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import crashing, train_debug_vqvae
from safetensors.torch import load_file

from lavit.config import load_config
from lavit.train.stages import load_stage
from lavit.train.trainer import fit

CONFIG = Path(__file__).parents[1] / "configs" / "train" / "vargpt_debug.yaml"


@pytest.fixture(scope="module")
def vqvae_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vq")
    train_debug_vqvae(out)
    return out / "model"


def run_cfg(out: Path, vqvae_dir: Path, *overrides: str):
    schema, _ = load_stage("vargpt")
    return load_config(
        CONFIG, schema, [f"vqvae_dir={vqvae_dir}", f"train.out_dir={out}", "train.progress=false", *overrides]
    )


def metrics(out: Path) -> list[dict]:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in rows]


def test_vargpt_trains_resumes_exactly_and_saves_a_folder_the_pipeline_runs(vqvae_dir, tmp_path):
    _, task_cls = load_stage("vargpt")
    cfg = run_cfg(tmp_path / "a", vqvae_dir)
    straight = fit(task_cls(cfg), cfg.train)
    logged = set().union(*metrics(tmp_path / "a"))
    assert {"loss_text", "loss_image", "eval/caption_acc", "eval/vqa_acc", "eval/t2i_scene_acc"} <= logged, logged
    cfg_b = run_cfg(tmp_path / "b", vqvae_dir)
    with pytest.raises(KeyboardInterrupt):
        fit(crashing(task_cls)(cfg_b, crash_at=3), cfg_b.train)
    assert fit(task_cls(cfg_b), cfg_b.train) == straight
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    a, b = (load_file(tmp_path / x / "model" / "vargpt.safetensors") for x in "ab")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    from lavit.vargpt.pipeline import VARGPTPipeline

    pipe = VARGPTPipeline.from_pretrained(tmp_path / "a" / "model")
    images = torch.rand(2, 3, 32, 32)
    assert len(pipe.caption(images)) == 2 and len(pipe.answer(images, ["what colour is the circle?"] * 2)) == 2
    assert [im.size for im in pipe.generate_image(["a red circle"], guidance_scale=1.5)] == [(32, 32)]


@pytest.mark.parametrize("stage, trained", [("projectors", ("projector.", "gen_in.", "gen_out.")), ("head", ("head.", "gen_in.", "gen_out."))])  # fmt: skip
def test_each_stage_trains_only_its_parts_from_the_previous_one(vqvae_dir, tmp_path, stage, trained):
    _, task_cls = load_stage("vargpt")
    first = run_cfg(tmp_path / "first", vqvae_dir, "train.steps=1")
    fit(task_cls(first), first.train)
    start = tmp_path / "first" / "model"
    cfg = run_cfg(tmp_path / "next", vqvae_dir, f"stage={stage}", f"init_from={start}", "train.steps=2")
    fit(task_cls(cfg), cfg.train)
    before, after = (
        load_file(start / "vargpt.safetensors"),
        load_file(tmp_path / "next" / "model" / "vargpt.safetensors"),
    )
    changed = {k.split(".")[0] + "." for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= set(trained), changed
