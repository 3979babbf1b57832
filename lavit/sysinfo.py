"""What ``lavit info`` reports: versions, devices and optional backends."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import shutil
import subprocess
import sys

_PACKAGES = (
    "torch",
    "torchvision",
    "transformers",
    "diffusers",
    "timm",
    "einops",
    "vector-quantize-pytorch",
    "omegaconf",
    "safetensors",
    "tokenizers",
    "pillow",
    "numpy",
    "torchmetrics",
    "pycocoevalcap",
    "xformers",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def java_version() -> str | None:
    """The first line of ``java -version`` (pycocoevalcap's PTB tokenizer needs Java), or None."""
    java = shutil.which("java")
    if java is None:
        return None
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = (out.stderr or out.stdout).strip().splitlines()
    return lines[0] if lines else None


def collect_info() -> dict:
    """Versions of every package lavit uses, the compute devices, and optional backends."""
    import torch

    import lavit

    cuda = torch.cuda.is_available()
    return {
        "lavit": lavit.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "device": {
            "cuda_available": cuda,
            "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "bf16_supported": bool(cuda and torch.cuda.is_bf16_supported()),
            "cpu_threads": torch.get_num_threads(),
        },
        # xformers is an optional, CUDA-only attention backend; the default is PyTorch SDPA.
        "xformers_available": importlib.util.find_spec("xformers") is not None,
        "java": java_version(),
    }
