"""Rebuild the README's evaluation figures from a ShapesWorld report (``make eval-shapes``).

    python docs/make_figures.py outputs/eval/shapes --out docs

writes ``t2i_tiny_grid.png`` (top row: the val scene each prompt came from; middle and bottom: the
one-draw text-to-image renders of the diffusion and the VAR decoder) and ``var_tiny_recon.png``
(pairs of a val scene and the VAR decoder's reconstruction from its tokenizer codes), both for the
first eight val scenes. It only reads the images the evaluation saved.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from lavit.config import ShapesWorldConfig
from lavit.data.shapes.dataset import ShapesWorld
from lavit.viz import image_grid

NUM = 8


def _saved(report_dir: Path, task: str, key: str) -> Image.Image:
    path = report_dir / task / "images" / f"{key}.png"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `make eval-shapes EVAL={report_dir}` first")
    return Image.open(path).convert("RGB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("report_dir", type=Path, help="the EVAL folder of `make eval-shapes`")
    ap.add_argument("--out", type=Path, default=Path("docs"))
    args = ap.parse_args()

    val = ShapesWorld(ShapesWorldConfig(), "val")
    scenes = [val[i].image for i in range(NUM)]
    keys = [f"shapes-val-{i}" for i in range(NUM)]
    t2i = scenes + [_saved(args.report_dir, f"text2image_{d}", k) for d in ("diffusion", "var") for k in keys]
    image_grid(t2i, columns=NUM, cell=96).save(args.out / "t2i_tiny_grid.png")
    pairs = [im for s, k in zip(scenes, keys, strict=True) for im in (s, _saved(args.report_dir, "reconstruct_var", k))]
    image_grid(pairs, columns=4, cell=128).save(args.out / "var_tiny_recon.png")
    print(f"wrote {args.out / 't2i_tiny_grid.png'} and {args.out / 'var_tiny_recon.png'}")


if __name__ == "__main__":
    main()
