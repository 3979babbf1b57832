"""The ``lavit`` command. Each subcommand parses its arguments, builds, and calls the library.

    lavit info                         versions, devices, optional backends
    lavit shapes --out DIR [...]       a grid of ShapesWorld samples (PNG) with captions and QA (JSON)
    lavit train STAGE --config F [k=v] train a stage with the shared trainer; under torchrun too:
                                       torchrun --nproc_per_node=2 -m lavit.cli train tokenizer ...
    lavit train all --recipe F [k=v]   train every stage of a recipe in order (skipping finished ones)
                                       and assemble the pipeline, e.g. configs/recipes/shapes_tiny.yaml
    lavit caption IMG...               caption images
    lavit vqa IMG QUESTION...          answer questions about one image
    lavit generate-tokens PROMPT...    sample image codes for text prompts (JSON file)
    lavit generate PROMPT... --out D   text -> codes -> images (PNG files; --prompts-file F for many)
    lavit reconstruct IMG... --out D   image -> codes -> image, side by side with the original

The model commands take ``--model DIR`` (a pipeline directory, see lavit/pipeline.py) or the
stage outputs ``--tokenizer DIR --lm DIR --diffusion DIR --var DIR`` (those the command needs,
e.g. runs/tokenizer_tiny/model, runs/lm_tiny/model, runs/diffusion_tiny/model).

User errors (bad config key, missing file, unloadable image or checkpoint, an output folder in
use) print one line naming the problem and the fix, and exit with code 2. Folders of generated
images are written whole (a temporary sibling renamed into place): an interrupted command leaves
no partial folder, and a rerun leaves no stale files.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from lavit.checkpoint import CheckpointError
from lavit.cli_inputs import (
    MAX_IMAGES,
    UsageError,
    check_count,
    check_device,
    check_guidance,
    check_images,
    check_out_dir,
    check_prompts,
    fresh_out_dir,
    reconstruction_names,
)
from lavit.cli_published import add_commands as add_published_commands
from lavit.config import ConfigError, fills_once
from lavit.data.image_io import ImageLoadError
from lavit.files import JSONLError, OutDirLockedError, atomic_dir, atomic_write
from lavit.train.stages import STAGES, load_stage


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
    from lavit.data.shapes.dataset import ShapesWorld
    from lavit.viz import image_grid

    if not 1 <= args.num <= MAX_IMAGES:
        raise UsageError(f"--num must be 1 to {MAX_IMAGES}, got {args.num}")
    if args.start < 0:
        raise UsageError(f"--start must be 0 or more, got {args.start}")
    check_out_dir(args)
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


def cmd_train(args: argparse.Namespace) -> None:
    if args.stage == "all" and (args.recipe is None or args.config is not None):
        raise UsageError("'lavit train all' takes --recipe FILE (e.g. configs/recipes/shapes_tiny.yaml), not --config")
    if args.stage != "all" and (args.config is None or args.recipe is not None):
        raise UsageError(f"'lavit train {args.stage}' takes --config FILE; --recipe goes with 'lavit train all'")
    if args.stage == "all":
        from lavit.train.recipe import load_recipe, run_recipe

        run_recipe(load_recipe(args.recipe, args.overrides))
        return
    from lavit.config import load_config
    from lavit.data.sources import expand_shorthand
    from lavit.train.trainer import fit_stage

    schema, task_cls = load_stage(args.stage)
    cfg = load_config(args.config, schema, expand_shorthand(args.overrides))  # data.train=PATH
    metrics = fit_stage(task_cls, cfg)  # locks out_dir before the task writes there
    if metrics:
        print(json.dumps({"stage": args.stage, "out_dir": cfg.train.out_dir, **metrics}, indent=2))


def _pipeline(args: argparse.Namespace, needs: tuple[str, ...] = ("lm",)):
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
    if args.model and _is_vargpt(args.model):
        return _vargpt_pipeline(args, dtype)
    if args.model:
        pipe = LaVITPipeline.from_pretrained(args.model, args.device, dtype=dtype)
        missing = [n for n in needs if (pipe.lm is None if n == "lm" else n not in pipe.decoders)]
        if missing:
            raise UsageError(f"{args.model} has no {missing[0]}/ stage, which 'lavit {args.command}' needs")
        return pipe
    if not args.tokenizer and not any(stages.values()):
        args.model = str(shipped_model())  # neither given: the shipped model
        return _pipeline(args, needs)
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


def _is_vargpt(directory: str) -> bool:
    """Whether ``directory`` is a VARGPT folder (lavit convert vargpt) rather than a pipeline."""
    from lavit.checkpoint import read_meta

    meta = Path(directory) / "meta.json"
    return meta.is_file() and read_meta(directory).get("schema") == "VARGPTConfig"


def _vargpt_pipeline(args: argparse.Namespace, dtype):
    """A VARGPT folder behind the pipeline's calls: it draws images through its own VQ-VAE, so
    the LaVIT pipeline's decoder options do not apply to it."""
    from lavit.vargpt.pipeline import VARGPTPipeline

    given = [flag for flag, key in (("--ratio", "ratio"), ("--candidates", "candidates")) if getattr(args, key, None)]
    if dtype is not None or given:
        raise UsageError(
            f"{args.model} is a VARGPT folder: {(given or ['--bf16'])[0]} does not apply to it yet; drop it"
        )
    return VARGPTPipeline.from_pretrained(args.model, args.device)


def _decoding(default, args: argparse.Namespace):
    changes = {k: v for k, v in (("num_beams", args.beams), ("max_new_tokens", args.max_new_tokens)) if v is not None}
    return dataclasses.replace(default, **changes)


@contextlib.contextmanager
def _bad_input() -> Iterator[None]:
    """Inside a model call, a ValueError is the input's fault (a prompt longer than the context,
    an image of the wrong size, ...): report it as a usage error."""
    try:
        yield
    except ValueError as e:
        raise UsageError(str(e)) from e


def _emit(records: list[dict], args: argparse.Namespace, text: Callable[[dict], str]) -> None:
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        for r in records:
            print(text(r))


def cmd_caption(args: argparse.Namespace) -> None:
    check_images(args.images)
    pipe = _pipeline(args)
    with _bad_input():
        captions = pipe.caption(args.images, args.prompt, _decoding(pipe.cfg.caption_decoding, args))
    records = [{"image": i, "caption": c} for i, c in zip(args.images, captions, strict=True)]
    _emit(records, args, lambda r: f"{r['image']}: {r['caption']}")


def cmd_vqa(args: argparse.Namespace) -> None:
    check_images([args.image])
    if any(not q.strip() for q in args.questions):
        raise UsageError("empty question: give the question text, e.g. lavit vqa img.png 'What colour is it?'")
    if args.template is not None and not fills_once(args.template):
        raise UsageError(
            f"--template {args.template!r} must hold the question's place as {{}} once, e.g. 'Question: {{}} Answer:'"
        )
    pipe = _pipeline(args)
    n = len(args.questions)
    with _bad_input():
        answers = pipe.answer([args.image] * n, args.questions, args.template, _decoding(pipe.cfg.vqa_decoding, args))
    records = [{"image": args.image, "question": q, "answer": a} for q, a in zip(args.questions, answers, strict=True)]
    _emit(records, args, lambda r: f"Q: {r['question']}\nA: {r['answer']}")


def cmd_generate_tokens(args: argparse.Namespace) -> None:
    check_prompts(args)
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; generate-tokens writes one JSON file: give a file path")
    pipe = _pipeline(args)
    sampling = pipe.cfg.image_sampling
    if args.max_tokens is not None:
        sampling = dataclasses.replace(sampling, max_tokens=args.max_tokens)
    with _bad_input():
        codes = pipe.generate_tokens(
            args.prompts,
            num_images=args.num_images,
            guidance_scale=args.guidance_scale,
            negative_prompt=args.negative_prompt,
            seed=args.seed,
            sampling=sampling,
        )
    records = [
        {"prompt": args.prompts[j // args.num_images], "seed": args.seed + j, "codes": c.tolist()}
        for j, c in enumerate(codes)
    ]
    out = Path(args.out)
    atomic_write(out, lambda tmp: tmp.write_text(json.dumps(records, indent=1)))
    print(
        f"wrote {len(records)} code sequences ({min(len(c) for c in codes)}-{max(len(c) for c in codes)} codes) to {out}"
    )


def _save_pngs(out: Path, images: list, names: list[str]) -> list[Path]:
    assert len(set(names)) == len(names), names
    paths = [out / name for name in names]
    for im, path in zip(images, paths, strict=True):
        atomic_write(path, lambda tmp, im=im: im.save(tmp, format="PNG"))
    return paths


def _decoder_sampling(pipe, args: argparse.Namespace, reconstruction: bool = False):
    sampling = pipe.cfg.sampling_for(args.decoder, reconstruction)
    if args.steps is not None:
        if not hasattr(sampling, "steps"):
            raise UsageError(f"--steps sets diffusion sampling steps; the {args.decoder} decoder has none")
        sampling = dataclasses.replace(sampling, steps=args.steps)
    return sampling


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from PIL import Image

    from lavit.data.image_io import load_image

    check_images(args.images)
    check_out_dir(args)
    originals = [load_image(p) for p in args.images]  # fail on a bad file before any model work
    pipe = _pipeline(args, needs=(args.decoder,))
    with _bad_input():
        recons = pipe.reconstruct(
            originals, decoder=args.decoder, seed=args.seed, sampling=_decoder_sampling(pipe, args, reconstruction=True)
        )
    pairs = []
    for orig, rec in zip(originals, recons, strict=True):
        side = rec.height
        pair = Image.new("RGB", (2 * rec.width, side), "white")
        pair.paste(orig.resize((rec.width, side), Image.Resampling.BICUBIC), (0, 0))
        pair.paste(rec, (rec.width, 0))
        pairs.append(pair)
    for path in _save_pngs(Path(args.out), pairs, reconstruction_names(args.images)):
        print(path)


def cmd_generate(args: argparse.Namespace) -> None:
    check_prompts(args)
    out = fresh_out_dir(args, GENERATE_MANIFEST)
    pipe = _pipeline(args, needs=("lm", args.decoder))
    with _bad_input():
        if hasattr(pipe, "generate"):
            gen = pipe.generate(
                args.prompts,
                candidates=args.candidates,
                guidance_scale_for_llm=args.guidance_scale,
                decoder=args.decoder,
                ratio=args.ratio,
                seed=args.seed,
                num_images=args.num_images,
                decoder_sampling=_decoder_sampling(pipe, args),
            )
            images, candidates = gen.images, gen.candidate
        else:  # a VARGPT folder: its own sampler and VQ-VAE, one draw per image
            images = pipe.generate_image(
                args.prompts, seed=args.seed, num_images=args.num_images, guidance_scale=args.guidance_scale
            )
            candidates = [0] * len(images)
    names = [f"{i // args.num_images:03d}_{i % args.num_images}.png" for i in range(len(images))]
    records = [
        {"prompt": args.prompts[i // args.num_images], "file": name, "candidate": candidates[i]}
        for i, name in enumerate(names)
    ]
    with atomic_dir(out) as tmp:  # the whole folder at once: no partial or stale files
        _save_pngs(tmp, images, names)
        (tmp / GENERATE_MANIFEST).write_text(json.dumps(records, indent=1))
    for r in records:
        print(f"{out / r['file']}: {r['prompt']}")


class _AppendPart(argparse.Action):
    """--image / --text into one ordered list of (kind, value): the prompt's parts in order."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        parts = list(getattr(namespace, "parts", None) or [])
        parts.append(("image" if option_string == "--image" else "text", value))
        namespace.parts = parts


def cmd_synthesize(args: argparse.Namespace) -> None:
    parts = args.parts or []
    if not parts:
        raise UsageError("empty prompt: give parts in order, e.g. lavit synthesize --image a.png --text 'in blue'")
    if any(kind == "text" and not v.strip() for kind, v in parts):
        raise UsageError("empty --text part: give the text, e.g. --text 'in blue'")
    check_count(args, 1)
    check_guidance(args)
    check_images([v for kind, v in parts if kind == "image"])
    out = fresh_out_dir(args, SYNTHESIZE_MANIFEST)
    from lavit.data.image_io import load_image

    prompt = [load_image(v) if kind == "image" else v for kind, v in parts]  # bad files fail before the model
    pipe = _pipeline(args, needs=("lm", args.decoder))
    with _bad_input():
        images = pipe.synthesize(
            [prompt],
            decoder=args.decoder,
            guidance_scale_for_llm=args.guidance_scale,
            seed=args.seed,
            num_images=args.num_images,
        )
    names = [f"synthesis_{j}.png" for j in range(len(images))]
    record = {"prompt": [{kind: value} for kind, value in parts], "files": names, "seed": args.seed}
    with atomic_dir(out) as tmp:  # the whole folder at once: no partial or stale files
        _save_pngs(tmp, images, names)
        (tmp / SYNTHESIZE_MANIFEST).write_text(json.dumps(record, indent=1))
    for name in names:
        print(out / name)


def cmd_demo(args: argparse.Namespace) -> None:
    from lavit.demo import run_demo
    from lavit.pipeline import LaVITPipeline

    check_device(args.device)
    check_out_dir(args)
    model = args.model or str(shipped_model())
    summary = run_demo(LaVITPipeline.from_pretrained(model, args.device), args.out)
    print(json.dumps({"model": model, **summary}, indent=2))


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help=f"pipeline directory (default: the shipped {SHIPPED_MODEL})")
    p.add_argument("--tokenizer", default=None, help="trained tokenizer directory (with --lm)")
    p.add_argument("--lm", default=None, help="trained LM directory (with --tokenizer)")
    p.add_argument("--diffusion", default=None, help="trained diffusion detokenizer directory (with --tokenizer)")
    p.add_argument("--var", default=None, help="trained VAR decoder directory (with --tokenizer)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="on a GPU, run the LLM (and LaVIT's pixel decoder) in bfloat16")


def _text_decoding_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.add_argument("--beams", type=int, default=None, help="beam count (1 = greedy; default: the pipeline's)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default: the pipeline's")


# lavit.pipeline.DECODERS' names (not imported here: it pulls in diffusers; a test keeps them equal).
DECODER_NAMES = ("diffusion", "var")


def _decoder_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", default="diffusion", choices=DECODER_NAMES, help="which detokenizer renders the codes")
    p.add_argument("--steps", type=int, default=None, help="decoder sampling steps (default: the pipeline's)")


GENERATE_MANIFEST, SYNTHESIZE_MANIFEST = "prompts.json", "synthesis.json"


def _image_prompt_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompts", nargs="*", help="text prompts")
    p.add_argument("--prompts-file", default=None, help="more prompts, one per line (UTF-8)")
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument(
        "--guidance-scale", type=float, default=None, help="the LM's CFG scale (default: the pipeline's, 4.0)"
    )
    p.add_argument("--seed", type=int, default=0, help="image j (prompt-major) is sampled with seed + j")


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
    p.add_argument("stage", choices=[*sorted(STAGES), "all"], help="a stage, or all: every stage of --recipe")
    p.add_argument("--config", default=None, help="run config YAML, e.g. configs/train/tokenizer_tiny.yaml")
    p.add_argument("--recipe", default=None, help="with 'all': recipe YAML, e.g. configs/recipes/shapes_tiny.yaml")
    p.add_argument("overrides", nargs="*", help="overrides, e.g. train.steps=100; with all: out_dir=x lm.train.steps=9")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("caption", help="caption images")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--prompt", default=None, help="caption prompt (default: the pipeline's)")
    _text_decoding_args(p)
    _model_args(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("vqa", help="answer questions about an image")
    p.add_argument("image", help="image file")
    p.add_argument("questions", nargs="+", help="one or more questions")
    p.add_argument("--template", default=None, help='question template (default "Question: {} Answer:")')
    _text_decoding_args(p)
    _model_args(p)
    p.set_defaults(func=cmd_vqa)

    p = sub.add_parser("generate-tokens", help="sample image codes for text prompts, saved as JSON")
    p.add_argument("--out", required=True, help="output JSON file: [{prompt, seed, codes}, ...]")
    _image_prompt_args(p)
    p.add_argument("--negative-prompt", default=None, help="unconditional context (default: the lone <img>)")
    p.add_argument("--max-tokens", type=int, default=None, help="most codes per image (default: the pipeline's, 200)")
    _model_args(p)
    p.set_defaults(func=cmd_generate_tokens)

    p = sub.add_parser("generate", help="generate images from text prompts (PNG files)")
    p.add_argument("--out", required=True, help="output folder: NNN_J.png per prompt NNN and image J, prompts.json")
    _image_prompt_args(p)
    p.add_argument("--ratio", default=None, help="aspect ratio width:height, e.g. 4:3 (default 1:1)")
    p.add_argument(
        "--candidates",
        type=int,
        default=None,
        help="draw N per image, keep the one whose caption likelihood of the prompt is highest (default: the pipeline's, 1)",
    )
    _decoder_args(p)
    _model_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("reconstruct", help="images -> codes -> images, written side by side with the originals")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder: <name>_reconstruction.png per image")
    _decoder_args(p)
    p.add_argument("--seed", type=int, default=0)
    _model_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("synthesize", help="multimodal prompt (images and texts in order) -> new image(s)")
    p.add_argument("--image", action=_AppendPart, dest="parts", help="an image part of the prompt")
    p.add_argument("--text", action=_AppendPart, dest="parts", help="a text part of the prompt")
    p.add_argument("--out", required=True, help="output folder: synthesis_J.png")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=None, help="the LM's CFG scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder", default="diffusion", choices=DECODER_NAMES, help="which detokenizer renders the codes")
    _model_args(p)
    p.set_defaults(func=cmd_synthesize)

    add_published_commands(sub)

    p = sub.add_parser("demo", help="the shipped model on held-out scenes -> outputs/demo/index.html")
    p.add_argument("--model", default=None, help=f"pipeline directory (default: the shipped {SHIPPED_MODEL})")
    p.add_argument("--out", default="outputs/demo", help="output folder (index.html + PNGs)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_demo)
    return parser


# What a user's input can cause; anything else is a bug and keeps its traceback.
USER_ERRORS = (
    UsageError,
    ConfigError,
    CheckpointError,
    ImageLoadError,
    OutDirLockedError,
    JSONLError,
    FileNotFoundError,
    IndexError,
)


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
    except USER_ERRORS as e:
        message = " ".join(str(e).split())  # one line, whatever the exception's text holds
        print(f"lavit {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
