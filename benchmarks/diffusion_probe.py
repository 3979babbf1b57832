"""What a trained diffusion detokenizer does with its condition, printed as JSON.

For held-out ShapesWorld scenes noised to step t, the PSNR of the denoiser's one-shot estimate
of the clean image, conditioned three ways: on the scene's own codes, on the null condition, and
on another scene's codes (scored in pixels: latent-space estimates go through the VAE's
decoder). A denoiser that ignores its condition scores the three alike; one that
cannot draw a clean scene at all tops out near the noisy input's own PSNR at small t (printed as
``input_psnr``).

    python benchmarks/diffusion_probe.py runs/diffusion_tiny/model runs/tokenizer_tiny/model
    python benchmarks/diffusion_probe.py --quick    # the shipped decoder, 2 scenes, one t (tests)
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from bench_utils import SHIPPED_MODEL

from detokenizer.diffusion.io import load_detokenizer
from detokenizer.diffusion.sampling import condition_inputs, noise_scheduler, patch_inputs
from lavit.config import ShapesWorldConfig
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.transforms import to_tensor
from tokenizer import load_tokenizer


def psnr(image: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    return round(10 * torch.log10(1.0 / F.mse_loss(image, truth)).item(), 2)


def x0_estimate(model, noisy, steps, a, emb, mask, drop=None, patches=None) -> torch.Tensor:
    """The denoiser's estimate of the clean image, whatever it predicts (alpha-bar ``a``)."""
    out = model(noisy, steps, emb, mask, drop, patches)
    if model.cfg.prediction_type == "sample":
        return out
    # epsilon, or v = sqrt(a) eps - sqrt(1-a) x0 (sampling.training_target): back to x0
    eps = out if model.cfg.prediction_type == "epsilon" else a.sqrt() * out + (1 - a).sqrt() * noisy
    return (noisy - (1 - a).sqrt() * eps) / a.sqrt()


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "detokenizer_dir", nargs="?", default=str(SHIPPED_MODEL / "diffusion"), help="default: the shipped one"
    )
    p.add_argument(
        "tokenizer_dir", nargs="?", default=str(SHIPPED_MODEL / "tokenizer"), help="default: the shipped one"
    )
    p.add_argument("--scenes", type=int, default=64)
    p.add_argument("--timesteps", type=int, nargs="+", default=[50, 200, 400, 600, 800, 950])
    p.add_argument("--quick", action="store_true", help="2 scenes at t = 400: the smoke test's setting")
    args = p.parse_args()
    if args.quick:
        args.scenes, args.timesteps = 2, [400]
    torch.manual_seed(0)
    model, tok = load_detokenizer(args.detokenizer_dir).eval(), load_tokenizer(args.tokenizer_dir).eval()
    size, n = model.cfg.resolution, args.scenes
    world = ShapesWorld(ShapesWorldConfig(resolution=size), "val")
    images = torch.stack([to_tensor(world.image(i), size) for i in range(n)])
    other = torch.roll(torch.arange(n), 1)  # scene i gets scene i-1's codes
    codes = tok.encode(images)
    emb, mask = condition_inputs(model.cfg, tok, codes)
    patches = patch_inputs(model.cfg, tok, codes)  # None unless the detokenizer reads them
    other_patches = None if patches is None else patches[other]
    x0 = model.to_space(images)
    sched = noise_scheduler(model.cfg)
    drop_all = torch.ones(n, dtype=torch.bool)
    rows = []

    def score(estimate: torch.Tensor) -> float:  # in pixels, whatever the space
        with torch.no_grad():
            return psnr(model.from_space(estimate), images)

    for t in args.timesteps:
        steps = torch.full((n,), t)
        noise = torch.randn_like(x0)
        noisy = sched.add_noise(x0, noise, steps)
        a = sched.alphas_cumprod[t]

        rows.append(
            {
                "t": t,
                "input_psnr": score(noisy / a.sqrt()),
                "own_codes_psnr": score(x0_estimate(model, noisy, steps, a, emb, mask, None, patches)),
                "null_condition_psnr": score(x0_estimate(model, noisy, steps, a, emb, mask, drop_all, patches)),
                "other_scene_codes_psnr": score(
                    x0_estimate(model, noisy, steps, a, emb[other], mask[other], None, other_patches)
                ),
            }
        )
    print(
        json.dumps(
            {
                "benchmark": "diffusion_condition_probe",
                "model": args.detokenizer_dir,
                "prediction_type": model.cfg.prediction_type,
                "scenes": n,
                "results": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
