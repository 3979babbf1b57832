"""The ``lavit`` commands for the published models: ``convert lavit``, ``convert vargpt``,
``convert var`` and ``generate-class`` (registered by :func:`add_commands`; lavit/cli.py holds
the rest). A converted LaVIT folder is a pipeline: ``lavit caption | vqa | generate |
synthesize | reconstruct --model`` run it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lavit.cli_inputs import UsageError, check_device, fresh_out_dir
from lavit.files import atomic_dir, atomic_write

CLASS_MANIFEST = "classes.json"


def cmd_convert(args: argparse.Namespace) -> None:
    from lavit.convert.var import convert_var

    for flag, path in (("--vqvae", args.vqvae), ("--transformer", args.transformer)):
        if path is not None and not Path(path).is_file():
            raise UsageError(f"{flag} {path}: no such file; give the downloaded checkpoint")
    print(f"wrote {convert_var(args.vqvae, args.out_dir, args.transformer)}")


def cmd_convert_lavit(args: argparse.Namespace) -> None:
    from lavit.convert.lavit import convert_lavit

    if not Path(args.src).is_dir():
        raise UsageError(f"{args.src}: no such folder; give the downloaded LaVIT-7B-v2 folder (rain1011/LaVIT-7B-v2)")
    print(f"wrote {convert_lavit(args.src, args.out_dir)}")


def cmd_convert_vargpt(args: argparse.Namespace) -> None:
    from lavit.convert.vargpt import convert_vargpt

    if not Path(args.src).is_dir():
        raise UsageError(f"{args.src}: no such folder; give the downloaded VARGPT_LLaVA-v1 folder")
    print(f"wrote {convert_vargpt(args.src, args.out_dir)}")


def cmd_generate_class(args: argparse.Namespace) -> None:
    import torch

    from detokenizer.var.config import VARSamplingConfig
    from detokenizer.var.decoder import generate_classes, load_var_decoder
    from lavit.data.transforms import to_pil

    if args.num_images < 1 or args.batch_size < 1:
        raise UsageError("--num-images and --batch-size must be at least 1")
    check_device(args.device)
    out = fresh_out_dir(args, CLASS_MANIFEST)
    model = load_var_decoder(args.model, args.device)
    if model.transformer.cfg.condition != "class":
        raise UsageError(
            f"{args.model} is a VAR decoder of LaVIT codes, not of classes: use lavit generate --decoder var, "
            "or convert a class-conditional VAR with lavit convert var --transformer"
        )
    if args.bf16:
        if not args.device.startswith("cuda"):
            raise UsageError("--bf16 runs the model in bfloat16 on a GPU: add --device cuda, or drop --bf16")
        model = model.to(torch.bfloat16)
    sampling = VARSamplingConfig(
        guidance_scale=args.guidance_scale, top_k=args.top_k, top_p=args.top_p, temperature=args.temperature
    )
    labels = [c for c in args.classes for _ in range(args.num_images)]
    images = []
    try:
        for start in range(0, len(labels), args.batch_size):
            batch = labels[start : start + args.batch_size]
            images += generate_classes(model, batch, sampling, seed=args.seed + start).float().cpu()
    except ValueError as e:
        raise UsageError(str(e)) from e
    names = [f"{c:04d}_{j % args.num_images}.png" for j, c in enumerate(labels)]
    records = [
        {"class": c, "seed": args.seed + j, "file": n} for j, (c, n) in enumerate(zip(labels, names, strict=True))
    ]
    with atomic_dir(out) as tmp:
        for image, name in zip(images, names, strict=True):
            atomic_write(tmp / name, lambda p, im=image: to_pil(im).save(p, format="PNG"))
        (tmp / CLASS_MANIFEST).write_text(json.dumps(records, indent=1))
    for r in records:
        print(f"{out / r['file']}: class {r['class']}")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``convert`` and ``generate-class`` on ``lavit``'s subparsers."""
    p = sub.add_parser("convert", help="convert a published checkpoint into a lavit model folder")
    kinds = p.add_subparsers(dest="kind", required=True)
    v = kinds.add_parser("lavit", help="the LaVIT-7B-v2 folder -> a pipeline folder (tokenizer, LLM, pixel decoder)")
    v.add_argument("src", help="the downloaded LaVIT-7B-v2 folder (rain1011/LaVIT-7B-v2)")
    v.add_argument("out_dir", help="the pipeline folder to write (whole, or nothing on an error)")
    v.set_defaults(func=cmd_convert_lavit)
    v = kinds.add_parser("vargpt", help="VARGPT_LLaVA-v1 (LLM, CLIP tower, VAR d30 head, VQ-VAE) -> a VARGPT folder")
    v.add_argument("src", help="the downloaded VARGPT_LLaVA-v1 folder (VARGPT-family/VARGPT_LLaVA-v1)")
    v.add_argument("out_dir", help="the model folder to write (whole, or nothing on an error)")
    v.set_defaults(func=cmd_convert_vargpt)
    v = kinds.add_parser("var", help="VAR's VQ-VAE (vae_ch160v4096z32.pth), optionally with var_d16..d30")
    v.add_argument("--vqvae", required=True, help="vae_ch160v4096z32.pth")
    v.add_argument("--transformer", default=None, help="var_d16.pth, var_d20.pth, var_d24.pth or var_d30.pth")
    v.add_argument("out_dir", help="the model folder to write (whole, or nothing on an error)")
    v.set_defaults(func=cmd_convert)

    p = sub.add_parser("generate-class", help="images of ImageNet classes from a converted VAR (PNG files)")
    p.add_argument("--model", required=True, help="a folder of lavit convert var --transformer")
    p.add_argument("--class", dest="classes", type=int, nargs="+", required=True, help="class ids, e.g. 207 88")
    p.add_argument("--out", required=True, help="output folder: CCCC_J.png per class and image J, classes.json")
    p.add_argument("--num-images", type=int, default=1, help="images per class")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (CFG doubles it)")
    p.add_argument("--guidance-scale", type=float, default=4.0, help="VAR's CFG, ramped over scales (demo: 4)")
    p.add_argument("--top-k", type=int, default=900)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="image j is drawn with seed + j")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--bf16", action="store_true", help="on a GPU, run the model in bfloat16")
    p.set_defaults(func=cmd_generate_class)
