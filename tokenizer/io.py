"""Save / load a tokenizer as a model directory (config.yaml + tokenizer.safetensors)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lavit.checkpoint import load_model_dir, save_model_dir
from lavit.config import TokenizerConfig
from tokenizer.model import DynamicVisualTokenizer


def save_tokenizer(tok: DynamicVisualTokenizer, directory: str | Path) -> Path:
    """Write ``directory`` atomically. The encoder's (and read-out's) weights are inside the
    safetensors file, so the saved config no longer points at the original local weights files."""
    cfg = dataclasses.replace(tok.cfg, encoder=dataclasses.replace(tok.cfg.encoder, weights=None), readout_weights=None)
    return save_model_dir(directory, cfg, {"tokenizer": tok})


def load_tokenizer(directory: str | Path, device: str = "cpu") -> DynamicVisualTokenizer:
    """Rebuild from the saved config, load strictly, and return in eval mode."""
    _, modules = load_model_dir(directory, TokenizerConfig, lambda c: {"tokenizer": DynamicVisualTokenizer(c)})
    return modules["tokenizer"].to(device).eval()
