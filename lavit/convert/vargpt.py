"""``lavit convert vargpt``: VARGPT's published model (VARGPT-family/VARGPT_LLaVA-v1) -> a lavit
VARGPT folder (lavit/vargpt/io.py).

Read from the folder: ``config.json`` (``model_type: vargpt_llava``: the text and vision configs,
``image_token_index``, ``vision_feature_layer``, ``special_tokens``; as JSON, never as code), the
weights (``*.safetensors``, or ``*.bin`` as tensors only) and the tokenizer. The key map:

    vision_tower.[vision_model.]<name>   -> vision.<name>        (a CLIPVisionModel on both sides;
                                                                 transformers 4.x's under vision_model.)
    multi_modal_projector.linear_{1,2}   -> projector.fc{1,2}
    language_model.<name>                -> llm.<name>           (a LlamaForCausalLM on both sides)
    vae_local.<name>                     -> vqvae.<ours>         (VAR's VQ-VAE: lavit.convert.var_vqvae)
    vargpt_gen.<name>                    -> head.<ours>          (VAR's transformer: lavit.convert.var_transformer)
    image_gen_projector.mlp.{0,2}        -> gen_in.fc{1,2}
    image_gen_projector_out.mlp.{0,2}    -> gen_out.fc{1,2}

Dropped: each projector's ``ln_q`` (a LayerNorm VARGPT's forward never applies) and the VAR
head's mask buffers. VARGPT builds its VQ-VAE and head from constants in its code, not from
config.json: the VQ-VAE is VAR's ``vae_ch160v4096z32`` (``configs/var/vqvae_ch160v4096z32.yaml``)
and the head's size is read off its tensors (d30 published).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, CLIPVisionConfig, PretrainedConfig

from detokenizer.var.config import VQVAEConfig
from detokenizer.var.transformer import NextScaleTransformer
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.checkpoint import CheckpointError
from lavit.config import LMConfig
from lavit.convert import var_transformer, var_vqvae
from lavit.convert.common import (
    apply_key_map,
    read_config_json,
    read_state_dict,
    rebuild_meta_buffers,
    rename,
    write_converted,
)
from lavit.model import hf_architecture
from lavit.vargpt.config import VARGPTConfig
from lavit.vargpt.io import save_vargpt
from lavit.vargpt.model import VARGPT

REFERENCE = "VARGPT-family/VARGPT modeling_vargpt_llava.py VARGPTLlavaForConditionalGeneration"
PROJECTORS = {"image_gen_projector": "gen_in", "image_gen_projector_out": "gen_out"}
# transformers 4.x's CLIPVisionModel kept its tensors under "vision_model."; 5.x has none.
CLIP_4X = "vision_model."
UNUSED = tuple(f"{p}.ln_q.{leaf}" for p in PROJECTORS for leaf in ("weight", "bias"))


def read_config(src: Path) -> dict:
    """``config.json`` as JSON, checked to be VARGPT's.

    Raises:
        CheckpointError: missing, not JSON, or not a ``vargpt_llava`` config with its special tokens.
    """
    path = src / "config.json"
    fields = read_config_json(path, "the VARGPT_LLaVA-v1 folder (VARGPT-family/VARGPT_LLaVA-v1)")
    if fields.get("model_type") != "vargpt_llava":
        raise CheckpointError(f"{path}: model_type {fields.get('model_type')!r}, not VARGPT's 'vargpt_llava'")
    for key in ("text_config", "vision_config", "special_tokens"):
        if not isinstance(fields.get(key), dict):
            raise CheckpointError(f"{path} has no '{key}' object: it is not VARGPT's config")
    return fields


def sub_config(fields: dict, key: str, default_type: str) -> PretrainedConfig:
    sub = dict(fields[key])
    kind = sub.pop("model_type", default_type)
    sub.pop("auto_map", None)  # never read: lavit builds transformers' own classes
    return AutoConfig.for_model(kind, **sub)


def vargpt_config(fields: dict, text: PretrainedConfig, state: Mapping[str, torch.Tensor], vq: VQVAEConfig, where: str):
    """Our config: the LLM's architecture from ``text``, the head's read off its tensors."""
    head = {k.removeprefix("vargpt_gen."): v for k, v in state.items() if k.startswith("vargpt_gen.")}
    var = var_transformer.var_config_for(head, f"{where} (vargpt_gen.*)")
    special = fields["special_tokens"]
    arch = hf_architecture(text)
    if arch.get("num_kv_heads") == arch.get("num_heads"):
        arch["num_kv_heads"] = None
    return VARGPTConfig(
        lm=dataclasses.replace(LMConfig(), **arch, text_vocab_size=text.vocab_size),
        var=var,
        vqvae=vq,
        vision="clip",
        vision_dim=fields["vision_config"]["hidden_size"],
        vision_feature_layer=fields.get("vision_feature_layer", -2),
        image_token_id=fields.get("image_token_index", 32000),
        gen_start_id=special["image_gen_start_token_id"],
        gen_end_id=special["image_gen_end_token_id"],
        gen_pad_id=special["image_gen_pad_token_id"],
    )


def convert_state(state: Mapping[str, torch.Tensor], model: VARGPT, where: str) -> dict[str, torch.Tensor]:
    """VARGPT's state dict -> ours for ``model`` (built on the meta device: names and shapes)."""
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        prefix = key.split(".", 1)[0]
        parts.setdefault(prefix, {})[key.split(".", 1)[1] if "." in key else key] = value
    expected = {"vision_tower", "multi_modal_projector", "language_model", "vae_local", "vargpt_gen", *PROJECTORS}
    extra = sorted(set(parts) - expected)
    if extra:
        raise CheckpointError(f"{where} holds tensors under '{extra[0]}.', which VARGPT has not: it is another model")
    missing = sorted(expected - set(parts))
    if missing:
        raise CheckpointError(f"{where} has no tensors under '{missing[0]}.': it is not VARGPT_LLaVA-v1")
    tower = parts["vision_tower"]
    if all(k.startswith(CLIP_4X) for k in tower):  # transformers 4.x's CLIPVisionModel (VARGPT's file)
        parts["vision_tower"] = {k.removeprefix(CLIP_4X): v for k, v in tower.items()}

    def renamed(prefix: str, ours_prefix: str) -> dict:
        """Our ``ours_prefix.*`` tensors under their published names ``prefix.*``."""
        cut = len(ours_prefix) + 1
        return {f"{prefix}.{k[cut:]}": rename(k, s) for k, s in ours.items() if k.startswith(f"{ours_prefix}.")}

    def whole(prefix: str) -> dict[str, torch.Tensor]:  # a part under its published names
        return {f"{prefix}.{k}": v for k, v in parts[prefix].items()}

    out = {}
    out |= apply_key_map(whole("vision_tower"), renamed("vision_tower", "vision"), where, model="VARGPT's CLIP tower")
    out |= apply_key_map(whole("language_model"), renamed("language_model", "llm"), where, model="VARGPT's LLM")
    proj = {
        f"multi_modal_projector.linear_{i}.{leaf}": rename(f"projector.fc{i}.{leaf}", ours[f"projector.fc{i}.{leaf}"])
        for i in (1, 2)
        for leaf in ("weight", "bias")
    }
    out |= apply_key_map(whole("multi_modal_projector"), proj, where, model="VARGPT's projector")
    for theirs, mine in PROJECTORS.items():
        keys = {
            f"{theirs}.mlp.{a}.{leaf}": rename(f"{mine}.fc{b}.{leaf}", ours[f"{mine}.fc{b}.{leaf}"])
            for a, b in ((0, 1), (2, 2))
            for leaf in ("weight", "bias")
        }
        out |= apply_key_map(whole(theirs), keys, where, ignore=UNUSED, model=f"VARGPT's {theirs}")
    vq = var_vqvae.convert_state_dict(parts["vae_local"], model.cfg.vqvae, f"{where} (vae_local.*)")
    out |= {f"vqvae.{k}": v for k, v in vq.items()}
    head = var_transformer.var_transformer_state_dict(
        parts["vargpt_gen"], model.cfg.var, model.cfg.vqvae, f"{where} (vargpt_gen.*)"
    )
    out |= {f"head.{k}": v for k, v in head.items()}
    return out


def load_vargpt_published(src: str | Path, vqvae: VQVAEConfig | None = None) -> VARGPT:
    """VARGPT's folder as our model, loaded strictly, in the weights' own dtype (no float32 copy
    of the LLM is made), eval mode. ``vqvae``: its VQ-VAE's architecture (default: VAR's
    ``vae_ch160v4096z32``, the one VARGPT builds)."""
    src = Path(src)
    fields = read_config(src)
    files = weight_files(src)
    where = str(files[0]) if len(files) == 1 else f"{src} ({len(files)} shards)"
    state = {}
    for path in files:
        state |= read_state_dict(path)
    text, vision = sub_config(fields, "text_config", "llama"), sub_config(fields, "vision_config", "clip_vision_model")
    if not isinstance(vision, CLIPVisionConfig):
        raise CheckpointError(f"{src / 'config.json'}: vision_config is {type(vision).__name__}, not a CLIP tower")
    cfg = vargpt_config(fields, text, state, var_vqvae.published_config() if vqvae is None else vqvae, where)
    with torch.device("meta"):
        model = VARGPT(cfg, hf_config=text, vision_config=vision)
    # Everything but the LLM is rebuilt on the CPU (its buffers are computed, not loaded).
    model.vision = type(model.vision)(vision)
    model.head = NextScaleTransformer(cfg.var, cfg.vqvae)
    model.vqvae = MultiScaleVQVAE(cfg.vqvae).requires_grad_(False)
    model.load_state_dict(convert_state(state, model, where), strict=True, assign=True)
    rebuild_meta_buffers(model)
    return model.eval()


def weight_files(src: Path) -> list[Path]:
    found = sorted(src.glob("*.safetensors")) or sorted(src.glob("pytorch_model*.bin"))
    if not found:
        raise CheckpointError(f"{src} holds no weights (*.safetensors or pytorch_model*.bin): give the VARGPT folder")
    return found


def convert_vargpt(src: str | Path, out_dir: str | Path, vqvae: VQVAEConfig | None = None) -> Path:
    """Convert VARGPT's folder into ``out_dir`` (written whole or not at all; ``convert.json``
    records every source file's SHA-256)."""
    from lavit.text_tokenizer import load_text_tokenizer

    src = Path(src)
    model = load_vargpt_published(src, vqvae)
    tok = None
    if any((src / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        tok = load_text_tokenizer(src)
    sources = [src / "config.json", *weight_files(src)]
    return write_converted(
        out_dir,
        lambda folder: save_vargpt(model, folder, tok),
        sources,
        converter="lavit.convert.vargpt",
        reference=REFERENCE,
    )
