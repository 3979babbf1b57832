"""Shared helpers of the benchmark scripts: device naming and synchronised timing."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable

import torch


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
