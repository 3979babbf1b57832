"""Save / load the diffusion detokenizer as a model directory (config.yaml +
diffusion.safetensors; in latent space also vae_config.json, the frozen VAE's architecture,
whose weights ride in the safetensors file so the folder needs nothing else)."""

from __future__ import annotations

import json
from pathlib import Path

from diffusers import AutoencoderKL

from detokenizer.diffusion.config import DiffusionConfig
from detokenizer.diffusion.model import DiffusionDetokenizer
from lavit.checkpoint import CheckpointError, load_model_dir, save_model_dir

VAE_CONFIG = "vae_config.json"


def save_detokenizer(model: DiffusionDetokenizer, directory: str | Path) -> Path:
    extra = {}
    if model.vae is not None:
        extra[VAE_CONFIG] = json.dumps(dict(model.vae.config), indent=2)
    return save_model_dir(directory, model.cfg, {"diffusion": model}, extra_files=extra)


def load_detokenizer(directory: str | Path, device: str = "cpu") -> DiffusionDetokenizer:
    """Rebuild from the saved config (the VAE from its saved architecture), load strictly."""
    directory = Path(directory)

    def build(cfg: DiffusionConfig) -> dict[str, DiffusionDetokenizer]:
        vae = None
        if cfg.space == "latent":
            path = directory / VAE_CONFIG
            if not path.is_file():
                raise CheckpointError(f"{directory} is a latent-space detokenizer without {VAE_CONFIG}; re-save it")
            vae = AutoencoderKL.from_config(json.loads(path.read_text()))
        return {"diffusion": DiffusionDetokenizer(cfg, vae=vae)}

    _, modules = load_model_dir(directory, DiffusionConfig, build)
    return modules["diffusion"].to(device).eval()
