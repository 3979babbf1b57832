"""What the ``lavit`` command checks before it loads a model: devices, input files, output
folders, prompts and the bounds on what one command makes. Each problem is a
:class:`UsageError` whose one-line message names the flag or file and the fix."""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

# Bounds on what one command makes: every image is held in memory until it is written.
MAX_IMAGES_PER_PROMPT = 64
MAX_IMAGES = 256
MAX_CANDIDATES = 16


class UsageError(ValueError):
    """A command-line problem the user can fix."""


def check_device(device: str) -> None:
    """``--device`` names a device this machine has (a CUDA one only where CUDA sees a GPU)."""
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r} is not a device name: use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UsageError(f"--device {device}: no CUDA GPU is visible to torch here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {device}: only {count} CUDA GPU(s) are visible (cuda:0..cuda:{count - 1})")
    elif dev.type != "cpu" and dev.type != "mps":
        raise UsageError(f"--device {device}: use cpu, cuda or cuda:N")


def check_images(paths: Sequence[str]) -> None:
    for p in paths:
        path = Path(p)
        if not path.exists():
            raise UsageError(f"image file not found: {p} (give paths to existing image files)")
        if not path.is_file():
            raise UsageError(f"{p} is not a regular file (a folder, FIFO or device); give an image file")


def check_out_dir(args: argparse.Namespace) -> Path:
    """``--out`` as a folder: refused when it names a file (checked before any model work)."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; '{args.command}' writes a folder of images: give a folder path")
    return out


def fresh_out_dir(args: argparse.Namespace, manifest: str) -> Path:
    """``--out`` for a command that writes a whole folder (replaced at the end, so nothing is left
    half-written or stale from an earlier run): new, empty, or one this command wrote before
    (it holds ``manifest``); a folder with other files is refused rather than wiped."""
    out = check_out_dir(args)
    if out.is_dir() and any(out.iterdir()) and not (out / manifest).is_file():
        raise UsageError(
            f"--out {out} holds files that 'lavit {args.command}' did not write (no {manifest}), and the "
            "folder is replaced whole: give a new or empty folder"
        )
    return out


def read_prompts(args: argparse.Namespace) -> None:
    """Prompts from the command line and ``--prompts-file`` (UTF-8, one per line) into ``args.prompts``."""
    prompts = list(args.prompts)
    if args.prompts_file is not None:
        path = Path(args.prompts_file)
        if not path.is_file():
            raise UsageError(f"--prompts-file {path}: no such file (one prompt per line, UTF-8)")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"--prompts-file {path}: byte {e.start} is not UTF-8; save the file as UTF-8") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f'no prompts: give them as arguments (lavit {args.command} "a red circle") or --prompts-file')
    args.prompts = prompts


def check_count(args: argparse.Namespace, prompts: int) -> None:
    """``--num-images`` (and ``--candidates``) within the bounds of what one command holds."""
    if not 1 <= args.num_images <= MAX_IMAGES_PER_PROMPT:
        raise UsageError(f"--num-images must be 1 to {MAX_IMAGES_PER_PROMPT}, got {args.num_images}")
    if prompts * args.num_images > MAX_IMAGES:
        raise UsageError(
            f"{prompts} prompts x --num-images {args.num_images} = {prompts * args.num_images} images, over "
            f"{MAX_IMAGES} per command: split the prompts over several commands"
        )
    candidates = getattr(args, "candidates", None)
    if candidates is not None and not 1 <= candidates <= MAX_CANDIDATES:
        raise UsageError(f"--candidates must be 1 to {MAX_CANDIDATES}, got {candidates}")


def check_prompts(args: argparse.Namespace) -> None:
    read_prompts(args)
    if any(not p.strip() for p in args.prompts):
        raise UsageError(f'empty prompt: give the text to draw, e.g. lavit {args.command} "a red circle"')
    check_count(args, len(args.prompts))
    check_guidance(args)


def reconstruction_names(images: Sequence[str]) -> list[str]:
    """``<stem>_reconstruction.png`` per input; inputs that share a stem (a/x.png, b/x.png) get
    their position too (``x_0_reconstruction.png``, ``x_1_...``), so none overwrites another."""
    stems = [Path(p).stem for p in images]
    return [
        f"{stem}_{i}_reconstruction.png" if stems.count(stem) > 1 else f"{stem}_reconstruction.png"
        for i, stem in enumerate(stems)
    ]


def check_guidance(args: argparse.Namespace) -> None:
    """``--guidance-scale`` is finite (NaN or inf would sample from NaN logits)."""
    if args.guidance_scale is not None and not math.isfinite(args.guidance_scale):
        raise UsageError(f"--guidance-scale {args.guidance_scale}: use a finite scale (1.0 disables guidance)")
