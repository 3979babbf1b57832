"""Recipes (lavit/train/recipe.py): the debug recipe end to end through an interruption (finished
stages skipped, the interrupted one resumed, the pipeline assembled and captioning), and bad
recipes failing with the entry named before anything trains."""

import json
from pathlib import Path

import pytest
import torch

import lavit.train.recipe as recipe_module
from lavit.checkpoint import CheckpointError
from lavit.cli import main
from lavit.config import ConfigError, ShapesWorldConfig
from lavit.data.shapes.dataset import ShapesWorld
from lavit.pipeline import LaVITPipeline
from lavit.train.recipe import REPORT_FILE, latest_step, load_recipe, run_recipe
from lavit.train.trainer import fit

ROOT = Path(__file__).resolve().parent.parent
DEBUG_RECIPE = ROOT / "configs" / "recipes" / "shapes_debug.yaml"
TRAIN = ROOT / "configs" / "train"


@pytest.fixture
def one_thread():
    """Debug-size ops gain nothing from intra-op threads; on a busy 2-core machine two threads
    made this recipe 4x slower (29 s vs 7.5 s measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Interrupted(Exception):
    """Stands in for a kill in the middle of a stage."""


def test_debug_recipe_skips_finished_stages_resumes_the_interrupted_one_and_assembles(
    tmp_path, monkeypatch, one_thread
):
    # The recipe's out_dirs are relative to the working directory, its configs to its own folder.
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(DEBUG_RECIPE)
    calls = []

    def fit_stopping_the_lm(task, cfg, lock):  # lock: the recipe holds every stage's out_dir
        calls.append(task.name)
        if task.name == "lm":  # ckpt_every=2: stopping before step 5 leaves step_0000004
            step = task.training_step

            def training_step(model, batch, i):
                if i == 4:
                    raise Interrupted
                return step(model, batch, i)

            task.training_step = training_step
        return fit(task, cfg, lock)

    monkeypatch.setattr(recipe_module, "fit", fit_stopping_the_lm)
    with pytest.raises(Interrupted):
        run_recipe(recipe, progress=False, log=lambda line: None)
    runs = tmp_path / "outputs" / "recipe_debug"
    assert calls == ["encoder", "tokenizer", "lm"]
    assert (runs / "tokenizer" / "model").is_dir() and not (runs / "lm" / "model").exists()
    assert latest_step(runs / "lm") == 4
    assert not (tmp_path / "outputs" / "lavit-shapes-debug").exists()

    def recording_fit(task, cfg, lock):
        calls.append(task.name)
        return fit(task, cfg, lock)

    calls.clear()
    lines = []
    monkeypatch.setattr(recipe_module, "fit", recording_fit)
    out = run_recipe(recipe, progress=False, log=lines.append)
    assert calls == ["lm", "diffusion", "var-vqvae", "var"]
    head = f"[1/6] encoder: {TRAIN / 'encoder_tiny.yaml'} -> outputs/recipe_debug/encoder: finished"
    assert lines[0].startswith(head) and lines[0].endswith("skipping") and lines[1].endswith("skipping")
    assert lines[2].startswith("[3/6] lm:") and "(resuming from step 4 of 6)" in lines[2]
    # The LM went on from its checkpoint: each logged step once, none redone from scratch.
    logged = [json.loads(ln) for ln in (runs / "lm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [2, 4, 6]

    report = json.loads((out / REPORT_FILE).read_text())
    stages = report["stages"]
    assert [s["stage"] for s in stages] == ["encoder", "tokenizer", "lm", "diffusion", "var-vqvae", "var"]
    assert [s["status"] for s in stages] == ["skipped", "skipped", "resumed", "trained", "trained", "trained"]
    assert stages[2]["start_step"] == 4 and stages[2]["out_dir"] == "outputs/recipe_debug/lm"
    assert stages[1]["metrics"]["quantized"] == 1.0  # a skipped stage's metrics come from its log
    assert report["total_seconds"] >= sum(s["seconds"] for s in stages)

    pipe = LaVITPipeline.from_pretrained(out)
    assert pipe.lm is not None and set(pipe.decoders) == {"diffusion", "var"}
    assert pipe.cfg.caption_decoding.max_new_tokens == 8  # the recipe's pipeline section
    captions = pipe.caption([ShapesWorld(ShapesWorldConfig(resolution=32), "val").image(0)])
    assert len(captions) == 1 and isinstance(captions[0], str)


def test_a_stage_stopped_by_max_minutes_stops_the_recipe_and_is_resumed_not_skipped(tmp_path, monkeypatch):
    stages = [{**TOKENIZER, "overrides": [f"train.out_dir={tmp_path / 'tok'}", "train.steps=4"]}]
    recipe = load_recipe(_write_recipe(tmp_path, stages))
    reached = []

    def fit_stopping_at_step_2(task, cfg, lock):  # what fit leaves when train.max_minutes runs out
        reached.append(min(4, 2 * (len(reached) + 1)))
        (Path(cfg.out_dir) / "model").mkdir(parents=True, exist_ok=True)
        (Path(cfg.out_dir) / "checkpoints").mkdir(exist_ok=True)
        (Path(cfg.out_dir) / "checkpoints" / "latest").write_text(f"step_{reached[-1]:07d}")
        return {}

    monkeypatch.setattr(recipe_module, "fit", fit_stopping_at_step_2)
    lines = []
    assert run_recipe(recipe, log=lines.append) is None
    assert "stopped at step 2 of 4" in lines[-1] and "rerun the recipe to resume" in lines[-1]
    assert not (tmp_path / "pipe").exists()
    lines.clear()
    with pytest.raises(CheckpointError, match="no meta.json"):  # resumed to step 4; the fake model./ is empty
        run_recipe(recipe, log=lines.append)
    assert reached == [2, 4] and "(resuming from step 2 of 4)" in lines[0] and " done in " in lines[1]


def _write_recipe(folder: Path, stages: list[dict]) -> Path:
    path = folder / "recipes" / "r.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"out_dir": str(folder / "pipe"), "stages": stages}))  # JSON is YAML
    return path


TOKENIZER = {"stage": "tokenizer", "config": str(TRAIN / "tokenizer_debug.yaml")}


@pytest.mark.parametrize(
    "stages, message",
    [
        ([TOKENIZER, {"stage": "lmm", "config": "x.yaml"}], r"stages\[1\]\.stage='lmm': use one of encoder, tokenizer"),
        (
            [{"stage": "tokenizer", "config": "../train/tokenizer_debg.yaml"}],
            r"stages\[0\]\.config='\.\./train/tokenizer_debg\.yaml' \(tokenizer\) in .*r\.yaml: "
            r"\S*/train/tokenizer_debg\.yaml not found \(stage configs are relative to the recipe's folder",
        ),
        (
            [TOKENIZER, TOKENIZER],
            r"stages\[1\] \(tokenizer\) has the name 'tokenizer' of stages\[0\]: a stage run twice",
        ),
        ([TOKENIZER, {**TOKENIZER, "name": "lm"}], r"stages\[1\]\.name='lm': use a name without dots"),
        ([{"stage": "lm", "config": str(TRAIN / "lm_tiny.yaml")}], "no tokenizer stage"),
    ],
)
def test_bad_recipe_entries_are_named(stages, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_recipe(_write_recipe(tmp_path, stages))


def test_command_line_overrides_reach_the_recipe_or_one_stage(tmp_path):
    recipe = load_recipe(DEBUG_RECIPE, ["out_dir=elsewhere", "var-vqvae.train.steps=2"])
    assert recipe.out_dir == "elsewhere" and recipe.stages[4].overrides[-1] == "train.steps=2"
    assert recipe.stages[5].config == str(TRAIN / "var_tiny.yaml")  # resolved against the recipe's folder
    with pytest.raises(ConfigError, match="override a stage as STAGE.key=value"):
        load_recipe(DEBUG_RECIPE, ["stages.2.overrides=[]"])
    with pytest.raises(ConfigError, match="override of stage 'encoder', which .* does not train"):
        load_recipe(_write_recipe(tmp_path, [TOKENIZER]), ["encoder.train.steps=2"])


@pytest.mark.parametrize(
    "lm_overrides, message",
    [
        # lm_tiny.yaml reads runs/tokenizer_tiny/model, not what this recipe's tokenizer writes.
        ([], r"stages\[1\] \(lm\): tokenizer_dir='runs/tokenizer_tiny/model', but the recipe's tokenizer stage"),
        (["tokenizer_dir=TOK", "train.stepz=3"], r"stages\[1\] \(lm\): unknown key 'train.stepz'"),
        (["tokenizer_dir=TOK", "train.out_dir=TOKOUT"], r"stages\[1\] \(lm\): train.out_dir=.* is also stages\[0\]'s"),
    ],
)
def test_stages_are_checked_before_anything_trains(lm_overrides, message, tmp_path, monkeypatch):
    tok_out = tmp_path / "tok"
    lm_overrides = [o.replace("TOKOUT", str(tok_out)).replace("TOK", str(tok_out / "model")) for o in lm_overrides]
    stages = [
        {**TOKENIZER, "overrides": [f"train.out_dir={tok_out}"]},
        {"stage": "lm", "config": str(TRAIN / "lm_tiny.yaml"), "overrides": lm_overrides},
    ]
    monkeypatch.setattr(recipe_module, "fit", lambda *args: pytest.fail("trained before the checks"))
    with pytest.raises(ConfigError, match=message):
        run_recipe(load_recipe(_write_recipe(tmp_path, stages)), log=lambda line: None)


def test_the_semantic_read_out_must_come_from_the_recipes_encoder(tmp_path, monkeypatch):
    enc_out, tok_out = tmp_path / "enc", tmp_path / "tok"
    encoder = {
        "stage": "encoder",
        "config": str(TRAIN / "encoder_tiny.yaml"),
        "overrides": [f"train.out_dir={enc_out}"],
    }
    tokenizer = {
        **TOKENIZER,
        "overrides": [
            f"train.out_dir={tok_out}",
            f"model.encoder.weights={enc_out / 'model' / 'vit.safetensors'}",
            "model.semantic_loss_weight=1.0",
            "model.readout_classes=[7,6,3]",
            "model.readout_weights=elsewhere/readout.safetensors",
        ],
    }
    monkeypatch.setattr(recipe_module, "fit", lambda *args: pytest.fail("trained before the checks"))
    message = (
        r"stages\[1\] \(tokenizer\): model.readout_weights='elsewhere/readout.safetensors', but the recipe's encoder"
    )
    with pytest.raises(ConfigError, match=message):
        run_recipe(load_recipe(_write_recipe(tmp_path, [encoder, tokenizer])), log=lambda line: None)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "all"], "'lavit train all' takes --recipe FILE"),
        (["train", "lm", "--recipe", "r.yaml"], "'lavit train lm' takes --config FILE; --recipe goes with"),
        (["train", "all", "--recipe", "missing.yaml"], "config file not found: missing.yaml"),
    ],
)
def test_cli_train_all_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_latent_diffusion_must_read_the_recipes_vae(tmp_path, monkeypatch):
    tok_out, vae_out = tmp_path / "tok", tmp_path / "vae"
    stages = [
        {**TOKENIZER, "overrides": [f"train.out_dir={tok_out}"]},
        {"stage": "vae", "config": str(TRAIN / "vae_tiny.yaml"), "overrides": [f"train.out_dir={vae_out}"]},
        {
            "stage": "diffusion",
            "config": str(TRAIN / "diffusion_latent_tiny.yaml"),
            "overrides": [f"tokenizer_dir={tok_out / 'model'}", f"train.out_dir={tmp_path / 'diff'}"],
        },
    ]
    monkeypatch.setattr(recipe_module, "fit", lambda *args: pytest.fail("trained before the checks"))
    message = r"stages\[2\] \(diffusion\): model.vae_path='runs/vae_tiny/model', but the recipe's vae stage"
    with pytest.raises(ConfigError, match=message):
        run_recipe(load_recipe(_write_recipe(tmp_path, stages)), log=lambda line: None)


def _chain(tmp_path: Path, second_init: str) -> Path:
    """shapes_debug.yaml's tokenizer (no encoder) and LM, then a second LM entry ("lm-more")."""
    import yaml

    debug = yaml.safe_load(DEBUG_RECIPE.read_text())
    tok, lm = (dict(s) for s in debug["stages"][1:3])
    tok["overrides"] = [
        o for o in tok["overrides"] if not o.startswith(("model.encoder", "model.readout", "model.semantic"))
    ]
    more = {
        "stage": "lm",
        "name": "lm-more",
        "config": lm["config"],
        "overrides": [
            *(o for o in lm["overrides"] if not o.startswith("train.out_dir")),
            "train.out_dir=outputs/recipe_debug/lm_more",
            "train.steps=2",
            f"init_from={second_init}",
        ],
    }
    for s in (tok, lm, more):
        s["config"] = str((DEBUG_RECIPE.parent / s["config"]).resolve())
    return _write_recipe(tmp_path, [tok, lm, more])


def test_a_recipe_chains_two_runs_of_one_stage(tmp_path, monkeypatch, one_thread):
    """A stage may run twice: the second entry, named, starts from the first's model/ and the
    pipeline takes the last; its name addresses overrides; an init_from naming a later entry's
    model/ is refused before anything trains."""
    monkeypatch.chdir(tmp_path)
    first = "outputs/recipe_debug/lm/model"
    recipe = load_recipe(_chain(tmp_path, first), ["lm-more.train.log_every=1"])
    assert (
        recipe.stages[2].overrides[-1] == "train.log_every=1" and recipe.stages[1].overrides[-1] != "train.log_every=1"
    )
    out = run_recipe(recipe, progress=False, log=lambda line: None)
    report = json.loads((out / REPORT_FILE).read_text())
    assert [(s["stage"], s["name"], s["status"]) for s in report["stages"]] == [
        ("tokenizer", "tokenizer", "trained"),
        ("lm", "lm", "trained"),
        ("lm", "lm-more", "trained"),
    ]
    shipped = LaVITPipeline.from_pretrained(out).lm.state_dict()
    more = LaVITPipeline.from_parts("outputs/recipe_debug/tokenizer/model", "outputs/recipe_debug/lm_more/model").lm
    assert all(torch.equal(v, more.state_dict()[k]) for k, v in shipped.items())  # the last LM entry
    base = LaVITPipeline.from_parts("outputs/recipe_debug/tokenizer/model", first).lm.state_dict()
    assert any(not torch.equal(v, base[k]) for k, v in shipped.items())  # it trained on from the first

    bad = _chain(tmp_path / "bad", "outputs/recipe_debug/lm_more/model")  # its own model: not yet written
    monkeypatch.setattr(recipe_module, "fit", lambda *args: pytest.fail("trained before the checks"))
    with pytest.raises(
        ConfigError, match=r"stages\[2\] \(lm-more\): init_from=.* is what stages\[2\] \(lm-more\) writes"
    ):
        run_recipe(load_recipe(bad), log=lambda line: None)
