"""Next-scale VAR decoder: multi-scale residual VQ-VAE (+ the next-scale transformer).

from detokenizer.var import MultiScaleVQVAE, VQVAEConfig
"""

from detokenizer.var.config import VQVAEConfig
from detokenizer.var.quantizer import MultiScaleQuantizer
from detokenizer.var.vqvae import MultiScaleVQVAE

__all__ = ["MultiScaleQuantizer", "MultiScaleVQVAE", "VQVAEConfig"]
