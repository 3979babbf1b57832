"""VAR decoder vs a next-token decoder of the same width and depth: seconds per image, as JSON.

Both decoders use the same transformer blocks (adaLN, cross-attention to a 32-code condition),
a KV cache and batched classifier-free guidance ([cond; null] in one batch), and produce the
same number of tokens (the VQ-VAE's sum of p_k^2: 507 for the tiny preset). VAR runs one
forward per *scale* (8 for tiny); the next-token decoder runs one forward per *token*. Random
weights (speed does not depend on them). Target (issue 6): VAR >= 5x faster.

    python benchmarks/var.py                                  # tiny, batch 1 and 8, CPU
    python benchmarks/var.py --device cuda --dtype bfloat16
    python benchmarks/var.py --quick                          # batch 1, a 32 px VQ-VAE: 4 scales, 85 tokens (tests)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from bench_utils import add_device_args, best_time, print_report

from detokenizer.var.config import VARConfig, VARSamplingConfig, VQVAEConfig
from detokenizer.var.quantizer import MultiScaleQuantizer
from detokenizer.var.transformer import NextScaleTransformer
from lavit.config import load_config
from lavit.generate import sample_logits

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "var"


@torch.no_grad()
def next_token_sample(
    model: NextScaleTransformer, quantizer: MultiScaleQuantizer, cond, mask, sampling
) -> torch.Tensor:
    """The baseline: the same blocks decode the same number of tokens one at a time (raster
    order over all scales), each token's input the codebook vector of the previous one."""
    b, g = cond.shape[0], sampling.guidance_scale
    null, null_mask = model.null_condition(b, cond.shape[1])
    cond2, mask2 = torch.cat([cond, null.to(cond.dtype)]), torch.cat([mask, null_mask])
    pooled = model.pooled(cond2, mask2)
    caches = [{} for _ in model.blocks]
    x = model.embed(pooled, None, 0, 1)
    total = model.spans[-1][1]
    out = []
    for t in range(total):
        for block, cache in zip(model.blocks, caches, strict=True):
            x = block(x, pooled, cond2, mask2, None, cache)
        logits = model.logits(x, pooled)[:, -1].float()
        logits = (1 + g) * logits[:b] - g * logits[b:]
        tok = sample_logits(logits, sampling.temperature, sampling.top_k, sampling.top_p, None)
        out.append(tok)
        if t + 1 < total:
            emb = model.word_embed(quantizer.codebook(tok))[:, None]
            x = torch.cat([emb, emb]) + model.pos[:, t + 1 : t + 2] + model.level(model.levels[t + 1 : t + 2])[None]
    return torch.stack(out, dim=1)


# --quick: the tiny VQ-VAE at 32 px (an 8x8 latent), so the baseline decodes 85 tokens, not 507.
QUICK_VQVAE = ["resolution=32", "scales=[1,2,4,8]"]


def bench(batch: int, device: str, dtype: torch.dtype, repeats: int, vq_overrides: list[str]) -> dict:
    torch.manual_seed(0)
    vq = load_config(CONFIGS / "vqvae_tiny.yaml", VQVAEConfig, vq_overrides)
    cfg = load_config(CONFIGS / "tiny.yaml", VARConfig)
    model = NextScaleTransformer(cfg, vq).to(device=device, dtype=dtype).eval()
    quantizer = MultiScaleQuantizer(vq.latent_channels, vq.codebook_size, vq.scales).to(device=device, dtype=dtype)
    cond = torch.randn(batch, 32, cfg.cond_dim, device=device, dtype=dtype)
    mask = torch.ones(batch, 32, dtype=torch.bool, device=device)
    sampling = VARSamplingConfig(guidance_scale=3.0, top_k=0, top_p=0.96)
    tokens = sum(p * p for p in vq.scales)
    var_s = best_time(lambda: model.sample(cond, mask, quantizer, sampling), device, repeats)
    ar_s = best_time(lambda: next_token_sample(model, quantizer, cond, mask, sampling), device, repeats)
    return {
        "batch": batch,
        "tokens_per_image": tokens,
        "scales": len(vq.scales),
        "var_seconds_per_image": round(var_s / batch, 5),
        "next_token_seconds_per_image": round(ar_s / batch, 5),
        "speedup": round(ar_s / var_s, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_device_args(p)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--quick", action="store_true", help="batch 1, 1 repeat, a 32 px VQ-VAE: the smoke test's setting")
    args = p.parse_args()
    vq_overrides = QUICK_VQVAE if args.quick else []
    if args.quick:
        args.batches, args.repeats = [1], 1
    dtype = getattr(torch, args.dtype)
    results = [bench(b, args.device, dtype, args.repeats, vq_overrides) for b in args.batches]
    preset = "tiny" + (f" with {' '.join(vq_overrides)}" if vq_overrides else "")
    print_report("var_vs_next_token", args.device, results, preset=preset, guidance_scale=3.0, dtype=args.dtype)


if __name__ == "__main__":
    main()
