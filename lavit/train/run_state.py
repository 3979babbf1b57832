"""A training run's folder on disk: its lock, its checkpoints and what a resume must match.

One writer per out_dir: a run holds ``<out_dir>/.lock`` for its whole life (rank 0 holds it under
torchrun, and every rank learns the outcome), so a second run on the same folder stops at once,
naming the holder's PID, before writing anything. The operating system drops the lock when the
holder exits, however it exits: a ``kill -9`` never leaves a folder blocked.

Resuming checks what it resumes. Each checkpoint carries the whole run config (the task's
``cfg``, e.g. a TokenizerRunConfig with its ``train`` section) as JSON in trainer.safetensors; a
rerun whose config differs in a key that changes what is trained (batch size, seed, LR, a model
width, the data's resolution, ...) is refused with the keys listed. Only the keys of
:data:`RESUME_SAFE_KEYS` may change: ``train.steps`` (to extend a run), where and how often the
run logs, evaluates and checkpoints, its progress bar and time budget, and how many held-out
images / scenes evaluation reads (evaluation draws from its own seeded generators, never from the
training streams). Keys a checkpoint does not hold (one written before run configs were saved
holds only ``train``, or one from an older schema) are not compared.

A damaged checkpoint falls back: if a file of the one ``latest`` names does not open (truncated,
missing, or the folder itself missing), the newest older checkpoint whose files all open is
resumed instead, with a warning on stderr and a ``resume_fallback`` record in metrics.jsonl
(``keep_checkpoints`` >= 2 keeps one to fall back to). With none left the run stops with an error
naming the folder.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from lavit.files import OutDirLock, OutDirLockedError
from lavit.train.distributed import broadcast_object, cleanup, init_distributed

CKPT_DIR, LATEST = "checkpoints", "latest"
METRICS = "metrics.jsonl"

# Run-config keys (dotted) a resumed run may change: none changes what the steps compute.
RESUME_SAFE_KEYS = (
    "train.steps",  # extend a run (the LR schedule follows the new count from here on)
    "train.out_dir",  # a moved folder
    "train.log_every",
    "train.eval_every",  # evaluation uses its own seeded generators, not the training streams
    "train.ckpt_every",
    "train.keep_checkpoints",
    "train.progress",
    "train.max_minutes",
    "eval_images",  # held-out images evaluation reads (tokenizer, encoder, autoencoders)
    "eval_scenes",  # held-out scenes evaluation reads (LM, detokenizers)
    "data.val",  # the sources evaluation reads (training never draws from them)
)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": _np_state(), "python": _py_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _np_state():
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "has_gauss": has_gauss,
        "gauss": gauss,
    }


def _py_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RunLock:
    """The exclusive lock on a run's out_dir (:class:`lavit.files.OutDirLock`) for a run of one
    or more ranks: rank 0 holds the flock and broadcasts whether it got it, so that every rank
    fails together with :class:`OutDirLockedError` instead of the others hanging in a collective.

    :func:`fit` takes one itself; a caller that writes into out_dir before training (a task that
    caches codes there as it is built, a recipe holding all its stages) takes it first and passes
    it to :func:`fit`.
    """

    def __init__(self, out_dir: str | Path, what: str) -> None:
        self.out_dir, self.what = Path(out_dir), what
        self._held: OutDirLock | None = None

    def __enter__(self) -> RunLock:
        info = init_distributed()
        failure: Exception | None = None
        if info.is_main:
            try:
                self._held = OutDirLock(self.out_dir, self.what).acquire()
            except Exception as e:  # any failure (a read-only folder too) must reach every rank
                failure = e
        outcome = None if failure is None else (isinstance(failure, OutDirLockedError), str(failure))
        outcome = broadcast_object(outcome, info)
        if outcome is not None:
            cleanup(info)  # fit's own cleanup is never reached
            if failure is not None:
                raise failure
            locked, message = outcome
            raise (
                OutDirLockedError(message) if locked else RuntimeError(f"rank 0 cannot lock {self.out_dir}: {message}")
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None


class _Unusable(Exception):
    """A checkpoint folder with a file that does not open (the reason is the message)."""


def _open_check(path: Path) -> None:
    """Raise :class:`_Unusable` unless ``path`` is a whole safetensors file. Opening it reads
    the header and checks that the file covers every tensor it lists (a truncated file fails)
    without reading the tensors."""
    if not path.is_file():
        raise _Unusable(f"{path.name} is missing")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError) as e:
        raise _Unusable(f"{path.name} does not load: {str(e).splitlines()[0]}") from None


def _peek_state(path: Path) -> dict[str, Any]:
    """The scalar entries of a trainer.safetensors (step, world_size, configs) without reading
    its tensors (the optimizer state is twice the model)."""
    _open_check(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tree = json.loads((f.metadata() or {})["tree"])
        return {k: v for k, v in tree["__dict__"] if not isinstance(v, dict)}
    except (KeyError, TypeError, ValueError) as e:
        raise _Unusable(f"{path.name} holds no lavit training state ({e!r})") from None


def _saved_run_config(state: dict[str, Any]) -> dict[str, Any]:
    """The run config a checkpoint was written with; a checkpoint from before run configs were
    saved holds only the train section."""
    if "run_config" in state:
        return json.loads(state["run_config"])
    return {"train": json.loads(state["config"])} if "config" in state else {}


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_mismatches(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for each dotted key whose value differs between a checkpoint's run
    config and this run's, but for :data:`RESUME_SAFE_KEYS` and keys only one of them holds."""
    old, now = _flatten(saved), _flatten(new)
    return [
        f"{k}: {old[k]!r} -> {now[k]!r}"
        for k in sorted(old.keys() & now.keys())
        if k not in RESUME_SAFE_KEYS and old[k] != now[k]
    ]


def _step_of(path: Path) -> int | None:
    match = re.fullmatch(r"step_(\d+)", path.name)
    return int(match.group(1)) if match else None


def find_usable(
    ckpt_root: Path, ema_decay: float, world_size: int
) -> tuple[str | None, list[str], dict | None, str | None]:
    """The checkpoint a run resumes, searched on rank 0: (its folder or None, the damaged ones
    passed over, its saved ``{"run_config", "world_size"}``, an error or None).

    ``latest``'s folder if all its files open, else the newest older one whose files do.
    ``ema_decay`` is this run's (an EMA file is expected where the saved config does not say);
    ``world_size`` this run's (the RNG files of another world size are not checked: such a
    checkpoint is refused as such).
    """
    pointer = ckpt_root / LATEST
    if not pointer.is_file():
        return None, [], None, None
    named = ckpt_root / pointer.read_text().strip()
    top = _step_of(named)
    older = [p for p in ckpt_root.glob("step_*") if p.is_dir() and _step_of(p) is not None]
    older = sorted((p for p in older if top is None or _step_of(p) < top), key=_step_of, reverse=True)
    skipped = [] if top is not None else [f"{LATEST} (it names {named.name!r}, not a step_N folder)"]
    for path in ([named] if top is not None else []) + older:
        try:
            saved = _check_checkpoint(path, ema_decay, world_size)
        except _Unusable as e:
            skipped.append(f"{path.name} ({e})")
            continue
        return str(path), skipped, saved, None
    return (
        None,
        skipped,
        None,
        f"{ckpt_root}: no checkpoint there can be resumed: {'; '.join(skipped[:3])}; to start "
        f"afresh, delete {ckpt_root} or choose another train.out_dir",
    )


def _check_checkpoint(path: Path, ema_decay: float, this_world_size: int) -> dict[str, Any]:
    """``{"run_config", "world_size"}`` of checkpoint ``path`` if all its files open (the EMA
    where it was written with one, every rank's RNG); else :class:`_Unusable`."""
    if not path.is_dir():
        raise _Unusable("the folder is missing")
    state = _peek_state(path / "trainer.safetensors")
    saved = _saved_run_config(state)
    _open_check(path / "model.safetensors")
    if saved.get("train", {}).get("ema_decay", ema_decay) > 0:
        _open_check(path / "ema.safetensors")
    world_size = int(state["world_size"])
    for rank in range(world_size if world_size == this_world_size else 0):  # else refused as such
        _open_check(path / f"rng_rank{rank}.safetensors")
    return {"run_config": saved, "world_size": world_size}
