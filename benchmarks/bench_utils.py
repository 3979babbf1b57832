"""Shared helpers of the benchmark scripts: common arguments, device naming, synchronised timing
and the JSON report."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

# The model that ships in the repository (lavit.demo.DEFAULT_MODEL, from any working directory):
# the default of the benchmarks that read trained parts. A path, so that they need not import
# the pipeline.
SHIPPED_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "lavit-shapes-tiny"


def device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or "cpu"


def best_time(fn: Callable[[], object], device: str, repeats: int, warmup: int = 1) -> float:
    """Fastest of ``repeats`` calls of ``fn`` in seconds, after ``warmup`` calls; CUDA work is
    synchronised so the figure is wall-clock for the whole call."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device, --dtype and --repeats, the same for every model benchmark."""
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)


def print_report(benchmark: str, device: str, results: list[dict], **settings: object) -> None:
    """Print the benchmark's JSON: what ran where, the settings, then one record per case."""
    report = {
        "benchmark": benchmark,
        "device": device_name(device),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **settings,
        "results": results,
    }
    print(json.dumps(report, indent=2))
