"""The sharded, resumable evaluation loop shared by every task.

    torchrun --nproc_per_node=N eval/<task>.py --config configs/eval/<set>.yaml [a.b=c ...]

The items are cut into global batches of ``batch_size`` (batch ``j`` holds items
``j*B .. j*B+B-1``) and batch ``j`` goes to rank ``j % N``. A batch is therefore the same set of
items whatever N is, and item ``i`` is generated with seed ``seed + i``: a 2-process run makes
exactly the predictions of a 1-process run.

Each rank appends one JSON line per item to ``<out_dir>/predictions/rank<r>.jsonl`` after each
batch (flushed and fsynced), so a killed run loses at most the batch in flight. A rerun reads
what is there (a torn last line is dropped), re-runs a partly written batch whole (the same
composition, so the same outputs) and keeps only the missing lines. ``run.json`` records the
world size and everything that decides the predictions; resuming with other values is an
error that names them. Rank 0 then gathers all files, checks every item has exactly one
prediction, scores, and writes ``report.json`` and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from lavit.checkpoint import atomic_write
from lavit.evaluation.config import EvalConfig
from lavit.train.distributed import DistInfo, barrier, cleanup, init_distributed

RUN_FILE = "run.json"
PREDICTIONS = "predictions"


class EvalTask(Protocol):
    """What the runner needs from an evaluation task (lavit/evaluation/tasks.py)."""

    def keys(self) -> list[str]:
        """One stable, unique key per item, in item order (cheap: no images decoded)."""

    def predict(self, pipe: Any, indices: list[int], seed: int) -> list[dict]:
        """One JSON-able record per index, each with its ``key``; ``seed`` belongs to
        ``indices[0]`` and item ``indices[0] + k`` uses ``seed + k``."""

    def score(self, records: list[dict]) -> dict[str, Any]:
        """The metrics over all records (in item order)."""


class ResumeError(RuntimeError):
    """The output folder holds a run that this one cannot continue."""


def load_pipeline(cfg: EvalConfig, device: str):
    """The pipeline named by ``cfg.model`` or by its stage folders."""
    from lavit.pipeline import LaVITPipeline

    if cfg.model is not None:
        return LaVITPipeline.from_pretrained(cfg.model, device)
    return LaVITPipeline.from_parts(cfg.tokenizer, cfg.lm, device=device, diffusion=cfg.diffusion, var=cfg.var)


def evaluate(cfg: EvalConfig, task: EvalTask, info: DistInfo | None = None, progress: bool = True) -> dict | None:
    """Run (or resume) one evaluation on this process's shard; rank 0 returns the report.

    Args:
        cfg: the run config.
        task: the evaluation task built from ``cfg`` (items, predictions, metrics).
        info: the process group (default: joined from torchrun's environment).
        progress: a tqdm bar on rank 0.

    Returns:
        The report on rank 0 (also written to ``report.json``), None on other ranks.
    """
    own_group = info is None
    info = info or init_distributed()
    try:
        return _evaluate(cfg, task, info, progress)
    finally:
        if own_group:
            cleanup(info)


def _evaluate(cfg: EvalConfig, task: EvalTask, info: DistInfo, progress: bool) -> dict | None:
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    keys = task.keys()
    if len(set(keys)) != len(keys):
        raise ValueError(f"the {cfg.task} set has repeated item keys; every item needs its own key")
    _claim_run(out, cfg, keys, info)

    path = out / PREDICTIONS / f"rank{info.rank}.jsonl"
    done = {r["key"] for r in read_predictions(path)}
    batches = [range(s, min(s + cfg.batch_size, len(keys))) for s in range(0, len(keys), cfg.batch_size)]
    mine = batches[info.rank :: info.world_size]
    pipe = None
    bar = tqdm(mine, desc=f"eval {cfg.task}", disable=not (progress and info.is_main), dynamic_ncols=True)
    for batch in bar:
        if all(keys[i] in done for i in batch):
            continue
        if pipe is None:  # a finished shard never loads the model
            pipe = load_pipeline(cfg, str(info.device))
        records = task.predict(pipe, list(batch), cfg.seed + batch.start)
        new = [r for r in records if r["key"] not in done]
        with path.open("a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in new))
            f.flush()
            os.fsync(f.fileno())
        done.update(r["key"] for r in new)
    bar.close()
    barrier(info)
    if not info.is_main:
        return None

    records = gather_predictions(out / PREDICTIONS, keys)
    report = {
        "task": cfg.task,
        "format": cfg.data.format,
        "model": cfg.model or {k: getattr(cfg, k) for k in ("tokenizer", "lm", "diffusion", "var")},
        "items": len(keys),
        "world_size": info.world_size,
        **task.score(records),
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }
    atomic_write(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(markdown_table([report])))
    return report


# --- resume bookkeeping ---------------------------------------------------------------------------


def _fingerprint(cfg: EvalConfig, keys: list[str]) -> dict[str, Any]:
    """Everything that decides the predictions (not the metrics' files, not out_dir), the
    model's weights included: the same path may hold another model by the time a run resumes."""
    fields = dataclasses.asdict(cfg)
    for name in ("out_dir", "metrics"):
        fields.pop(name)
    if not fields["decoder_sampling"]:  # no overrides: as a run from before the field existed
        fields.pop("decoder_sampling")
    digest = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]
    folders = [cfg.model] if cfg.model is not None else [cfg.tokenizer, cfg.lm, cfg.diffusion, cfg.var]
    weights = {str(f): weights_digest(Path(f)) for f in folders if f is not None}
    return {"config": fields, "items": len(keys), "keys_sha256": digest, "weights_sha256": weights}


def weights_digest(folder: Path, chunk: int = 16 << 20) -> str:
    """sha256 over a model folder's files (names, sizes, contents). A file over 4 chunks adds
    only its first and last chunk, so a 7B checkpoint is fingerprinted in a second, not a minute:
    retraining changes the weights everywhere, so it still shows."""
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder)}\0{size}\0".encode())
        with path.open("rb") as f:
            if size <= 4 * chunk:
                h.update(f.read())
            else:
                h.update(f.read(chunk))
                f.seek(size - chunk)
                h.update(f.read(chunk))
    return h.hexdigest()[:16]


def _claim_run(out: Path, cfg: EvalConfig, keys: list[str], info: DistInfo) -> None:
    """Start ``out`` or check that the run found there is this one."""
    want = {"world_size": info.world_size, **_fingerprint(cfg, keys)}
    run_file = out / RUN_FILE
    if run_file.is_file():
        have = json.loads(run_file.read_text())
        if have["world_size"] != want["world_size"]:
            raise ResumeError(
                f"{out} holds a run started with {have['world_size']} processes and this one has "
                f"{want['world_size']}: its predictions are sharded per rank. Resume with "
                f"--nproc_per_node={have['world_size']}, or set out_dir to a new folder."
            )
        diff = _diff(have, want)
        if diff:
            raise ResumeError(
                f"{out} holds a run with other settings ({'; '.join(diff[:5])}): its predictions would "
                "not match. Resume with the same settings, or set out_dir to a new folder."
            )
    barrier(info)  # every rank has checked before rank 0 may write
    if info.is_main and not run_file.is_file():
        atomic_write(run_file, lambda tmp: tmp.write_text(json.dumps(want, indent=2) + "\n"))
    (out / PREDICTIONS).mkdir(parents=True, exist_ok=True)
    barrier(info)


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} then, {b!r} now"]


def read_predictions(path: Path) -> list[dict]:
    """The complete lines of one rank's file; a torn last line (a kill mid-write) is cut off."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with path.open("r+b") as f:
            f.truncate(end)
    return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]


def gather_predictions(folder: Path, keys: list[str]) -> list[dict]:
    """All ranks' records in item order; every key exactly once."""
    by_key: dict[str, dict] = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        for record in read_predictions(path):
            by_key.setdefault(record["key"], record)
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise ResumeError(
            f"{len(missing)} items have no prediction in {folder} (e.g. {missing[:3]}); rerun the same command "
            "to finish them"
        )
    return [by_key[k] for k in keys]


# --- reports ---------------------------------------------------------------------------------------

SKIP_COLUMNS = ("model", "world_size", "seconds_this_run")


def markdown_table(reports: list[dict]) -> str:
    """One row per report: its task, format, item count and every scalar metric."""
    cols: list[str] = []
    for r in reports:
        cols += [k for k, v in r.items() if k not in cols and k not in SKIP_COLUMNS and not isinstance(v, dict | list)]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in reports:
        cells = [_cell(r.get(c, "")) for c in cols]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
