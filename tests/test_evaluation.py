"""eval/: sharding (2 gloo processes = 1 process), resume after a kill, bad input, configs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from lavit.config import ConfigError, load_config
from lavit.evaluation import EvalConfig, build_task, evaluate, main, summarize
from lavit.evaluation.runner import ResumeError, read_predictions
from lavit.train.distributed import DistInfo

ROOT = Path(__file__).resolve().parent.parent
ONE = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def shapes_cfg(task: str, out: Path, model: Path, *overrides: str) -> EvalConfig:
    return load_config(
        None,
        EvalConfig,
        [
            f"task={task}",
            f"model={model}",
            f"out_dir={out}",
            "data.limit=5",
            "batch_size=2",
            "metrics.caption_metrics=[bleu4,rouge_l,cider]",
            *overrides,
        ],  # fmt: skip
    )


def predictions(out: Path) -> dict[str, dict]:
    return {r["key"]: r for p in sorted((out / "predictions").glob("*.jsonl")) for r in read_predictions(p)}


def scores(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("world_size", "seconds_this_run")}


@pytest.mark.parametrize("task", ["vqa", "text2image"])
def test_two_gloo_processes_equal_one(task, pipeline_dir, tmp_path):
    cfg = shapes_cfg(task, tmp_path / "one", pipeline_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each process below: float sums must add up in the same order
    try:
        one = evaluate(cfg, build_task(cfg), ONE)
    finally:
        torch.set_num_threads(threads)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(ROOT / "eval" / f"{task}.py"), "--no-progress",
        f"model={pipeline_dir}", f"out_dir={tmp_path / 'two'}", "data.limit=5", "batch_size=2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert two["world_size"] == 2 and len(list((tmp_path / "two" / "predictions").glob("*.jsonl"))) == 2
    drop = ("image",)  # image paths are relative; the images themselves are compared below
    p1, p2 = predictions(tmp_path / "one"), predictions(tmp_path / "two")
    assert {k: {f: v for f, v in r.items() if f not in drop} for k, r in p1.items()} == {
        k: {f: v for f, v in r.items() if f not in drop} for k, r in p2.items()
    }
    if task == "text2image":
        for r in p1.values():
            a, b = Image.open(tmp_path / "one" / r["image"]), Image.open(tmp_path / "two" / r["image"])
            assert a.tobytes() == b.tobytes()
    assert scores(one) == scores(two)


class Killed(RuntimeError):
    pass


def test_text2image_best_of_candidates_is_each_prompt_reranked_alone(pipeline_dir, tmp_path):
    from lavit.pipeline import LaVITPipeline

    cfg = shapes_cfg("text2image", tmp_path / "t2i", pipeline_dir, "candidates=2", "data.limit=3")
    task = build_task(cfg)
    report = evaluate(cfg, task, ONE)
    assert report["candidates"] == 2
    assert {"scene_accuracy", "attribute_accuracy", "layout_accuracy"} <= report.keys()
    preds = predictions(tmp_path / "t2i")
    pipe = LaVITPipeline.from_pretrained(pipeline_dir)
    for i, it in enumerate(task.items):  # item i is seeded seed + i whatever its batch
        alone = pipe.generate([it.prompt], candidates=2, seed=cfg.seed + i)
        assert preds[it.key]["candidate"] == alone.candidate[0]
        assert preds[it.key]["codes"] == alone.codes[0].tolist()
    with pytest.raises(ConfigError, match="candidates"):
        shapes_cfg("text2image", tmp_path / "bad", pipeline_dir, "candidates=0")


def test_decoder_sampling_overrides_reach_the_decoder(pipeline_dir, tmp_path):
    import dataclasses

    from lavit.pipeline import LaVITPipeline

    cfg = shapes_cfg("reconstruct", tmp_path / "rec", pipeline_dir, "data.limit=2", "decoder_sampling.steps=3")
    task = build_task(cfg)
    evaluate(cfg, task, ONE)
    assert json.loads((tmp_path / "rec" / "run.json").read_text())["config"]["decoder_sampling"] == {"steps": 3}
    pipe = LaVITPipeline.from_pretrained(pipeline_dir)
    three_steps = dataclasses.replace(pipe.cfg.diffusion_sampling, steps=3)
    assert pipe.cfg.diffusion_sampling.steps != 3
    for i, it in enumerate(task.items):
        saved = Image.open(tmp_path / "rec" / predictions(tmp_path / "rec")[it.key]["image"])
        (same,) = pipe.reconstruct([it.image()], seed=cfg.seed + i, sampling=three_steps)
        (default,) = pipe.reconstruct([it.image()], seed=cfg.seed + i)
        # The evaluation decodes its items as one batch, this loop one at a time: float rounding
        # may move a pixel by one 8-bit level, where 25 steps instead of 3 move many by far more.
        saved, same, default = (torch.tensor(list(x.tobytes()), dtype=torch.int16) for x in (saved, same, default))
        assert (saved - same).abs().max() <= 1 < (saved - default).abs().max()
    with pytest.raises(ConfigError, match="decoder_sampling.stepz: the diffusion decoder has no such"):
        shapes_cfg("reconstruct", tmp_path / "bad", pipeline_dir, "decoder_sampling.stepz=2")
    with pytest.raises(ConfigError, match="decoder_sampling.steps: the var decoder has no such"):
        shapes_cfg("reconstruct", tmp_path / "bad", pipeline_dir, "decoder=var", "decoder_sampling.steps=2")
    with pytest.raises(ConfigError, match="decoder_sampling: invalid value 0 for 'steps'"):
        shapes_cfg("reconstruct", tmp_path / "bad", pipeline_dir, "decoder_sampling.steps=0")


def test_killed_run_resumes_to_the_same_report(pipeline_dir, tmp_path):
    full_cfg = shapes_cfg("caption", tmp_path / "full", pipeline_dir)
    full = evaluate(full_cfg, build_task(full_cfg), ONE)

    cfg = shapes_cfg("caption", tmp_path / "cut", pipeline_dir)
    task = build_task(cfg)
    real, calls = task.predict, []

    def dies_on_third_batch(pipe, indices, seed):
        calls.append(indices)
        if len(calls) == 3:
            raise Killed
        return real(pipe, indices, seed)

    task.predict = dies_on_third_batch
    with pytest.raises(Killed):
        evaluate(cfg, task, ONE)
    path = tmp_path / "cut" / "predictions" / "rank0.jsonl"
    assert len(read_predictions(path)) == 4
    # A kill mid-write: half of the next batch's first line (dropped, then redone).
    with path.open("a") as f:
        f.write('{"caption": "half a li')
    resumed = build_task(cfg)
    real2, calls2 = resumed.predict, []
    resumed.predict = lambda pipe, indices, seed: calls2.append(indices) or real2(pipe, indices, seed)
    report = evaluate(cfg, resumed, ONE)
    assert calls2 == [[4]]  # only the unfinished batch runs again
    assert scores(report) == scores(full)
    assert predictions(tmp_path / "cut") == predictions(tmp_path / "full")
    # A finished run reruns without loading the model and reports the same again.
    assert scores(evaluate(cfg, build_task(cfg), ONE)) == scores(full)


def test_resume_refuses_another_world_size_or_settings(pipeline_dir, tmp_path):
    cfg = shapes_cfg("caption", tmp_path / "run", pipeline_dir, "data.limit=2")
    evaluate(cfg, build_task(cfg), ONE)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    (tmp_path / "run" / "run.json").write_text(json.dumps({**run, "world_size": 2}))
    with pytest.raises(ResumeError, match="2 processes.*--nproc_per_node=2"):
        evaluate(cfg, build_task(cfg), ONE)
    (tmp_path / "run" / "run.json").write_text(json.dumps(run))
    other = shapes_cfg("caption", tmp_path / "run", pipeline_dir, "data.limit=2", "prompt=Describe this.")
    with pytest.raises(ResumeError, match="config.prompt"):
        evaluate(other, build_task(other), ONE)
    # Another model at the same path (retrained in place): one byte of its LM weights differs.
    model = tmp_path / "model"
    shutil.copytree(pipeline_dir, model)
    cfg = shapes_cfg("caption", tmp_path / "run2", model, "data.limit=2")
    evaluate(cfg, build_task(cfg), ONE)
    weights = next((model / "lm").glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ResumeError, match="weights_sha256"):
        evaluate(cfg, build_task(cfg), ONE)


def coco_fixture(tmp_path: Path, missing: str = "b.png") -> Path:
    from lavit.config import ShapesWorldConfig
    from lavit.data.shapes.dataset import ShapesWorld

    world = ShapesWorld(ShapesWorldConfig(resolution=32), "val")
    names = ["a.png", "b.png", "c.png"]
    for i, name in enumerate(names):
        if name != missing:
            world.image(i).save(tmp_path / name)
    ann = {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"image_id": i, "caption": f"a caption number {i}"} for i in range(3)],
    }
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    return tmp_path / "captions.json"


def test_missing_images_are_counted_and_retried(pipeline_dir, tmp_path, capsys):
    ann = coco_fixture(tmp_path)
    args = [
        "--no-progress", f"model={pipeline_dir}", f"out_dir={tmp_path / 'out'}", "data.format=coco",
        f"data.annotations={ann}", f"data.image_root={tmp_path}", "batch_size=2", "metrics.caption_tokenizer=python",
        "metrics.caption_metrics=[bleu4,cider]",
    ]  # fmt: skip
    assert main("caption", args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["missing"] == 1 and report["scored"] == 2 and "cider" in report
    assert report["missing_examples"][0]["key"] == "1" and "b.png" in report["missing_examples"][0]["error"]
    warning = capsys.readouterr().err.strip().splitlines()[-1]
    assert warning.startswith("warning: 1 of 3 items") and "b.png" in warning
    assert "1" not in predictions(tmp_path / "out")  # not a finished prediction: the rerun tries it again
    assert "| caption | coco |" in (tmp_path / "out" / "report.md").read_text()

    from lavit.config import ShapesWorldConfig
    from lavit.data.shapes.dataset import ShapesWorld

    ShapesWorld(ShapesWorldConfig(resolution=32), "val").image(1).save(tmp_path / "b.png")
    assert main("caption", args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["missing"] == 0 and report["scored"] == 3 and "missing_examples" not in report
    assert set(predictions(tmp_path / "out")) == {"0", "1", "2"}


def test_bad_input_one_line_errors(pipeline_dir, tmp_path, capsys):
    ann = coco_fixture(tmp_path)
    bad = json.loads(ann.read_text())
    del bad["annotations"][1]["caption"]
    ann.write_text(json.dumps(bad))
    base = ["--no-progress", f"model={pipeline_dir}", f"out_dir={tmp_path / 'out'}", f"data.image_root={tmp_path}"]
    assert main("caption", [*base, "data.format=coco", f"data.annotations={ann}"]) == 2
    err = capsys.readouterr().err
    assert "captions.json" in err and "annotations[1]" in err and err.count("\n") == 1, err
    assert main("vqa", [*base, "data.format=vqav2"]) == 2
    assert "data.questions" in capsys.readouterr().err
    assert main("caption", [*base, "data.format=gqa"]) == 2
    assert "data.format" in capsys.readouterr().err
    assert main("caption", ["--no-progress", f"model={tmp_path / 'nope'}", f"out_dir={tmp_path / 'o2'}"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "o2" / "report.json").exists()


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "eval").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_eval_config_loads(path):
    script = {t: t for t in ("caption", "vqa", "text2image", "reconstruct", "grounding", "visual_prompts")}
    first = path.read_text().splitlines()[0]
    task = next(t for t in script if f"eval/{t}.py" in first)
    cfg = load_config(path, EvalConfig, [f"task={task}", "model=some/dir"])
    assert cfg.task == task


def test_eval_config_checks_format_against_task():
    with pytest.raises(ConfigError, match="data.format"):
        load_config(None, EvalConfig, ["task=vqa", "model=x", "data.format=coco_karpathy"])


def test_summary_table(tmp_path):
    a = {"task": "caption", "format": "shapes", "items": 5, "cider": 12.345, "model": "m", "world_size": 1}
    b = {"task": "vqa", "format": "shapes", "items": 9, "vqa_accuracy": 50.0}
    for name, r in (("a", a), ("b", b)):
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    table = summarize([tmp_path / "a.json", tmp_path / "b.json"])
    assert table.splitlines()[0] == "| task | format | items | cider | vqa_accuracy |"
    assert "| caption | shapes | 5 | 12.35 |  |" in table


def test_caption_and_vqa_jsonl_are_eval_formats(tmp_path, capsys):
    """A JSONL of caption and VQA lines (the data layer's format) evaluates both tasks; each task
    takes the lines it can score."""
    from lavit.config import ShapesWorldConfig
    from lavit.data.shapes.dataset import ShapesWorld

    world = ShapesWorld(ShapesWorldConfig(), "val")
    lines = []
    for i in range(3):
        s = world[i]
        s.image.save(tmp_path / f"{i}.png")
        lines.append({"image": f"{i}.png", "text": s.captions})
        lines.append({"image": f"{i}.png", "question": s.qa[0].question, "answers": s.qa[0].answers})
    (tmp_path / "val.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "lavit-shapes-tiny"
    common = ["--no-progress", f"model={shipped}", "data.format=jsonl", f"data.annotations={tmp_path / 'val.jsonl'}"]
    assert main("caption", [*common, f"out_dir={tmp_path / 'cap'}", "metrics.caption_tokenizer=python"]) == 0
    assert main("vqa", [*common, f"out_dir={tmp_path / 'vqa'}"]) == 0
    cap = json.loads((tmp_path / "cap" / "report.json").read_text())
    vqa = json.loads((tmp_path / "vqa" / "report.json").read_text())
    assert cap["scored"] == 3 and cap["cider"] > 0 and "attribute_accuracy" not in cap
    assert vqa["scored"] == 3 and 0 <= vqa["accepted_accuracy"] <= 100  # JSONL answers are accepted answers
