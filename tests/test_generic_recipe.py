"""The generic recipe (configs/recipes/generic_debug.yaml) end to end on real photos: a JSONL
of captioned (and questioned) crops of scikit-learn's two sample photos, given to the recipe as
``data.train=`` / ``data.val=``, trains every stage that applies to image-caption pairs, and the
assembled pipeline captions, generates and reconstructs through the CLI. A recipe-level data
path that does not exist stops the recipe before anything trains."""

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import lavit.train.recipe as recipe_module
from lavit.cli import main
from lavit.data.digits import build as build_digits
from lavit.evaluation.digits import report as digits_report
from lavit.pipeline import LaVITPipeline
from lavit.train.recipe import REPORT_FILE, load_recipe
from lavit.train.trainer import fit

ROOT = Path(__file__).resolve().parent.parent
GENERIC_DEBUG = ROOT / "configs" / "recipes" / "generic_debug.yaml"
GENERIC_TINY = ROOT / "configs" / "recipes" / "generic_tiny.yaml"
SIDE = 64  # the crops' side: the tiny presets' resolution (the debug stages resize to 32)
PHOTOS = {  # load_sample_images() order: china.jpg, flower.jpg
    "china": ("a stone temple roof under a pale sky", "a building"),
    "flower": ("a pink flower with green leaves", "a flower"),
}


@pytest.fixture
def one_thread():
    """As in tests/test_recipe.py: debug-size ops gain nothing from intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_photo_jsonl(folder: Path, per_photo: int, offset: int, name: str) -> Path:
    """``per_photo`` square crops of each sample photo at SIDE px (JPEG) and a JSONL naming them:
    one caption line per crop and a question line for every other crop."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # two (427, 640, 3) uint8 arrays
    lines = []
    for (key, (caption, answer)), photo in zip(PHOTOS.items(), photos, strict=True):
        h, w = photo.shape[:2]
        for j in range(per_photo):
            size = 160 + 16 * ((j + offset) % 8)
            top, left = (37 * (j + offset)) % (h - size), (61 * (j + offset)) % (w - size)
            crop = Image.fromarray(photo[top : top + size, left : left + size]).resize((SIDE, SIDE), Image.BICUBIC)
            image = f"{name}_{key}_{j}.jpg"
            crop.save(folder / image, quality=90)
            lines.append({"image": image, "text": caption})
            if j % 2 == 0:
                lines.append({"image": image, "question": "what is in the picture?", "answers": [answer]})
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_generic_debug_recipe_trains_on_a_jsonl_of_photos_and_the_pipeline_runs(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # the recipe's stage out_dirs are relative to the working directory
    data = tmp_path / "data"
    data.mkdir()
    train = write_photo_jsonl(data, per_photo=8, offset=0, name="train")  # 16 images
    val = write_photo_jsonl(data, per_photo=2, offset=8, name="val")
    out = tmp_path / "pipe"

    sources = {}

    def recording_fit(task, cfg, lock):
        sources[task.name] = [(s.kind, s.path) for s in (*task.cfg.data.train, *task.cfg.data.val)]
        return fit(task, cfg, lock)

    monkeypatch.setattr(recipe_module, "fit", recording_fit)
    argv = ["train", "all", "--recipe", str(GENERIC_DEBUG), f"data.train={train}", f"data.val={val}"]
    assert main([*argv, f"out_dir={out}"]) == 0

    report = json.loads((out / REPORT_FILE).read_text())
    stages = ["tokenizer", "lm", "vae", "diffusion", "var-vqvae", "var"]
    assert [s["stage"] for s in report["stages"]] == stages
    assert all(s["status"] == "trained" for s in report["stages"])
    # Every stage read the two JSONL files, none ShapesWorld.
    assert sources == {stage: [("auto", str(train)), ("auto", str(val))] for stage in stages}
    pipe = LaVITPipeline.from_pretrained(out)
    assert pipe.lm is not None and set(pipe.decoders) == {"diffusion", "var"}

    image = str(data / "val_flower_0.jpg")
    model = ["--model", str(out)]
    assert main(["caption", image, *model, "--json"]) == 0
    assert main(["generate", "a pink flower", "--out", str(tmp_path / "gen"), "--steps", "2", *model]) == 0
    assert sorted(p.suffix for p in (tmp_path / "gen").iterdir()) == [".json", ".png"]
    for decoder, steps in (("diffusion", ["--steps", "2"]), ("var", [])):  # VAR has no sampling steps
        rec = tmp_path / f"rec_{decoder}"
        assert main(["reconstruct", image, "--out", str(rec), "--decoder", decoder, *steps, *model]) == 0
        assert (rec / "val_flower_0_reconstruction.png").is_file()
    # The handwritten-digits report (eval/digits.py) runs every capability of the pipeline.
    build_digits(tmp_path / "digits", size=32)
    scores = digits_report(pipe, tmp_path / "digits", limit=2, per_label=1, batch_size=8, seed=0)
    assert scores["test_images"] == 2 and scores["judge"]["accuracy"] == 100.0
    assert {"reconstruct_diffusion", "reconstruct_var", "text2image_diffusion", "text2image_var"} <= set(scores)
    for decoder in ("diffusion", "var"):  # one prompt per digit, each image read by the judge
        assert scores[f"text2image_{decoder}"]["prompts"] == 10
        assert set(scores[f"text2image_{decoder}"]["labels_drawn"]) <= set(range(10))
        assert math.isfinite(scores[f"reconstruct_{decoder}"]["psnr"])


def test_recipe_level_data_reaches_every_stage_that_reads_data(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")  # exists: load_recipe checks the path, the stages read it
    recipe = load_recipe(GENERIC_TINY, [f"data.train={train}", "data.val=shapes", "lm.data.val=shapes"])
    for entry in recipe.stages:
        assert f"data.train={train}" in entry.overrides and "data.val=shapes" in entry.overrides, entry.stage
    lm = next(e for e in recipe.stages if e.stage == "lm")
    assert lm.overrides[-1] == "data.val=shapes"  # a stage's own override comes after the recipe's


@pytest.mark.parametrize("key", ["data.train", "data.val"])
def test_a_missing_recipe_level_data_path_fails_before_anything_trains(key, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe's out_dirs, should it get as far as locking them
    monkeypatch.setattr(recipe_module, "fit", lambda *args: pytest.fail("trained before the checks"))
    missing = tmp_path / "nowhere" / "train.jsonl"
    assert main(["train", "all", "--recipe", str(GENERIC_DEBUG), f"{key}={missing}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{key}={missing}" in err and "does not exist" in err
    shards = tmp_path / "shards" / "{00000..00001}.tar"
    assert main(["train", "all", "--recipe", str(GENERIC_DEBUG), f"{key}={shards}"]) == 2
    assert "2 of 2 shards" in capsys.readouterr().err


def test_the_generic_tiny_recipe_plans_every_stage_at_64_px_without_shapesworld_options(tmp_path):
    train = tmp_path / "train.jsonl"
    train.write_text("")
    recipe = load_recipe(GENERIC_TINY, [f"data.train={train}", f"data.val={train}"])
    steps = recipe_module._plan(recipe, progress=False)  # every config loads and the wiring holds
    cfgs = {s.entry.stage: s.cfg for s in steps}
    assert list(cfgs) == ["tokenizer", "lm", "vae", "diffusion", "var-vqvae", "var"]
    tok = cfgs["tokenizer"].model
    sides = [tok.encoder.image_size, *(cfgs[n].model.resolution for n in ("vae", "diffusion", "var-vqvae"))]
    assert sides == [64] * 4
    assert tok.encoder.weights is None and tok.semantic_loss_weight == 0 and tok.readout_weights is None
    assert cfgs["vae"].model.focus_weight == 0 and cfgs["diffusion"].model.space == "latent"
    for cfg in cfgs.values():
        assert [s.path for s in (*cfg.data.train, *cfg.data.val)] == [str(train)] * 2


def test_generic_debug_recipe_trains_on_shards(tmp_path, monkeypatch, one_thread):
    """The same ``data.train=``, given a brace pattern of img2dataset-layout tar shards."""
    import io
    import tarfile

    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    data.mkdir()
    val = write_photo_jsonl(data, per_photo=2, offset=8, name="val")
    records = [json.loads(line) for line in write_photo_jsonl(data, 4, 0, "train").read_text().splitlines()]
    captioned = [r for r in records if "text" in r]
    for s in range(2):  # KEY.jpg + KEY.txt per sample
        with tarfile.open(data / f"{s:05d}.tar", "w") as tar:
            for i, r in enumerate(captioned[s::2]):
                for name, blob in (
                    (f"{s}{i:03d}.jpg", (data / r["image"]).read_bytes()),
                    (f"{s}{i:03d}.txt", r["text"].encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
    shards = data / "{00000..00001}.tar"
    argv = ["train", "all", "--recipe", str(GENERIC_DEBUG), f"data.train={shards}", f"data.val={val}"]
    assert main([*argv, f"out_dir={tmp_path / 'pipe'}"]) == 0
    report = json.loads((tmp_path / "pipe" / REPORT_FILE).read_text())
    assert [s["status"] for s in report["stages"]] == ["trained"] * 6
