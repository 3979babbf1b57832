"""Save / load the diffusion detokenizer as a model directory (config.yaml +
diffusion.safetensors; in latent space also vae_config.json, the frozen VAE's architecture,
whose weights ride in the safetensors file so the folder needs nothing else)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusers import AutoencoderKL

from detokenizer.diffusion.config import DiffusionConfig
from detokenizer.diffusion.model import DiffusionDetokenizer
from lavit.checkpoint import RESTORE, CheckpointError, load_model_dir, read_json, save_model_dir

VAE_CONFIG = "vae_config.json"


def save_detokenizer(model: DiffusionDetokenizer, directory: str | Path) -> Path:
    extra = {}
    if model.vae is not None:
        extra[VAE_CONFIG] = json.dumps(dict(model.vae.config), indent=2)
    return save_model_dir(directory, model.cfg, {"diffusion": model}, extra_files=extra)


def load_detokenizer(
    directory: str | Path, device: str = "cpu", root: str | Path | None = None
) -> DiffusionDetokenizer:
    """Rebuild from the saved config (the VAE from its saved architecture, vae_config.json),
    load strictly, and return in eval mode. ``vae_path`` in config.yaml is provenance only and
    never read: the VAE's weights are in diffusion.safetensors.

    Args:
        directory: a folder written by :func:`save_detokenizer`.
        device: where the model goes.
        root: the folder every file read must resolve inside (default: ``directory``).
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)

    def build(cfg: DiffusionConfig) -> dict[str, DiffusionDetokenizer]:
        vae = None
        if cfg.space == "latent":
            path = directory / VAE_CONFIG
            if not os.path.lexists(path):
                raise CheckpointError(f"{directory} is a latent-space detokenizer without {VAE_CONFIG}; re-save it")
            fields = read_json(path, root)
            if fields.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
                raise CheckpointError(f"{path}: _class_name {fields['_class_name']!r} is not AutoencoderKL; {RESTORE}")
            try:
                vae = AutoencoderKL.from_config(fields)
            except (ValueError, TypeError, KeyError, RuntimeError) as e:
                first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
                raise CheckpointError(f"{path} does not build an AutoencoderKL ({first[:200]}); {RESTORE}") from None
        return {"diffusion": DiffusionDetokenizer(cfg, vae=vae)}

    _, modules = load_model_dir(directory, DiffusionConfig, build, root=root)
    return modules["diffusion"].to(device).eval()
