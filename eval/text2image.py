"""Text-to-image on held-out ShapesWorld prompts: LM image tokens (batched CFG) -> decoder ->
pixels -> the ShapesWorld parser. Writes report.json and a PNG grid (prompt under each image).

    python eval/text2image.py --tokenizer runs/tokenizer_tiny/model --lm runs/lm_tiny/model \\
        --diffusion runs/diffusion_tiny/model --num 100 --out outputs/eval_t2i

A prompt counts as satisfied when the image has the prompt's shapes by colour and kind (so the
right count) in the right relative positions (lavit.data.shapes_parser.prompt_satisfied);
``attributes_kept`` (colours and kinds only) is reported beside it. Multi-GPU sharding and
resumable runs arrive with the rest of eval/ (issue 7); this script runs in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lavit.checkpoint import atomic_write
from lavit.config import ShapesWorldConfig
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.shapes_parser import attributes_kept, parse_scene, prompt_satisfied
from lavit.pipeline import LaVITPipeline
from lavit.viz import image_grid


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="pipeline directory (or the stage folders below)")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("--lm", default=None)
    p.add_argument("--diffusion", default=None)
    p.add_argument("--var", default=None)
    p.add_argument("--decoder", default="diffusion", choices=["diffusion", "var"])
    p.add_argument("--num", type=int, default=100, help="held-out (val) scenes whose prompts are drawn")
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, default=None, help="the LM's CFG scale (default: the pipeline's)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)

    if args.model:
        pipe = LaVITPipeline.from_pretrained(args.model, args.device)
    else:
        pipe = LaVITPipeline.from_parts(
            args.tokenizer, args.lm, device=args.device, diffusion=args.diffusion, var=args.var
        )
    world = ShapesWorld(ShapesWorldConfig(), "val")  # prompts and scenes do not depend on resolution
    t0 = time.perf_counter()
    rows, images = [], []
    for start in range(0, args.num, args.batch):
        idx = list(range(start, min(start + args.batch, args.num)))
        prompts = [world.words(i)[2] for i in idx]
        out = pipe.generate_image(
            prompts, guidance_scale_for_llm=args.guidance, decoder=args.decoder, seed=args.seed + start
        )
        for i, prompt, image in zip(idx, prompts, out, strict=True):
            parsed = parse_scene(image)
            rows.append(
                {
                    "index": i,
                    "prompt": prompt,
                    "satisfied": prompt_satisfied(world.scene(i), parsed),
                    "attributes_kept": attributes_kept(world.scene(i), parsed),
                    "parsed": [[s.colour, s.kind, s.size, s.row, s.col] for s in parsed],
                }
            )
            images.append(image)
    n = len(rows)
    report = {
        "task": "shapes_text2image",
        "decoder": args.decoder,
        "num_prompts": n,
        "scene_accuracy": sum(r["satisfied"] for r in rows) / n,
        "attribute_accuracy": sum(r["attributes_kept"] for r in rows) / n,
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    out = Path(args.out)
    atomic_write(out / "report.json", lambda tmp: tmp.write_text(json.dumps(report, indent=1)))
    labels = [("OK " if r["satisfied"] else "XX ") + r["prompt"] for r in rows[:24]]
    grid = image_grid(images[:24], labels, columns=6, label_lines=5)
    atomic_write(out / "grid.png", lambda tmp: grid.save(tmp, format="PNG"))
    print(json.dumps({k: v for k, v in report.items() if k != "rows"}, indent=2))
    return report


if __name__ == "__main__":
    main()
