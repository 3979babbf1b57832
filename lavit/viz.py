"""Image grids with captions, drawn with PIL alone (no plotting dependency)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont


def image_grid(
    images: Sequence[Image.Image],
    labels: Sequence[str] | None = None,
    *,
    columns: int = 4,
    cell: int = 128,
    label_lines: int = 4,
    wrap: int = 24,
) -> Image.Image:
    """Tile images (each resized to ``cell`` x ``cell``, nearest-neighbour so pixels stay crisp)
    into a grid, with up to ``label_lines`` wrapped lines of text under each."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    font = ImageFont.load_default()
    line_h = 11
    text_h = label_lines * line_h + 4 if labels else 0
    rows = (len(images) + columns - 1) // columns
    grid = Image.new("RGB", (columns * cell, rows * (cell + text_h)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        x, y = c * cell, r * (cell + text_h)
        grid.paste(img.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        if labels:
            lines = textwrap.wrap(labels[i], wrap)[:label_lines]
            for j, line in enumerate(lines):
                draw.text((x + 2, y + cell + 2 + j * line_h), line, fill=(0, 0, 0), font=font)
    return grid
