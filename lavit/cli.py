"""The ``lavit`` command. Each subcommand parses its arguments, builds, and calls the library.

    lavit info                         versions, devices, optional backends
    lavit shapes --out DIR [...]       a grid of ShapesWorld samples (PNG) with captions and QA (JSON)
    lavit train STAGE --config F [k=v] train a stage with the shared trainer; under torchrun too:
                                       torchrun --nproc_per_node=2 -m lavit.cli train tokenizer ...

User errors (bad config key, missing file, unloadable image or checkpoint) print one line
naming the problem and the fix, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lavit.checkpoint import CheckpointError, atomic_write
from lavit.config import ConfigError


class UsageError(ValueError):
    """A command-line problem the user can fix."""


def cmd_info(args: argparse.Namespace) -> None:
    from lavit.sysinfo import collect_info

    info = collect_info()
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(f"lavit {info['lavit']}  (python {info['python']}, {info['platform']})")
    for name, version in info["packages"].items():
        print(f"  {name:<24} {version or '-- not installed'}")
    dev = info["device"]
    gpus = ", ".join(dev["cuda_devices"]) or "none"
    print(f"  cuda: {dev['cuda_available']} ({gpus}); bf16: {dev['bf16_supported']}; cpu threads: {dev['cpu_threads']}")
    print(f"  xformers: {'available' if info['xformers_available'] else 'not installed (SDPA is used)'}")
    print(f"  java: {info['java'] or 'not found (caption metrics fall back to a Python tokenizer)'}")


def cmd_shapes(args: argparse.Namespace) -> None:
    from lavit.config import ShapesWorldConfig, load_config
    from lavit.data.shapes_dataset import ShapesWorld
    from lavit.viz import image_grid

    if args.num < 1:
        raise UsageError(f"--num must be at least 1, got {args.num}")
    cfg = load_config(args.config, ShapesWorldConfig, args.overrides)
    ds = ShapesWorld(cfg, args.split)
    samples = [ds[args.start + i] for i in range(args.num)]
    out = Path(args.out)
    grid = image_grid([s.image for s in samples], [s.captions[0] for s in samples], columns=min(args.num, 4))
    atomic_write(out / "shapes.png", lambda tmp: grid.save(tmp, format="PNG"))
    records = [
        {
            "image_id": s.image_id,
            "captions": s.captions,
            "prompt": s.meta["prompt"],
            "qa": [{"question": q.question, "answers": q.answers} for q in s.qa],
            "boxes": s.meta["boxes"],
            "scene": s.meta["scene"],
        }
        for s in samples
    ]
    atomic_write(out / "shapes.json", lambda tmp: tmp.write_text(json.dumps(records, indent=2)))
    print(
        f"wrote {out / 'shapes.png'} and {out / 'shapes.json'} ({args.num} {args.split} scenes at {cfg.resolution}px)"
    )


# stage -> (run-config schema, task class), imported only when that stage is trained.
STAGES = {
    "tokenizer": ("lavit.config:TokenizerRunConfig", "lavit.train.tasks.tokenizer:TokenizerTask"),
    "lm": ("lavit.config:LMRunConfig", "lavit.train.tasks.lm:LMTask"),
}


def _import(path: str):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def cmd_train(args: argparse.Namespace) -> None:
    from lavit.config import load_config
    from lavit.train.trainer import fit

    schema_path, task_path = STAGES[args.stage]
    cfg = load_config(args.config, _import(schema_path), args.overrides)
    metrics = fit(_import(task_path)(cfg), cfg.train)
    if metrics:
        print(json.dumps({"stage": args.stage, "out_dir": cfg.train.out_dir, **metrics}, indent=2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lavit", description="Unified discrete-token multimodal model.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices and optional backends")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("shapes", help="render a grid of ShapesWorld samples with captions and QA")
    p.add_argument("--out", default="outputs/shapes", help="output folder (shapes.png, shapes.json)")
    p.add_argument("--config", default=None, help="ShapesWorld YAML (default: built-in 64px config)")
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--num", type=int, default=16, help="number of scenes")
    p.add_argument("--start", type=int, default=0, help="index of the first scene")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. resolution=128")
    p.set_defaults(func=cmd_shapes)

    p = sub.add_parser("train", help="train a stage (resumes from its out_dir if a checkpoint is there)")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--config", required=True, help="run config YAML, e.g. configs/train/tokenizer_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=100 train.out_dir=runs/x")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lavit`` console script; returns the process exit code."""
    parser = build_parser()
    # argparse cannot give a trailing nargs="*" the tokens that follow options when a positional
    # came first (`train tokenizer --config f a=b`), so key=value tokens are collected here.
    args, extra = parser.parse_known_args(argv)
    bad = [tok for tok in extra if "=" not in tok or tok.startswith("-")]
    if bad or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(bad or extra)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        args.func(args)
    except (UsageError, ConfigError, CheckpointError, FileNotFoundError, IndexError) as e:
        print(f"lavit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
