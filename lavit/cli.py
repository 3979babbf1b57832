"""The ``lavit`` command. Each subcommand parses its arguments, builds, and calls the library.

    lavit info                         versions, devices, optional backends
    lavit shapes --out DIR [...]       a grid of ShapesWorld samples (PNG) with captions and QA (JSON)
    lavit train STAGE --config F [k=v] train a stage with the shared trainer; under torchrun too:
                                       torchrun --nproc_per_node=2 -m lavit.cli train tokenizer ...
    lavit train all --recipe F [k=v]   train every stage of a recipe in order (skipping finished ones)
                                       and assemble the pipeline, e.g. configs/recipes/shapes_tiny.yaml
    lavit caption IMG...               caption images
    lavit vqa IMG QUESTION...          answer questions about one image (--mark: a visual prompt on it)
    lavit ground IMG PHRASE...         where each phrase is, as a box (--caption: boxes in a caption)
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
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from lavit.checkpoint import CheckpointError
from lavit.cli_common import (
    SHIPPED_MODEL,
    add_model_args,
    add_text_decoding_args,
    bad_input,
    decoding_from_args,
    emit,
    pipeline_from_args,
    shipped_model,
)
from lavit.cli_grounding import add_commands as add_grounding_commands
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
from lavit.visual_prompts import parse_mark


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


def cmd_caption(args: argparse.Namespace) -> None:
    check_images(args.images)
    pipe = pipeline_from_args(args)
    with bad_input():
        captions = pipe.caption(args.images, args.prompt, decoding_from_args(pipe.cfg.caption_decoding, args))
    records = [{"image": i, "caption": c} for i, c in zip(args.images, captions, strict=True)]
    emit(records, args, lambda r: f"{r['image']}: {r['caption']}")


def cmd_vqa(args: argparse.Namespace) -> None:
    check_images([args.image])
    if any(not q.strip() for q in args.questions):
        raise UsageError("empty question: give the question text, e.g. lavit vqa img.png 'What colour is it?'")
    if args.template is not None and not fills_once(args.template):
        raise UsageError(
            f"--template {args.template!r} must hold the question's place as {{}} once, e.g. 'Question: {{}} Answer:'"
        )
    try:
        marks = [parse_mark(spec) for spec in args.mark or ()]
    except ValueError as e:
        raise UsageError(f"--mark {e}") from None
    pipe = pipeline_from_args(args)
    if marks and not hasattr(pipe, "mark_images"):
        raise UsageError(f"{args.model} is a VARGPT folder: --mark is for LaVIT-style pipelines; drop it")
    n = len(args.questions)
    with bad_input():
        decoding = decoding_from_args(pipe.cfg.vqa_decoding, args)
        extra = {"marks": [marks] * n} if marks else {}
        answers = pipe.answer([args.image] * n, args.questions, args.template, decoding, **extra)
    records = [{"image": args.image, "question": q, "answer": a} for q, a in zip(args.questions, answers, strict=True)]
    emit(records, args, lambda r: f"Q: {r['question']}\nA: {r['answer']}")


def cmd_generate_tokens(args: argparse.Namespace) -> None:
    check_prompts(args)
    if Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} is a folder; generate-tokens writes one JSON file: give a file path")
    pipe = pipeline_from_args(args)
    sampling = pipe.cfg.image_sampling
    if args.max_tokens is not None:
        sampling = dataclasses.replace(sampling, max_tokens=args.max_tokens)
    with bad_input():
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
    pipe = pipeline_from_args(args, needs=(args.decoder,))
    with bad_input():
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
    pipe = pipeline_from_args(args, needs=("lm", args.decoder))
    with bad_input():
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
    pipe = pipeline_from_args(args, needs=("lm", args.decoder))
    with bad_input():
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
    add_text_decoding_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_caption)

    p = sub.add_parser("vqa", help="answer questions about an image")
    p.add_argument("image", help="image file")
    p.add_argument("questions", nargs="+", help="one or more questions")
    p.add_argument("--template", default=None, help='question template (default "Question: {} Answer:")')
    p.add_argument(
        "--mark",
        action="append",
        help="a visual prompt drawn on the image first, KIND:x0,y0,x1,y1[:COLOUR[:WIDTH]] in pixels, e.g. "
        "ellipse:8,9,17,18:red ('the shape in the red ellipse'); repeatable",
    )
    add_text_decoding_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_vqa)

    p = sub.add_parser("generate-tokens", help="sample image codes for text prompts, saved as JSON")
    p.add_argument("--out", required=True, help="output JSON file: [{prompt, seed, codes}, ...]")
    _image_prompt_args(p)
    p.add_argument("--negative-prompt", default=None, help="unconditional context (default: the lone <img>)")
    p.add_argument("--max-tokens", type=int, default=None, help="most codes per image (default: the pipeline's, 200)")
    add_model_args(p)
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
    add_model_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("reconstruct", help="images -> codes -> images, written side by side with the originals")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", required=True, help="output folder: <name>_reconstruction.png per image")
    _decoder_args(p)
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("synthesize", help="multimodal prompt (images and texts in order) -> new image(s)")
    p.add_argument("--image", action=_AppendPart, dest="parts", help="an image part of the prompt")
    p.add_argument("--text", action=_AppendPart, dest="parts", help="a text part of the prompt")
    p.add_argument("--out", required=True, help="output folder: synthesis_J.png")
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--guidance-scale", type=float, default=None, help="the LM's CFG scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--decoder", default="diffusion", choices=DECODER_NAMES, help="which detokenizer renders the codes")
    add_model_args(p)
    p.set_defaults(func=cmd_synthesize)

    add_grounding_commands(sub)
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
