"""The shared trainer: schedule, data positions, exact resume, and 2-process == 1-process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import crashing
from safetensors.torch import load_file

from lavit.checkpoint import CheckpointError, load_tree, save_tree
from lavit.config import TokenizerRunConfig, TrainConfig, load_config
from lavit.train.sampler import StepBatchSampler
from lavit.train.tasks.tokenizer import TokenizerTask
from lavit.train.trainer import fit, lr_lambda
from tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEBUG = ROOT / "configs" / "train" / "tokenizer_debug.yaml"


def run_cfg(out_dir: Path, *overrides: str) -> TokenizerRunConfig:
    base = [
        f"train.out_dir={out_dir}",
        "train.progress=false",
        "train.steps=8",
        "train.batch_size=8",
        "train.log_every=1",
        "train.ckpt_every=3",
        "train.optim.warmup_steps=2",
        "vq_start_step=3",
        "eval_images=8",
        "calibration_images=16",
    ]
    return load_config(DEBUG, TokenizerRunConfig, base + list(overrides))


CrashingTask = crashing(TokenizerTask)  # dies in the middle of step crash_at


def test_lr_schedule_warmup_then_cosine():
    f = lr_lambda(load_config(None, TrainConfig, ["steps=110", "optim.warmup_steps=10", "optim.min_lr_ratio=0.1"]))
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def test_sampler_ranks_partition_the_global_batch():
    one = StepBatchSampler(100, 8, 1, rank=0, world_size=1, seed=3, start_step=0, steps=30)
    two = [StepBatchSampler(100, 8, 2, rank=r, world_size=2, seed=3, start_step=0, steps=30) for r in range(2)]
    for step in (0, 5, 12, 13, 29):  # 12 steps per epoch: 12 and 13 cross an epoch boundary
        (full,) = one.step_indices(step)
        parts = [i for s in two for micro in s.step_indices(step) for i in micro]
        assert parts == full and len(set(full)) == 8
    resumed = StepBatchSampler(100, 8, 1, rank=0, world_size=1, seed=3, start_step=5, steps=30)
    assert list(resumed)[0] == one.step_indices(5)[0]
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(100, 8, 3, rank=0, world_size=1, seed=0, start_step=0, steps=1)


def _metrics(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def _strip_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "sec_per_step"} for r in records]


@pytest.mark.parametrize("ema", [(), ("train.ema_decay=0.9",)], ids=["plain", "ema"])
def test_killed_run_resumes_step_for_step(tmp_path, ema):
    # Every stochastic part on: Gumbel noise, k-means init, dead-code replacement.
    straight = fit(TokenizerTask(run_cfg(tmp_path / "a", *ema)), run_cfg(tmp_path / "a", *ema).train)
    with pytest.raises(KeyboardInterrupt):
        fit(CrashingTask(run_cfg(tmp_path / "b", *ema), crash_at=5), run_cfg(tmp_path / "b", *ema).train)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    assert max(r["step"] for r in _metrics(tmp_path / "b")) == 5  # steps 4-5 logged, then lost
    resumed = fit(TokenizerTask(run_cfg(tmp_path / "b", *ema)), run_cfg(tmp_path / "b", *ema).train)
    assert _strip_timing(_metrics(tmp_path / "a")) == _strip_timing(_metrics(tmp_path / "b"))
    assert straight == resumed
    a, b = (
        load_file(tmp_path / "a" / "model" / "tokenizer.safetensors"),
        load_file(tmp_path / "b" / "model" / "tokenizer.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_max_minutes_stops_saves_and_resumes_to_the_same_model(tmp_path):
    fit(TokenizerTask(run_cfg(tmp_path / "a")), run_cfg(tmp_path / "a").train)
    budget = run_cfg(tmp_path / "b", "train.max_minutes=1e-9")  # runs out after every step
    for step in (1, 2):
        metrics = fit(TokenizerTask(budget), budget.train)
        assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == f"step_{step:07d}"
        assert metrics and (tmp_path / "b" / "model" / "tokenizer.safetensors").is_file()
    assert {"step": 2, "stopped": "train.max_minutes=1e-09 ran out"} in _metrics(tmp_path / "b")
    fit(TokenizerTask(run_cfg(tmp_path / "b")), run_cfg(tmp_path / "b").train)  # no budget: on to step 8
    a, b = (load_file(tmp_path / run / "model" / "tokenizer.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    trained = lambda out: [r for r in _metrics(out) if "loss" in r]  # noqa: E731
    assert _strip_timing(trained(tmp_path / "a")) == _strip_timing(trained(tmp_path / "b"))
    sparse = run_cfg(tmp_path / "c", "train.max_minutes=1e-9", "train.log_every=3")  # asked at logged steps
    fit(TokenizerTask(sparse), sparse.train)
    assert (tmp_path / "c" / "checkpoints" / "latest").read_text().strip() == "step_0000003"


def test_run_writes_curves_checkpoints_and_a_loadable_model(tmp_path):
    cfg = run_cfg(tmp_path, "train.keep_checkpoints=1")
    metrics = fit(TokenizerTask(cfg), cfg.train)
    assert {"code_usage", "keep_frac", "recon_cos", "feature_r2", "pixel_probe_psnr"} <= set(metrics)
    assert (tmp_path / "loss.png").is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_0000008"]
    assert any("eval/code_usage" in r for r in _metrics(tmp_path))
    tok = load_tokenizer(tmp_path / "model")
    assert len(tok.encode(torch.rand(2, 3, 32, 32))) == 2
    # Running again finds the finished checkpoint and does no more steps.
    fit(TokenizerTask(cfg), cfg.train)
    assert max(r["step"] for r in _metrics(tmp_path)) == 8


def test_ema_of_the_weights_is_what_evaluation_and_the_saved_model_use(tmp_path):
    decay, steps = 0.5, 5
    cfg = run_cfg(tmp_path, f"train.ema_decay={decay}", f"train.steps={steps}", "train.ckpt_every=1")
    cfg.train.keep_checkpoints = steps
    fit(TokenizerTask(cfg), cfg.train)
    names = [n for n, _ in TokenizerTask(cfg).build_model().named_parameters()]
    ckpt = lambda k, f: load_tree(tmp_path / "checkpoints" / f"step_{k:07d}" / f"{f}.safetensors")  # noqa: E731
    for k in range(1, steps):  # the update after step k+1 used decay min(decay, (1 + k) / (10 + k))
        d = min(decay, (1 + k) / (10 + k))
        ema, live, after = ckpt(k, "ema"), ckpt(k + 1, "model"), ckpt(k + 1, "ema")
        for n in names:
            torch.testing.assert_close(after[n], ema[n] + (1 - d) * (live[n] - ema[n]), atol=1e-6, rtol=0, msg=n)
    saved, last = load_file(tmp_path / "model" / "tokenizer.safetensors"), ckpt(steps, "ema")
    assert all(torch.equal(saved[n], last[n]) for n in names)
    assert not all(torch.equal(saved[n], ckpt(steps, "model")[n]) for n in names)
    # A checkpoint of an EMA run without its EMA is damaged: the run resumes from the one before
    # (step 4) and ends with the same model.
    (tmp_path / "checkpoints" / f"step_{steps:07d}" / "ema.safetensors").unlink()
    fit(TokenizerTask(cfg), cfg.train)
    again = load_file(tmp_path / "model" / "tokenizer.safetensors")
    assert all(torch.equal(saved[n], again[n]) for n in names)
    # Resuming it with the EMA off is another run: refused, naming the key.
    off = run_cfg(tmp_path, "train.ema_decay=0", f"train.steps={steps}", "train.ckpt_every=1")
    with pytest.raises(CheckpointError, match=r"train.ema_decay: 0.5 -> 0.0"):
        fit(TokenizerTask(off), off.train)


def test_resume_with_another_world_size_fails_clearly(tmp_path):
    cfg = run_cfg(tmp_path, "train.steps=3")
    fit(TokenizerTask(cfg), cfg.train)
    state_file = tmp_path / "checkpoints" / "step_0000003" / "trainer.safetensors"
    state = load_tree(state_file)
    state["world_size"] = 2
    save_tree(state_file, state)
    cfg = run_cfg(tmp_path, "train.steps=6")
    with pytest.raises(CheckpointError, match="written by 2 processes, this run has 1"):
        fit(TokenizerTask(cfg), cfg.train)


def _torchrun(nproc: int, out: Path, *overrides: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "lavit.cli",
        "train",
        "tokenizer",
        "--config",
        str(DEBUG),
        f"train.out_dir={out}",
        "train.progress=false",
        "train.steps=6",
        "train.batch_size=8",
        "train.log_every=1",
        "train.optim.warmup_steps=2",
        "vq_start_step=3",
        "eval_images=8",
        "calibration_images=16",
        # Deterministic updates, so 2 ranks x 4 images can equal 1 rank x 8 images:
        "model.selector.gumbel_noise=false",
        "model.quantizer.kmeans_init=false",
        "model.quantizer.threshold_ema_dead_code=0",
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out_run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert out_run.returncode == 0, out_run.stderr[-3000:]


def _assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(a_dir / "model" / "tokenizer.safetensors"), load_file(b_dir / "model" / "tokenizer.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        # Parameters agree to ~4e-5 after 6 steps; the codebook's EMA buffers to ~3e-4 (the VQ
        # commitment loss is a per-rank mean over a varying number of kept tokens).
        atol = 1e-3 if k.startswith("quantizer.") else 2e-4
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)
    la, lb = _metrics(a_dir), _metrics(b_dir)
    assert la[0]["loss"] == pytest.approx(lb[0]["loss"], abs=1e-6)


def test_two_process_ddp_equals_one_process_with_the_doubled_batch(tmp_path):
    _torchrun(1, tmp_path / "one")
    _torchrun(2, tmp_path / "two")
    _assert_same_weights(tmp_path / "one", tmp_path / "two")


@pytest.mark.slow
@pytest.mark.parametrize("ema", [(), ("train.ema_decay=0.9",)], ids=["plain", "ema"])
def test_two_process_fsdp2_equals_one_process(tmp_path, ema):
    # With EMA the saved model is the EMA, gathered from the shards (and resharded on resume).
    _torchrun(1, tmp_path / "one", *ema)
    _torchrun(2, tmp_path / "fsdp", "train.parallel=fsdp", "train.ckpt_every=3", *ema)
    _assert_same_weights(tmp_path / "one", tmp_path / "fsdp")
    if ema:  # a rerun resumes the finished run (EMA resharded from its full checkpoint) and saves it again
        first = load_file(tmp_path / "fsdp" / "model" / "tokenizer.safetensors")
        _torchrun(2, tmp_path / "fsdp", "train.parallel=fsdp", "train.ckpt_every=3", *ema)
        again = load_file(tmp_path / "fsdp" / "model" / "tokenizer.safetensors")
        assert all(torch.equal(first[k], again[k]) for k in first)
