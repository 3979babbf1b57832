"""Encode throughput of the dynamic visual tokenizer (images/s), printed as JSON.

(Not named tokenizer.py: a script of that name would shadow the `tokenizer` package.)

    python benchmarks/tokenizer_encode.py               # tiny and lavit-shaped, batch 8, CPU
    python benchmarks/tokenizer_encode.py --presets tiny --batch 32 --device cuda
    python benchmarks/tokenizer_encode.py --quick       # tiny, batch 1, one timed call (tests)

The lavit-shaped preset (EVA-CLIP g/14 encoder, 12-block merger) is randomly initialised:
throughput does not depend on the weights. Its ~1.8B fp32 parameters need ~7 GB of memory.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_utils import best_time, print_report

from lavit.config import TokenizerConfig, load_config
from tokenizer import DynamicVisualTokenizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "tokenizer"


def bench(preset: str, batch: int, device: str, warmup: int, iters: int) -> dict:
    # Random encoder and codebook (no k-means): speed does not depend on the weights, and an
    # untrained codebook cannot encode otherwise.
    cfg = load_config(
        CONFIGS / f"{preset}.yaml", TokenizerConfig, ["quantizer.kmeans_init=false", "encoder.weights=null"]
    )
    torch.manual_seed(0)
    tok = DynamicVisualTokenizer(cfg).to(device).eval()
    size = cfg.encoder.image_size
    images = torch.rand(batch, 3, size, size, device=device)
    best = best_time(lambda: tok.encode(images), device, iters, warmup)
    codes = tok.encode(images)
    return {
        "preset": preset,
        "image_size": size,
        "batch": batch,
        "params_total": sum(p.numel() for p in tok.parameters()),
        "seconds_per_batch_best": round(best, 4),
        "images_per_second": round(batch / best, 2),
        "mean_tokens": round(sum(c.numel() for c in codes) / batch, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "lavit"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny preset, batch 1, one call: the smoke test's setting")
    args = p.parse_args()
    if args.quick:
        args.presets, args.batch, args.warmup, args.iters = ["tiny"], 1, 0, 1
    results = []
    with torch.inference_mode():
        for preset in args.presets:
            iters = args.iters if preset != "lavit" or args.device != "cpu" else 1
            results.append(bench(preset, args.batch, args.device, args.warmup, iters))
    print_report("tokenizer_encode", args.device, results)


if __name__ == "__main__":
    main()
