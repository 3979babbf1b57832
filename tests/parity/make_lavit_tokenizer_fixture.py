"""Make the parity fixtures of LaVIT's visual tokenizer (tests/test_lavit_tokenizer_convert.py
reads them).

    python tests/parity/make_lavit_tokenizer_fixture.py --lavit-repo /path/to/LaVIT \\
        --out tests/parity/lavit_tokenizer.safetensors --keys-out tests/parity/lavit_tokenizer_keys.json

``--lavit-repo`` is a checkout of github.com/jy0205/LaVIT; its ``LaVIT/models`` code is imported
from there and none of it is copied here. Importing that package runs its ``__init__``, which
pulls in the whole LaVIT pipeline (diffusers, the LLM, a hub download helper): the script
registers ``models`` as a bare package of that folder instead, so only the two files the
tokenizer needs run. ``DynamicVisualTokenizer`` always builds the full EVA-CLIP ViT-g through
``build_eva_clip``; for the small model the script has that name return LaVIT's own
``_build_vision_tower`` at a small width (the published topology otherwise: MLP ratio 4.3637,
q/v biases, LayerNorm eps 1e-6, absolute positions, a final norm and a head).

The small model (width 32, 4 heads, 2 EVA blocks, 2 merger blocks, 64 x 8 codebook whose rows
have norms 0.5..1.5 so that L2 and cosine lookups differ, 56 px images of 16 patches) gets
random weights of order one (no zero biases, norms off identity). LaVIT's ``tokenize_image``
runs on 3 fixed images; hooks record what it drew and computed, and image 0's keep mask is set
to all ones before the merger runs (nothing dropped: the cross-attention's uniform mean). One
safetensors file holds:

    eva.<name>            eva_vitg_psz14.bin's tensors (the encoder, EVA names)
    tok.<name>            tokenizer_encoder.bin's tensors, less vit_proj (131k values the
                          tokenizer never uses; the test adds one to check it is ignored)
    input.images          (3, 3, 56, 56) float in [0, 1]; LaVIT reads them CLIP-normalised
    ref.encoder           (3, 16, 32) encoder features (last block, CLS dropped)
    ref.log_probs         (3, 16, 2) the token predictor's [keep, drop] log-probabilities
    ref.keep              (3, 16) the keep mask the merger and selection used (0/1 float)
    ref.merged            (K, 32) the merger's output rows of kept patches, images in order
    ref.codes             (K,) int64 codes (tokenize_image's ids less 32002)
    ref.lengths           (3,) int64 kept patches per image

and a JSON of the published size's (name, shape) lists per file, built on the meta device.
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

SEED = 0
IMAGE, PATCH, WIDTH, HEADS, DEPTH, CODES, CODE_DIM = 56, 14, 32, 4, 2, 64, 8
MEAN = (0.48145466, 0.4578275, 0.40821073)  # LaVITImageProcessor's CLIP normalisation
STD = (0.26862954, 0.26130258, 0.27577711)
EVA_PREFIX = "encoder."
LEFT_OUT = ("vit_proj.weight", "vit_proj.bias")


def import_reference(repo: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """LaVIT's modeling_visual_tokenzier and modeling_visual_encoder, without models/__init__."""
    models = repo / "LaVIT" / "models"
    if not (models / "modeling_visual_tokenzier.py").is_file():
        raise SystemExit(f"{repo} is not a LaVIT checkout: no LaVIT/models/modeling_visual_tokenzier.py")
    package = types.ModuleType("models")
    package.__path__ = [str(models)]
    sys.modules["models"] = package
    import models.modeling_visual_encoder as encoder
    import models.modeling_visual_tokenzier as tokenizer

    return tokenizer, encoder


def small_reference(vt: types.ModuleType, ve: types.ModuleType) -> nn.Module:
    """LaVIT's DynamicVisualTokenizer with a small EVA (built by LaVIT's _build_vision_tower)."""
    vision_cfg = {
        "image_size": IMAGE,
        "layers": 2,
        "width": WIDTH,
        "head_width": WIDTH // HEADS,
        "mlp_ratio": 4.3637,
        "patch_size": PATCH,
        "drop_path_rate": 0,
        "fusedLN": True,
    }
    full = vt.build_eva_clip
    vt.build_eva_clip = lambda model_path="", use_xformers=False: ve._build_vision_tower(16, vision_cfg)
    try:
        return vt.DynamicVisualTokenizer(
            img_size=IMAGE, patch_size=PATCH, width=WIDTH, layers=DEPTH, heads=HEADS, n_code=CODES, code_dim=CODE_DIM
        ).eval()
    finally:
        vt.build_eva_clip = full


@torch.no_grad()
def randomize(model: nn.Module, g: torch.Generator) -> None:
    """Weights of order one: matrices ~ N(0, 1/fan_in), vectors off their init (zero biases, unit
    norms, zero q/v biases would hide a swapped or missing tensor), codebook norms 0.5..1.5."""
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rsplit(".", 1)[0])
        if name == "quantize.embedding.weight":
            rows = torch.randn(p.shape, generator=g)
            p.copy_(rows / rows.norm(dim=1, keepdim=True) * (0.5 + torch.rand(p.shape[0], 1, generator=g)))
        elif isinstance(owner, nn.LayerNorm) and name.endswith("weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        elif p.ndim >= 2 and not name.endswith(("pos_embed", "cls_token")):
            p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
        else:  # biases, q/v biases, positions, CLS token
            p.copy_(0.2 * torch.randn(p.shape, generator=g))


def make_images(g: torch.Generator) -> torch.Tensor:
    """(3, 3, 56, 56) in [0, 1]: gradients, a square and noise, different per image."""
    y, x = torch.meshgrid(torch.linspace(0, 1, IMAGE), torch.linspace(0, 1, IMAGE), indexing="ij")
    out = []
    for i in range(3):
        img = torch.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * torch.sin((6 + 2 * i) * x * y)])
        a = 0.1 + 0.2 * i
        square = (x > a) & (x < a + 0.3) & (y > 0.2) & (y < 0.5)
        img[:, square] = torch.tensor([0.9, 0.1 + 0.3 * i, 0.2])[:, None]
        out.append((img + 0.05 * torch.randn(img.shape, generator=g)).clamp(0, 1))
    return torch.stack(out)


@torch.no_grad()
def run_reference(ref: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """LaVIT's tokenize_image on ``images`` with hooks recording its intermediate tensors."""
    seen: dict[str, torch.Tensor] = {}

    def before_merger(_module, args):
        feats, keep = args
        keep[0] = 1.0  # in place: tokenize_image selects with this same tensor afterwards
        seen["encoder"], seen["keep"] = feats.clone(), keep.clone()

    def after_merger(_module, _args, out):
        seen["merger_all"] = out.clone()

    def after_predictor(_module, _args, out):
        seen["log_probs"] = out.clone()

    hooks = [
        ref.causal_encoder.register_forward_pre_hook(before_merger),
        ref.causal_encoder.register_forward_hook(after_merger),
        ref.token_predictor.register_forward_hook(after_predictor),
    ]
    x = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.manual_seed(SEED)  # the Gumbel draw
    ids = ref.tokenize_image(x, used_for_llm=True)
    for h in hooks:
        h.remove()
    keep = seen["keep"].bool()
    return {
        "input.images": images,
        "ref.encoder": seen["encoder"],
        "ref.log_probs": seen["log_probs"],
        "ref.keep": seen["keep"],
        "ref.merged": seen["merger_all"][keep],
        "ref.codes": torch.cat(ids) - 32002,
        "ref.lengths": keep.sum(dim=1),
    }


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The tokenizer's state dict as the two published files: (eva_vitg_psz14.bin, tokenizer_encoder.bin)."""
    eva = {k.removeprefix(EVA_PREFIX): v for k, v in state.items() if k.startswith(EVA_PREFIX)}
    tok = {k: v for k, v in state.items() if not k.startswith(EVA_PREFIX)}
    return eva, tok


def published_keys(vt: types.ModuleType) -> dict:
    """(name, shape) lists of the published files and the parameter count, on the meta device."""
    # Parameters go to the meta device as they are registered; LaVIT's EVA reads a CPU
    # linspace with .item() while building, so torch.device("meta") as a whole cannot.
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, None if param is None else nn.Parameter(param.to("meta"), param.requires_grad))

    nn.Module.register_parameter = on_meta
    try:
        ref = vt.DynamicVisualTokenizer()
    finally:
        nn.Module.register_parameter = register
    eva, tok = split_state(ref.state_dict())
    return {
        "eva_vitg_psz14.bin": [[k, list(v.shape)] for k, v in eva.items()],
        "tokenizer_encoder.bin": [[k, list(v.shape)] for k, v in tok.items()],
        "parameters": sum(p.numel() for p in ref.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lavit-repo", type=Path, required=True, help="a checkout of github.com/jy0205/LaVIT")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "lavit_tokenizer.safetensors")
    parser.add_argument("--keys-out", type=Path, default=Path(__file__).parent / "lavit_tokenizer_keys.json")
    args = parser.parse_args()
    vt, ve = import_reference(args.lavit_repo)
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    ref = small_reference(vt, ve)
    randomize(ref, g)
    out = run_reference(ref, make_images(g))
    kept = out["ref.lengths"].tolist()
    assert kept[0] == IMAGE**2 // PATCH**2 and 0 < min(kept[1:]) and max(kept[1:]) < kept[0], kept
    eva, tok = split_state(ref.state_dict())
    tensors = {f"eva.{k}": v for k, v in eva.items()}
    tensors.update({f"tok.{k}": v for k, v in tok.items() if k not in LEFT_OUT})
    tensors.update(out)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out))
    args.keys_out.write_text(json.dumps(published_keys(vt), indent=None) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes; kept per image {kept}) and {args.keys_out}")


if __name__ == "__main__":
    main()
