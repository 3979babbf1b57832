"""The real-data report of a pipeline trained on scikit-learn's handwritten digits
(:mod:`lavit.data.digits`): every capability scored on held-out test images by a label.

    python eval/digits.py --data data/digits --model runs/digits/pipeline --out outputs/eval/digits

- **judge**: a classifier (an RBF support-vector machine on the image shrunk to 16x16 grey
  levels) fit on the *train* split's images only; its own accuracy on the real test images is
  reported first, as the ceiling of every judged score below.
- **caption**: the caption names the image's digit, and no other (word or numeral).
- **vqa**: the answer to "which digit is this?" names the digit.
- **reconstruct** (per decoder): PSNR against the test image at the decoder's side, and whether
  the judge reads the true digit in the reconstruction ("label kept").
- **text2image** (per decoder): ``--per-label`` prompts per digit, phrased as the training
  captions, one seed each; the judge reads the prompt's digit in the image.

Writes ``<out>/report.json`` and prints it. Single process; on 2 CPU cores the full test split
(270 images) with both decoders takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lavit.data.digits import QUESTION, WORDS, captions
from lavit.data.image_io import load_image
from lavit.data.transforms import to_tensor
from lavit.files import read_jsonl
from lavit.metrics.image import psnr

JUDGE_SIDE = 16
_NUMBER = re.compile(r"\b(" + "|".join(WORDS) + r"|\d)\b")


def labelled_images(data: Path, split: str) -> list[tuple[Path, int]]:
    """(image path, label) of every caption line of ``<data>/<split>.jsonl``."""
    path = data / f"{split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the set with python -m lavit.data.digits --out {data}")
    return [(data / line["image"], int(line["label"])) for line in read_jsonl(path) if "label" in line]


def judge_features(images: list[Image.Image]) -> np.ndarray:
    """Grey levels of each image box-shrunk to JUDGE_SIDE x JUDGE_SIDE, in [0, 1]."""
    small = [im.convert("L").resize((JUDGE_SIDE, JUDGE_SIDE), Image.Resampling.BOX) for im in images]
    return np.stack([np.asarray(im, dtype=np.float32).ravel() / 255 for im in small])


class DigitJudge:
    """Reads the digit an image shows; fit on the train split only."""

    def __init__(self, images: list[Image.Image], labels: list[int]) -> None:
        from sklearn.svm import SVC

        self.model = SVC(C=10.0, gamma="scale").fit(judge_features(images), labels)

    def __call__(self, images: list[Image.Image]) -> list[int]:
        return [int(y) for y in self.model.predict(judge_features(images))]


def named_digits(text: str) -> set[int]:
    """The digits a text names, as words or numerals."""
    return {WORDS.index(m) if m in WORDS else int(m) for m in _NUMBER.findall(text.lower())}


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _share(hits: list[bool]) -> float:
    return round(100 * sum(hits) / max(len(hits), 1), 2)


def report(pipe, data: Path, *, limit: int | None, per_label: int, batch_size: int, seed: int) -> dict:
    """Every score of the module docstring for ``pipe`` (a LaVITPipeline) on ``data``'s test split."""
    train = labelled_images(data, "train")
    test = labelled_images(data, "test")[:limit]
    t0 = time.time()
    judge = DigitJudge([load_image(p) for p, _ in train], [y for _, y in train])
    images = [load_image(p) for p, _ in test]
    labels = [y for _, y in test]
    out: dict = {
        "test_images": len(test),
        "judge": {"accuracy": _share([a == b for a, b in zip(judge(images), labels, strict=True)])},
    }
    captions_out, answers = [], []
    for batch in _batches(images, batch_size):
        captions_out += pipe.caption(batch)
        answers += pipe.answer(batch, [QUESTION] * len(batch))
    out["caption"] = {
        "accuracy": _share([named_digits(c) == {y} for c, y in zip(captions_out, labels, strict=True)]),
        "examples": captions_out[:5],
    }
    out["vqa"] = {
        "accuracy": _share([named_digits(a) == {y} for a, y in zip(answers, labels, strict=True)]),
        "examples": answers[:5],
    }
    prompts = [(captions(y)[k % 3], y) for k in range(per_label) for y in range(len(WORDS))]
    for name, decoder in sorted(pipe.decoders.items()):
        side = decoder.resolution
        recon = []
        for batch in _batches(images, batch_size):
            recon += pipe.reconstruct(batch, decoder=name, seed=seed)
        target = torch.stack([to_tensor(im, side) for im in images])
        got = torch.stack([to_tensor(im, side) for im in recon])
        out[f"reconstruct_{name}"] = {
            "psnr": round(float(np.mean(psnr(got, target))), 2),
            "label_kept": _share([a == b for a, b in zip(judge(recon), labels, strict=True)]),
        }
        generated = []
        for i, batch in enumerate(_batches(prompts, batch_size)):
            generated += pipe.generate_image([p for p, _ in batch], decoder=name, seed=seed + i * batch_size)
        read = judge(generated)
        out[f"text2image_{name}"] = {
            "prompts": len(prompts),
            "label_accuracy": _share([r == y for r, (_, y) in zip(read, prompts, strict=True)]),
            "labels_drawn": sorted(set(read)),
        }
    out["seconds"] = round(time.time() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the folder python -m lavit.data.digits wrote")
    p.add_argument("--model", required=True, help="a pipeline folder (LaVITPipeline.save_pretrained)")
    p.add_argument("--out", required=True, help="folder for report.json")
    p.add_argument("--limit", type=int, default=None, help="score only the first N test images")
    p.add_argument("--per-label", type=int, default=10, help="text-to-image prompts per digit")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from lavit.pipeline import LaVITPipeline

    try:
        data = Path(args.data)
        labelled_images(data, "test")
        pipe = LaVITPipeline.from_pretrained(args.model)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = report(pipe, data, limit=args.limit, per_label=args.per_label, batch_size=args.batch_size, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0
