"""What the ``lavit`` model commands share: the pipeline from ``--model`` or the stage folders
(or the shipped model), the decoding and model flags, and how results and bad input are
reported (lavit/cli.py and lavit/cli_grounding.py use them)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from lavit.cli_inputs import UsageError, check_device


def pipeline_from_args(args: argparse.Namespace, needs: tuple[str, ...] = ("lm",)):
    """The pipeline from --model, or from the stage folders; ``needs`` names the stages the
    command uses (lm, diffusion), so a missing one fails before anything runs."""
    from lavit.pipeline import LaVITPipeline

    check_device(args.device)
    dtype = None
    if getattr(args, "bf16", False):
        if not str(args.device).startswith("cuda"):
            raise UsageError("--bf16 runs the LLM in bfloat16 on a GPU: add --device cuda, or drop --bf16")
        import torch

        dtype = torch.bfloat16
    stages = {"lm": args.lm, "diffusion": args.diffusion, "var": args.var}
    if args.model and (args.tokenizer or any(stages.values())):
        raise UsageError(
            "give either --model DIR or the stage folders (--tokenizer, --lm, --diffusion, --var), not both"
        )
    if args.model and is_vargpt(args.model):
        return vargpt_pipeline(args, dtype)
    if args.model:
        pipe = LaVITPipeline.from_pretrained(args.model, args.device, dtype=dtype)
        missing = [n for n in needs if (pipe.lm is None if n == "lm" else n not in pipe.decoders)]
        if missing:
            raise UsageError(f"{args.model} has no {missing[0]}/ stage, which 'lavit {args.command}' needs")
        return pipe
    if not args.tokenizer and not any(stages.values()):
        args.model = str(shipped_model())  # neither given: the shipped model
        return pipeline_from_args(args, needs)
    missing = [n for n in ("tokenizer", *needs) if not (args.tokenizer if n == "tokenizer" else stages[n])]
    if missing:
        flags = " ".join(f"--{n} DIR" for n in ("tokenizer", *needs))
        raise UsageError(
            f"incomplete model: pass --model DIR (a pipeline directory) or {flags} "
            "(e.g. --tokenizer runs/tokenizer_tiny/model --lm runs/lm_tiny/model)"
        )
    decoders = {n: stages[n] for n in needs if n != "lm"}
    return LaVITPipeline.from_parts(
        args.tokenizer, args.lm if "lm" in needs else None, device=args.device, dtype=dtype, **decoders
    )


SHIPPED_MODEL = "checkpoints/lavit-shapes-tiny"


def shipped_model() -> Path:
    """The model shipped in the repository (found from the installed package's location)."""
    path = Path(__file__).resolve().parent.parent / SHIPPED_MODEL
    if not path.is_dir():
        raise UsageError(
            f"no --model given and the shipped model {path} is missing: install from a clone of the "
            "repository (pip install -e .) or pass --model DIR"
        )
    return path


def is_vargpt(directory: str) -> bool:
    """Whether ``directory`` is a VARGPT folder (lavit convert vargpt) rather than a pipeline."""
    from lavit.checkpoint import read_meta

    meta = Path(directory) / "meta.json"
    return meta.is_file() and read_meta(directory).get("schema") == "VARGPTConfig"


def vargpt_pipeline(args: argparse.Namespace, dtype):
    """A VARGPT folder behind the pipeline's calls: it draws images through its own VQ-VAE, so
    the LaVIT pipeline's decoder options do not apply to it."""
    from lavit.vargpt.pipeline import VARGPTPipeline

    given = [flag for flag, key in (("--ratio", "ratio"), ("--candidates", "candidates")) if getattr(args, key, None)]
    if dtype is not None or given:
        raise UsageError(
            f"{args.model} is a VARGPT folder: {(given or ['--bf16'])[0]} does not apply to it yet; drop it"
        )
    return VARGPTPipeline.from_pretrained(args.model, args.device)


def decoding_from_args(default, args: argparse.Namespace):
    changes = {k: v for k, v in (("num_beams", args.beams), ("max_new_tokens", args.max_new_tokens)) if v is not None}
    return dataclasses.replace(default, **changes)


@contextlib.contextmanager
def bad_input() -> Iterator[None]:
    """Inside a model call, a ValueError is the input's fault (a prompt longer than the context,
    an image of the wrong size, ...): report it as a usage error."""
    try:
        yield
    except ValueError as e:
        raise UsageError(str(e)) from e


def emit(records: list[dict], args: argparse.Namespace, text: Callable[[dict], str]) -> None:
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            print(text(r))


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"pipeline directory (default: the shipped {SHIPPED_MODEL})")
    p.add_argument("--tokenizer", default=None, help="trained tokenizer directory (with --lm)")
    p.add_argument("--lm", default=None, help="trained LM directory (with --tokenizer)")
    p.add_argument("--diffusion", default=None, help="trained diffusion detokenizer directory (with --tokenizer)")
    p.add_argument("--var", default=None, help="trained VAR decoder directory (with --tokenizer)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="on a GPU, run the LLM (and LaVIT's pixel decoder) in bfloat16")


def add_text_decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--beams", type=int, default=None, help="beam count (1 = greedy; default: the pipeline's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the pipeline's")
