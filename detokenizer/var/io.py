"""Save / load the multi-scale VQ-VAE as a model directory (config.yaml + vqvae.safetensors);
:func:`load_vqvae` also takes a VAR decoder's directory (the VQ-VAE inside it)."""

from __future__ import annotations

from pathlib import Path

from detokenizer.var.config import VQVAEConfig
from detokenizer.var.decoder import load_var_decoder
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.checkpoint import load_model_dir, save_model_dir


def save_vqvae(model: MultiScaleVQVAE, directory: str | Path) -> Path:
    return save_model_dir(directory, model.cfg, {"vqvae": model})


def load_vqvae(directory: str | Path, device: str = "cpu") -> MultiScaleVQVAE:
    """A ``lavit train var-vqvae`` model directory, or a VAR decoder's (a ``lavit train var``
    model/ or a pipeline's var/), whose frozen VQ-VAE is returned."""
    if (Path(directory) / "var.safetensors").is_file():
        return load_var_decoder(directory, device).vqvae
    _, modules = load_model_dir(directory, VQVAEConfig, lambda c: {"vqvae": MultiScaleVQVAE(c)})
    return modules["vqvae"].to(device).eval()
