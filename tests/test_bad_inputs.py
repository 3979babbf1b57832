"""The ``lavit`` command and the pipeline API on bad input: a catalogue of what a user can get
wrong, each answered with exit code 2 and one line that names the file, flag or value and says
the fix (no traceback, nothing written). Training, evaluation and model folders have their own
catalogues (test_train_safety.py, test_eval_safety.py, test_loading_safety.py); here are the
commands themselves, the image loader, output folders and file modes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_user_error
from PIL import Image

from lavit.checkpoint import save_model_dir
from lavit.cli import main
from lavit.cli_inputs import MAX_IMAGES, reconstruction_names
from lavit.config import ShapesWorldConfig
from lavit.files import atomic_write
from lavit.pipeline import LaVITPipeline

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "lavit-shapes-tiny"


@pytest.fixture(scope="module")
def shipped_pipe():
    return LaVITPipeline.from_pretrained(SHIPPED)


@pytest.fixture
def files(tmp_path):
    """The inputs the catalogue refers to by name."""
    img = tmp_path / "img.png"
    Image.new("RGB", (40, 40), (200, 30, 30)).save(img)
    (tmp_path / "not_an_image.png").write_text("this is text")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("keep me")
    os.mkfifo(tmp_path / "fifo.png")
    (tmp_path / "latin1.txt").write_bytes("a red circle\nun cercle rouge \xe9\n".encode("latin-1"))
    return tmp_path


# (argv with {t} for the folder of `files`, what the error line must name). Each case fails
# before anything is written; those that need the model get the shipped one.
CASES = [
    # images
    (["caption", "{t}/missing.png"], ["{t}/missing.png", "not found"]),
    (["caption", "{t}/a_folder"], ["{t}/a_folder", "not a regular file"]),
    (["caption", "{t}/fifo.png"], ["{t}/fifo.png", "not a regular file"]),
    (["caption", "{t}/not_an_image.png"], ["{t}/not_an_image.png", "not a recognised image"]),
    (["reconstruct", "{t}/not_an_image.png", "--out", "{t}/o"], ["{t}/not_an_image.png"]),
    (["vqa", "{t}/fifo.png", "What colour?"], ["{t}/fifo.png", "not a regular file"]),
    # devices and model folders
    (["caption", "{t}/img.png", "--device", "cuda"], ["--device cuda", "--device cpu"]),
    (["caption", "{t}/img.png", "--device", "cuda:3"], ["--device cuda:3"]),
    (["caption", "{t}/img.png", "--device", "gpu0"], ["--device 'gpu0'"]),
    (["demo", "--device", "cuda", "--out", "{t}/demo"], ["--device cuda"]),
    (["caption", "{t}/img.png", "--model", "{t}/no_model"], ["{t}/no_model"]),
    (["caption", "{t}/img.png", "--model", "{t}/a_folder"], ["{t}/a_folder", "pipeline.yaml"]),
    (["caption", "{t}/img.png", "--model", "M", "--lm", "{t}/a_folder"], ["either --model"]),
    (["caption", "{t}/img.png", "--tokenizer", "{t}/a_folder"], ["incomplete model", "--lm"]),
    # decoding settings
    (["caption", "{t}/img.png", "--beams", "0"], ["num_beams", "0"]),
    (["caption", "{t}/img.png", "--max-new-tokens", "0"], ["max_new_tokens", "0"]),
    (["vqa", "{t}/img.png", "  "], ["empty question"]),
    (["vqa", "{t}/img.png", "What colour?", "--template", "Q: A:"], ["--template 'Q: A:'", "{}"]),
    (["vqa", "{t}/img.png", "What?", "--template", "{} and {}"], ["--template '{} and {}'"]),
    # prompts and counts
    (["generate", "", "--out", "{t}/o"], ["empty prompt"]),
    (["generate", "--out", "{t}/o"], ["no prompts", "--prompts-file"]),
    (["generate", "a", "--prompts-file", "{t}/latin1.txt", "--out", "{t}/o"], ["{t}/latin1.txt", "UTF-8"]),
    (["generate", "--prompts-file", "{t}/missing.txt", "--out", "{t}/o"], ["{t}/missing.txt"]),
    (["generate", "a", "--num-images", "0", "--out", "{t}/o"], ["--num-images", "got 0"]),
    (["generate", "a", "--num-images", "100000", "--out", "{t}/o"], ["--num-images", "100000"]),
    (["generate", *"abcde", "--num-images", "64", "--out", "{t}/o"], ["320 images", str(MAX_IMAGES)]),
    (["generate", "a", "--candidates", "0", "--out", "{t}/o"], ["--candidates", "got 0"]),
    (["generate", "a", "--candidates", "1000", "--out", "{t}/o"], ["--candidates", "1000"]),
    (["generate", "a", "--guidance-scale", "nan", "--out", "{t}/o"], ["--guidance-scale nan"]),
    (["generate", "a", "--guidance-scale", "inf", "--out", "{t}/o"], ["--guidance-scale inf"]),
    (["generate", "a red circle", "--steps", "0", "--out", "{t}/o"], ["steps", "0"]),
    (["generate", "a", "--decoder", "var", "--steps", "5", "--out", "{t}/o"], ["--steps", "var decoder"]),
    (["generate", "a red circle", "--ratio", "wide", "--out", "{t}/o"], ["'wide'", "width:height"]),
    (["generate-tokens", "a", "--max-tokens", "0", "--out", "{t}/c.json"], ["max_tokens", "0"]),
    (["generate-tokens", "red " * 400, "--out", "{t}/c.json"], ["context", "shorten the prompt"]),
    (["synthesize", "--out", "{t}/o"], ["empty prompt", "--image"]),
    (["synthesize", "--text", " ", "--out", "{t}/o"], ["empty --text"]),
    (["synthesize", "--image", "{t}/missing.png", "--out", "{t}/o"], ["{t}/missing.png"]),
    (["synthesize", "--image", "{t}/img.png", "--num-images", "0", "--out", "{t}/o"], ["--num-images"]),
    (["synthesize", "--image", "{t}/img.png", "--guidance-scale", "nan", "--out", "{t}/o"], ["nan"]),
    # outputs
    (["generate", "a", "--out", "{t}/a_file"], ["--out {t}/a_file", "is a file"]),
    (["generate", "a", "--out", "{t}/foreign"], ["--out {t}/foreign", "new or empty folder"]),
    (["synthesize", "--image", "{t}/img.png", "--out", "{t}/foreign"], ["--out {t}/foreign"]),
    (["reconstruct", "{t}/img.png", "--out", "{t}/a_file"], ["--out {t}/a_file", "is a file"]),
    (["generate-tokens", "a", "--out", "{t}/a_folder"], ["--out {t}/a_folder", "is a folder"]),
    (["demo", "--out", "{t}/a_file"], ["--out {t}/a_file"]),
    (["shapes", "--out", "{t}/a_file", "--num", "2"], ["--out {t}/a_file"]),
    (["shapes", "--num", "100000", "--out", "{t}/o"], ["--num", "100000"]),
    (["shapes", "--start", "-1", "--out", "{t}/o"], ["--start", "-1"]),
    # commands and configs
    (["train", "tokenizer"], ["--config FILE"]),
    (["train", "all", "--config", "x.yaml"], ["--recipe FILE"]),
    (["train", "tokenizer", "--config", "{t}/missing.yaml"], ["{t}/missing.yaml"]),
    (["train", "tokenizer", "--config", "{t}/latin1.txt"], ["{t}/latin1.txt"]),
]


@pytest.mark.parametrize("argv, names", CASES, ids=[f"{i:02d}-{c[0][0]}" for i, c in enumerate(CASES)])
def test_cli_bad_input_is_one_line_exit_2(argv, names, files, shipped_pipe, monkeypatch, capsys):
    load = LaVITPipeline.from_pretrained  # the real loader, for every folder but the shipped one

    def from_pretrained(directory, device="cpu", dtype=None):
        return shipped_pipe if Path(directory).resolve() == SHIPPED.resolve() else load(directory, device, dtype)

    monkeypatch.setattr(LaVITPipeline, "from_pretrained", from_pretrained)
    before = sorted(p.relative_to(files) for p in files.rglob("*"))
    rc = main([a.replace("{t}", str(files)) for a in argv])
    assert_user_error(rc, capsys.readouterr().err, *(n.replace("{t}", str(files)) for n in names))
    assert sorted(p.relative_to(files) for p in files.rglob("*")) == before  # nothing written


def test_catalogue_size():
    assert len(CASES) >= 50


# --- outputs -----------------------------------------------------------------------------------


def test_generate_replaces_its_folder_whole_and_leaves_no_stale_files(files, capsys):
    out = files / "gen"
    args = ["--decoder", "var", "--out", str(out)]
    assert main(["generate", "a red circle", "a blue square", "a small green star", *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["000_0.png", "001_0.png", "002_0.png", "prompts.json"]
    assert main(["generate", "a red circle", *args]) == 0  # fewer prompts into the same folder
    assert sorted(p.name for p in out.iterdir()) == ["000_0.png", "prompts.json"]
    assert [r["file"] for r in json.loads((out / "prompts.json").read_text())] == ["000_0.png"]
    assert not [p for p in files.iterdir() if p.name.startswith(".gen")]  # no temporary left


def test_generate_killed_midway_leaves_no_partial_folder(files, monkeypatch):
    import lavit.cli as cli

    def boom(out, images, names):
        (out / names[0]).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_save_pngs", boom)
    with pytest.raises(KeyboardInterrupt):
        main(["generate", "a red circle", "--decoder", "var", "--out", str(files / "gen")])
    assert not (files / "gen").exists()
    assert not [p for p in files.iterdir() if p.name.startswith(".gen")]


def test_reconstruct_names_never_collide(files, tmp_path):
    names = reconstruction_names(["a/x.png", "b/x.jpg", "c/y.png"])
    assert names == ["x_0_reconstruction.png", "x_1_reconstruction.png", "y_reconstruction.png"]
    other = files / "b"
    other.mkdir()
    Image.new("RGB", (40, 40), (30, 30, 200)).save(other / "img.png")
    out = files / "rec"
    assert (
        main(["reconstruct", str(files / "img.png"), str(other / "img.png"), "--decoder", "var", "--out", str(out)])
        == 0
    )
    pair = [Image.open(out / n).convert("RGB") for n in ("img_0_reconstruction.png", "img_1_reconstruction.png")]
    assert pair[0].getpixel((2, 2))[0] > 150 and pair[1].getpixel((2, 2))[2] > 150  # each its own original


# --- file modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_outputs_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    old = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "a.json", lambda p: p.write_text("{}"))
        model = save_model_dir(tmp_path / "model", ShapesWorldConfig(), {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == file_mode
    assert stat.S_IMODE(model.stat().st_mode) == dir_mode
    assert stat.S_IMODE((model / "config.yaml").stat().st_mode) == file_mode


# --- the loader never blocks ---------------------------------------------------------------------


def test_load_image_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code = f"from lavit.data.image_io import load_image\ntry:\n    load_image({str(fifo)!r})\nexcept ValueError as e:\n    print(e)\n"
    # A subprocess with a timeout: a regression would block forever, not fail.
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "not a regular file" in run.stdout and str(fifo) in run.stdout


# --- the API says the same -----------------------------------------------------------------------


def test_api_refuses_a_template_without_the_question(shipped_pipe, files):
    with pytest.raises(ValueError, match=r"'Q: A:'.*\{\}"):
        shipped_pipe.answer([files / "img.png"], ["What colour is it?"], template="Q: A:")


def test_api_refuses_generation_past_the_context(shipped_pipe):
    """A prompt that fits the context alone but not with the image's codes after it."""
    limit = shipped_pipe.lm.hf.config.max_position_embeddings
    words = next(n for n in range(1, limit) if len(shipped_pipe.builder.generation_prompt("red " * n)) > limit - 20)
    with pytest.raises(ValueError, match=f"prompt of .* runs past the LM context of {limit}"):
        shipped_pipe.generate_tokens(["red " * words])


def test_api_refuses_nan_guidance(shipped_pipe):
    from lavit.config import ConfigError

    with pytest.raises(ConfigError, match="guidance_scale"):
        shipped_pipe.generate_tokens(["a red circle"], guidance_scale=float("nan"))


def test_saved_config_with_an_interpolation_is_refused(tmp_path, capsys, files):
    model = tmp_path / "model"
    shutil.copytree(SHIPPED, model)
    cfg = model / "tokenizer" / "config.yaml"
    cfg.write_text(re.sub(r"image_size: \d+", "image_size: ${oc.env:LAVIT_SIZE}", cfg.read_text(), count=1))
    rc = main(["caption", str(files / "img.png"), "--model", str(model)])
    assert_user_error(rc, capsys.readouterr().err, str(cfg), "interpolation", "oc.env")
