"""A small real labelled image set built offline: scikit-learn's handwritten digits (1,797 scans
of 8x8 pixels, 16 grey levels, from the UCI optical-recognition set) as image-caption pairs.

    python -m lavit.data.digits --out data/digits [--size 64] [--seed 0]

writes ``images/NNNN.png`` (upsampled to ``size`` x ``size``, RGB) and ``train.jsonl``,
``val.jsonl``, ``test.jsonl`` (70 / 15 / 15%, stratified by label): per image a caption line
``{"image", "text": [captions], "label"}`` and a VQA line ``{"image", "question", "answers"}``
asking which digit it is. The JSONL files are the data layer's format, so the generic recipe and
``eval/caption.py`` / ``eval/vqa.py`` read them as they are:

    lavit train all --recipe configs/recipes/generic_tiny.yaml \\
        data.train=data/digits/train.jsonl data.val=data/digits/val.jsonl out_dir=runs/digits
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = {"train": 0.70, "val": 0.15, "test": 0.15}
QUESTION = "which digit is this?"


def captions(label: int) -> list[str]:
    """The reference captions of a digit: its word and its numeral, in a few phrasings."""
    word = WORDS[label]
    return [f"a handwritten {word}.", f"the digit {label}, written by hand.", f"a scan of a handwritten {word}."]


def split_indices(labels: np.ndarray, seed: int) -> dict[str, list[int]]:
    """Indices per split, stratified: each label's items shuffled by ``seed`` and cut 70/15/15."""
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {name: [] for name in SPLITS}
    for label in range(len(WORDS)):
        idx = rng.permutation(np.flatnonzero(labels == label))
        n_train, n_val = round(len(idx) * SPLITS["train"]), round(len(idx) * SPLITS["val"])
        out["train"] += idx[:n_train].tolist()
        out["val"] += idx[n_train : n_train + n_val].tolist()
        out["test"] += idx[n_train + n_val :].tolist()
    return {name: sorted(ids) for name, ids in out.items()}


def to_image(pixels: np.ndarray, size: int) -> Image.Image:
    """An 8x8 scan (0..16, ink high) -> dark ink on white, bicubic-upsampled to ``size``, RGB."""
    grey = (255 - pixels.astype(np.float32) * (255 / 16)).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").resize((size, size), Image.Resampling.BICUBIC).convert("RGB")


def build(out: str | Path, size: int = 64, seed: int = 0) -> dict[str, int]:
    """Write the set under ``out`` (see the module docstring).

    Returns:
        Items per split.
    """
    from sklearn.datasets import load_digits

    out = Path(out)
    digits = load_digits()
    (out / "images").mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, ids in split_indices(digits.target, seed).items():
        lines = []
        for i in ids:
            label, image = int(digits.target[i]), f"images/{i:04d}.png"
            to_image(digits.images[i], size).save(out / image)
            lines.append({"image": image, "text": captions(label), "label": label})
            lines.append({"image": image, "question": QUESTION, "answers": [WORDS[label], str(label)]})
        (out / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
        counts[name] = len(ids)
    return counts


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0, help="seeds the split")
    args = p.parse_args(argv)
    print(json.dumps({"out": args.out, **build(args.out, args.size, args.seed)}))


if __name__ == "__main__":
    main()
