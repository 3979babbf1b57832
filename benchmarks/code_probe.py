"""What a trained tokenizer's codes know about the scene, printed as JSON.

A linear probe on the bag of codes (code counts) of ShapesWorld train scenes predicts which
colours, and which (colour, kind) pairs, the scene contains; the score is the held-out share of
scenes whose whole set is right. It bounds what any model reading these codes (the LM for
captions and VQA, a detokenizer for reconstruction) can get from them.

    python benchmarks/code_probe.py runs/tokenizer_tiny/model
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from lavit.config import ShapesWorldConfig
from lavit.data.shapes import COLOURS, KINDS
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.transforms import to_tensor
from tokenizer import load_tokenizer


def set_accuracy(x: torch.Tensor, y: torch.Tensor, n_train: int, epochs: int = 40) -> float:
    """Fit a linear multi-label probe on the first ``n_train`` rows; exact-set accuracy on the rest."""
    probe = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(probe.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(n_train).split(250):
            loss = F.binary_cross_entropy_with_logits(probe(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return float(((probe(x[n_train:]) > 0) == (y[n_train:] > 0)).all(1).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tokenizer_dir")
    p.add_argument("--scenes", type=int, default=5000)
    p.add_argument("--train-share", type=float, default=0.8)
    args = p.parse_args()
    torch.manual_seed(0)
    tok = load_tokenizer(args.tokenizer_dir)
    size = tok.cfg.encoder.image_size
    world = ShapesWorld(ShapesWorldConfig(resolution=size), "train")
    colours, pairs = list(COLOURS), [(c, k) for c in COLOURS for k in KINDS]
    y_col, y_pair = torch.zeros(args.scenes, len(colours)), torch.zeros(args.scenes, len(pairs))
    codes: list[torch.Tensor] = []
    for start in range(0, args.scenes, 250):
        idx = range(start, min(start + 250, args.scenes))
        codes += tok.encode(torch.stack([to_tensor(world.image(i), size) for i in idx]))
        for i in idx:
            for s in world.scene(i).shapes:
                y_col[i, colours.index(s.colour)] = 1
                y_pair[i, pairs.index((s.colour, s.kind))] = 1
    bags = torch.stack([torch.bincount(c, minlength=tok.codebook_size).float() for c in codes])
    n_train = int(args.train_share * args.scenes)
    print(
        json.dumps(
            {
                "benchmark": "code_content_probe",
                "tokenizer": args.tokenizer_dir,
                "scenes": args.scenes,
                "codes_per_image": sum(c.numel() for c in codes) / len(codes),
                "colour_set_accuracy": round(set_accuracy(bags, y_col, n_train), 3),
                "colour_kind_set_accuracy": round(set_accuracy(bags, y_pair, n_train), 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
