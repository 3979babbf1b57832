"""eval/ against bad input and unlucky timing: one writer per out_dir (a killed holder never
blocks), a fingerprint of the weights' every byte (symlinks followed), run.json only once the
model has loaded, unreadable images retried rather than recorded, and a catalogue of bad inputs
that each end in exit code 2 and one line naming the thing to fix.

Runs use the shipped ShapesWorld model with greedy 3-token captions on a handful of scenes.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error

from lavit.evaluation import main
from lavit.evaluation.runner import read_predictions, weights_digest
from lavit.files import JSONLError, OutDirLock

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "checkpoints" / "lavit-shapes-tiny"
CAPTION = ROOT / "configs" / "eval" / "shapes_caption.yaml"
# Short runs: 4 scenes in 2 batches, greedy 3-token captions, the pure-Python caption metrics.
FAST = [
    "--no-progress", f"--config={CAPTION}", "data.limit=4", "batch_size=2", "decoding.num_beams=1",
    "decoding.max_new_tokens=3", "metrics.caption_tokenizer=python", "metrics.caption_metrics=[bleu4]",
]  # fmt: skip


def caption(out: Path, *extra: str, model: Path = MODEL) -> list[str]:
    return [*FAST, f"model={model}", f"out_dir={out}", *extra]


def predictions(out: Path) -> dict[str, dict]:
    return {r["key"]: r for p in sorted((out / "predictions").glob("*.jsonl")) for r in read_predictions(p)}


def scores(report: dict) -> dict:
    return {k: v for k, v in report.items() if k not in ("world_size", "seconds_this_run")}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """The out_dir of a finished 4-scene caption run; copy it before changing it."""
    out = tmp_path_factory.mktemp("finished") / "out"
    assert main("caption", caption(out)) == 0
    return out


def copy_run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / ".lock").unlink(missing_ok=True)
    return out


def coco(tmp_path: Path, with_images: bool = True) -> Path:
    """A 3-image COCO captions file (a.png, b.png, c.png in tmp_path/images) -> its path."""
    from lavit.config import ShapesWorldConfig
    from lavit.data.shapes.dataset import ShapesWorld

    world = ShapesWorld(ShapesWorldConfig(resolution=32), "val")
    (tmp_path / "images").mkdir(exist_ok=True)
    names = ["a.png", "b.png", "c.png"]
    if with_images:
        for i, name in enumerate(names):
            world.image(i).save(tmp_path / "images" / name)
    ann = {
        "images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
        "annotations": [{"image_id": i, "caption": f"a caption number {i}"} for i in range(3)],
    }
    (tmp_path / "captions.json").write_text(json.dumps(ann))
    return tmp_path / "captions.json"


def coco_args(tmp_path: Path, ann: Path, root: Path) -> list[str]:
    return [
        "--no-progress", f"model={MODEL}", f"out_dir={tmp_path / 'out'}", "data.format=coco",
        f"data.annotations={ann}", f"data.image_root={root}", "batch_size=2", "decoding.num_beams=1",
        "decoding.max_new_tokens=3", "metrics.caption_tokenizer=python", "metrics.caption_metrics=[bleu4]",
    ]  # fmt: skip


class Touch:
    """A pickle payload: unpickling it (without weights_only) creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def crafted_pickle(path: Path, marker: Path) -> Path:
    torch.save({"conv.weight": torch.zeros(1), "payload": Touch(marker)}, path)
    return path


def hold_lock(out: Path) -> subprocess.Popen:
    """A process holding the lock of ``out`` (as a running evaluation would) until killed."""
    code = (
        "import sys, time\n"
        "from lavit.files import OutDirLock\n"
        f"OutDirLock({str(out)!r}, 'eval/caption.py').acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# --- 1. one writer per out_dir ------------------------------------------------------------------


def test_second_writer_is_refused_and_a_killed_holder_does_not_block(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)
    # As a run killed after its first batch: the second batch's lines are gone.
    path = out / "predictions" / "rank0.jsonl"
    path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:2]))
    holder = hold_lock(out)
    try:
        assert_user_error(main("caption", caption(out)), capsys.readouterr().err, f"PID {holder.pid}", str(out))
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert "PID" in (out / ".lock").read_text()  # the lock file stays; the OS dropped the lock
    assert main("caption", caption(out)) == 0
    assert predictions(out) == predictions(finished)  # resumed, bit-exact
    ran = json.loads((out / "report.json").read_text())
    assert scores(ran) == scores(json.loads((finished / "report.json").read_text()))


def test_two_ranks_fail_together_on_a_locked_out_dir(tmp_path):
    out = tmp_path / "out"
    with OutDirLock(out, "a test holding it"):
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(ROOT / "eval" / "caption.py"), *caption(out),
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        t0 = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=ROOT)
    assert done.returncode != 0 and time.monotonic() - t0 < 240
    # Both ranks print the refusal (their lines may interleave): rank 1 got rank 0's error, not a hang.
    assert done.stderr.count(f"error: {out} is in use by PID {os.getpid()}") == 2, done.stderr[-3000:]
    assert not (out / "run.json").exists()


# --- 2. the fingerprint and run.json -----------------------------------------------------------


def test_typo_in_model_leaves_nothing_and_the_right_command_runs(tmp_path, capsys):
    out = tmp_path / "out"
    typo = MODEL.with_name("lavit-shapes-tinyy")
    assert_user_error(main("caption", caption(out, model=typo)), capsys.readouterr().err, str(typo))
    not_a_pipeline = MODEL / "lm"  # exists, but is a stage folder
    assert_user_error(main("caption", caption(out, model=not_a_pipeline)), capsys.readouterr().err, str(not_a_pipeline))
    assert not (out / "run.json").exists()
    assert main("caption", caption(out, "data.limit=2")) == 0
    assert json.loads((out / "report.json").read_text())["scored"] == 2


def test_stage_behind_a_symlink_swapped_between_runs_is_refused(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(MODEL / "pipeline.yaml", model)
    shutil.copytree(MODEL / "tokenizer", model / "tokenizer")
    shutil.copytree(MODEL / "lm", model / "lm_a")
    shutil.copytree(MODEL / "lm", model / "lm_b")
    data = bytearray((model / "lm_b" / "lm.safetensors").read_bytes())
    data[len(data) // 2] ^= 1  # another model: one byte in the middle of its weights
    (model / "lm_b" / "lm.safetensors").write_bytes(bytes(data))
    (model / "lm").symlink_to("lm_a", target_is_directory=True)
    out = tmp_path / "out"
    assert main("caption", caption(out, "data.limit=2", model=model)) == 0
    (model / "lm").unlink()
    (model / "lm").symlink_to("lm_b", target_is_directory=True)
    assert_user_error(
        main("caption", caption(out, "data.limit=2", model=model)), capsys.readouterr().err, "weights_sha256", str(out)
    )


def test_weights_digest_reads_every_byte_and_follows_symlinks(tmp_path):
    stage = tmp_path / "elsewhere"
    stage.mkdir()
    big = stage / "w.safetensors"
    data = bytearray(70 << 20)  # over 4 x 16 MB: once fingerprinted by its ends only
    big.write_bytes(bytes(data))
    model = tmp_path / "model"
    model.mkdir()
    (model / "lm").symlink_to(stage, target_is_directory=True)
    (model / "loop").symlink_to(model, target_is_directory=True)  # a cycle is walked once
    before = weights_digest(model)
    data[len(data) // 2] ^= 1
    big.write_bytes(bytes(data))
    assert weights_digest(model) != before
    (model / "lm").unlink()
    assert weights_digest(model) != before  # the linked stage counted


# --- 3. unreadable items are not finished --------------------------------------------------------


def test_wrong_image_root_scores_nothing_then_the_right_one_runs(tmp_path, capsys):
    ann = coco(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main("caption", coco_args(tmp_path, ann, empty))
    line = assert_user_error(rc, capsys.readouterr().err, f"data.image_root={empty}", "a.png", "none of the 3")
    assert "rerun" in line
    assert not (tmp_path / "out" / "report.json").exists() and predictions(tmp_path / "out") == {}
    assert main("caption", coco_args(tmp_path, ann, tmp_path / "images")) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["scored"] == 3 and report["missing"] == 0


def test_some_missing_are_reported_warned_and_retried(tmp_path, capsys):
    ann = coco(tmp_path)
    (tmp_path / "images" / "c.png").unlink()
    assert main("caption", coco_args(tmp_path, ann, tmp_path / "images")) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert (report["scored"], report["missing"]) == (2, 1) and "c.png" in report["missing_examples"][0]["error"]
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.startswith("warning:")] == [
        ln for ln in err.splitlines() if "c.png" in ln
    ]
    assert "2" not in predictions(tmp_path / "out")
    shutil.copy(tmp_path / "images" / "a.png", tmp_path / "images" / "c.png")
    assert main("caption", coco_args(tmp_path, ann, tmp_path / "images")) == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["missing"] == 0
    assert set(predictions(tmp_path / "out")) == {"0", "1", "2"}


# --- 4. predictions files ----------------------------------------------------------------------


def test_read_predictions_drops_a_torn_last_line_and_names_a_broken_one(tmp_path):
    path = tmp_path / "rank0.jsonl"
    path.write_text('{"key": "a", "caption": "x"}\n{"key": "b", "capt')
    assert [r["key"] for r in read_predictions(path)] == ["a"]
    assert path.read_text() == '{"key": "a", "caption": "x"}\n'  # cut, so appends start clean
    path.write_text('{"key": "a"}\n{"key": "b", "capt\n{"key": "c"}\n')
    with pytest.raises(JSONLError, match=r"rank0.jsonl, line 2"):
        read_predictions(path)
    path.write_text('{"key": "a"}\n[1, 2]\n')
    with pytest.raises(JSONLError, match=r"rank0.jsonl, record 2"):
        read_predictions(path)


# --- 6. the catalogue ----------------------------------------------------------------------------


def _bad_json(tmp_path, request):
    (tmp_path / "captions.json").write_text('{"images": [{"id": 0, "file_name": "a.png"}, ')
    return "caption", coco_args(tmp_path, tmp_path / "captions.json", tmp_path), ["captions.json", "invalid JSON"]


def _binary_json(tmp_path, request):
    (tmp_path / "captions.json").write_bytes(b"\xff\xfe\x00garbage")
    return "caption", coco_args(tmp_path, tmp_path / "captions.json", tmp_path), ["captions.json", "UTF-8"]


def _annotations_folder(tmp_path, request):
    return "caption", coco_args(tmp_path, tmp_path, tmp_path), ["data.annotations", "is a folder"]


def _missing_image_root(tmp_path, request):
    nope = tmp_path / "no-such-images"
    return "caption", coco_args(tmp_path, coco(tmp_path), nope), [f"data.image_root={nope}", "does not exist"]


def _empty_question(tmp_path, request):
    q = {"data_subtype": "val2014", "questions": [{"image_id": 1, "question": "  ", "question_id": 7}]}
    (tmp_path / "q.json").write_text(json.dumps(q))
    args = [
        f"model={MODEL}",
        f"out_dir={tmp_path / 'out'}",
        "data.format=vqav2",
        f"data.questions={tmp_path / 'q.json'}",
    ]
    return "vqa", [*args, f"data.image_root={tmp_path}"], ["q.json", "question 7"]


def _karpathy_split_absent(tmp_path, request):
    ann = {"images": [{"filename": "a.png", "split": "train", "sentences": [{"raw": "x"}], "imgid": 0}]}
    (tmp_path / "k.json").write_text(json.dumps(ann))
    args = [f"model={MODEL}", f"out_dir={tmp_path / 'out'}", "data.format=coco_karpathy"]
    return (
        "caption",
        [*args, f"data.annotations={tmp_path / 'k.json'}", f"data.image_root={tmp_path}"],
        ["k.json", "split 'val'"],
    )


def _fid_wrong_hash(tmp_path, request):
    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"conv.weight": torch.zeros(2)}, weights)
    return "reconstruct", [f"model={MODEL}", f"metrics.fid_weights={weights}"], [str(weights), "6726825d"]


def _fid_crafted_pickle(tmp_path, request):
    weights = crafted_pickle(tmp_path / "pt_inception-2015-12-05-6726825d.pth", tmp_path / "MARKER")
    return "text2image", [f"model={MODEL}", f"metrics.fid_weights={weights}"], [str(weights), "sha256"]


def _fid_folder(tmp_path, request):
    return "reconstruct", [f"model={MODEL}", f"metrics.fid_weights={tmp_path}"], ["metrics.fid_weights", "regular file"]


def _clip_pickle_only(tmp_path, request):
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "config.json").write_text("{}")
    crafted_pickle(clip / "pytorch_model.bin", tmp_path / "MARKER")
    return "text2image", [f"model={MODEL}", f"metrics.clip_model={clip}"], [str(clip), "pytorch_model.bin", "pickle"]


def _second_writer(tmp_path, request):
    out = tmp_path / "out"
    holder = hold_lock(out)
    request.addfinalizer(lambda: (holder.kill(), holder.wait()))
    return "caption", caption(out), [f"PID {holder.pid}", str(out)]


def _other_settings(tmp_path, request):
    out = copy_run(request.getfixturevalue("finished"), tmp_path)
    return "caption", caption(out, "decoding.max_new_tokens=4"), ["config.decoding.max_new_tokens", str(out)]


def _other_model(tmp_path, request):
    out = copy_run(request.getfixturevalue("finished"), tmp_path)
    (tmp_path / "same-weights").symlink_to(MODEL, target_is_directory=True)
    return "caption", caption(out, model=tmp_path / "same-weights"), ["config.model", str(out)]


def _torn_middle_line(tmp_path, request):
    out = copy_run(request.getfixturevalue("finished"), tmp_path)
    path = out / "predictions" / "rank0.jsonl"
    lines = path.read_text().splitlines()
    lines[1] = lines[1][: len(lines[1]) // 2]
    path.write_text("\n".join(lines) + "\n")
    return "caption", caption(out), [str(path), "line 2"]


def _broken_run_file(tmp_path, request):
    out = copy_run(request.getfixturevalue("finished"), tmp_path)
    (out / "run.json").write_text('{"world_size": 1, ')
    return "caption", caption(out), [str(out / "run.json"), "new folder"]


def _out_dir_is_a_file(tmp_path, request):
    (tmp_path / "out").write_text("not a folder")
    return "caption", caption(tmp_path / "out"), [f"out_dir={tmp_path / 'out'}"]


def _plain(task: str, *args: str, names: list[str]):
    def case(tmp_path, request):
        return task, [f"model={MODEL}", f"out_dir={tmp_path / 'out'}", *args], names

    return case


CATALOGUE = {
    "missing config file": lambda tmp_path, request: ("caption", ["--config=nope.yaml"], ["nope.yaml"]),
    "unknown key": _plain("caption", "batch_sise=2", names=["batch_sise"]),
    "wrong data.format": _plain("caption", "data.format=gqa", names=["data.format", "gqa"]),
    "wrong data.split": _plain("caption", "data.split=dev", names=["data.split", "dev"]),
    "typo'd model dir": _plain("caption", f"model={MODEL}x", names=[f"{MODEL}x"]),
    "model dir that isn't one": _plain("caption", f"model={MODEL / 'tokenizer'}", names=[str(MODEL / "tokenizer")]),
    "model and stage folders": _plain("caption", f"lm={MODEL / 'lm'}", names=["model", "not both"]),
    "stage folders without the decoder": lambda tmp_path, request: (
        "reconstruct",
        [f"tokenizer={MODEL / 'tokenizer'}", "decoder=var", f"diffusion={MODEL / 'diffusion'}"],
        ["var=DIR"],
    ),
    "image_root missing": _missing_image_root,
    "annotations JSON broken": _bad_json,
    "annotations not UTF-8": _binary_json,
    "annotations a folder": _annotations_folder,
    "Karpathy split absent": _karpathy_split_absent,
    "empty question": _empty_question,
    "VQA template without {}": _plain("vqa", "prompt=Describe the image.", names=["prompt", "{}"]),
    "VQA template with {{}}": _plain("vqa", "prompt='Q: {{}}'", names=["prompt"]),
    "unquoted YAML override": _plain(
        "vqa", "prompt=Question: {} Answer:", names=["prompt=Question: {} Answer:", "quote"]
    ),
    "unknown decoder_sampling key": _plain("reconstruct", "decoder_sampling.stepz=3", names=["decoder_sampling.stepz"]),
    "decoder_sampling of the wrong type": _plain(
        "reconstruct", "decoder_sampling.steps=2.5", names=["decoder_sampling.steps"]
    ),
    "NaN decoder guidance": _plain(
        "text2image", "decoder_sampling.guidance_scale=.nan", names=["guidance_scale", "nan"]
    ),
    "NaN LM guidance": _plain("text2image", "guidance_scale_for_llm=.nan", names=["guidance_scale_for_llm"]),
    "NaN length penalty": _plain("caption", "decoding.length_penalty=.nan", names=["decoding.length_penalty"]),
    "candidates=0": _plain("text2image", "candidates=0", names=["candidates"]),
    "batch_size=0": _plain("caption", "batch_size=0", names=["batch_size"]),
    "negative seed": _plain("caption", "seed=-1", names=["seed"]),
    "seed past a generator's range": _plain("caption", f"seed={2**64}", names=["seed", str(2**64)]),
    "unknown caption metric": _plain(
        "caption", "metrics.caption_metrics=[cider,spice]", names=["metrics.caption_metrics", "spice"]
    ),
    "FID without saved images": _plain(
        "reconstruct", "metrics.fid_weights=w.pth", "save_images=false", names=["save_images"]
    ),
    "fid_weights missing": _plain(
        "reconstruct", "metrics.fid_weights=nope.pth", names=["nope.pth", "metrics.fid_weights"]
    ),
    "fid_weights wrong hash": _fid_wrong_hash,
    "FID for COCO prompts without their images": _plain(
        "text2image",
        "data.format=coco_prompts",
        "data.annotations=captions.json",
        "metrics.fid_weights=w.pth",
        names=["data.image_root", "metrics.fid_weights"],
    ),
    "fid_weights crafted pickle": _fid_crafted_pickle,
    "fid_weights a folder": _fid_folder,
    "CLIP folder with pickle weights only": _clip_pickle_only,
    "out_dir is a file": _out_dir_is_a_file,
    "second writer": _second_writer,
    "resume with other settings": _other_settings,
    "resume with another model path": _other_model,
    "torn middle predictions line": _torn_middle_line,
    "run.json broken": _broken_run_file,
}


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_bad_input_is_one_line_and_exit_2(name, tmp_path, capsys, request):
    task, args, names = CATALOGUE[name](tmp_path, request)
    resuming = (tmp_path / "out" / "run.json").exists()
    rc = main(task, ["--no-progress", *args])
    assert_user_error(rc, capsys.readouterr().err, *names)
    if not resuming:  # a run that fails leaves no run.json to refuse the corrected command
        assert not (tmp_path / "out" / "run.json").exists()
    assert not (tmp_path / "MARKER").exists()  # no pickle ran


def test_saved_image_names_never_collide(tmp_path):
    from lavit.config import load_config
    from lavit.evaluation import EvalConfig, build_task

    cfg = load_config(None, EvalConfig, ["task=reconstruct", f"model={MODEL}", f"out_dir={tmp_path}", "data.limit=1"])
    task = build_task(cfg)
    assert task._image_path("shapes-val-0").name == "shapes-val-0.png"  # safe keys keep their names
    assert task._image_path("a/b") != task._image_path("a_b")


def test_catalogue_covers_enough_cases():
    assert len(CATALOGUE) >= 15


def test_resume_refusals_leave_the_finished_run_as_it_was(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path)

    def files() -> dict:
        return {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}

    before = files()
    assert main("caption", caption(out, "decoding.max_new_tokens=4")) == 2
    capsys.readouterr()
    assert {k: v for k, v in files().items() if k.name != ".lock"} == before
