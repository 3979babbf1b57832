"""Zero-shot evaluation: sharded over processes, resumable, scored on rank 0.

The scripts in ``eval/`` are thin wrappers around :func:`main`:

    torchrun --nproc_per_node=8 eval/caption.py --config configs/eval/coco_karpathy.yaml \\
        model=checkpoints/my-model out_dir=outputs/eval/coco
    python eval/vqa.py --config configs/eval/shapes_vqa.yaml model=checkpoints/lavit-shapes-tiny

- :mod:`lavit.evaluation.config`: :class:`EvalConfig` (task, model, data set, decoding);
- :mod:`lavit.evaluation.sets`: every data format as a list of items;
- :mod:`lavit.evaluation.tasks`: per-task prediction and scoring;
- :mod:`lavit.evaluation.runner`: sharding, the per-rank JSONL files, resume, gather, report.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lavit.checkpoint import CheckpointError
from lavit.config import ConfigError, load_config
from lavit.data.image_io import ImageLoadError
from lavit.data.readers import AnnotationError
from lavit.evaluation.config import TASKS, EvalConfig
from lavit.evaluation.runner import NothingScoredError, ResumeError, evaluate, markdown_table
from lavit.evaluation.tasks import build_task
from lavit.files import JSONLError, OutDirLockedError
from lavit.metrics.image import MetricFileError

__all__ = ["EvalConfig", "build_task", "evaluate", "main", "markdown_table", "summarize"]

# Errors a user can cause and fix (config, data files, model folder, out_dir, metric files): one
# line on stderr and exit code 2, never a traceback.
USER_ERRORS = (
    ConfigError,
    ResumeError,
    NothingScoredError,
    AnnotationError,
    ImageLoadError,
    CheckpointError,
    MetricFileError,
    OutDirLockedError,
    JSONLError,
    FileNotFoundError,
)


def main(task: str, argv: list[str] | None = None) -> int:
    """``eval/<task>.py --config FILE [a.b=c ...]``: run or resume one evaluation.

    Returns:
        The exit code: 0, or 2 after a one-line error for bad input (config, annotation file,
        model folder, a resume that does not match).
    """
    assert task in TASKS
    p = argparse.ArgumentParser(prog=f"eval/{task}.py", description=f"Zero-shot {task} evaluation.")
    p.add_argument("--config", default=None, help="YAML mirroring lavit.evaluation.config.EvalConfig")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="a.b=c overrides, e.g. model=DIR out_dir=DIR data.limit=100")
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config, EvalConfig, [*args.overrides, f"task={task}"])
        report = evaluate(cfg, build_task(cfg), progress=not args.no_progress)
    except USER_ERRORS as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    if report is not None:
        print(json.dumps(report, indent=2))
        print(f"report: {Path(cfg.out_dir) / 'report.json'}")
    return 0


def summarize(report_files: list[str | Path]) -> str:
    """One Markdown table from several ``report.json`` files (e.g. the ShapesWorld report)."""
    return markdown_table([json.loads(Path(f).read_text()) for f in report_files])
