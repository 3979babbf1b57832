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


_CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_curves(
    series: dict[str, list[tuple[float, float]]], title: str = "", size: tuple[int, int] = (720, 420)
) -> Image.Image:
    """A line plot of named (x, y) series, drawn with PIL (no plotting dependency).

    Each series gets its own colour; y is shared and linear; NaNs are skipped.
    """
    w, h = size
    left, right, top, bottom = 60, 150, 30, 40
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    points = [(x, y) for s in series.values() for x, y in s if y == y]
    draw.text((left, 8), title, fill=(0, 0, 0), font=font)
    if not points:
        draw.text((left, h // 2), "no data yet", fill=(0, 0, 0), font=font)
        return img
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(p[1] for p in points), max(p[1] for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline=(0, 0, 0))
    for i in range(5):  # y ticks
        y = y0 + (y1 - y0) * i / 4
        _, py = to_px(x0, y)
        draw.line([left - 4, py, left, py], fill=(0, 0, 0))
        draw.text((4, py - 5), f"{y:.3g}", fill=(0, 0, 0), font=font)
    for i in range(5):  # x ticks
        x = x0 + (x1 - x0) * i / 4
        px, _ = to_px(x, y0)
        draw.line([px, h - bottom, px, h - bottom + 4], fill=(0, 0, 0))
        draw.text((px - 10, h - bottom + 8), f"{x:.0f}", fill=(0, 0, 0), font=font)
    for k, (name, s) in enumerate(series.items()):
        colour = _CURVE_COLOURS[k % len(_CURVE_COLOURS)]
        pts = [to_px(x, y) for x, y in s if y == y]
        if len(pts) > 1:
            draw.line(pts, fill=colour, width=2)
        draw.line([w - right + 10, top + 12 + 14 * k, w - right + 30, top + 12 + 14 * k], fill=colour, width=3)
        draw.text((w - right + 34, top + 6 + 14 * k), name, fill=(0, 0, 0), font=font)
    return img
