"""``lavit convert var``: VAR's published VQ-VAE, alone or with one of its class-conditional
transformers, into a lavit model folder.

    lavit convert var --vqvae vae_ch160v4096z32.pth OUT                      # MultiScaleVQVAE folder
    lavit convert var --vqvae vae_ch160v4096z32.pth --transformer var_d16.pth OUT
    lavit generate-class --model OUT --class 207 88 --out samples/         # (the second form)

With a transformer the folder is a :class:`~detokenizer.var.decoder.VARDecoder` (``config.yaml``
holding both configs, ``var.safetensors``) whose transformer is conditioned on ImageNet classes;
``convert.json`` records every source file's SHA-256. The folder is written whole or not at all.
"""

from __future__ import annotations

from pathlib import Path

from detokenizer.var.config import VARDecoderConfig
from detokenizer.var.decoder import VARDecoder, save_var_decoder
from detokenizer.var.io import save_vqvae
from lavit.convert.common import write_converted
from lavit.convert.var_transformer import load_var_transformer
from lavit.convert.var_vqvae import load_var_vqvae

REFERENCE = "FoundationVision/VAR models/vqvae.py VQVAE, models/var.py VAR"


def convert_var(vqvae: str | Path, out_dir: str | Path, transformer: str | Path | None = None) -> Path:
    """Convert VAR's VQ-VAE (and optionally a ``var_d*`` transformer over it) into ``out_dir``.

    Args:
        vqvae: ``vae_ch160v4096z32.pth`` (read as tensors only, never unpickling code).
        out_dir: the model folder to write; an existing folder that is not a model folder is refused.
        transformer: ``var_d16.pth`` ... ``var_d30.pth``; its size is read from its shapes.

    Returns:
        ``out_dir``.

    Raises:
        CheckpointError: one line naming the file and the first missing, unexpected or
            mis-shaped tensor (a checkpoint of another model or size), or a file that is not
            a plain tensor checkpoint.
    """
    vq = load_var_vqvae(vqvae)
    sources = [vqvae]
    if transformer is None:
        save = lambda folder: save_vqvae(vq, folder)  # noqa: E731
    else:
        tr = load_var_transformer(transformer, vq.cfg)
        model = VARDecoder(VARDecoderConfig(vqvae=vq.cfg, transformer=tr.cfg))
        model.vqvae.load_state_dict(vq.state_dict(), strict=True)
        model.transformer.load_state_dict(tr.state_dict(), strict=True)
        save = lambda folder: save_var_decoder(model, folder)  # noqa: E731
        sources.append(transformer)
    return write_converted(out_dir, save, sources, converter="lavit.convert.var", reference=REFERENCE)
