"""Make the parity fixtures of VAR's multi-scale VQ-VAE (tests/test_var_convert.py reads them).

    python tests/parity/make_var_vqvae_fixture.py --var-repo /path/to/VAR \\
        --out tests/parity/var_vqvae.safetensors --keys-out tests/parity/var_vqvae_ch160_keys.json

``--var-repo`` is a checkout of github.com/FoundationVision/VAR; its code is imported from there
and none of it is copied here. The script builds VAR's own ``VQVAE`` with random weights at a
small width, runs it on a fixed image and saves, in one safetensors file:

    sd.<VAR name>       its state dict in the published key layout (float32)
    input.images        (1, 3, 160, 160) uint8 image; VAR reads it as u8 / 255 * 2 - 1
    ref.latent          (1, Cvae, 10, 10) quant_conv(encoder(x))
    ref.idx.<k>         (1, p_k^2) int64 codes of scale k (VQVAE.img_to_idxBl)
    ref.var_input       (1, sum_{k>=1} p_k^2, Cvae) teacher-forcing input (idxBl_to_var_input)
    ref.f_hat           (1, Cvae, 10, 10) f_hat rebuilt from the codes (embed_to_fhat)
    ref.pixels          (1, 3, 160, 160) in [-1, 1] decoded from the codes (idxBl_to_img)

and the (name, shape) list of the published size's state dict (built on the meta device) as
JSON. The small model is VAR's published topology (5 levels of ch x (1, 1, 2, 2, 4), 2 res
blocks, attention at the lowest level and in the middle, 3x3 quant convs, 4 shared phi) at
ch = 4, with 10 scales (VAR's count, which decides the phi of each scale) ending at the 10x10
latent of a 160 px image. VAR's classes call its ``Normalize(c)`` with the default of 32
groups, more than 4 channels hold: while the small model is built, the script has them call
``Normalize(c, num_groups=2)`` (VAR's own function and parameter), and puts VAR's back after.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

SEED = 30  # codes at least 1.7e-3 (relative) from a tie at every scale, no pixel clipped
RESOLUTION = 160
SCALES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10)  # 10 scales, as VAR's (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
SMALL = {"vocab_size": 64, "z_channels": 8, "ch": 4, "v_patch_nums": SCALES, "test_mode": True}
NORM_GROUPS = 2
PUBLISHED = {"vocab_size": 4096, "z_channels": 32, "ch": 160, "test_mode": True}  # vae_ch160v4096z32
REFERENCE_FILES = ("models/vqvae.py", "models/basic_vae.py", "models/quant.py")


@contextlib.contextmanager
def norm_groups(basic_vae, groups: int):
    """While inside, VAR's Encoder/Decoder build their GroupNorms with ``groups`` groups."""
    normalize = basic_vae.Normalize
    basic_vae.Normalize = lambda c: normalize(c, num_groups=groups)
    try:
        yield
    finally:
        basic_vae.Normalize = normalize


@torch.no_grad()
def randomize(vae: nn.Module, g: torch.Generator) -> None:
    """Weights no init leaves: norms off identity (a swapped weight/bias or norm1/norm2 shows),
    attention logits of order 1 (at init they are near zero and any q/k mix-up averages out)."""
    for m in vae.modules():
        if isinstance(m, nn.GroupNorm):
            m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
            m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    for name, p in vae.named_parameters():
        if name.endswith("qkv.weight"):
            p.mul_(4.0)


def make_image(g: torch.Generator) -> torch.Tensor:
    """(1, 3, R, R) uint8: colour gradients, a square, a disc and some noise."""
    r = RESOLUTION
    y, x = torch.meshgrid(torch.linspace(0, 1, r), torch.linspace(0, 1, r), indexing="ij")
    img = torch.stack([0.2 + 0.6 * x, 0.3 + 0.4 * y, 0.5 + 0.3 * torch.sin(6 * x * y)])
    square = (x > 0.15) & (x < 0.45) & (y > 0.2) & (y < 0.5)
    disc = (x - 0.65) ** 2 + (y - 0.6) ** 2 < 0.2**2
    img[:, square] = torch.tensor([0.9, 0.15, 0.1])[:, None]
    img[:, disc] = torch.tensor([0.1, 0.25, 0.85])[:, None]
    img = img + 0.05 * torch.randn(img.shape, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)[None]


@torch.no_grad()
def min_margins(vae: nn.Module, x: torch.Tensor) -> list[float]:
    """Per scale, the smallest gap between the nearest and second-nearest code's squared distance
    over the nearest's (how far a code choice is from a tie)."""
    f = vae.quant_conv(vae.encoder(x))
    f_hats = vae.quantize.f_to_idxBl_or_fhat(f, to_fhat=True)
    book = vae.quantize.embedding.weight
    out = []
    for k, p in enumerate(SCALES):
        rest = f - (f_hats[k - 1] if k else 0)
        z = F.interpolate(rest, size=(p, p), mode="area") if p != SCALES[-1] else rest
        z = z.permute(0, 2, 3, 1).reshape(-1, book.shape[1])
        d = torch.cdist(z.double(), book.double()).square().sort(dim=1).values
        out.append(float(((d[:, 1] - d[:, 0]) / d[:, 0]).min()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--var-repo", required=True, help="a checkout of github.com/FoundationVision/VAR")
    parser.add_argument("--out", default="tests/parity/var_vqvae.safetensors")
    parser.add_argument("--keys-out", default="tests/parity/var_vqvae_ch160_keys.json")
    args = parser.parse_args()
    repo = Path(args.var_repo).resolve()
    sys.path.insert(0, str(repo))
    from models import basic_vae
    from models.vqvae import VQVAE

    digests = {f: hashlib.sha256((repo / f).read_bytes()).hexdigest() for f in REFERENCE_FILES}

    # The published size, names and shapes only.
    with torch.device("meta"):
        full = VQVAE(**PUBLISHED)
    buffers = {name for name, _ in full.named_buffers()}
    keys = {
        "reference": f"FoundationVision/VAR models/vqvae.py VQVAE(**{PUBLISHED})",
        "reference_sha256": digests,
        "parameters": sum(p.numel() for p in full.parameters()),
        "buffers": sorted(buffers),
        "state_dict": [[k, list(v.shape)] for k, v in full.state_dict().items()],
    }
    Path(args.keys_out).write_text(json.dumps(keys, indent=1) + "\n")
    print(f"{args.keys_out}: {len(keys['state_dict'])} tensors, {keys['parameters']:,} parameters")

    # The small model with random weights, on a fixed image.
    torch.manual_seed(SEED)
    g = torch.Generator().manual_seed(SEED)
    with norm_groups(basic_vae, NORM_GROUPS):
        vae = VQVAE(**SMALL)
    randomize(vae, g)
    vae.eval().requires_grad_(False)
    images = make_image(g)
    x = images.float() / 255 * 2 - 1  # VAR's [-1, 1]
    with torch.no_grad():
        latent = vae.quant_conv(vae.encoder(x))
        # Codes spread like the latent, so every scale picks among several (nn.Embedding's N(0, 1)
        # is far wider than this encoder's output and every position would take the same code).
        vae.quantize.embedding.weight.copy_(
            torch.randn(vae.quantize.embedding.weight.shape, generator=g) * latent.std()
        )
        idx = vae.img_to_idxBl(x)
        var_input = vae.quantize.idxBl_to_var_input(idx)
        h = [
            vae.quantize.embedding(i).transpose(1, 2).view(1, SMALL["z_channels"], p, p)
            for i, p in zip(idx, SCALES, strict=True)
        ]  # as idxBl_to_img
        f_hat = vae.quantize.embed_to_fhat(h, all_to_max_scale=True, last_one=True)
        pixels = vae.idxBl_to_img(idx, same_shape=True, last_one=True)
        recon = vae.img_to_reconstructed_img(x, last_one=True)
    # VAR itself: decoded from the codes vs from its encoder's f_hat (another memory layout)
    print(f"VAR's two decodes differ by {float((pixels - recon).abs().max()):.1e}")

    tensors = {f"sd.{k}": v.contiguous() for k, v in vae.state_dict().items()}
    tensors |= {
        "input.images": images,
        "ref.latent": latent,
        "ref.var_input": var_input.contiguous(),
        "ref.f_hat": f_hat,
        "ref.pixels": pixels,
    }
    tensors |= {f"ref.idx.{k}": i for k, i in enumerate(idx)}
    meta = {
        "reference": f"FoundationVision/VAR models/vqvae.py VQVAE(**{SMALL}), GroupNorms Normalize(c, num_groups={NORM_GROUPS})",
        "reference_sha256": json.dumps(digests),
        "seed": str(SEED),
    }
    save_file(tensors, args.out, metadata=meta)

    usage = [len(i.unique()) for i in idx]
    clipped = float((pixels.abs() >= 1).float().mean())
    print(f"{args.out}: {Path(args.out).stat().st_size:,} bytes")
    print(f"codes used per scale: {usage} of {SMALL['vocab_size']}")
    print("smallest relative distance gap per scale:", [f"{m:.1e}" for m in min_margins(vae, x)])
    print(f"pixels: std {float(pixels.std()):.3f}, clipped at +-1: {clipped:.1%}")


if __name__ == "__main__":
    main()
