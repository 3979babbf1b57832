"""What a trained tokenizer's codes know about the scene, printed as JSON.

:func:`lavit.train.tasks.tokenizer.code_probe` on ShapesWorld train scenes (every tokenizer
evaluation logs it on val scenes too): a linear probe on the bag of codes predicts which colours,
and which (colour, kind) pairs, the scene contains; the score is the held-out share of scenes
whose whole set is right.

    python benchmarks/code_probe.py runs/tokenizer_tiny/model
    python benchmarks/code_probe.py --quick     # the shipped tokenizer, 20 scenes (tests)
"""

from __future__ import annotations

import argparse
import json

import torch
from bench_utils import SHIPPED_MODEL

from lavit.config import ShapesWorldConfig
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.shapes.judge import code_probe
from lavit.data.transforms import to_tensor
from tokenizer import load_tokenizer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "tokenizer_dir", nargs="?", default=str(SHIPPED_MODEL / "tokenizer"), help="default: the shipped one"
    )
    p.add_argument("--scenes", type=int, default=5000)
    p.add_argument("--train-share", type=float, default=0.8)
    p.add_argument("--quick", action="store_true", help="20 scenes: the smoke test's setting")
    args = p.parse_args()
    if args.quick:
        args.scenes = 20
    torch.manual_seed(0)
    tok = load_tokenizer(args.tokenizer_dir)
    size = tok.cfg.encoder.image_size
    world = ShapesWorld(ShapesWorldConfig(resolution=size), "train")
    codes: list[torch.Tensor] = []
    for start in range(0, args.scenes, 250):
        idx = range(start, min(start + 250, args.scenes))
        codes += tok.encode(torch.stack([to_tensor(world.image(i), size) for i in idx]))
    probe = code_probe(codes, [world.scene(i) for i in range(args.scenes)], tok.codebook_size, args.train_share)
    print(
        json.dumps(
            {
                "benchmark": "code_content_probe",
                "tokenizer": args.tokenizer_dir,
                "scenes": args.scenes,
                "codes_per_image": sum(c.numel() for c in codes) / len(codes),
                "colour_set_accuracy": round(probe["probe_colour_set_acc"], 3),
                "colour_kind_set_accuracy": round(probe["probe_colour_kind_set_acc"], 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
