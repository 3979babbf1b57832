"""Make the parity fixtures of VAR's class-conditional transformer
(tests/test_var_transformer_convert.py reads them).

    python tests/parity/make_var_transformer_fixture.py --var-repo /path/to/VAR \\
        --out tests/parity/var_transformer.safetensors --keys-out tests/parity/var_transformer_keys.json

``--var-repo`` is a checkout of github.com/FoundationVision/VAR; its code is imported from there
and none of it is copied here. The script builds VAR's own ``VAR`` twice at a small size with
random weights (every parameter drawn afresh, so no zero-initialised gate or bias hides a
mistake; one attention temperature above VAR's cap of 100), over a small VAR ``VQVAE`` (64
codes of 8 dims, scales 1..4; only its sizes and codebook are used), runs teacher forcing on
fixed inputs and saves, in one safetensors file, for each variant ``<v>``:

    <v>.sd.<VAR name>   its state dict in the published key layout (weights rounded to float16
                        to keep the file small; the reference ran on exactly those values)
    <v>.labels          (B,) int64 class labels, one of them the null class
    <v>.inputs          (B, L - 1, Cvae) teacher-forcing input ``x_BLCv_wo_first_l``
    <v>.logits          (B, L, V) ``VAR.forward(labels, inputs)``, float32

with ``plain`` = depth 2, width 64, 4 heads (a per-block AdaLN projection, as var_d16..d30) and
``shared`` = depth 2, width 32, 2 heads with VAR's shared AdaLN (as var_d36). The published
sizes var_d16/d20/d24/d30 are built on the meta device (as ``build_vae_var`` does, over the
published VQ-VAE) and their (name, shape) lists and parameter counts saved as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn
from torch.overrides import TorchFunctionMode

SEED = 0
SCALES = (1, 2, 3, 4)
SMALL_VAE = {"vocab_size": 64, "z_channels": 8, "ch": 32, "v_patch_nums": SCALES, "test_mode": True}
SMALL = {  # VAR's keyword arguments shared by both small variants
    "num_classes": 10,
    "norm_eps": 1e-6,
    "attn_l2_norm": True,
    "cond_drop_rate": 0.0,  # VAR's forward drops labels at random otherwise
    "drop_path_rate": 0.0,
    "patch_nums": SCALES,
    "flash_if_available": False,
    "fused_if_available": False,
}
VARIANTS = {
    "plain": {"depth": 2, "embed_dim": 64, "num_heads": 4, "shared_aln": False},
    "shared": {"depth": 2, "embed_dim": 32, "num_heads": 2, "shared_aln": True},
}
LABELS = [3, 7, 10, 0]  # 10 = num_classes: the null class
PUBLISHED_VAE = {"vocab_size": 4096, "z_channels": 32, "ch": 160, "test_mode": True}  # vae_ch160v4096z32
PUBLISHED_DEPTHS = (16, 20, 24, 30)
REFERENCE_FILES = ("models/var.py", "models/basic_var.py", "models/helpers.py")


class OnMeta(TorchFunctionMode):
    """Tensors made by empty/zeros/ones/full without a device go on the meta device (shapes, no
    memory). ``torch.device("meta")`` would do it for every factory, but VAR reads its drop-path
    rates from ``torch.linspace(...)`` with ``.item()``, which a meta tensor cannot give."""

    FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full})

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func in self.FACTORIES and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def published_var(var_cls, vae_cls, depth: int) -> nn.Module:
    """VAR-d{depth} as ``models.build_vae_var`` makes it (width 64 * depth, heads = depth, l2
    attention, no shared AdaLN), on the meta device."""
    with OnMeta():
        vae = vae_cls(**PUBLISHED_VAE)
        return var_cls(
            vae,
            num_classes=1000,
            depth=depth,
            embed_dim=64 * depth,
            num_heads=depth,
            drop_path_rate=0.1 * depth / 24,
            norm_eps=1e-6,
            shared_aln=False,
            attn_l2_norm=True,
            flash_if_available=False,
            fused_if_available=False,
        )


@torch.no_grad()
def randomize(var: nn.Module, g: torch.Generator) -> None:
    """Every parameter drawn afresh: linear weights of fan-in scale, biases and AdaLN offsets of
    order 0.5, temperatures around VAR's initial 4 with block 0's first head above the cap of 100;
    then rounded to float16 values (the file stores them so). The token embeddings are small, as
    VAR's are (std 0.07 at this width), so the first LayerNorms see a small variance and their
    eps shows (1e-5 for 1e-6 moves the logits by more than the test's tolerance)."""
    for name, p in var.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        if name.endswith("scale_mul_1H11"):
            p.copy_(math.log(4.0) + 0.5 * noise)
        elif name.startswith(("class_emb", "lvl_embed", "pos_start", "pos_1LC")):
            p.copy_(0.02 * noise)
        elif name == "word_embed.weight":
            p.copy_(0.02 * noise / math.sqrt(p.shape[1]))
        elif p.ndim == 2 and name.endswith(".weight"):
            p.copy_(noise / math.sqrt(p.shape[1]))
        else:
            p.copy_(0.5 * noise)
        p.copy_(p.half().float())
    var.blocks[0].attn.scale_mul_1H11[0, 0] = 5.0  # exp(5) = 148 > 100: the cap applies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--var-repo", required=True, help="a checkout of github.com/FoundationVision/VAR")
    parser.add_argument("--out", default="tests/parity/var_transformer.safetensors")
    parser.add_argument("--keys-out", default="tests/parity/var_transformer_keys.json")
    args = parser.parse_args()
    repo = Path(args.var_repo).resolve()
    sys.path.insert(0, str(repo))
    from models.var import VAR
    from models.vqvae import VQVAE

    digests = {f: hashlib.sha256((repo / f).read_bytes()).hexdigest() for f in REFERENCE_FILES}

    # The published sizes, names and shapes only.
    models = {}
    for depth in PUBLISHED_DEPTHS:
        full = published_var(VAR, VQVAE, depth)
        models[f"var_d{depth}"] = {
            "parameters": sum(p.numel() for p in full.parameters()),
            "buffers": [name for name, _ in full.named_buffers()],
            "state_dict": [[k, list(v.shape)] for k, v in full.state_dict().items()],
        }
        print(
            f"var_d{depth}: {len(models[f'var_d{depth}']['state_dict'])} tensors, {models[f'var_d{depth}']['parameters']:,} parameters"
        )
    keys = {
        "reference": f"FoundationVision/VAR models/var.py VAR as models.build_vae_var(depth=d) builds it, over VQVAE(**{PUBLISHED_VAE})",
        "reference_sha256": digests,
        "models": models,
    }
    Path(args.keys_out).write_text(json.dumps(keys, indent=0) + "\n")

    # The small models with random weights, on fixed inputs.
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    vae = VQVAE(**SMALL_VAE)
    tensors, meta = {}, {"reference_sha256": json.dumps(digests), "seed": str(SEED)}
    for variant, sizes in VARIANTS.items():
        var = VAR(vae, **SMALL, **sizes).eval()
        randomize(var, g)
        labels = torch.tensor(LABELS)
        inputs = torch.randn(len(LABELS), var.L - var.first_l, SMALL_VAE["z_channels"], generator=g)
        with torch.no_grad():
            logits = var(labels, inputs)
        sd = {
            k: v.half() if v.is_floating_point() and k in dict(var.named_parameters()) else v
            for k, v in var.state_dict().items()
        }
        tensors |= {f"{variant}.sd.{k}": v.contiguous() for k, v in sd.items()}
        tensors |= {f"{variant}.labels": labels, f"{variant}.inputs": inputs, f"{variant}.logits": logits.contiguous()}
        meta[variant] = (
            f"FoundationVision/VAR models/var.py VAR(vae, **{ {**SMALL, **sizes} }) over VQVAE(**{SMALL_VAE})"
        )
        print(f"{variant}: logits std {float(logits.std()):.3f}, max |logit| {float(logits.abs().max()):.2f}")
    save_file(tensors, args.out, metadata=meta)
    print(
        f"{args.out}: {Path(args.out).stat().st_size:,} bytes; {args.keys_out}: {Path(args.keys_out).stat().st_size:,} bytes"
    )


if __name__ == "__main__":
    main()
