"""Make the parity fixture of VARGPT (tests/test_vargpt.py reads it).

    python tests/parity/make_vargpt_fixture.py --vargpt-repo /path/to/VARGPT \\
        --out tests/parity/vargpt.safetensors

``--vargpt-repo`` is a checkout of github.com/VARGPT-family/VARGPT. Its model code
(``VARGPTLlavaForConditionalGeneration``) is the copy in
``understand_eval/lmms_eval/models/visionllm/vargpt_llava/``. The script imports it from there and
copies none of it here. That copy imports its own package under three names
(``lmms_eval.models.visionllm.vargpt_llava``, ``lmms_eval.models.visionllm.vargpt`` and
``visionllm.vargpt``). The script registers all three as bare packages of that folder, so only the
model's files run.

The small model:
- a Llama of width 16 and 2 layers over 64 ids;
- a CLIP tower of width 16 and 2 layers, 28 px, 4 patches;
- the VAR head at depth 2 and width 32;
- VAR's VQ-VAE from tests/parity/var_vqvae.safetensors, its 10 scales ending at 10 x 10, so 385
  scale tokens.

``VARGPTLlavaForConditionalGeneration`` builds VAR's d30 head and the full VQ-VAE whatever its
config says (``build_vae_vargpt_v1``). While the model is built, the script has that name build
these instead, with VAR's own classes (``VQVAE``, ``VAR_VAE_v1``). It also sets the condition
dropout and the drop path to 0. Every tensor then gets random values of order one.

Two runs of VARGPT's own ``forward``:
- **understanding:** eval mode, 2 rows with 4 ``<image>`` tokens each and their CLIP images; the
  LLM's logits.
- **generation:** teacher forcing, training mode, which is the only mode that takes
  ``pixel_gen_values``. The rows are the VQ-VAE fixture's image and its mirror image, after
  prompts of 2 and 4 tokens, ``<|image_gen_start|>``, 385 ``<|image_gen_pad|>`` and
  ``<|image_gen_end|>``, right-padded. The head's logits are recorded by wrapping its
  ``forward_decoder``.

One safetensors file:

    sd.<name>           the model's state dict in the published layout, less ``vae_local.*``
                        (the VQ-VAE fixture's ``sd.*``) and ``vargpt_gen.attn_bias_for_masking``
                        (a mask buffer, no weights: the test makes one)
    und.input_ids       (2, 7) and und.attention_mask; und.pixel_values (2, 3, 28, 28)
    und.logits          (2, 7, 64)
    gen.input_ids       (2, 392) and gen.attention_mask
    gen.codes           (2, 385) the scale tokens VARGPT's VQ-VAE read off the two images
    gen.scale_logits    (2, 385, 64)

with JSON metadata: the text, vision and VAR configs, and the special token ids. And, as JSON
(``--keys-out``), VARGPT_LLaVA-v1's published (name, shape) list and parameter count, from
VARGPT's own class at its published size (its parameters on the meta device).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

SEED = 0
PARITY = Path(__file__).parent
SCALES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)  # the VQ-VAE fixture's
IMAGE_TOKEN, GEN_START, GEN_END, GEN_PAD, PAD = 60, 61, 62, 63, 0
TEXT = {
    "model_type": "llama",
    "vocab_size": 64,
    "hidden_size": 16,
    "intermediate_size": 40,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": False,
}
VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 14,
    "projection_dim": 16,
}
VAR = {"depth": 2, "embed_dim": 32, "num_heads": 2}
VQVAE_ARGS = {"vocab_size": 64, "z_channels": 8, "ch": 4, "v_patch_nums": SCALES, "test_mode": True}
NORM_GROUPS = 2  # the VQ-VAE fixture's GroupNorms


CANONICAL = "lmms_eval.models.visionllm.vargpt_llava"
ALIASES = ("lmms_eval.models.visionllm.vargpt", "visionllm.vargpt")  # how its files also import it


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of ``ALIASES[i].x`` get the module ``CANONICAL.x`` itself (one copy of each file)."""

    def find_spec(self, name, path=None, target=None):
        for alias in ALIASES:
            if name == alias or name.startswith(alias + "."):
                return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        alias = next(a for a in ALIASES if spec.name == a or spec.name.startswith(a + "."))
        return importlib.import_module(CANONICAL + spec.name[len(alias) :])

    def exec_module(self, module):
        pass


def import_reference(repo: Path) -> types.ModuleType:
    """VARGPT's modeling module, imported from the checkout without running lmms_eval's package."""
    folder = repo / "understand_eval" / "lmms_eval" / "models" / "visionllm"
    if not (folder / "vargpt_llava" / "modeling_vargpt_llava.py").is_file():
        raise SystemExit(f"{repo} is not a VARGPT checkout: no {folder}/vargpt_llava/modeling_vargpt_llava.py")
    for name, path in {
        "lmms_eval": folder.parents[1],
        "lmms_eval.models": folder.parent,
        "lmms_eval.models.visionllm": folder,
        "visionllm": folder,
    }.items():
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        sys.modules[name] = module
    sys.meta_path.insert(0, _Alias())
    from lmms_eval.models.visionllm.vargpt_llava import modeling_vargpt_llava

    return modeling_vargpt_llava


def small_model(modeling) -> nn.Module:
    from lmms_eval.models.visionllm.vargpt_llava.configuration_vargpt_llava import VARGPTLlavaConfig
    from lmms_eval.models.visionllm.vargpt_llava.var_model.models import VQVAE, VAR_VAE_v1, basic_vae

    cfg = VARGPTLlavaConfig(
        vision_config=dict(VISION),
        text_config=dict(TEXT),
        image_token_index=IMAGE_TOKEN,
        projector_hidden_act="gelu",
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_seq_length=0,  # 0: <image> tokens come expanded, one per patch (no "legacy" merging)
        hidden_size=TEXT["hidden_size"],
        vocab_size=TEXT["vocab_size"],
        pad_token_id=PAD,
    )
    cfg.special_tokens = {
        "image_gen_start_token_id": GEN_START,
        "image_gen_end_token_id": GEN_END,
        "image_gen_pad_token_id": GEN_PAD,
    }

    def build(dtype, num_classes, depth):
        normalize = basic_vae.Normalize
        basic_vae.Normalize = lambda c: normalize(c, num_groups=NORM_GROUPS)
        try:
            vae = VQVAE(**VQVAE_ARGS, share_quant_resi=4)
        finally:
            basic_vae.Normalize = normalize
        head = VAR_VAE_v1(
            vae_local=vae, num_classes=num_classes, **VAR, mlp_ratio=4.0, drop_path_rate=0.0, norm_eps=1e-6,
            shared_aln=False, cond_drop_rate=0.0, attn_l2_norm=True, patch_nums=SCALES,
            flash_if_available=False, fused_if_available=False,
        )  # fmt: skip
        return vae, head

    # VARGPT was written for transformers 4.46, whose post_init calls tie_weights() without
    # arguments; this version passes one. Its embeddings are untied: there is nothing to tie.
    modeling.VARGPTLlavaForConditionalGeneration.tie_weights = lambda self, **_: None
    full = modeling.build_vae_vargpt_v1
    modeling.build_vae_vargpt_v1 = build
    try:
        torch.manual_seed(SEED)
        model = modeling.VARGPTLlavaForConditionalGeneration(cfg)
    finally:
        modeling.build_vae_vargpt_v1 = full
    return model


@torch.no_grad()
def randomize(model: nn.Module, g: torch.Generator) -> None:
    """Weights of order one; norms off identity; VAR's AdaLN gates and head scales non-zero."""
    for name, p in model.named_parameters():
        if name.startswith("vae_local."):
            continue
        if p.ndim >= 2 and "embed" not in name and "pos_" not in name:
            p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
        elif name.endswith(("norm.weight", "layernorm.weight", "layer_norm1.weight", "layer_norm2.weight")):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        else:
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


# VARGPT_LLaVA-v1 as prepare_vargpt_llava builds it: Vicuna-7B over llava-1.5-7b-hf's tokenizer
# (32,002 tokens: <image> 32000, <pad> 32001) plus its three image-generation tokens (32002-32004),
# embeddings padded to 32,064 rows; CLIP ViT-L/14 at 336 px; VAR's d30 head and vae_ch160v4096z32.
PUBLISHED_TEXT = {
    "model_type": "llama", "vocab_size": 32064, "hidden_size": 4096, "intermediate_size": 11008,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
}  # fmt: skip
PUBLISHED_VISION = {
    "model_type": "clip_vision_model", "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
    "num_attention_heads": 16, "image_size": 336, "patch_size": 14, "projection_dim": 768,
}  # fmt: skip
PUBLISHED_IDS = {"image": 32000, "gen_start": 32002, "gen_end": 32003, "gen_pad": 32004, "pad": 32001}


def published_keys(modeling) -> dict:
    """(name, shape) of VARGPT_LLaVA-v1's state dict and its parameter count, from VARGPT's class
    at the published size with its own d30 head and VQ-VAE, parameters on the meta device."""
    from lmms_eval.models.visionllm.vargpt_llava.configuration_vargpt_llava import VARGPTLlavaConfig

    cfg = VARGPTLlavaConfig(
        vision_config=dict(PUBLISHED_VISION), text_config=dict(PUBLISHED_TEXT), image_token_index=32000,
        hidden_size=4096, vocab_size=32064, pad_token_id=PUBLISHED_IDS["pad"],
    )  # fmt: skip
    cfg.special_tokens = {
        "image_gen_start_token_id": PUBLISHED_IDS["gen_start"],
        "image_gen_end_token_id": PUBLISHED_IDS["gen_end"],
        "image_gen_pad_token_id": PUBLISHED_IDS["gen_pad"],
    }
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, None if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

    nn.Module.register_parameter = on_meta
    try:
        model = modeling.VARGPTLlavaForConditionalGeneration(cfg)
    finally:
        nn.Module.register_parameter = register
    state = model.state_dict()
    return {
        "text_config": PUBLISHED_TEXT,
        "vision_config": PUBLISHED_VISION,
        "ids": PUBLISHED_IDS,
        "keys": [[k, list(v.shape)] for k, v in state.items()],
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def gen_batch(length: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [[5, 6], [7, 8, 9, 10]]
    seqs = [r + [GEN_START] + [GEN_PAD] * length + [GEN_END] for r in rows]
    width = max(len(s) for s in seqs)
    ids = torch.full((2, width), PAD)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vargpt-repo", type=Path, required=True, help="a checkout of github.com/VARGPT-family/VARGPT")
    parser.add_argument("--out", type=Path, default=PARITY / "vargpt.safetensors")
    parser.add_argument("--keys-out", type=Path, default=PARITY / "vargpt_keys.json")
    args = parser.parse_args()
    modeling = import_reference(args.vargpt_repo)
    modeling.VARGPTLlavaForConditionalGeneration.tie_weights = lambda self, **_: None  # see small_model
    args.keys_out.write_text(json.dumps(published_keys(modeling)) + "\n")
    model = small_model(modeling)
    vq = load_file(str(PARITY / "var_vqvae.safetensors"))
    model.vae_local.load_state_dict({k[3:]: v for k, v in vq.items() if k.startswith("sd.")}, strict=True)
    g = torch.Generator().manual_seed(SEED)
    randomize(model, g)

    # Understanding: 4 <image> tokens per row, the CLIP images, eval mode.
    model.eval()
    und_ids = torch.tensor([[1, 11, *[IMAGE_TOKEN] * 4, 12], [1, *[IMAGE_TOKEN] * 4, 13, 14]])
    und_mask = torch.ones_like(und_ids)
    pixels = torch.randn(2, 3, 28, 28, generator=g)
    with torch.no_grad():
        und = model(input_ids=und_ids, attention_mask=und_mask, pixel_values=pixels, return_dict=True)

    # Generation, teacher forcing: training mode (no dropout anywhere at these settings).
    model.train()
    image = vq["input.images"].float() / 255 * 2 - 1
    images = torch.cat([image, image.flip(-1)])
    length = sum(p * p for p in SCALES)
    gen_ids, gen_mask = gen_batch(length)
    seen = {}
    decoder = model.vargpt_gen.forward_decoder

    def record(*a, **kw):
        seen["logits"] = decoder(*a, **kw)
        return seen["logits"]

    model.vargpt_gen.forward_decoder = record
    labels = gen_ids.masked_fill(gen_mask == 0, -100)
    with torch.no_grad():
        model(input_ids=gen_ids, attention_mask=gen_mask, pixel_gen_values=images, labels=labels, return_dict=True)
        codes, _ = model.get_vae_gt_xin(images)

    # Left out: the VQ-VAE (the VQ-VAE fixture holds it) and the head's (1, 1, L, L) attention
    # mask buffer, which carries no weights (the converter checks only its shape).
    left_out = ("vae_local.", "vargpt_gen.attn_bias_for_masking")
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(left_out)}
    tensors = {f"sd.{k}": v for k, v in state.items()}
    tensors |= {
        "und.input_ids": und_ids,
        "und.attention_mask": und_mask,
        "und.pixel_values": pixels,
        "und.logits": und.logits,
        "gen.input_ids": gen_ids,
        "gen.attention_mask": gen_mask,
        "gen.codes": codes,
        "gen.scale_logits": seen["logits"],
    }
    meta = {
        "text_config": TEXT,
        "vision_config": VISION,
        "var": VAR,
        "scales": list(SCALES),
        "ids": {"image": IMAGE_TOKEN, "gen_start": GEN_START, "gen_end": GEN_END, "gen_pad": GEN_PAD, "pad": PAD},
    }
    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(args.out),
        metadata={k: json.dumps(v) for k, v in meta.items()},
    )
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
