"""VAR's multi-scale VQ-VAE (FoundationVision/VAR, ``vae_ch160v4096z32.pth``) -> our
:class:`~detokenizer.var.vqvae.MultiScaleVQVAE`.

    python -m lavit.convert.var_vqvae vae_ch160v4096z32.pth runs/var_vqvae_ch160

VAR's Encoder/Decoder are latent diffusion's, which diffusers' ``Encoder``/``Decoder`` hold under
other names (same convs and norms):

    {en,de}coder.{conv_in,conv_out}     -> same names
    {en,de}coder.norm_out               -> conv_norm_out
    {en,de}coder.mid.block_1 / block_2  -> mid_block.resnets.0 / resnets.1
    {en,de}coder.mid.attn_1             -> mid_block.attentions.0
    encoder.down.{i}.block.{j}          -> encoder.down_blocks.{i}.resnets.{j}
    encoder.down.{i}.attn.{j}           -> encoder.down_blocks.{i}.attentions.{j}
    encoder.down.{i}.downsample.conv    -> encoder.down_blocks.{i}.downsamplers.0.conv
    decoder.up.{i}.*                    -> decoder.up_blocks.{n-1-i}.* (VAR numbers the decoder's
                                           levels by resolution, diffusers in the order they run)
    decoder.up.{i}.upsample.conv        -> upsamplers.0.conv
    ...nin_shortcut                     -> ...conv_shortcut
    attention norm / qkv / proj_out     -> group_norm / to_q, to_k, to_v (the fused 1x1 conv's
                                           three C-row slices) / to_out.0 (1x1 conv -> linear)
    quantize.embedding                  -> quantizer.codebook
    quantize.quant_resi.qresi_ls.{k}    -> quantizer.phis.{k}
    quant_conv, post_quant_conv         -> same names

VAR's ``quantize.ema_vocab_hit_SV`` (code-use statistics of its training) is dropped; our
``quantizer.usage`` starts at ones. The architecture options VAR needs (attention at the lowest
level and in the middle, 3x3 quant convs, 32 norm groups, L2 code lookup, VAR's choice of phi
per scale) are the preset ``configs/var/vqvae_ch160v4096z32.yaml``. VAR's images are in
[-1, 1], ours in [0, 1]: the model maps them, the weights are the same.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from detokenizer.var.config import VQVAEConfig
from detokenizer.var.io import save_vqvae
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.config import load_config
from lavit.convert.common import Source, apply_key_map, read_state_dict, rename, write_converted

PRESET = Path(__file__).resolve().parents[2] / "configs" / "var" / "vqvae_ch160v4096z32.yaml"
IGNORED = ("quantize.ema_vocab_hit_SV",)  # VAR's (scales, codes) training statistics


def published_config() -> VQVAEConfig:
    """The config of VAR's published ``vae_ch160v4096z32``."""
    return load_config(PRESET, VQVAEConfig)


# ------------------------------------------------------------------------------------------------
# The key map
# ------------------------------------------------------------------------------------------------


def var_key_map(cfg: VQVAEConfig) -> dict[str, Source]:
    """VAR's tensor names for a model of ``cfg``, in VAR's order, each with its expected shape and
    the tensors of ours it becomes."""
    with torch.device("meta"):
        ours = MultiScaleVQVAE(cfg).state_dict()  # names and shapes only
    key_map: dict[str, Source] = {}

    def plain(var: str, our: str) -> None:  # a conv or a norm: weight and bias
        for leaf in ("weight", "bias"):
            key_map[f"{var}.{leaf}"] = rename(f"{our}.{leaf}", ours[f"{our}.{leaf}"].shape)

    def resnet(var: str, our: str) -> None:
        for sub in ("norm1", "conv1", "norm2", "conv2"):
            plain(f"{var}.{sub}", f"{our}.{sub}")
        if f"{our}.conv_shortcut.weight" in ours:  # the block changes the width
            plain(f"{var}.nin_shortcut", f"{our}.conv_shortcut")

    def attention(var: str, our: str) -> None:
        # VAR: GroupNorm, one 1x1 conv giving q, k, v as channel slices [0:C], [C:2C], [2C:3C],
        # single-head softmax(q k^T / sqrt(C)) v, 1x1 conv out; diffusers: the same with linears.
        plain(f"{var}.norm", f"{our}.group_norm")
        c = ours[f"{our}.to_q.weight"].shape[0]
        qkv = [f"{our}.to_{n}" for n in "qkv"]
        key_map[f"{var}.qkv.weight"] = Source(
            (3 * c, c, 1, 1),
            lambda t, qkv=qkv, c=c: {f"{n}.weight": w.clone() for n, w in zip(qkv, t.reshape(3, c, c), strict=True)},
        )
        key_map[f"{var}.qkv.bias"] = Source(
            (3 * c,),
            lambda t, qkv=qkv, c=c: {f"{n}.bias": b.clone() for n, b in zip(qkv, t.reshape(3, c), strict=True)},
        )
        key_map[f"{var}.proj_out.weight"] = Source(
            (c, c, 1, 1), lambda t, our=our, c=c: {f"{our}.to_out.0.weight": t.reshape(c, c)}
        )
        key_map[f"{var}.proj_out.bias"] = rename(f"{our}.to_out.0.bias", (c,))

    def middle(part: str) -> None:
        resnet(f"{part}.mid.block_1", f"{part}.mid_block.resnets.0")
        if cfg.mid_attention:
            attention(f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0")
        resnet(f"{part}.mid.block_2", f"{part}.mid_block.resnets.1")

    n = len(cfg.block_out_channels)
    lowest = n - 1  # VAR's index of the lowest-resolution level, in the encoder and the decoder

    plain("encoder.conv_in", "encoder.conv_in")
    for i in range(n):
        var, our = f"encoder.down.{i}", f"encoder.down_blocks.{i}"
        for j in range(cfg.layers_per_block):
            resnet(f"{var}.block.{j}", f"{our}.resnets.{j}")
            if cfg.lowest_level_attention and i == lowest:
                attention(f"{var}.attn.{j}", f"{our}.attentions.{j}")
        if i != lowest:
            plain(f"{var}.downsample.conv", f"{our}.downsamplers.0.conv")
    middle("encoder")
    plain("encoder.norm_out", "encoder.conv_norm_out")
    plain("encoder.conv_out", "encoder.conv_out")

    plain("decoder.conv_in", "decoder.conv_in")
    middle("decoder")
    for i in range(n):
        var, our = f"decoder.up.{i}", f"decoder.up_blocks.{lowest - i}"
        for j in range(cfg.layers_per_block + 1):
            resnet(f"{var}.block.{j}", f"{our}.resnets.{j}")
            if cfg.lowest_level_attention and i == lowest:
                attention(f"{var}.attn.{j}", f"{our}.attentions.{j}")
        if i != 0:
            plain(f"{var}.upsample.conv", f"{our}.upsamplers.0.conv")
    plain("decoder.norm_out", "decoder.conv_norm_out")
    plain("decoder.conv_out", "decoder.conv_out")

    for k in range(cfg.num_phi):
        plain(f"quantize.quant_resi.qresi_ls.{k}", f"quantizer.phis.{k}")
    key_map["quantize.embedding.weight"] = rename("quantizer.codebook.weight", ours["quantizer.codebook.weight"].shape)
    plain("quant_conv", "quant_conv")
    plain("post_quant_conv", "post_quant_conv")
    return key_map


def convert_state_dict(
    state: Mapping[str, torch.Tensor], cfg: VQVAEConfig, path: str | Path
) -> dict[str, torch.Tensor]:
    """VAR's VQ-VAE state dict -> ours for ``cfg`` (every one of our tensors, ready for a strict load).

    Raises:
        CheckpointError: naming ``path`` and the first missing, unexpected or mis-shaped tensor.
    """
    converted = apply_key_map(state, var_key_map(cfg), path, ignore=IGNORED, model="VAR's VQ-VAE")
    converted["quantizer.usage"] = torch.ones(cfg.codebook_size)  # no use statistics: every code alive
    return converted


def load_var_vqvae(path: str | Path, cfg: VQVAEConfig | None = None) -> MultiScaleVQVAE:
    """VAR's VQ-VAE checkpoint (``.pth`` read as tensors only, or ``.safetensors``) as our model,
    loaded strictly, in eval mode.

    Args:
        path: the checkpoint, e.g. ``vae_ch160v4096z32.pth``.
        cfg: its architecture (default: the published one, :func:`published_config`).
    """
    cfg = published_config() if cfg is None else cfg
    state = convert_state_dict(read_state_dict(path), cfg, path)
    model = MultiScaleVQVAE(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_var_vqvae(src_path: str | Path, out_dir: str | Path, cfg: VQVAEConfig | None = None) -> Path:
    """Convert VAR's VQ-VAE checkpoint into our model folder (config.yaml, vqvae.safetensors,
    convert.json with the source's SHA-256), which :func:`~detokenizer.var.io.load_vqvae` reads.

    Args:
        src_path: the checkpoint, e.g. ``vae_ch160v4096z32.pth``.
        out_dir: the model folder to write (written whole or not at all).
        cfg: its architecture (default: the published one).

    Returns:
        ``out_dir``.
    """
    model = load_var_vqvae(src_path, cfg)
    return write_converted(
        out_dir,
        lambda folder: save_vqvae(model, folder),
        [src_path],
        converter="lavit.convert.var_vqvae",
        reference="FoundationVision/VAR models/vqvae.py VQVAE",
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert VAR's multi-scale VQ-VAE checkpoint into a lavit model folder"
    )
    parser.add_argument("src", help="VAR's checkpoint, e.g. vae_ch160v4096z32.pth")
    parser.add_argument("out_dir", help="the model folder to write")
    parser.add_argument("--config", default=str(PRESET), help="VQVAEConfig YAML of its architecture")
    args = parser.parse_args(argv)
    out = convert_var_vqvae(args.src, args.out_dir, load_config(args.config, VQVAEConfig))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
