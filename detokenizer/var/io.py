"""Save / load the multi-scale VQ-VAE as a model directory (config.yaml + vqvae.safetensors)."""

from __future__ import annotations

from pathlib import Path

from detokenizer.var.config import VQVAEConfig
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.checkpoint import load_model_dir, save_model_dir


def save_vqvae(model: MultiScaleVQVAE, directory: str | Path) -> Path:
    return save_model_dir(directory, model.cfg, {"vqvae": model})


def load_vqvae(directory: str | Path, device: str = "cpu") -> MultiScaleVQVAE:
    _, modules = load_model_dir(directory, VQVAEConfig, lambda c: {"vqvae": MultiScaleVQVAE(c)})
    return modules["vqvae"].to(device).eval()
