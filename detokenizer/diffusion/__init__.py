"""Diffusion detokenizer: codes -> conditioner -> diffusers UNet (pixel or VAE-latent space).

from detokenizer.diffusion import load_detokenizer, decode_codes
"""

from detokenizer.diffusion.config import DiffusionConfig, DiffusionRunConfig, DiffusionSamplingConfig
from detokenizer.diffusion.io import load_detokenizer, save_detokenizer
from detokenizer.diffusion.model import DiffusionDetokenizer
from detokenizer.diffusion.sampling import decode_codes, denoise

__all__ = [
    "DiffusionConfig",
    "DiffusionDetokenizer",
    "DiffusionRunConfig",
    "DiffusionSamplingConfig",
    "decode_codes",
    "denoise",
    "load_detokenizer",
    "save_detokenizer",
]
