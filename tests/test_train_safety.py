"""The trainer's safety nets: one writer per out_dir (a live holder stops a second run before it
writes anything; a killed one blocks nothing), resume refusing other settings, a damaged latest
checkpoint falling back to the one before, a torn metrics.jsonl, and every bad input of
``lavit train`` as one error line with exit code 2."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error
from safetensors.torch import load_file

import lavit.train.recipe as recipe_module
from lavit.checkpoint import CheckpointError, load_tree, save_tree
from lavit.cli import main
from lavit.config import TokenizerRunConfig, load_config
from lavit.files import OutDirLock, OutDirLockedError, read_jsonl
from lavit.train.recipe import load_recipe, run_recipe
from lavit.train.run_state import RESUME_SAFE_KEYS, resume_mismatches
from lavit.train.tasks.tokenizer import TokenizerTask
from lavit.train.trainer import fit, fit_stage

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "train" / "tokenizer_debug.yaml"
# 4 steps, checkpoints at 2 and 4 (both kept), every step logged.
BASE = [
    "train.progress=false",
    "train.steps=4",
    "train.batch_size=8",
    "train.log_every=1",
    "train.ckpt_every=2",
    "train.optim.warmup_steps=2",
    "vq_start_step=2",
    "eval_images=8",
    "calibration_images=16",
]


def run_cfg(out: Path, *overrides: str) -> TokenizerRunConfig:
    return load_config(DEBUG, TokenizerRunConfig, [f"train.out_dir={out}", *BASE, *overrides])


def train_argv(out: Path, *overrides: str) -> list[str]:
    return ["train", "tokenizer", "--config", str(DEBUG), f"train.out_dir={out}", *BASE, *overrides]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / "tokenizer.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished 4-step debug tokenizer run (checkpoints step 2 and 4): each test copies it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    cfg = run_cfg(out)
    fit(TokenizerTask(cfg), cfg.train)
    return out


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


HOLDER = """
import sys, time
from lavit.files import OutDirLock
OutDirLock(sys.argv[1], "a test holder").acquire()
print("locked", flush=True)
time.sleep(120)
"""


def hold_in_subprocess(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "locked"
    return proc


# ---------------------------------------------------------------------------------------------
# One writer per out_dir
# ---------------------------------------------------------------------------------------------


def test_a_live_holder_stops_a_second_run_before_it_writes_and_a_killed_one_blocks_nothing(tmp_path):
    out = tmp_path / "run"
    holder = hold_in_subprocess(out)
    try:
        cfg = run_cfg(out, "train.steps=2")
        with pytest.raises(OutDirLockedError, match=rf"in use by PID {holder.pid} \(a test holder\)"):
            fit(TokenizerTask(cfg), cfg.train)
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # no metrics, no checkpoint
    finally:
        holder.send_signal(signal.SIGKILL)  # the lock file stays behind; the lock does not
        holder.wait()
    fit(TokenizerTask(cfg), cfg.train)
    assert (out / "model" / "tokenizer.safetensors").is_file()


class Crashing(TokenizerTask):
    def training_step(self, model, images, step):
        if step == 1:
            raise KeyboardInterrupt("simulated crash")
        return super().training_step(model, images, step)


def test_the_lock_is_released_after_an_error_and_after_the_run(tmp_path):
    cfg = run_cfg(tmp_path, "train.steps=2")
    with pytest.raises(KeyboardInterrupt):
        fit(Crashing(cfg), cfg.train)
    OutDirLock(tmp_path, "check").acquire().release()
    fit(TokenizerTask(cfg), cfg.train)
    OutDirLock(tmp_path, "check").acquire().release()


def test_fit_stage_locks_before_it_builds_the_task(tmp_path):
    # `lavit train lm` (and the decoders) cache codes in out_dir as the task is built.
    class Untouchable(TokenizerTask):
        def __init__(self, cfg):
            pytest.fail("built while another run held out_dir")

    cfg = run_cfg(tmp_path, "train.steps=2")
    with OutDirLock(tmp_path, "the test"), pytest.raises(OutDirLockedError, match=f"PID {os.getpid()}"):
        fit_stage(Untouchable, cfg)
    assert fit_stage(TokenizerTask, cfg) and (tmp_path / "model").is_dir()


KILLED_AT_STEP_3 = """
import json, os, signal, sys
import torch
torch.set_num_threads(2)  # as tests/conftest.py: the same arithmetic as the in-process runs
from lavit.config import TokenizerRunConfig, load_config
from lavit.train.tasks.tokenizer import TokenizerTask
from lavit.train.trainer import fit

class Killed(TokenizerTask):
    def training_step(self, model, images, step):
        if step == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().training_step(model, images, step)

cfg = load_config(sys.argv[1], TokenizerRunConfig, json.loads(sys.argv[2]))
fit(Killed(cfg), cfg.train)
"""


def test_a_run_killed_while_holding_the_lock_resumes_bit_exactly(tmp_path, finished):
    out = tmp_path / "run"
    overrides = [f"train.out_dir={out}", *BASE]
    args = [sys.executable, "-c", KILLED_AT_STEP_3, str(DEBUG), json.dumps(overrides)]
    killed = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000002"
    assert max(r["step"] for r in read_jsonl(out / "metrics.jsonl")) == 3  # logged after the checkpoint
    cfg = run_cfg(out)
    fit(TokenizerTask(cfg), cfg.train)  # the dead holder's lock file is in the way of nothing
    assert_same(weights(finished), weights(out))
    strip = lambda out: [{k: v for k, v in r.items() if k != "sec_per_step"} for r in read_jsonl(out / "metrics.jsonl")]  # noqa: E731
    assert strip(finished) == strip(out)


def test_every_rank_fails_together_when_the_out_dir_is_held(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lavit.cli"]
    with OutDirLock(out, "the test"):
        run = subprocess.run(
            [*cmd, *train_argv(out)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
    assert run.returncode != 0
    assert run.stderr.count(f"is in use by PID {os.getpid()} (the test)") == 2, run.stderr[-3000:]  # both ranks
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


# ---------------------------------------------------------------------------------------------
# Resume checks what it resumes
# ---------------------------------------------------------------------------------------------


def test_resume_takes_more_steps_and_the_safe_keys(tmp_path, finished, capsys):
    out = copy_run(finished, tmp_path / "moved")  # train.out_dir is one of the safe keys
    overrides = ["train.steps=6", "train.log_every=2", "train.ckpt_every=3", "eval_images=16", "train.eval_every=5"]
    assert main(train_argv(out, *overrides)) == 0, capsys.readouterr().err
    logged = [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r]
    assert logged == [1, 2, 3, 4, 6]  # on from step 4, logged every 2 steps
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000006"


def test_resume_mismatches_ignore_safe_keys_and_keys_one_side_lacks():
    saved = {"train": {"steps": 4, "seed": 0, "optim": {"lr": 0.001}}, "eval_images": 8}
    new = {"train": {"steps": 9, "seed": 1, "optim": {"lr": 0.001}}, "eval_images": 16, "model": {"width": 64}}
    assert resume_mismatches(saved, new) == ["train.seed: 0 -> 1"]
    assert {"train.steps", "train.out_dir"} <= set(RESUME_SAFE_KEYS) and "train.batch_size" not in RESUME_SAFE_KEYS


def test_a_checkpoint_holding_only_the_train_config_is_compared_on_that(tmp_path, finished):
    out = copy_run(finished, tmp_path / "old")
    for step in ("step_0000002", "step_0000004"):  # as written before run configs were saved
        path = out / "checkpoints" / step / "trainer.safetensors"
        state = load_tree(path)
        state["config"] = json.dumps(json.loads(state.pop("run_config"))["train"])
        save_tree(path, state)
    cfg = run_cfg(out, "train.seed=3")
    with pytest.raises(CheckpointError, match=r"train.seed: 0 -> 3"):
        fit(TokenizerTask(cfg), cfg.train)
    cfg = run_cfg(out, "calibration_images=20")  # not in such a checkpoint: not compared
    fit(TokenizerTask(cfg), cfg.train)


# ---------------------------------------------------------------------------------------------
# A damaged latest checkpoint falls back to the one before
# ---------------------------------------------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated model": lambda step: truncate(step / "model.safetensors"),
    "truncated trainer state": lambda step: truncate(step / "trainer.safetensors"),
    "missing rng": lambda step: (step / "rng_rank0.safetensors").unlink(),
    "folder missing": shutil.rmtree,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one(damage, tmp_path, finished, capsys):
    out = copy_run(finished, tmp_path / "run")
    DAMAGE[damage](out / "checkpoints" / "step_0000004")
    assert main(train_argv(out)) == 0
    err = capsys.readouterr().err
    assert "warning: cannot resume step_0000004 (" in err and "resuming from step_0000002 instead" in err
    assert {"step": 2, "resume_fallback": str(out / "checkpoints" / "step_0000002")}.items() <= next(
        r for r in read_jsonl(out / "metrics.jsonl") if "resume_fallback" in r
    ).items()
    assert_same(weights(finished), weights(out))  # steps 3-4 redone: the uninterrupted run's model
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004"


# ---------------------------------------------------------------------------------------------
# metrics.jsonl
# ---------------------------------------------------------------------------------------------


def test_a_torn_last_metrics_line_is_dropped(tmp_path, finished, capsys):
    out = copy_run(finished, tmp_path / "run")
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "lo')  # a kill in the middle of a write
    assert main(train_argv(out)) == 0, capsys.readouterr().err
    text = (out / "metrics.jsonl").read_text()
    assert text.endswith("}\n") and [json.loads(ln) for ln in text.splitlines()]  # every line whole


# ---------------------------------------------------------------------------------------------
# Recipes hold their stages' locks
# ---------------------------------------------------------------------------------------------


def write_recipe(folder: Path, stage_out: Path, *overrides: str) -> Path:
    path = folder / "r.yaml"
    stage = {"stage": "tokenizer", "config": str(DEBUG), "overrides": [f"train.out_dir={stage_out}", *overrides]}
    path.write_text(json.dumps({"out_dir": str(folder / "pipe"), "stages": [stage]}))
    return path


def test_a_recipe_trains_under_its_own_locks_and_a_held_stage_stops_it_first(tmp_path, monkeypatch):
    stage_out = tmp_path / "tok"
    recipe = load_recipe(write_recipe(tmp_path, stage_out, *BASE[1:]))
    with OutDirLock(stage_out, "the test"):
        monkeypatch.setattr(recipe_module, "fit", lambda *a: pytest.fail("trained while a stage was held"))
        with pytest.raises(OutDirLockedError, match=f"PID {os.getpid()}"):
            run_recipe(recipe, progress=False, log=lambda line: None)
    monkeypatch.undo()
    assert run_recipe(recipe, progress=False, log=lambda line: None) == tmp_path / "pipe"  # no self-deadlock
    assert (tmp_path / "pipe" / "tokenizer").is_dir()
    OutDirLock(stage_out, "check").acquire().release()  # released at the end


# ---------------------------------------------------------------------------------------------
# Bad input to `lavit train`: one error line, exit code 2
# ---------------------------------------------------------------------------------------------


def resumed(*overrides: str, names: tuple[str, ...]):
    """A rerun of the finished run with ``overrides``."""

    def setup(tmp_path: Path, finished: Path, held: contextlib.ExitStack):
        out = copy_run(finished, tmp_path / "run")
        return train_argv(out, *overrides), (str(out / "checkpoints" / "step_0000004"), *names)

    return setup


def second_writer(tmp_path, finished, held):
    out = tmp_path / "run"
    held.enter_context(OutDirLock(out, "the first run"))
    return train_argv(out), (str(out), f"PID {os.getpid()} (the first run)")


def broken_metrics_line(tmp_path, finished, held):
    out = copy_run(finished, tmp_path / "run")
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"step": 2, "loss": \n'
    (out / "metrics.jsonl").write_text("".join(lines))
    return train_argv(out), (str(out / "metrics.jsonl"), "line 2")


def include_cycle(tmp_path, finished, held):
    (tmp_path / "a.yaml").write_text("include: {model: b.yaml}\n")
    (tmp_path / "b.yaml").write_text("include: {encoder: a.yaml}\n")
    return ["train", "tokenizer", "--config", str(tmp_path / "a.yaml")], ("include.encoder", "a.yaml", "cycle")


def nothing_to_fall_back_to(tmp_path, finished, held):
    out = copy_run(finished, tmp_path / "run")
    shutil.rmtree(out / "checkpoints" / "step_0000002")
    truncate(out / "checkpoints" / "step_0000004" / "model.safetensors")
    ckpts = str(out / "checkpoints")
    return train_argv(out), (ckpts, "model.safetensors does not load", f"delete {ckpts}")


def latest_names_a_missing_folder(tmp_path, finished, held):
    out = copy_run(finished, tmp_path / "run")
    for step in ("step_0000002", "step_0000004"):
        shutil.rmtree(out / "checkpoints" / step)
    return train_argv(out), (str(out / "checkpoints"), "step_0000004", "folder is missing")


def another_world_size(tmp_path, finished, held):
    out = copy_run(finished, tmp_path / "run")
    for step in ("step_0000002", "step_0000004"):
        path = out / "checkpoints" / step / "trainer.safetensors"
        save_tree(path, {**load_tree(path), "world_size": 2})
    return train_argv(out), ("step_0000004", "written by 2 processes")


def init_from_missing(tmp_path, finished, held):
    argv = ["train", "vae", "--config", str(ROOT / "configs" / "train" / "vae_tiny.yaml")]
    return [*argv, f"init_from={tmp_path / 'nope'}", f"train.out_dir={tmp_path / 'vae'}"], ("init_from", "nope")


def recipe_stage_held(tmp_path, finished, held):
    stage_out = tmp_path / "tok"
    held.enter_context(OutDirLock(stage_out, "another run"))
    return ["train", "all", "--recipe", str(write_recipe(tmp_path, stage_out))], (str(stage_out), "PID")


def plain(*args: str, names: tuple[str, ...]):
    return lambda tmp_path, finished, held: ([*train_argv(tmp_path / "run"), *args], names)


BAD_INPUTS = {
    "batch size changed": resumed("train.batch_size=4", names=("train.batch_size: 8 -> 4", "another")),
    "seed changed": resumed("train.seed=1", names=("train.seed: 0 -> 1",)),
    "lr changed": resumed("train.optim.lr=0.01", names=("train.optim.lr: 0.001 -> 0.01",)),
    "model width changed": resumed("model.width=64", names=("model.width: 32 -> 64",)),
    "resolution changed": resumed("data.shapes.resolution=48", names=("data.shapes.resolution: 32 -> 48",)),
    "ema switched on": resumed("train.ema_decay=0.9", names=("train.ema_decay: 0.0 -> 0.9",)),
    "task key changed": resumed("vq_start_step=3", names=("vq_start_step: 2 -> 3",)),
    "two keys changed": resumed("train.seed=1", "model.heads=4", names=("model.heads: 2 -> 4", "train.seed")),
    "second writer": second_writer,
    "broken metrics line": broken_metrics_line,
    "ckpt_every=0": plain("train.ckpt_every=0", names=("train.ckpt_every", "0")),
    "log_every=0": plain("train.log_every=0", names=("train.log_every", "0")),
    "include cycle": include_cycle,
    "config file missing": lambda tmp_path, finished, held: (
        ["train", "tokenizer", "--config", str(tmp_path / "missing.yaml")],
        (str(tmp_path / "missing.yaml"),),
    ),
    "unknown key": plain("train.stepz=3", names=("train.stepz",)),
    "nothing to fall back to": nothing_to_fall_back_to,
    "latest names a missing folder": latest_names_a_missing_folder,
    "another world size": another_world_size,
    "init_from missing": init_from_missing,
    "recipe stage held": recipe_stage_held,
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_to_lavit_train_is_one_line_and_exit_2(case, tmp_path, finished, capsys):
    with contextlib.ExitStack() as held:  # locks a case holds
        argv, names = BAD_INPUTS[case](tmp_path, finished, held)
        before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
        rc = main(argv)
    assert_user_error(rc, capsys.readouterr().err, *names)
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after.items() <= before.items()  # refused before writing (or rewriting) anything
