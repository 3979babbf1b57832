"""The one trainer every stage uses.

    fit(task, train_cfg) -> final metrics
    fit_stage(task_cls, run_cfg)       lock out_dir, build the task, fit it (``lavit train STAGE``)

torchrun/torch.distributed (DDP; FSDP2 ``fully_shard`` of the task's blocks for large models),
bf16 autocast where supported, gradient accumulation, clipping, AdamW with linear warmup and
cosine decay, an optional EMA of the weights, tqdm progress, a loss-curve PNG, atomic checkpoints
and exact resume (model, EMA, optimizer, scheduler, per-rank RNG, data position). Runs unchanged
on one CPU.

Layout of ``train_cfg.out_dir`` (the lock, the checkpoints and what a resume must match:
lavit/train/run_state.py):

    .lock                    held (flock) by the run writing here; see RunLock
    metrics.jsonl            one line per logged step (and per evaluation)
    loss.png                 loss curves
    checkpoints/step_0000200/{model,ema,trainer,rng_rank0,...}.safetensors, latest
    model/                   the final model directory (task.save)

"""

from __future__ import annotations

import dataclasses
import gc
import json
import math
import random
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from lavit.checkpoint import CheckpointError, atomic_write, load_tree, save_tree
from lavit.config import TrainConfig
from lavit.data.shards import ResumableStream
from lavit.files import JSONLError, read_jsonl
from lavit.train.distributed import (
    DistInfo,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
    mean_across_ranks,
)
from lavit.train.run_state import (
    CKPT_DIR,
    LATEST,
    METRICS,
    RunLock,
    find_usable,
    resume_mismatches,
    rng_state,
    set_rng_state,
)
from lavit.train.sampler import StepBatchSampler
from lavit.train.task import Task
from lavit.viz import plot_curves


def lr_lambda(cfg: TrainConfig):
    """Multiplier of the base LR at each step: linear warmup, then cosine to ``min_lr_ratio``."""
    o = cfg.optim

    def f(step: int) -> float:
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(cfg.steps - o.warmup_steps, 1)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32":
        return None
    if cfg.precision == "bf16":
        return torch.bfloat16
    # auto: bf16 on GPUs that support it; fp32 on CPU, where bf16 autocast is slower.
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases, norms, embeddings-as-vectors (params with < 2 dims)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))


class Trainer:
    """Holds the run's state; :func:`fit` is the entry point."""

    def __init__(self, task: Task, cfg: TrainConfig) -> None:
        self.task, self.cfg = task, cfg
        self.info: DistInfo = init_distributed()
        self.out = Path(cfg.out_dir)
        self.ckpt_root = self.out / CKPT_DIR
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier(self.info)
        # The run config saved with each checkpoint: the task's (train section as given here).
        run_cfg = getattr(task, "cfg", None)
        run = dataclasses.asdict(run_cfg) if dataclasses.is_dataclass(run_cfg) else {}
        self.run_config = json.loads(json.dumps({**run, "train": dataclasses.asdict(cfg)}, default=str))
        # Which checkpoint to resume, checked before anything is built or written.
        self.resume_from, self.skipped = self._choose_checkpoint()

        # Same seed on every rank for the build (DDP also broadcasts rank 0's weights), then a
        # per-rank stream for what differs between ranks (dropout, Gumbel noise, ...).
        torch.manual_seed(cfg.seed)
        self.model = task.build_model().to(self.info.device)
        self.raw = self.model  # unwrapped, for saving and evaluation
        self.wrapped = self._wrap(self.model)
        torch.manual_seed(cfg.seed + 7919 * (self.info.rank + 1))
        random.seed(cfg.seed + self.info.rank)
        np.random.seed(cfg.seed + self.info.rank)
        self.optimizer = build_optimizer(self.raw, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.amp_dtype = autocast_dtype(cfg, self.info.device)
        self.step = 0
        # The EMA shadow of each trained parameter (a DTensor shard under FSDP2, like the
        # parameter); frozen ones (a VAE, a frozen ViT) never change and need none. requires_grad
        # is fixed when a task builds its model, and loading a state dict copies into the same
        # parameters, so the list is taken once.
        self.trained = [p for p in self.raw.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.trained] if cfg.ema_decay > 0 else None

    # ---------------------------------------------------------------------------------------

    def _wrap(self, model: nn.Module) -> nn.Module:
        cfg, info = self.cfg, self.info
        blocks = tuple(self.task.block_types)
        if cfg.grad_checkpointing and blocks:
            from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing

            apply_activation_checkpointing(model, check_fn=lambda m: isinstance(m, blocks))
        if cfg.parallel == "fsdp" and info.enabled:
            from torch.distributed.fsdp import fully_shard

            for m in model.modules():
                if isinstance(m, blocks):
                    fully_shard(m)
            fully_shard(model)
            return model
        if info.enabled:
            ids = [info.device.index] if info.device.type == "cuda" else None
            return DistributedDataParallel(model, device_ids=ids)
        return model

    def _full_state(self) -> tuple[dict, dict]:
        """Full (unsharded) model and optimizer state dicts, valid on rank 0."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(self.raw, self.optimizer, options=opts)

    # ---------------------------------------------------------------------------------------
    # EMA of the weights
    # ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for shadow, p in zip(self.ema, self.trained, strict=True):
            shadow.lerp_(p.detach(), 1 - decay)

    @contextmanager
    def _ema_weights(self):
        """The EMA in the model's parameters for the duration (nothing changes without EMA), so
        evaluation, saving and state-dict gathering (FSDP2 included) see it as the model."""
        if self.ema is None:
            yield
            return
        with torch.no_grad():
            live = [p.detach().clone() for p in self.trained]
            for p, shadow in zip(self.trained, self.ema, strict=True):
                p.copy_(shadow)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(self.trained, live, strict=True):
                    p.copy_(value)

    def _full_ema_state(self) -> dict | None:
        """The EMA as a full model state dict (valid on rank 0; collective under FSDP2)."""
        if self.ema is None:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        with self._ema_weights():
            full = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return {k: v.clone() for k, v in full.items()}  # copies: the live weights come back next

    # ---------------------------------------------------------------------------------------
    # Checkpoints
    # ---------------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write checkpoints/step_N atomically (temp dir + rename) and point ``latest`` at it."""
        name = f"step_{self.step:07d}"
        final, tmp = self.ckpt_root / name, self.ckpt_root / f".{name}.tmp"
        model_sd, optim_sd = self._full_state()
        ema_sd = self._full_ema_state()
        if self.info.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier(self.info)
        save_tree(tmp / f"rng_rank{self.info.rank}.safetensors", rng_state())
        if self.info.is_main:
            save_tree(tmp / "model.safetensors", model_sd)
            if ema_sd is not None:
                save_tree(tmp / "ema.safetensors", ema_sd)
            save_tree(
                tmp / "trainer.safetensors",
                {
                    "optimizer": optim_sd,
                    "scheduler": self.scheduler.state_dict(),
                    "step": self.step,
                    "world_size": self.info.world_size,
                    "run_config": json.dumps(self.run_config),
                },
            )
        barrier(self.info)
        if self.info.is_main:
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            atomic_write(self.ckpt_root / LATEST, lambda p: p.write_text(name + "\n"))
            self._prune()
        barrier(self.info)
        return final

    def _prune(self) -> None:
        keep = self.cfg.keep_checkpoints
        done = sorted(p for p in self.ckpt_root.glob("step_*") if p.is_dir())
        for old in done[:-keep] if keep > 0 else []:
            shutil.rmtree(old)

    def _choose_checkpoint(self) -> tuple[Path | None, list[str]]:
        """The checkpoint to resume (None: start afresh) and the damaged ones passed over.

        Rank 0 looks at the files (every rank then agrees): the folder ``latest`` names, or if a
        file of it does not open, the newest older one whose files all do. Its saved run config
        must match this run's but for :data:`RESUME_SAFE_KEYS`.

        Raises:
            CheckpointError: no usable checkpoint is left, or the run config differs.
        """
        found: tuple[str | None, list[str], dict | None, str | None] = (None, [], None, None)
        if self.info.is_main:
            try:
                found = find_usable(self.ckpt_root, self.cfg.ema_decay, self.info.world_size)
            except Exception as e:  # must reach every rank, not leave them waiting
                found = (None, [], None, f"{self.ckpt_root}: cannot read the checkpoints ({e})")
        path, skipped, saved, error = broadcast_object(found, self.info)
        if error is not None:
            raise CheckpointError(error)
        if path is None:
            return None, []
        path = Path(path)
        self._check_world_size(path, saved["world_size"])
        mismatches = resume_mismatches(saved["run_config"], self.run_config)
        if mismatches:
            more = f" and {len(mismatches) - 4} more" if len(mismatches) > 4 else ""
            raise CheckpointError(
                f"{path} was saved with other settings ({'; '.join(mismatches[:4])}{more}) and resuming it "
                "would mix two runs: resume as saved (drop those overrides), or start afresh with another "
                f"train.out_dir (or delete {self.ckpt_root}); on resume only train.steps and the logging, "
                "evaluation and checkpoint settings may change (RESUME_SAFE_KEYS, lavit/train/run_state.py)"
            )
        return path, skipped

    def _check_world_size(self, path: Path, world_size: int) -> None:
        if world_size != self.info.world_size:
            raise CheckpointError(
                f"{path} was written by {world_size} processes, this run has "
                f"{self.info.world_size}: the per-rank RNG streams cannot be restored. "
                "Resume with the same --nproc_per_node, or start a new out_dir."
            )

    def resume(self, path: Path) -> None:
        """Restore model, EMA, optimizer, scheduler, this rank's RNG and the step from ``path``."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

        state = load_tree(path / "trainer.safetensors")
        self._check_world_size(path, state["world_size"])
        model_sd = load_tree(path / "model.safetensors")
        opts = StateDictOptions(full_state_dict=True, strict=True)
        if self.ema is not None:
            if not (path / "ema.safetensors").is_file():
                raise CheckpointError(
                    f"{path} holds no ema.safetensors (it was written with train.ema_decay=0): resume "
                    "with train.ema_decay=0, or start a new out_dir"
                )
            # Through the model, so that FSDP2 shards the full EMA as it shards the weights.
            set_model_state_dict(self.raw, load_tree(path / "ema.safetensors"), options=opts)
            self.ema = [p.detach().clone() for p in self.trained]
        set_state_dict(
            self.raw, self.optimizer, model_state_dict=model_sd, optim_state_dict=state["optimizer"], options=opts
        )
        self.scheduler.load_state_dict(state["scheduler"])
        set_rng_state(load_tree(path / f"rng_rank{self.info.rank}.safetensors"))
        self.step = int(state["step"])

    # ---------------------------------------------------------------------------------------
    # Loop
    # ---------------------------------------------------------------------------------------

    def fit(self) -> dict[str, float]:
        cfg, info, task = self.cfg, self.info, self.task
        if self.resume_from is not None:
            self.resume(self.resume_from)
        self._trim_metrics()
        if self.skipped:
            if info.is_main:
                print(
                    f"lavit train: warning: cannot resume {'; '.join(self.skipped)} in {self.ckpt_root}: "
                    f"resuming from {self.resume_from.name} instead",
                    file=sys.stderr,
                )
            self._log({"step": self.step, "resume_fallback": str(self.resume_from), "skipped": self.skipped})
        batches = iter(self._loader(task.train_dataset()))
        bar = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc=f"train {task.name}",
            dynamic_ncols=True,
            disable=not (cfg.progress and info.is_main),
        )
        self.wrapped.train()
        metrics: dict[str, float] = {}
        t0 = started = time.perf_counter()
        while self.step < cfg.steps:
            logs = self._optimizer_step(batches)
            self.step += 1
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                reduced = mean_across_ranks(logs, info)
                reduced.update(
                    lr=self.scheduler.get_last_lr()[0], sec_per_step=(time.perf_counter() - t0) / cfg.log_every
                )
                t0 = time.perf_counter()
                bar.set_postfix({k: f"{v:.4g}" for k, v in reduced.items() if k in ("loss", "lr")})
                self._log({"step": self.step, **reduced})
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.steps:
                with self._ema_weights():
                    self._evaluate()
            out_of_time = self._out_of_time(started)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                self._log({"step": self.step, "stopped": f"train.max_minutes={cfg.max_minutes} ran out"})
                break
        bar.close()
        with self._ema_weights():
            metrics = self._evaluate()
            plain = self._plain_model()
            if info.is_main:
                task.save(plain, self.out / "model")
        if info.is_main:
            self._plot()
        barrier(info)
        return metrics

    def _loader(self, dataset) -> DataLoader:
        """The training batches from ``self.step`` on. A map-style dataset is indexed by the
        :class:`StepBatchSampler` (a pure function of (seed, step)); an endless
        :class:`ResumableStream` is picked up after the micro-batches this rank already took
        (``resumed``: exact with any ``num_workers``, see lavit/data/shards.py)."""
        cfg, info = self.cfg, self.info
        if cfg.batch_size % (info.world_size * cfg.grad_accum) != 0:
            raise ValueError(
                f"train.batch_size={cfg.batch_size} must be divisible by world size {info.world_size} x "
                f"train.grad_accum={cfg.grad_accum}"
            )
        if isinstance(dataset, ResumableStream):
            micro = cfg.batch_size // (info.world_size * cfg.grad_accum)
            return DataLoader(
                dataset.resumed(self.step * cfg.grad_accum, micro),
                batch_size=micro,
                collate_fn=self.task.collate,
                num_workers=cfg.num_workers,
                persistent_workers=False,
            )
        sampler = StepBatchSampler(
            len(dataset),
            cfg.batch_size,
            cfg.grad_accum,
            info.rank,
            info.world_size,
            cfg.seed,
            self.step,
            cfg.steps,
            with_epoch=getattr(dataset, "takes_epoch", False),
        )
        # A dedicated generator: the loader must not draw from the global RNG (exact resume).
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.task.collate,
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
            persistent_workers=False,
        )

    def _out_of_time(self, started: float) -> bool:
        """Whether ``train.max_minutes`` has run out, asked at logged steps only (under DDP the
        answer is a collective: rank 0's clock decides for every rank)."""
        cfg = self.cfg
        if not cfg.max_minutes or self.step % cfg.log_every or self.step == cfg.steps:
            return False
        return bool(broadcast_object(time.perf_counter() - started > 60 * cfg.max_minutes, self.info))

    def _optimizer_step(self, batches) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        sums: dict[str, torch.Tensor] = {}
        for micro in range(cfg.grad_accum):
            batch = _to_device(next(batches), self.info.device)
            last = micro == cfg.grad_accum - 1
            sync = (
                nullcontext()
                if last or not isinstance(self.wrapped, DistributedDataParallel)
                else self.wrapped.no_sync()
            )
            amp = torch.autocast(self.info.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
            with sync:
                with amp:
                    loss, logs = self.task.training_step(self.wrapped, batch, self.step)
                (loss / cfg.grad_accum).backward()
            for k, v in {"loss": loss.detach(), **logs}.items():
                sums[k] = sums.get(k, 0) + v.detach().float() / cfg.grad_accum
        if cfg.optim.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.raw.parameters(), cfg.optim.grad_clip)
            # Under FSDP2 the norm is a replicated DTensor; logs need a plain tensor.
            sums["grad_norm"] = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).detach()
        if not torch.isfinite(sums["loss"]):
            raise FloatingPointError(
                f"loss is {sums['loss'].item()} at step {self.step}; lower train.optim.lr, or start "
                f"afresh or from an earlier checkpoint in {self.ckpt_root}"
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self._update_ema()
        return sums

    def _plain_model(self) -> nn.Module | None:
        """The model as an ordinary module on rank 0 (None elsewhere). Under FSDP2 the
        parameters are sharded DTensors, so rank 0 gets a fresh copy with the gathered weights."""
        if not (self.cfg.parallel == "fsdp" and self.info.enabled):
            return self.raw if self.info.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.raw, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.info.is_main:
            return None
        torch.manual_seed(self.cfg.seed)
        plain = self.task.build_model()
        plain.load_state_dict(full, strict=True)
        return plain.to(self.info.device)

    def _evaluate(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        model = self._plain_model()  # collective under FSDP: every rank calls it
        if model is not None:
            model.eval()
            metrics = self.task.evaluate(model, self.step)
            model.train()
            if metrics:
                self._log({"step": self.step, **{f"eval/{k}": v for k, v in metrics.items()}})
        barrier(self.info)
        return metrics

    # ---------------------------------------------------------------------------------------
    # Logging
    # ---------------------------------------------------------------------------------------

    def _log(self, record: dict) -> None:
        if self.info.is_main:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")
            if record.get("step", 0) % (self.cfg.log_every * 10) == 0:
                self._plot()

    def _trim_metrics(self) -> None:
        """Drop lines a crashed run logged after its last checkpoint (they are redone), and a
        torn last line (a kill mid-write).

        Raises:
            JSONLError: a line before the last does not parse (on every rank).
        """
        path = self.out / METRICS
        error = None
        if self.info.is_main and path.is_file():
            try:
                records = read_jsonl(path, repair=True)
            except JSONLError as e:
                error = str(e)
            else:
                kept = [r for r in records if not isinstance(r, dict) or r.get("step", 0) <= self.step]
                atomic_write(path, lambda p: p.write_text("".join(json.dumps(r) + "\n" for r in kept)))
        error = broadcast_object(error, self.info)  # also the barrier: every rank waits for the trim
        if error is not None:
            raise JSONLError(error)

    def _plot(self) -> None:
        path = self.out / METRICS
        if not path.is_file():
            return
        records = read_jsonl(path)
        train = [r for r in records if isinstance(r, dict) and "loss" in r]
        series = {"loss": [(r["step"], r["loss"]) for r in train]}
        img = plot_curves(series, title=f"{self.task.name}: training loss")
        atomic_write(self.out / "loss.png", lambda p: img.save(p, format="PNG"))


def _to_device(batch, device: torch.device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def fit(task: Task, cfg: TrainConfig, lock: RunLock | None = None) -> dict[str, float]:
    """Train ``task`` under ``cfg`` (resuming from ``cfg.out_dir`` if it holds a checkpoint).

    Args:
        task: the stage (see :class:`lavit.train.task.Task`).
        cfg: the trainer's settings; ``cfg.out_dir`` receives everything the run writes.
        lock: the :class:`RunLock` on ``cfg.out_dir`` when the caller holds it already (see
            :func:`fit_stage`); by default fit takes it for the run.

    Returns:
        The final evaluation metrics (on rank 0; empty elsewhere under DDP).

    Raises:
        OutDirLockedError: another live run holds ``cfg.out_dir``.
        CheckpointError: the checkpoint to resume was written with other settings, or none of
            the checkpoints there is usable.
        JSONLError: metrics.jsonl is damaged in a line before its last.
    """
    held = nullcontext(lock) if lock is not None else RunLock(cfg.out_dir, f"lavit train {task.name}")
    with held as run_lock:
        assert run_lock.out_dir.resolve() == Path(cfg.out_dir).resolve(), (run_lock.out_dir, cfg.out_dir)
        info = init_distributed()
        trainer = None
        try:
            trainer = Trainer(task, cfg)
            return trainer.fit()
        finally:
            # Free the model, optimizer and any collective work handles (FSDP2 keeps some) while
            # the process group and the interpreter are alive: gloo work objects left for
            # interpreter finalization can abort the process after a finished run (one rank of a
            # 2-process CI run exited with "terminate called without an active exception", not
            # reproduced since).
            del trainer
            if info.enabled:  # a plain run has no process group to outlive
                gc.collect()
            cleanup(info)


def fit_stage(task_cls: type, run_cfg: Any) -> dict[str, float]:
    """``lavit train STAGE``: lock ``run_cfg.train.out_dir``, then build the task (the LM and the
    decoders cache codes and a text tokenizer there as they are built) and :func:`fit` it.

    Returns:
        The final evaluation metrics, as :func:`fit`.
    """
    with RunLock(run_cfg.train.out_dir, f"lavit train {task_cls.name}") as lock:
        return fit(task_cls(run_cfg), run_cfg.train, lock)
