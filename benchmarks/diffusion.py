"""Diffusion detokenizer sampling speed: seconds per image vs sampler steps, printed as JSON.

Batched classifier-free guidance (g = 3, one UNet forward of 2B per step), DDIM, random
weights (speed does not depend on them), code sequences of half the preset's max_codes (a tokenizer
keeping half its patches: 32 for tiny).

    python benchmarks/diffusion.py                          # tiny preset, steps 10/25/50, batch 1 and 8
    python benchmarks/diffusion.py --device cuda --dtype bfloat16 --configs tiny
    python benchmarks/diffusion.py --quick                  # debug preset, 1 step, batch 1 (tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_utils import add_device_args, best_time, print_report

from detokenizer.diffusion import DiffusionConfig, DiffusionDetokenizer, DiffusionSamplingConfig, denoise
from lavit.config import load_config

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "diffusion"
CONFIGS = ("debug", "tiny")  # configs/diffusion/<name>.yaml


def bench(name: str, batch: int, steps: int, device: str, dtype: torch.dtype, repeats: int):
    torch.manual_seed(0)
    cfg = load_config(PRESETS / f"{name}.yaml", DiffusionConfig)
    model = DiffusionDetokenizer(cfg).to(device=device, dtype=dtype).eval()
    codes = max(1, cfg.max_codes // 2)
    emb = torch.randn(batch, codes, cfg.code_dim, device=device, dtype=dtype)
    mask = torch.ones(batch, codes, dtype=torch.bool, device=device)
    sampling = DiffusionSamplingConfig(scheduler="ddim", steps=steps, guidance_scale=3.0)
    size = model.size_for("1:1")

    def run():
        with torch.no_grad():
            denoise(model, model.condition(emb, mask), sampling, size, torch.Generator(device).manual_seed(0))

    seconds = best_time(run, device, repeats)
    return {
        "config": name,
        "params": sum(p.numel() for p in model.parameters()),
        "resolution": list(size),
        "codes": codes,
        "batch": batch,
        "steps": steps,
        "seconds": round(seconds, 4),
        "seconds_per_image": round(seconds / batch, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny"], choices=CONFIGS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--steps", nargs="+", type=int, default=[10, 25, 50])
    add_device_args(p)
    p.add_argument("--quick", action="store_true", help="debug preset, 1 step, batch 1: the smoke test's setting")
    args = p.parse_args()
    if args.quick:
        args.configs, args.batches, args.steps, args.repeats = ["debug"], [1], [1], 1
    dtype = getattr(torch, args.dtype)
    results = [
        bench(c, b, s, args.device, dtype, args.repeats) for c in args.configs for b in args.batches for s in args.steps
    ]
    print_report(
        "diffusion_detokenizer_sampling", args.device, results, dtype=args.dtype, scheduler="ddim", guidance_scale=3.0
    )


if __name__ == "__main__":
    main()
