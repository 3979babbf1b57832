"""Converters of published checkpoints into lavit model folders, one module per source model.

    lavit.convert.common           reading checkpoints as tensors only, key maps, atomic output folders
    lavit.convert.var_vqvae        VAR's multi-scale VQ-VAE (vae_ch160v4096z32.pth) -> MultiScaleVQVAE
    lavit.convert.var_transformer  VAR's next-scale transformer (var_d16 ... var_d30)
    lavit.convert.var              both into one folder (``lavit convert var``)
    lavit.convert.lavit_tokenizer  LaVIT-7B-v2's visual tokenizer (EVA ViT-g, selector, merger, codebook)
    lavit.convert.lavit_decoder    LaVIT-7B-v2's pixel decoder: its conditioner + SDXL-shaped UNet/VAE folders
    lavit.convert.lavit_lm         LaVIT-7B-v2's Llama, vit_proj and second merger, its tokenizer
    lavit.convert.lavit            all of LaVIT-7B-v2 into one pipeline folder (``lavit convert lavit``)

A converter is a key map plus the architecture options the original needs, proven by comparing
outputs with the original implementation on the same inputs (tests/parity/).
"""

from lavit.convert.common import apply_key_map, read_state_dict, sha256_file, write_converted

__all__ = ["apply_key_map", "read_state_dict", "sha256_file", "write_converted"]
