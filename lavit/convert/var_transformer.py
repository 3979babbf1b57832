"""VAR's class-conditional transformers (FoundationVision/VAR, ``var_d16.pth`` ... ``var_d30.pth``)
-> our :class:`~detokenizer.var.transformer.NextScaleTransformer` with ``condition="class"``.

    model = load_var_transformer("var_d16.pth")   # over VAR's VQ-VAE's token maps

The architecture options VAR needs (l2-normalised attention with a learned temperature, q and v
bias only, GELU(tanh), LayerNorm eps 1e-6, class embedding with a null class, ``pos_start``) are
those of the presets ``configs/var/var_d{16,20,24,30}.yaml``; :func:`var_config_for` reads them
off a state dict's shapes. The key map:

    class_emb, pos_start, word_embed     -> same names
    pos_1LC, lvl_embed                   -> pos, level
    shared_ada_lin.1                     -> shared_ada.1            (AdaLN rows reordered)
    blocks.{i}.attn.mat_qkv              -> blocks.{i}.attn.qkv     (no bias in either)
    blocks.{i}.attn.{q_bias,v_bias,scale_mul_1H11} -> same names
    blocks.{i}.attn.proj                 -> blocks.{i}.attn.out
    blocks.{i}.ffn.fc1 / fc2             -> blocks.{i}.mlp.fc1 / fc2
    blocks.{i}.ada_lin.1                 -> blocks.{i}.ada.1        (AdaLN rows reordered)
    blocks.{i}.ada_gss                   -> blocks.{i}.ada_gss      (its 6 terms reordered)
    head_nm.ada_lin.1                    -> head_ada.1              ((scale, shift) -> (shift, scale))
    head                                 -> head

VAR's AdaLN projection gives its six terms as (gamma1, gamma2, scale1, scale2, shift1, shift2),
ours as (shift1, scale1, gate1, shift2, scale2, gate2) with gate = gamma: the rows move, the
model does not. VAR's buffers carry no weights: ``lvl_1L`` and ``attn_bias_for_masking`` (the
scale layout, checked by shape) and ``zero_k_bias`` (must be zero) are dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from detokenizer.var.config import VARConfig, VQVAEConfig
from detokenizer.var.transformer import NextScaleTransformer
from lavit.checkpoint import CheckpointError
from lavit.convert.common import Source, apply_key_map, read_state_dict, rename
from lavit.convert.var_vqvae import published_config

IGNORED = ("lvl_1L",)  # VAR's (1, L) integer buffer of each position's scale
# Row chunks of VAR's AdaLN projections, taken in our order.
BLOCK_ADA_ORDER = [4, 2, 0, 5, 3, 1]  # VAR (gamma1, gamma2, scale1, scale2, shift1, shift2)
HEAD_ADA_ORDER = [1, 0]  # VAR (scale, shift)
SOURCE = "VAR's transformer state dict"
# What every VAR transformer is: the options var_config_for sets beyond the sizes.
VAR_OPTIONS = {"condition": "class", "attn_l2_norm": True, "qkv_bias": "qv", "norm_eps": 1e-6, "gelu": "tanh"}


def reorder_chunks(t: torch.Tensor, order: list[int], dim: int = 0) -> torch.Tensor:
    """``t`` cut into ``len(order)`` equal chunks along ``dim``, put back in ``order``."""
    return torch.cat([t.chunk(len(order), dim=dim)[i] for i in order], dim=dim)


def var_config_for(ref: Mapping[str, torch.Tensor], source: str | Path = SOURCE) -> VARConfig:
    """The :class:`VARConfig` of a VAR transformer state dict, read off its shapes.

    Raises:
        CheckpointError: one line naming the tensor that shows ``ref`` is not a VAR transformer
            (e.g. a VQ-VAE's state dict) or is a variant our transformer does not express.
    """
    for key in ("class_emb.weight", "pos_1LC", "blocks.0.attn.mat_qkv.weight", "blocks.0.ffn.fc1.weight"):
        if key not in ref:
            first = next(iter(ref), None)
            raise CheckpointError(
                f"{source} has no tensor '{key}' (its first is {first!r}): it is not a VAR transformer "
                "(var_d16.pth ... var_d30.pth); a VQ-VAE converts with lavit.convert.var_vqvae"
            )
    if "blocks.0.attn.scale_mul_1H11" not in ref:
        raise CheckpointError(
            f"{source} has no tensor 'blocks.0.attn.scale_mul_1H11': a VAR without attn_l2_norm scales "
            "attention by 0.25/sqrt(head dim), which our transformer does not express"
        )
    width = ref["class_emb.weight"].shape[1]
    hidden = ref["blocks.0.ffn.fc1.weight"].shape[0]
    depth = 1 + max(int(m.group(1)) for k in ref if (m := re.match(r"blocks\.(\d+)\.", k)))
    if int(width * (hidden / width)) != hidden:
        raise CheckpointError(
            f"{source}: 'blocks.0.ffn.fc1.weight' has {hidden} rows, not a ratio of the width {width}"
        )
    return VARConfig(
        width=width,
        depth=depth,
        heads=ref["blocks.0.attn.scale_mul_1H11"].shape[1],
        mlp_ratio=hidden / width,
        num_classes=ref["class_emb.weight"].shape[0] - 1,
        shared_adaln="shared_ada_lin.1.weight" in ref,
        **VAR_OPTIONS,
    )


def var_key_map(cfg: VARConfig, vq: VQVAEConfig, source: str | Path = SOURCE) -> dict[str, Source]:
    """VAR's tensor names for a transformer of ``cfg`` over ``vq``'s token maps, in VAR's order,
    each with its expected shape and the tensors of ours it becomes.

    Raises:
        ValueError: ``cfg`` lacks one of VAR's options (it would load and compute something else).
    """
    for key, value in VAR_OPTIONS.items():
        if getattr(cfg, key) != value:
            raise ValueError(
                f"{key}={getattr(cfg, key)!r}: VAR's transformer needs {key}={value!r} "
                "(use var_config_for(state dict) or a configs/var/var_d*.yaml preset)"
            )
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in NextScaleTransformer(cfg, vq).state_dict().items()}
    length, w = ours["pos"][1], cfg.width

    def reordered(our: str, order: list[int], shape: tuple[int, ...], dim: int = 0) -> Source:
        return Source(shape, lambda t: {our: reorder_chunks(t, order, dim)})

    def zero(key: str) -> Source:
        def check(t: torch.Tensor) -> dict[str, torch.Tensor]:
            if t.device.type != "meta" and bool(t.any()):
                raise CheckpointError(f"{source}: '{key}' is not zero; VAR's k has no bias and neither has ours")
            return {}

        return Source((w,), check)

    key_map = {
        "pos_start": rename("pos_start", ours["pos_start"]),
        "pos_1LC": rename("pos", ours["pos"]),
        "attn_bias_for_masking": Source((1, 1, length, length), lambda t: {}),  # ours: the mask buffer
        "word_embed.weight": rename("word_embed.weight", ours["word_embed.weight"]),
        "word_embed.bias": rename("word_embed.bias", (w,)),
        "class_emb.weight": rename("class_emb.weight", ours["class_emb.weight"]),
        "lvl_embed.weight": rename("level.weight", ours["level.weight"]),
    }
    if cfg.shared_adaln:
        key_map["shared_ada_lin.1.weight"] = reordered("shared_ada.1.weight", BLOCK_ADA_ORDER, (6 * w, w))
        key_map["shared_ada_lin.1.bias"] = reordered("shared_ada.1.bias", BLOCK_ADA_ORDER, (6 * w,))
    for i in range(cfg.depth):
        var, our = f"blocks.{i}", f"blocks.{i}"
        key_map[f"{var}.attn.scale_mul_1H11"] = rename(f"{our}.attn.scale_mul_1H11", (1, cfg.heads, 1, 1))
        key_map[f"{var}.attn.q_bias"] = rename(f"{our}.attn.q_bias", (w,))
        key_map[f"{var}.attn.v_bias"] = rename(f"{our}.attn.v_bias", (w,))
        key_map[f"{var}.attn.zero_k_bias"] = zero(f"{var}.attn.zero_k_bias")
        key_map[f"{var}.attn.mat_qkv.weight"] = rename(f"{our}.attn.qkv.weight", (3 * w, w))
        for leaf in ("weight", "bias"):
            key_map[f"{var}.attn.proj.{leaf}"] = rename(f"{our}.attn.out.{leaf}", ours[f"{our}.attn.out.{leaf}"])
        for fc in ("fc1", "fc2"):
            for leaf in ("weight", "bias"):
                key_map[f"{var}.ffn.{fc}.{leaf}"] = rename(f"{our}.mlp.{fc}.{leaf}", ours[f"{our}.mlp.{fc}.{leaf}"])
        if cfg.shared_adaln:
            key_map[f"{var}.ada_gss"] = reordered(f"{our}.ada_gss", BLOCK_ADA_ORDER, (1, 1, 6, w), dim=2)
        else:
            key_map[f"{var}.ada_lin.1.weight"] = reordered(f"{our}.ada.1.weight", BLOCK_ADA_ORDER, (6 * w, w))
            key_map[f"{var}.ada_lin.1.bias"] = reordered(f"{our}.ada.1.bias", BLOCK_ADA_ORDER, (6 * w,))
    key_map["head_nm.ada_lin.1.weight"] = reordered("head_ada.1.weight", HEAD_ADA_ORDER, (2 * w, w))
    key_map["head_nm.ada_lin.1.bias"] = reordered("head_ada.1.bias", HEAD_ADA_ORDER, (2 * w,))
    key_map["head.weight"] = rename("head.weight", ours["head.weight"])
    key_map["head.bias"] = rename("head.bias", ours["head.bias"])
    return key_map


def var_transformer_state_dict(
    ref: Mapping[str, torch.Tensor], cfg: VARConfig, vq: VQVAEConfig, source: str | Path = SOURCE
) -> dict[str, torch.Tensor]:
    """VAR's transformer state dict -> ours for ``cfg`` over ``vq``'s token maps (every one of our
    tensors, ready for a strict load).

    Args:
        ref: VAR's tensors by their names (``var_d16.pth`` read as tensors only).
        cfg: our transformer's config, e.g. :func:`var_config_for` of ``ref``.
        vq: the VQ-VAE whose tokens it predicts (scales, codes, Cvae), VAR's own for the published
            ones (``configs/var/vqvae_ch160v4096z32.yaml``).
        source: what ``ref`` came from, named in every error.

    Raises:
        CheckpointError: one line naming the first missing, unexpected or mis-shaped tensor.
        ValueError: ``cfg`` lacks one of VAR's options.
    """
    return apply_key_map(ref, var_key_map(cfg, vq, source), source, ignore=IGNORED)


def load_var_transformer(path: str | Path, vq: VQVAEConfig | None = None) -> NextScaleTransformer:
    """A published VAR transformer (``.pth`` read as tensors only, or ``.safetensors``) as our
    class-conditional :class:`NextScaleTransformer`, loaded strictly, in eval mode.

    Args:
        path: the checkpoint, e.g. ``var_d16.pth``.
        vq: the VQ-VAE it predicts the tokens of (default: VAR's published one).
    """
    vq = published_config() if vq is None else vq
    ref = read_state_dict(path)
    cfg = var_config_for(ref, path)
    model = NextScaleTransformer(cfg, vq)
    model.load_state_dict(var_transformer_state_dict(ref, cfg, vq, path), strict=True)
    return model.eval()
