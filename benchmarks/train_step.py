"""Unified-LM training step speed and memory, fp32 vs bf16 autocast, printed as JSON.

One step = forward, the weighted next-token loss, backward, gradient clipping and AdamW, on
random sequences (half text, half image codes; speed does not depend on the values), as the
trainer runs it (``lavit/train/trainer.py``: bf16 autocast over fp32 weights).

    python benchmarks/train_step.py                                   # tiny, CPU
    python benchmarks/train_step.py --device cuda --configs tiny 100m --batch 16 --seq-len 512
    python benchmarks/train_step.py --quick                           # tiny, batch 1, 16 tokens (tests)
"""

from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

import torch
from bench_utils import best_time, print_report

from lavit.config import LMConfig, load_config
from lavit.model import UnifiedLM

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "lm"
CONFIGS = ("tiny", "100m", "lavit-7b")  # configs/lm/<name>.yaml


def bench(name: str, precision: str, batch: int, seq_len: int, device: str, repeats: int) -> dict:
    torch.manual_seed(0)
    cfg = load_config(PRESETS / f"{name}.yaml", LMConfig)
    seq_len = min(seq_len, cfg.max_position_embeddings)
    with torch.device(device):
        lm = UnifiedLM(cfg).train()
    opt = torch.optim.AdamW(lm.parameters(), lr=1e-4, fused=device.startswith("cuda"))
    layout = lm.layout
    half = seq_len // 2
    text = torch.randint(0, layout.text_size, (batch, half), device=device)
    codes = torch.randint(
        layout.code_start, layout.code_start + layout.num_codes, (batch, seq_len - half), device=device
    )
    ids = torch.cat([text, codes], dim=1)
    mask = torch.ones_like(ids)
    weights = torch.ones(ids.shape, device=device)
    amp = (lambda: torch.autocast(device.split(":")[0], dtype=torch.bfloat16)) if precision == "bf16" else nullcontext

    def step():
        with amp():
            loss = lm(ids, mask, weights).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds = best_time(step, device, repeats, warmup=2)
    record = {
        "config": name,
        "params": sum(p.numel() for p in lm.parameters()),
        "precision": precision,
        "batch": batch,
        "seq_len": seq_len,
        "step_seconds": round(seconds, 4),
        "tokens_per_second": round(batch * seq_len / seconds),
    }
    if device.startswith("cuda"):
        record["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return record


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny"], choices=CONFIGS)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny, batch 1, 16 tokens, 1 repeat: the smoke test's setting")
    args = p.parse_args()
    if args.quick:
        args.configs, args.batch, args.seq_len, args.repeats = ["tiny"], 1, 16, 1
    results = []
    for c in args.configs:
        for prec in args.precisions:
            results.append(bench(c, prec, args.batch, args.seq_len, args.device, args.repeats))
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print_report("lm_train_step", args.device, results)


if __name__ == "__main__":
    main()
