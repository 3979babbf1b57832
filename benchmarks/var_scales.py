"""Where does the VAR decoder lose scenes? Printed as JSON.

For held-out ShapesWorld scenes, the VAR decoder reconstructs each from its tokenizer codes with
the scales before scale ``k`` forced to the VQ-VAE's own tokens of the image and the rest
sampled as the pipeline samples them; the ShapesWorld parser says whether the scene is kept
(colours and kinds). ``k = 0`` is plain reconstruction and ``k = K`` (every scale forced) the
VQ-VAE alone, so the steps between them say which scales' predictions cost scenes.

    python benchmarks/var_scales.py [--model DIR] [--scenes 200]
    python benchmarks/var_scales.py --quick      # 1 scene (tests)
"""

from __future__ import annotations

import argparse
import json

import torch

from detokenizer.var.decoder import decode_codes_var
from lavit.config import ShapesWorldConfig
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.shapes.parser import attributes_kept, parse_scene
from lavit.data.transforms import to_pil, to_tensor
from lavit.demo import DEFAULT_MODEL
from lavit.generate import seeded_generators
from lavit.pipeline import LaVITPipeline


@torch.no_grad()
def scenes_kept_by_prefix(pipe: LaVITPipeline, scenes: int, batch: int = 50, seed: int = 0) -> dict:
    """Percent of ``scenes`` val scenes kept, for each number of forced (true) leading scales."""
    var = pipe.decoders["var"]
    param = next(var.parameters())
    world = ShapesWorld(ShapesWorldConfig(), "val")
    num_scales = len(var.transformer.scales)
    kept = [0] * (num_scales + 1)
    for start in range(0, scenes, batch):
        index = range(start, min(scenes, start + batch))
        images = [world.image(i) for i in index]
        pixels = torch.stack([to_tensor(im, var.resolution) for im in images]).to(param.device, param.dtype)
        true, codes = var.vqvae.encode(pixels), [c.to(param.device) for c in pipe.encode(images)]
        for k in range(num_scales + 1):
            recons = decode_codes_var(
                var,
                pipe.tokenizer,
                codes,
                pipe.cfg.var_sampling,
                generator=seeded_generators(len(index), seed + start, param.device),
                forced=[t if j < k else None for j, t in enumerate(true)],
            )
            for i, recon in zip(index, recons, strict=True):
                kept[k] += attributes_kept(world.scene(i), parse_scene(to_pil(recon)))
    sides = [str(p) for p in var.transformer.scales]
    return {
        "scenes": scenes,
        "scales": sides,
        "kept_by_forced_prefix": {
            ("none" if k == 0 else f"1..{sides[k - 1]}"): round(100 * n / scenes, 1) for k, n in enumerate(kept)
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(DEFAULT_MODEL))
    ap.add_argument("--scenes", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="1 scene: the smoke test's setting")
    args = ap.parse_args()
    if args.quick:
        args.scenes = 1
    pipe = LaVITPipeline.from_pretrained(args.model)
    print(json.dumps(scenes_kept_by_prefix(pipe, args.scenes, seed=args.seed), indent=1))


if __name__ == "__main__":
    main()
