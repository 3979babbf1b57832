"""Image-token generation speed: our batched-CFG loop vs LaVIT's method, printed as JSON.

LaVIT's method is Hugging Face ``generate(guidance_scale=g)``, whose unbatched CFG logits
processor runs the unconditional context as a second, sequential forward with its own cache at
every step. Ours puts [cond; uncond] in one batch: one forward per step. Same model, same
prompt, 64 image tokens, g = 4, top-k 50, random weights (speed does not depend on them).

``ours`` is the default loop (``kv_cache: auto``: on a GPU a static cache whose decode step is a
replayed CUDA graph, captured by the untimed warm-up call; ``first_call_seconds`` includes the
capture); ``ours_dynamic`` the same loop over HF's growing cache, one eager forward per step.

    python benchmarks/generation.py                 # tiny and ~100M configs, batch 1 and 4
    python benchmarks/generation.py --device cuda --dtype bfloat16 --configs lavit-7b
    python benchmarks/generation.py --quick         # tiny, batch 1, 2 image tokens (tests)
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
from bench_utils import add_device_args, best_time, print_report
from transformers import LogitsProcessorList

from lavit.config import ImageSamplingConfig, LMConfig, load_config
from lavit.generate import generate_image_tokens
from lavit.model import UnifiedLM
from lavit.sequence import SequenceBuilder, left_pad
from lavit.text_tokenizer import train_bpe

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "lm"
CONFIGS = ("tiny", "100m", "lavit-7b")  # configs/lm/<name>.yaml
PROMPT = "a large red circle to the left of a small blue square and a green triangle in the top left corner."


def bench(name: str, batch: int, tokens: int, guidance: float, device: str, dtype: torch.dtype, repeats: int):
    torch.manual_seed(0)
    cfg = load_config(PRESETS / f"{name}.yaml", LMConfig)
    with torch.device(device):  # built where it runs: a 7B model never materialises on the CPU
        lm = UnifiedLM(cfg).to(dtype=dtype).eval()
    tok = train_bpe([PROMPT] * 4, 300)
    builder = SequenceBuilder(tok, lm.layout, cfg.max_position_embeddings)
    sampling = ImageSamplingConfig(guidance_scale=guidance, top_k=50, min_tokens=tokens, max_tokens=tokens)
    dynamic = dataclasses.replace(sampling, kv_cache="dynamic")

    def ours():
        generate_image_tokens(lm, builder, [PROMPT] * batch, sampling, generator=None)

    def ours_dynamic():
        generate_image_tokens(lm, builder, [PROMPT] * batch, dynamic, generator=None)

    cond_ids, cond_mask = left_pad([builder.generation_prompt(PROMPT)] * batch, tok.pad_token_id)
    uncond_ids, _ = left_pad([builder.generation_prompt(None)] * batch, tok.pad_token_id)
    cond_ids, cond_mask, uncond_ids = cond_ids.to(device), cond_mask.to(device), uncond_ids.to(device)

    def lavit_method():
        with torch.no_grad():
            lm.hf.generate(
                input_ids=cond_ids,
                attention_mask=cond_mask,
                guidance_scale=guidance,
                negative_prompt_ids=uncond_ids,
                do_sample=True,
                top_k=50,
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                pad_token_id=tok.pad_token_id,
                logits_processor=LogitsProcessorList(),
            )

    t_first = best_time(ours, device, 1, warmup=0)
    t_ours, t_dyn = best_time(ours, device, repeats), best_time(ours_dynamic, device, repeats)
    t_hf = best_time(lavit_method, device, repeats)
    return {
        "config": name,
        "params": sum(p.numel() for p in lm.parameters()),
        "batch": batch,
        "image_tokens": tokens,
        "ours_seconds": round(t_ours, 4),
        "ours_dynamic_seconds": round(t_dyn, 4),
        "first_call_seconds": round(t_first, 4),
        "lavit_method_seconds": round(t_hf, 4),
        "ours_tokens_per_second": round(batch * tokens / t_ours, 1),
        "lavit_method_tokens_per_second": round(batch * tokens / t_hf, 1),
        "speedup": round(t_hf / t_ours, 2),
        "speedup_dynamic": round(t_hf / t_dyn, 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "100m"], choices=CONFIGS)
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--guidance", type=float, default=4.0)
    add_device_args(p)
    p.add_argument("--quick", action="store_true", help="tiny, batch 1, 2 tokens, 1 repeat: the smoke test's setting")
    args = p.parse_args()
    if args.quick:
        args.configs, args.batches, args.tokens, args.repeats = ["tiny"], [1], 2, 1
    dtype = getattr(torch, args.dtype)
    results = [
        bench(c, b, args.tokens, args.guidance, args.device, dtype, args.repeats)
        for c in args.configs
        for b in args.batches
    ]
    print_report("image_token_generation", args.device, results, dtype=args.dtype, guidance_scale=args.guidance)


if __name__ == "__main__":
    main()
