"""The sharded, resumable evaluation loop shared by every task.

    torchrun --nproc_per_node=N eval/<task>.py --config configs/eval/<set>.yaml [a.b=c ...]

The items are cut into global batches of ``batch_size`` (batch ``j`` holds items
``j*B .. j*B+B-1``) and batch ``j`` goes to rank ``j % N``. A batch is therefore the same set of
items whatever N is, and item ``i`` is generated with seed ``seed + i``: a 2-process run makes
exactly the predictions of a 1-process run.

One run owns ``out_dir``: rank 0 holds an OS lock on it (``<out_dir>/.lock``) from the first
check to the report, so a second evaluation into the same folder is refused at once, naming the
PID that holds it (a killed holder's lock goes with its process). Every decision that could
fail (the lock, the resume check, loading the model of a fresh run) is made on rank 0 and its
outcome shared, so all ranks fail together instead of waiting on each other.

Each rank appends one JSON line per item to ``<out_dir>/predictions/rank<r>.jsonl`` after each
batch (flushed and fsynced), so a killed run loses at most the batch in flight. A rerun reads
what is there (a torn last line is dropped), re-runs a partly written batch whole (the same
composition, so the same outputs) and keeps only the missing lines. An item whose input cannot
be read (an image file missing or broken) is not a prediction: its reason goes to
``<out_dir>/missing/rank<r>.jsonl``, the report counts it under ``missing``, and a rerun tries
it again. ``run.json`` records the world size and everything that decides the predictions, the
weights' contents included; it is written once the model has loaded, and resuming with other
values is an error that names them (a folder without predictions holds nothing to mix, so a new
run simply starts over it). Rank 0 then gathers all files, scores, and writes ``report.json``
and ``report.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

from lavit.checkpoint import CheckpointError
from lavit.config import ConfigError
from lavit.data.readers import AnnotationError
from lavit.evaluation.config import EvalConfig
from lavit.files import JSONLError, OutDirLock, atomic_write, read_jsonl
from lavit.train.distributed import DistInfo, barrier, broadcast_object, cleanup, init_distributed

RUN_FILE = "run.json"
PREDICTIONS = "predictions"
MISSING = "missing"  # per rank: {"key", "error"} of the items whose input could not be read this run
# Bumped when the fingerprint changes meaning (2: every byte of the weights, symlinks followed).
FINGERPRINT = 2
EXAMPLES = 3  # missing items named in the report and the messages

T = TypeVar("T")


class EvalTask(Protocol):
    """What the runner needs from an evaluation task (lavit/evaluation/tasks.py)."""

    def keys(self) -> list[str]:
        """One stable, unique key per item, in item order (cheap: no images decoded)."""

    def predict(self, pipe: Any, indices: list[int], seed: int) -> list[dict]:
        """One JSON-able record per index, each with its ``key``; ``seed`` belongs to
        ``indices[0]`` and item ``indices[0] + k`` uses ``seed + k``. An item whose input cannot
        be read gets ``{"key", "error"}`` (the reason, one line) instead of a prediction."""

    def score(self, records: list[dict]) -> dict[str, Any]:
        """The metrics over all records (in item order)."""


class ResumeError(RuntimeError):
    """The output folder holds a run that this one cannot continue."""


class NothingScoredError(RuntimeError):
    """No item of the set could be read, so there is nothing to score (a wrong image_root, say)."""


def load_pipeline(cfg: EvalConfig, device: str):
    """The pipeline named by ``cfg.model`` or by its stage folders, checked to hold the stages
    the task uses (the LM, the decoder)."""
    from lavit.pipeline import LaVITPipeline

    if cfg.model is not None:
        pipe = LaVITPipeline.from_pretrained(cfg.model, device)
    else:
        pipe = LaVITPipeline.from_parts(cfg.tokenizer, cfg.lm, device=device, diffusion=cfg.diffusion, var=cfg.var)
    where = f"model={cfg.model}" if cfg.model is not None else f"tokenizer={cfg.tokenizer}"
    if cfg.task != "reconstruct" and pipe.lm is None:
        raise CheckpointError(f"{where} has no LM (lm/ stage), which the {cfg.task} task needs; give a model with one")
    if cfg.task in ("text2image", "reconstruct") and cfg.decoder not in pipe.decoders:
        have = ", ".join(sorted(pipe.decoders)) or "none"
        raise CheckpointError(
            f"{where} has no {cfg.decoder} decoder (it has: {have}); set decoder= to one it has, or add the stage"
        )
    return pipe


def evaluate(cfg: EvalConfig, task: EvalTask, info: DistInfo | None = None, progress: bool = True) -> dict | None:
    """Run (or resume) one evaluation on this process's shard; rank 0 returns the report.

    Args:
        cfg: the run config.
        task: the evaluation task built from ``cfg`` (items, predictions, metrics).
        info: the process group (default: joined from torchrun's environment).
        progress: a tqdm bar on rank 0.

    Returns:
        The report on rank 0 (also written to ``report.json``), None on other ranks.

    Raises:
        OutDirLockedError: another process is writing ``out_dir``.
        ResumeError: ``out_dir`` holds predictions of another run.
        NothingScoredError: no item's input could be read (no report; with no predictions
            written, a rerun with the fix starts over whatever its settings).
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
    locks: list[OutDirLock] = []
    _on_rank0(info, lambda: locks.append(_lock(out, cfg)))
    try:
        return _run(cfg, task, info, progress, out, t0)
    finally:
        for lock in locks:
            lock.release()


def _lock(out: Path, cfg: EvalConfig) -> OutDirLock:
    try:
        return OutDirLock(out, f"eval/{cfg.task}.py").acquire()
    except OSError as e:  # not a folder, not writable (OutDirLockedError is no OSError)
        raise ConfigError(f"out_dir={out}: cannot create or lock it ({e}); choose a writable folder") from None


def _run(cfg: EvalConfig, task: EvalTask, info: DistInfo, progress: bool, out: Path, t0: float) -> dict | None:
    keys = task.keys()
    pipes: list[Any] = []  # rank 0's pipeline when a fresh run loaded it before writing run.json
    _on_rank0(info, lambda: _claim_run(out, cfg, keys, info, pipes))

    path = out / PREDICTIONS / f"rank{info.rank}.jsonl"
    done = {r["key"] for r in read_predictions(path)}
    failed = out / MISSING / f"rank{info.rank}.jsonl"
    failed.parent.mkdir(parents=True, exist_ok=True)
    failed.write_text("")  # this run retries every item without a prediction: older reasons are stale
    batches = [range(s, min(s + cfg.batch_size, len(keys))) for s in range(0, len(keys), cfg.batch_size)]
    mine = batches[info.rank :: info.world_size]
    pipe = pipes[0] if pipes else None
    bar = tqdm(mine, desc=f"eval {cfg.task}", disable=not (progress and info.is_main), dynamic_ncols=True)
    for batch in bar:
        if all(keys[i] in done for i in batch):
            continue
        if pipe is None:  # a finished shard never loads the model
            pipe = load_pipeline(cfg, str(info.device))
        records = task.predict(pipe, list(batch), cfg.seed + batch.start)
        new = [r for r in records if r["key"] not in done]
        _append(path, [r for r in new if "error" not in r])
        _append(failed, [{"key": r["key"], "error": r["error"]} for r in new if "error" in r])
        done.update(r["key"] for r in new if "error" not in r)
    bar.close()
    barrier(info)
    if not info.is_main:
        return None

    records, missing = gather_predictions(out / PREDICTIONS, keys)
    reasons = _missing_reasons(out / MISSING, missing)
    if not records:
        raise NothingScoredError(_nothing_scored(cfg, keys, reasons))
    report = {
        "task": cfg.task,
        "format": cfg.data.format,
        "model": cfg.model or {k: getattr(cfg, k) for k in ("tokenizer", "lm", "diffusion", "var")},
        "items": len(keys),
        "scored": len(records),
        "missing": len(missing),
        "world_size": info.world_size,
        **task.score(records),
        "seconds_this_run": round(time.perf_counter() - t0, 1),
    }
    if missing:
        report["missing_examples"] = [{"key": k, "error": reasons[k]} for k in missing[:EXAMPLES]]
    atomic_write(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=2) + "\n"))
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(markdown_table([report])))
    if missing:
        print(f"warning: {missing_line(report)}", file=sys.stderr)
    return report


def _append(path: Path, records: list[dict]) -> None:
    """Append whole lines, flushed and fsynced: a kill leaves at most a torn last line."""
    if not records:
        return
    with path.open("a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def _on_rank0(info: DistInfo, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 and its result on every rank; if it raises, every rank raises the same
    error (same type and message), so no rank is left waiting for the others."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except Exception as e:
            error = e
    failure = None
    if error is not None:
        kind = type(error)
        try:
            pickle.dumps(kind)  # the other ranks rebuild the error from its type and message
        except Exception:
            kind = RuntimeError
        failure = (kind, str(error))
    shared = broadcast_object((result, failure), info)
    if error is not None:
        raise error
    result, failure = shared
    if failure is not None:
        kind, message = failure
        try:
            copy = kind(message)
        except Exception:  # an exception type that takes other arguments
            copy = RuntimeError(message)
        raise copy
    return result


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
    names = ("model",) if cfg.model is not None else ("tokenizer", "lm", "diffusion", "var")
    folders = {name: getattr(cfg, name) for name in names if getattr(cfg, name) is not None}
    for name, folder in folders.items():
        if not Path(folder).is_dir():
            what = "a pipeline directory (LaVITPipeline.save_pretrained)" if name == "model" else "a stage folder"
            raise CheckpointError(f"{name}={folder}: no such folder; give {what}")
    weights = {str(f): weights_digest(Path(f)) for f in folders.values()}
    return {
        "fingerprint": FINGERPRINT,
        "config": fields,
        "items": len(keys),
        "keys_sha256": digest,
        "weights_sha256": weights,
    }


def weights_digest(folder: Path, chunk: int = 1 << 20) -> str:
    """sha256 over every file under a model folder: relative names, sizes and whole contents.

    Symlinks are followed (a stage folder linked in from elsewhere counts as the folder's own,
    so repointing the link changes the digest); a link back to a folder already walked is
    skipped. At ~1 GB/s a 7B checkpoint takes seconds, paid on rank 0 only.
    """
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder}; give the folder the model was saved in")
    files, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink cycle
            dirnames[:] = []
            continue
        seen.add(real)
        files += [Path(dirpath, name) for name in filenames if Path(dirpath, name).is_file()]
    h = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.relative_to(folder).as_posix()):
        size = path.stat().st_size
        h.update(f"{path.relative_to(folder).as_posix()}\0{size}\0".encode())
        with path.open("rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()[:16]


def _claim_run(out: Path, cfg: EvalConfig, keys: list[str], info: DistInfo, pipes: list[Any]) -> None:
    """Rank 0: check that the run in ``out`` is this one, or start one there. A fresh run loads
    the model before ``run.json`` is written, so a typo in ``model=`` leaves nothing behind."""
    if len(set(keys)) != len(keys):
        raise AnnotationError(f"the {cfg.task} set has repeated item keys; every item needs its own key")
    if not keys:
        raise AnnotationError(
            f"the {cfg.task} set (data.format={cfg.data.format}) has no items; check the data settings"
        )
    want = {"world_size": info.world_size, **_fingerprint(cfg, keys)}
    run_file = out / RUN_FILE
    if run_file.is_file() and _has_predictions(out):
        _check_resume(out, _read_run_file(run_file), want)
        for path in sorted((out / PREDICTIONS).glob("rank*.jsonl")):
            read_predictions(path)  # a damaged file fails here, for every rank, not on its own rank only
    else:  # nothing predicted yet: whatever run.json says, there is nothing to mix
        pipes.append(load_pipeline(cfg, str(info.device)))
        for stale in (out / MISSING).glob("rank*.jsonl"):  # reasons left by a run of another world size
            stale.unlink()
        atomic_write(run_file, lambda tmp: tmp.write_text(json.dumps(want, indent=2) + "\n"))
    (out / PREDICTIONS).mkdir(parents=True, exist_ok=True)


def _has_predictions(out: Path) -> bool:
    return any(p.stat().st_size > 0 for p in (out / PREDICTIONS).glob("rank*.jsonl"))


def _read_run_file(run_file: Path) -> dict:
    try:
        have = json.loads(run_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResumeError(
            f"{run_file} is unreadable ({e}) but predictions are there; set out_dir to a new folder"
        ) from None
    if not isinstance(have, dict):
        raise ResumeError(f"{run_file} is not a run record; set out_dir to a new folder")
    return have


def _check_resume(out: Path, have: dict, want: dict) -> None:
    if have.get("fingerprint") != want["fingerprint"]:
        raise ResumeError(
            f"{out} holds a run started by an older version of the evaluation, whose run.json fingerprints the "
            "weights differently: its predictions cannot be checked against this model. Set out_dir to a new folder."
        )
    if have.get("world_size") != want["world_size"]:
        raise ResumeError(
            f"{out} holds a run started with {have.get('world_size')} processes and this one has "
            f"{want['world_size']}: its predictions are sharded per rank. Resume with "
            f"--nproc_per_node={have.get('world_size')}, or set out_dir to a new folder."
        )
    diff = _diff(have, want)
    if diff:
        raise ResumeError(
            f"{out} holds a run with other settings ({'; '.join(diff[:5])}): its predictions would "
            "not match. Resume with the same settings, or set out_dir to a new folder."
        )


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in _diff(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [f"{prefix.rstrip('.')}: {a!r} then, {b!r} now"]


def read_predictions(path: Path) -> list[dict]:
    """The predictions in one rank's file: a torn last line (a kill mid-write) is cut off; a
    broken line before it is an error naming the file and line. Records of items that could not
    be read (``error``, written by older versions) are left out, so they are tried again."""
    records = read_jsonl(path, repair=True)
    for number, r in enumerate(records, 1):
        if not (isinstance(r, dict) and isinstance(r.get("key"), str)):
            raise JSONLError(
                f"{path}, record {number}: not a prediction (an object with a 'key'); fix or delete that line"
            )
    return [r for r in records if "error" not in r]


def gather_predictions(folder: Path, keys: list[str]) -> tuple[list[dict], list[str]]:
    """All ranks' records in item order (each key once), and the keys with no prediction."""
    by_key: dict[str, dict] = {}
    for path in sorted(folder.glob("rank*.jsonl")):
        for record in read_predictions(path):
            by_key.setdefault(record["key"], record)
    return [by_key[k] for k in keys if k in by_key], [k for k in keys if k not in by_key]


def _missing_reasons(folder: Path, missing: list[str]) -> dict[str, str]:
    """Why each missing key has no prediction, from this run's ``missing/rank*.jsonl``."""
    wanted, reasons = set(missing), {}
    for path in sorted(folder.glob("rank*.jsonl")):
        for r in read_jsonl(path, repair=True):
            if isinstance(r, dict) and r.get("key") in wanted:
                reasons[r["key"]] = " ".join(str(r.get("error")).split())  # one line
    return {k: reasons.get(k, "no prediction was written") for k in missing}


def missing_line(report: dict) -> str:
    """One line on the items a report left out: how many, a few keys and why, and the fix."""
    examples = "; ".join(f"{e['key']}: {e['error']}" for e in report.get("missing_examples", []))
    return (
        f"{report['missing']} of {report['items']} items have no prediction, their input could not be read "
        f"(e.g. {examples}); the scores cover the other {report['scored']}. Put the files in place and rerun "
        "the same command to predict them"
    )


def _nothing_scored(cfg: EvalConfig, keys: list[str], reasons: dict[str, str]) -> str:
    key, why = next(iter(reasons.items()))
    root = cfg.data.image_root
    where = f"data.image_root={root}" if root is not None else "the image paths of the annotation file"
    return (
        f"none of the {len(keys)} items could be read (e.g. {key}: {why}): check {where} (the folder the "
        f"annotation file's image names are relative to), then rerun the same command"
    )


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
