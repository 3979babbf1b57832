"""Save / load the diffusion detokenizer as a model directory (config.yaml +
diffusion.safetensors; in latent space also vae_config.json, the frozen VAE's architecture,
whose weights ride in the safetensors file so the folder needs nothing else).

A pipeline's ``diffusion/`` stage is either that or LaVIT's converted pixel decoder
(detokenizer/diffusion/lavit_decoder.py): :func:`load_diffusion_stage`, :func:`save_diffusion_stage`
and :func:`decode_diffusion_stage` take either, told apart by the folder's schema."""

from __future__ import annotations

import json
import os
from pathlib import Path

from diffusers import AutoencoderKL

from detokenizer.diffusion.config import DiffusionConfig, LaVITPixelDecoderConfig
from detokenizer.diffusion.model import DiffusionDetokenizer
from lavit.checkpoint import RESTORE, CheckpointError, load_model_dir, read_json, read_meta, save_model_dir

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


# ------------------------------------------------------------------------------------------------
# A pipeline's diffusion stage: ours or LaVIT's pixel decoder
# ------------------------------------------------------------------------------------------------


def load_diffusion_stage(directory: str | Path, device: str = "cpu", root: str | Path | None = None):
    """The diffusion detokenizer in ``directory``, or LaVIT's pixel decoder if the folder holds one."""
    from detokenizer.diffusion.lavit_decoder import load_lavit_pixel_decoder

    if read_meta(directory, root)["schema"] == LaVITPixelDecoderConfig.__name__:
        return load_lavit_pixel_decoder(directory, device, root=root)
    return load_detokenizer(directory, device, root=root)


def save_diffusion_stage(model, directory: str | Path) -> Path:
    from detokenizer.diffusion.lavit_decoder import LaVITPixelDecoder, save_lavit_pixel_decoder

    if isinstance(model, LaVITPixelDecoder):
        return save_lavit_pixel_decoder(model, directory)
    return save_detokenizer(model, directory)


def decode_diffusion_stage(model, tokenizer, codes, sampling, *, size=None, generator=None):
    """Codes -> (B, 3, H, W) images in [0, 1] through either kind (the pipeline's decode)."""
    from detokenizer.diffusion.lavit_decoder import LaVITPixelDecoder
    from detokenizer.diffusion.sampling import decode_codes

    if isinstance(model, LaVITPixelDecoder):  # reads the codes themselves, not the tokenizer's
        return model.decode(codes, sampling, size=size, generator=generator)
    return decode_codes(model, tokenizer, codes, sampling, size=size, generator=generator)
