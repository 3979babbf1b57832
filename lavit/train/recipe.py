"""Recipes: train every stage in order, then assemble the pipeline directory.

    lavit train all --recipe configs/recipes/shapes_tiny.yaml [out_dir=checkpoints/x lm.train.steps=100 ...]

    recipe = load_recipe("configs/recipes/shapes_tiny.yaml")
    pipeline_dir = run_recipe(recipe)        # -> checkpoints/lavit-shapes-tiny

A recipe YAML mirrors :class:`RecipeConfig`:

    out_dir: checkpoints/lavit-shapes-tiny   # the pipeline directory (LaVITPipeline.save_pretrained)
    stages:                                  # trained in this order
      - stage: encoder                       # a name of lavit.train.stages.STAGES
        config: ../train/encoder_tiny.yaml   # the stage's run config, relative to this file's folder
        overrides: [train.steps=100]         # optional a.b=c overrides, as on the command line
      - ...
    pipeline:                                # optional: PipelineConfig fields (pipeline.yaml)
      caption_decoding: {num_beams: 2}

Chains: a stage may appear more than once, each entry a run of its own (its own
``train.out_dir``) that usually starts from an earlier one's ``model/`` (``init_from=``): a
fine-tune, a model grown a new part, a longer schedule. Every entry after the first of its
stage needs a ``name`` (unique in the recipe); a later stage reads the *last* entry before it
of the stage it needs, the pipeline takes the last entry of each stage, and an ``init_from``
naming an entry's ``model/`` must come after that entry:

      - {stage: lm, config: ../train/lm_tiny.yaml, overrides: [train.out_dir=runs/lm]}
      - stage: lm
        name: lm-synthesis                   # overrides reach it as lm-synthesis.train.steps=100
        config: ../train/lm_synthesis_tiny.yaml
        overrides: [train.out_dir=runs/lm_synthesis, init_from=runs/lm/model]

Data: ``data.train=PATH`` / ``data.val=PATH`` (and any other ``data.*`` key) given to the recipe,
not to one stage, reach every stage whose run config has a ``data`` field, as if appended to its
overrides (a bare path is one source, as with ``lavit train STAGE``: see
:func:`lavit.data.sources.expand_shorthand`); a stage's own command-line override (``lm.data.val=...``)
still wins over them. A bare path is checked when the recipe loads, before anything trains:

    lavit train all --recipe configs/recipes/generic_tiny.yaml data.train=train.jsonl data.val=val.jsonl

Paths: a stage's ``config`` is relative to the recipe file's folder (as ``include:`` is to its
file), so a recipe finds its configs from any working directory. Every other path (the stages'
``train.out_dir`` and ``tokenizer_dir``, the recipe's ``out_dir``) is relative to the working
directory, as in the stage configs. Each stage writes where its own config says
(``train.out_dir``); the recipe invents no path. It checks, before training anything, that every
stage config loads and that the stages are wired together: a stage reading ``tokenizer_dir``
(``vqvae_dir``, ``model.encoder.weights``, ``model.vae_path``) reads what the recipe's tokenizer
(var-vqvae, encoder, vae) stage writes, and that stage comes first.

Skipping and resuming: a stage whose ``<train.out_dir>/model`` exists is finished (the trainer
writes it last, atomically) and is skipped. Any other stage goes to :func:`fit`, which resumes
from ``<train.out_dir>/checkpoints/latest`` when an interrupted run left one. So after an
interruption, rerunning the same command continues where it stopped.

One writer: before anything trains the recipe takes every stage's out_dir lock
(:class:`~lavit.train.trainer.RunLock`, the one each ``fit`` takes) and holds them all until the
pipeline is written, handing each to its stage's ``fit``. A second recipe over the same stages,
or a ``lavit train STAGE`` on one of them, stops at once naming this run's PID; this run never
waits on a lock of its own. The pipeline directory gets no lock of its own: it is written once,
at the end, whole (``save_pretrained`` swaps a finished copy into place), by the holder of the
stages it is assembled from.

The pipeline's prompts are the LM stage's training prompts (``mixture.caption_prompt`` and
``mixture.vqa_prompt``): the pipeline must ask what the LM was trained on.
``<out_dir>/recipe_report.json`` records per stage its status (trained, resumed or skipped), the
step it started from, its seconds in this run and its final evaluation metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import operator
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lavit.checkpoint import atomic_write, cast_weights
from lavit.config import ConfigError, SourceConfig, check, load_config
from lavit.data.shards import list_shards
from lavit.data.sources import expand_shorthand, resolve_kind
from lavit.files import read_jsonl
from lavit.pipeline import LaVITPipeline, PipelineConfig
from lavit.train.run_state import CKPT_DIR, LATEST, METRICS, RunLock
from lavit.train.stages import STAGES, load_stage
from lavit.train.trainer import fit

REPORT_FILE = "recipe_report.json"

# What a stage reads from an earlier stage's model directory: (its config key, the stage that
# writes it, the file inside that stage's model/ ("" for the directory itself)).
STAGE_INPUTS = {  # stage: (config key, the stage that writes it, file in its model dir, required)
    "tokenizer": (
        ("model.encoder.weights", "encoder", "vit.safetensors", True),
        ("model.readout_weights", "encoder", "readout.safetensors", False),  # with the semantic loss
    ),
    "lm": (("tokenizer_dir", "tokenizer", "", True),),
    "diffusion": (
        ("tokenizer_dir", "tokenizer", "", True),
        ("model.vae_path", "vae", "", False),  # latent space only
    ),
    "var": (("tokenizer_dir", "tokenizer", "", True), ("vqvae_dir", "var-vqvae", "", True)),
}


@dataclass
class RecipeStage:
    """One entry of a recipe: train ``stage`` with the run config ``config`` and ``overrides``."""

    stage: str  # a key of lavit.train.stages.STAGES
    config: str  # in a YAML recipe: relative to the recipe's folder (load_recipe resolves it)
    overrides: list[str] = field(default_factory=list)  # a.b=c, applied after the file
    name: str | None = None  # how overrides address the entry; default: the stage's name

    @property
    def label(self) -> str:
        return self.name or self.stage


@dataclass
class RecipeConfig:
    """``lavit train all --recipe F``: the stages to train in order and the pipeline they make."""

    out_dir: str  # the assembled pipeline directory
    stages: list[RecipeStage]
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)  # inference defaults (pipeline.yaml)
    weights_dtype: str = "float32"  # storage of the assembled pipeline's weights (float16 halves it)

    def __post_init__(self) -> None:
        check(bool(self.out_dir), "out_dir", self.out_dir, "name the pipeline directory to write")
        check(bool(self.stages), "stages", self.stages, "list at least the tokenizer stage")
        labels: dict[str, int] = {}
        for i, entry in enumerate(self.stages):
            if entry.stage not in STAGES:
                raise ConfigError(f"stages[{i}].stage={entry.stage!r}: use one of {', '.join(STAGES)}")
            if entry.label in labels:
                raise ConfigError(
                    f"stages[{i}] ({entry.stage}) has the name {entry.label!r} of stages[{labels[entry.label]}]: "
                    f"a stage run twice needs a name of its own per entry, e.g. name: {entry.stage}-2"
                )
            if entry.name is not None and (entry.name in STAGES and entry.name != entry.stage or "." in entry.name):
                raise ConfigError(
                    f"stages[{i}].name={entry.name!r}: use a name without dots that is not another stage's"
                )
            labels[entry.label] = i
        if not any(entry.stage == "tokenizer" for entry in self.stages):
            raise ConfigError("the recipe has no tokenizer stage: a pipeline directory needs one")


def load_recipe(path: str | Path, overrides: Sequence[str] = ()) -> RecipeConfig:
    """Load a recipe YAML and resolve its stage configs against the recipe's folder.

    Args:
        path: the recipe file, e.g. configs/recipes/shapes_tiny.yaml.
        overrides: ``a.b=c`` overrides of the recipe (``out_dir=checkpoints/x``,
            ``pipeline.caption_decoding.num_beams=1``), of every stage that reads data
            (``data.train=PATH``, appended to each such stage's overrides), or,
            prefixed with a stage's name, of that stage's config, appended to its overrides after
            those (``lm.train.steps=100``; an entry with a ``name`` by its name).

    Returns:
        The recipe, each ``stages[i].config`` replaced by the path it resolved to.

    Raises:
        ConfigError: a bad key or value, an unknown stage or a repeated name, a missing stage config
            (the message names the entry and the path tried), or a ``data.train=PATH`` /
            ``data.val=PATH`` whose path does not exist.
    """
    path = Path(path)
    own, per_stage, data = [], {}, []
    recipe_keys = {f.name for f in dataclasses.fields(RecipeConfig)} - {"stages"}
    for item in overrides:
        head, _, rest = item.partition(".")
        key = head.partition("=")[0].strip()
        if head == "data" and rest:
            _check_data_path(item)
            data.append(item)
        elif key == "stages":  # OmegaConf cannot merge a dotted key into a list
            raise ConfigError(f"override {item!r}: override a stage as STAGE.key=value, e.g. lm.train.steps=100")
        elif key in recipe_keys or not rest:
            own.append(item)
        else:
            per_stage.setdefault(head, []).append(rest)
    recipe = load_config(path, RecipeConfig, own)
    missing = sorted(set(per_stage) - {entry.label for entry in recipe.stages})
    if missing:
        raise ConfigError(f"override of stage {missing[0]!r}, which {path} does not train")
    for i, entry in enumerate(recipe.stages):
        entry.overrides += [*(data if _reads_data(entry.stage) else []), *per_stage.get(entry.label, [])]
        resolved = Path(os.path.normpath(path.parent / entry.config))
        if not resolved.is_file():
            raise ConfigError(
                f"stages[{i}].config={entry.config!r} ({entry.stage}) in {path}: {resolved} not found "
                f"(stage configs are relative to the recipe's folder, {path.parent})"
            )
        entry.config = str(resolved)
    return recipe


def _check_data_path(item: str) -> None:
    """A recipe-level ``data.train=PATH`` (or ``data.val``) names data that exists: every stage
    would read it, so a typo fails now rather than when the first stage builds its data."""
    key, _, value = item.partition("=")
    value = value.strip()
    if key.strip() not in ("data.train", "data.val") or not value or value.startswith("["):
        return  # a source list or another data key: checked where the stages build their data
    try:
        kind = resolve_kind(SourceConfig(path=value))  # from the name alone for .jsonl and .tar
        if kind == "webdataset":
            list_shards(value)  # every shard of a pattern exists and is a tar archive
        elif kind != "shapes" and not os.path.exists(value):
            raise ConfigError(f"{value} does not exist; check the path")
    except ConfigError as e:
        raise ConfigError(f"override {key.strip()}={value}: {e}") from None


def _reads_data(stage: str) -> bool:
    """Whether the stage's run config has a ``data`` field (imports its schema, not its task)."""
    module, name = STAGES[stage][0].split(":")
    schema = getattr(importlib.import_module(module), name)
    return any(f.name == "data" for f in dataclasses.fields(schema))


@dataclass
class _Step:
    """One recipe entry with its loaded run config."""

    index: int
    entry: RecipeStage
    cfg: Any  # the stage's run-config dataclass (TokenizerRunConfig, LMRunConfig, ...)
    task_cls: type

    @property
    def out(self) -> Path:
        return Path(self.cfg.train.out_dir)

    @property
    def model_dir(self) -> Path:
        return self.out / "model"


def latest_step(out_dir: str | Path) -> int | None:
    """The step of the checkpoint a run in ``out_dir`` would resume from (None: none there)."""
    pointer = Path(out_dir) / CKPT_DIR / LATEST
    if not pointer.is_file():
        return None
    match = re.fullmatch(r"step_(\d+)", pointer.read_text().strip())
    return int(match.group(1)) if match else None  # a damaged pointer: fit falls back (or says why not)


def run_recipe(recipe: RecipeConfig, *, progress: bool = True, log: Callable[[str], None] = print) -> Path | None:
    """Train the recipe's stages in order (skipping finished ones, resuming interrupted ones),
    then write the pipeline directory and its ``recipe_report.json``.

    Args:
        recipe: the recipe (see :func:`load_recipe`); relative config paths are taken from the
            working directory here.
        progress: False turns every stage's tqdm bar off (``train.progress=false``).
        log: where the per-stage headers, timings and the summary go.

    Returns:
        The pipeline directory, ``recipe.out_dir``; None when a stage stopped short of its steps
        on its ``train.max_minutes`` (nothing later is trained or written; rerun to resume).

    Raises:
        ConfigError: a stage config that does not load, two stages sharing an out_dir, or stages
            not wired together; raised before any stage trains.
        OutDirLockedError: another live run holds a stage's out_dir; raised before any stage
            trains.
    """
    # Under torchrun every rank trains; rank 0 alone talks and writes the pipeline.
    is_main = int(os.environ.get("RANK", "0")) == 0
    say = log if is_main else (lambda _msg: None)
    steps = _plan(recipe, progress)
    pipeline_cfg = _pipeline_cfg(recipe, steps)
    with contextlib.ExitStack() as held:
        locks = [held.enter_context(RunLock(s.out, f"lavit train all, stage {s.entry.stage}")) for s in steps]
        return _run(recipe, steps, locks, pipeline_cfg, say)


def _run(
    recipe: RecipeConfig, steps: list[_Step], locks: list[RunLock], pipeline_cfg: PipelineConfig, say: Callable
) -> Path | None:
    """:func:`run_recipe` once every stage's out_dir is held."""
    is_main = int(os.environ.get("RANK", "0")) == 0
    total = len(steps)
    records = []
    t_start = time.perf_counter()
    for s, lock in zip(steps, locks, strict=True):
        tag = f"[{s.index + 1}/{total}] {s.entry.label}"
        head = f"{tag}: {_show(s.entry.config)} -> {s.out}"
        start = latest_step(s.out)
        todo = s.cfg.train.steps
        if s.model_dir.is_dir() and (start is None or start >= todo):
            say(f"{head}: finished ({s.model_dir} exists), skipping")
            records.append(_record(s, "skipped", None, 0.0, _final_metrics(s.out)))
            continue
        say(f"{head} (resuming from step {start} of {todo})" if start else f"{head} ({todo} steps)")
        t0 = time.perf_counter()
        try:
            metrics = fit(s.task_cls(s.cfg), s.cfg.train, lock)  # built under the lock: tasks cache there
        except BaseException:
            say(f"{tag} stopped after {_hms(time.perf_counter() - t0)}; rerun the recipe to resume from {s.out}")
            raise
        seconds = time.perf_counter() - t0
        reached = latest_step(s.out)
        if reached is not None and reached < todo:
            say(
                f"{tag} stopped at step {reached} of {todo} (train.max_minutes={s.cfg.train.max_minutes}) after "
                f"{_hms(seconds)}; rerun the recipe to resume from {s.out}"
            )
            return None
        say(f"{tag} done in {_hms(seconds)}")
        records.append(_record(s, "resumed" if start else "trained", start, seconds, metrics))

    out = Path(recipe.out_dir)
    if not is_main:
        return out
    t0 = time.perf_counter()
    by_name = {s.entry.stage: s.model_dir for s in steps}  # the last entry of each stage
    decoders = {name: by_name[name] for name in ("diffusion", "var") if name in by_name}
    pipe = LaVITPipeline.from_parts(by_name["tokenizer"], by_name.get("lm"), pipeline_cfg, "cpu", **decoders)
    pipe.save_pretrained(out)
    weight_bytes = cast_weights(out, recipe.weights_dtype)
    assemble_seconds = time.perf_counter() - t0
    total_seconds = time.perf_counter() - t_start
    report = {
        "out_dir": str(out),
        "total_seconds": round(total_seconds, 3),
        "assemble_seconds": round(assemble_seconds, 3),
        "weights_dtype": recipe.weights_dtype,
        "weight_megabytes": round(weight_bytes / 2**20, 2),
        "stages": records,
    }
    atomic_write(out / REPORT_FILE, lambda p: p.write_text(json.dumps(report, indent=2) + "\n"))
    parts = [name for name in ("tokenizer", "lm", "diffusion", "var") if name in by_name]
    say(f"pipeline ({', '.join(parts)}) -> {out}")
    for r in records:
        say(f"  {r['stage']:<10} {r['status']:<8} {_hms(r['seconds']):>12}")
    say(f"  {'total':<19} {_hms(total_seconds):>12}  (report: {out / REPORT_FILE})")
    return out


def _plan(recipe: RecipeConfig, progress: bool) -> list[_Step]:
    """Load every stage's run config and check the wiring, so a typo in the last stage fails now,
    not after hours of training the first ones."""
    steps = []
    for i, entry in enumerate(recipe.stages):
        path = Path(entry.config)
        if not path.is_file():
            raise ConfigError(f"stages[{i}].config ({entry.stage}): {path} not found")
        schema, task_cls = load_stage(entry.stage)
        # data.train=PATH is one source, as with `lavit train STAGE` (a recipe's, a stage's or the YAML's)
        overrides = expand_shorthand([*entry.overrides, *([] if progress else ["train.progress=false"])])
        try:
            cfg = load_config(path, schema, overrides)
        except ConfigError as e:
            raise ConfigError(f"stages[{i}] ({entry.stage}): {e}") from None
        steps.append(_Step(i, entry, cfg, task_cls))
    _check_out_dirs(recipe, steps)
    _check_wiring(steps)
    return steps


def _check_out_dirs(recipe: RecipeConfig, steps: list[_Step]) -> None:
    pipeline_dir = Path(recipe.out_dir).resolve()
    seen: dict[Path, int] = {}
    for s in steps:
        where = f"stages[{s.index}] ({s.entry.stage}): train.out_dir={s.cfg.train.out_dir!r}"
        out = s.out.resolve()
        if out in seen:
            raise ConfigError(f"{where} is also stages[{seen[out]}]'s; give each stage its own out_dir")
        if out == pipeline_dir or pipeline_dir in out.parents:
            # save_pretrained replaces out_dir as a whole.
            raise ConfigError(f"{where} lies in the recipe's out_dir {recipe.out_dir}, which is rewritten at the end")
        seen[out] = s.index


def _check_wiring(steps: list[_Step]) -> None:
    """Each stage reads what the last entry before it of the stage it needs writes (or, with no
    such entry before it, what a later one writes is an error); an ``init_from`` naming an
    entry's ``model/`` comes after that entry."""
    model_dirs = {s.model_dir.resolve(): s for s in steps}
    for s in steps:
        init = getattr(s.cfg, "init_from", None)
        src = model_dirs.get(Path(init).resolve()) if init else None
        if src is not None and src.index >= s.index:
            raise ConfigError(
                f"stages[{s.index}] ({s.entry.label}): init_from={init!r} is what stages[{src.index}] "
                f"({src.entry.label}) writes, after it; put that entry first"
            )
        for key, producer, file, required in STAGE_INPUTS.get(s.entry.stage, ()):
            before = [p for p in steps if p.entry.stage == producer and p.index < s.index]
            later = [p for p in steps if p.entry.stage == producer and p.index > s.index]
            src = before[-1] if before else (later[0] if later else None)
            have = operator.attrgetter(key)(s.cfg)
            if src is None or (have is None and not required):  # the stage reads what its config names
                continue
            want = src.model_dir / file if file else src.model_dir
            where = f"stages[{s.index}] ({s.entry.stage})"
            if have is None or Path(have).resolve() != want.resolve():
                raise ConfigError(
                    f"{where}: {key}={have!r}, but the recipe's {producer} stage (stages[{src.index}]) "
                    f"writes {want}; add the override {key}={want}"
                )
            if src.index > s.index:
                raise ConfigError(f"{where} reads {want}, which stages[{src.index}] ({producer}) writes later")


def _pipeline_cfg(recipe: RecipeConfig, steps: list[_Step]) -> PipelineConfig:
    """The recipe's pipeline defaults with the LM stage's training prompts."""
    lm = next((s for s in reversed(steps) if s.entry.stage == "lm"), None)  # the pipeline's LM
    if lm is None:
        return recipe.pipeline
    default = PipelineConfig()
    for key in ("caption_prompt", "vqa_prompt"):
        mine, trained = getattr(recipe.pipeline, key), getattr(lm.cfg.mixture, key)
        if mine not in (getattr(default, key), trained):
            raise ConfigError(
                f"pipeline.{key}={mine!r} but stages[{lm.index}] (lm) trains with mixture.{key}={trained!r}; "
                f"drop pipeline.{key} (it is taken from the LM) or change the LM's"
            )
    mix = lm.cfg.mixture
    return dataclasses.replace(recipe.pipeline, caption_prompt=mix.caption_prompt, vqa_prompt=mix.vqa_prompt)


def _record(s: _Step, status: str, start: int | None, seconds: float, metrics: dict) -> dict:
    return {
        "stage": s.entry.stage,
        "name": s.entry.label,
        "config": _show(s.entry.config),
        "out_dir": str(s.out),
        "status": status,
        "start_step": start or 0,
        "steps": s.cfg.train.steps,
        "seconds": round(seconds, 3),
        "train_seconds_logged": _logged_seconds(s.out, s.cfg.train.log_every),
        "metrics": metrics,
    }


def _logged_seconds(out_dir: Path, log_every: int) -> float:
    """The stage's training time over all its runs, from the step times in ``metrics.jsonl``
    (evaluations excluded): what a skipped stage took when it was trained."""
    steps = 0
    total = 0.0
    for r in read_jsonl(out_dir / METRICS):
        if isinstance(r, dict) and "sec_per_step" in r:
            total += r["sec_per_step"] * min(log_every, r["step"] - steps)
            steps = r["step"]
    return round(total, 1)


def _final_metrics(out_dir: Path) -> dict[str, float]:
    """The last evaluation the trainer logged in ``metrics.jsonl`` (for a skipped stage)."""
    records = [r for r in read_jsonl(out_dir / METRICS) if isinstance(r, dict)]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    return {k.removeprefix("eval/"): v for k, v in evals[-1].items() if k.startswith("eval/")} if evals else {}


def _show(path: str) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return path


def _hms(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"
