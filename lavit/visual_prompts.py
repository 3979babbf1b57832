"""Visual prompts: marks drawn on an image to point at a region ("what is in the red box?").

ViP-LLaVA (Cai et al., arXiv 2312.00784) draws the prompt onto the image itself, in many
colours and shapes, instead of passing coordinates or region features: the model reads the
mark with its ordinary vision path, and a question refers to it by its look ("the red
rectangle"). This module renders such marks with PIL alone, deterministically (each mark
seeds its own numpy Generator), for training questions and for the CLI.

What each kind draws (width ``w``; everything is clipped to the image):

- ``rectangle``: the outline of the box, just outside it (on the image edge where the box
  touches it), so the region's own pixels stay visible.
- ``ellipse``: the outline of an ellipse around the box (the inscribed ellipse enlarged by
  sqrt(2) so it passes outside the box's corners), its bounding box clipped to the image.
- ``triangle``: the outline of an isosceles triangle enclosing the box (apex up, or down when
  only that fits), its corners clipped to the image.
- ``point``: a filled dot of radius ``1.5 w`` inside the region (box centre with jitter, kept
  inside the box; for a mask, a pixel of the mask away from its edge).
- ``arrow``: a line from outside the region to a tip inside it, with a filled arrow head at
  the tip; the direction is random but chosen so the arrow fits in the image.
- ``scribble``: a random smooth stroke (Chaikin-smoothed control points) that sweeps across
  the box's longer side and wanders across the other, staying inside the box.
- ``contour``: the band of pixels within ``w`` of the mask's outline, outside the mask
  (inside it along the image edge); of the box's outline if only a box is given.

Every kind takes a box or a mask; with a mask only, the geometric kinds use its bounding box.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

MARK_KINDS = ("rectangle", "ellipse", "arrow", "triangle", "point", "scribble", "contour")

MARK_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "orange": (255, 165, 0),
    "purple": (160, 32, 240),
    "pink": (255, 105, 180),
    "cyan": (0, 255, 255),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}

SPEC_FORM = "KIND:x0,y0,x1,y1[:COLOUR[:WIDTH]], e.g. 'ellipse:10,12,30,40:red'"

Box = tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)  # eq=False: the mask array has no usable ==; marks compare by identity
class Mark:
    """One visual prompt. ``box`` is (x0, y0, x1, y1) in pixels of the image it is drawn on
    (pixel i spans [i, i + 1)); ``mask`` is a bool (H, W) array. ``width`` None scales with the
    image (see ``default_width``); ``seed`` drives the random parts (jitter, scribble, arrow)."""

    kind: str
    box: Box | None = None
    mask: np.ndarray | None = None
    colour: str = "red"
    width: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MARK_KINDS:
            raise ValueError(f"unknown mark kind {self.kind!r}; use one of {', '.join(MARK_KINDS)}")
        if self.colour not in MARK_COLOURS:
            raise ValueError(f"unknown mark colour {self.colour!r}; use one of {', '.join(MARK_COLOURS)}")
        if self.width is not None and (not isinstance(self.width, int) or self.width < 1):
            raise ValueError(f"mark width {self.width!r} must be an int >= 1 (or None for a size-scaled default)")
        if self.box is None and self.mask is None:
            raise ValueError(f"{self.kind} mark has no region; give a box (x0, y0, x1, y1) or a mask")
        if self.box is not None:
            try:
                box = tuple(float(v) for v in self.box)
            except (TypeError, ValueError):
                box = ()
            if len(box) != 4 or not all(math.isfinite(v) for v in box):
                raise ValueError(f"mark box {self.box!r} must be 4 finite numbers (x0, y0, x1, y1)")
            if box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(
                    f"mark box {box} is degenerate (need x1 > x0 and y1 > y0); give it as (x0, y0, x1, y1)"
                )
            object.__setattr__(self, "box", box)
        if self.mask is not None:
            mask = np.array(self.mask, dtype=bool)  # a private read-only copy keeps the mark immutable
            if mask.ndim != 2:
                raise ValueError(f"mark mask must be a 2-D (H, W) array, got shape {mask.shape}")
            if not mask.any():
                raise ValueError(
                    f"{self.kind} mark's mask has no True pixels; give a mask that covers the region, or a box"
                )
            mask.flags.writeable = False
            object.__setattr__(self, "mask", mask)

    @property
    def region(self) -> Box:
        """The box, or else the mask's bounding box, as (x0, y0, x1, y1)."""
        if self.box is not None:
            return self.box
        assert self.mask is not None
        ys, xs = np.nonzero(self.mask)
        return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)

    def check(self, image_size: tuple[int, int]) -> None:
        """Raise ValueError if the mark does not fit an image of ``image_size`` = (W, H)."""
        w, h = image_size
        if self.mask is not None and self.mask.shape != (h, w):
            raise ValueError(
                f"mark mask shape {self.mask.shape} is not the image's (H, W) = ({h}, {w}); resize the mask to the image"
            )
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                raise ValueError(
                    f"mark box {self.box} lies outside the {w}x{h} image (must be within [0, {w}] x [0, {h}]); clip it to the image"
                )


def default_width(image_size: tuple[int, int]) -> int:
    """Line width for ``width=None``: 2 px up to 256 px images (visible on 64x64 ShapesWorld),
    then 1/128 of the shorter side (8 px at 1024)."""
    return max(2, round(min(image_size) / 128))


def mark_phrase(mark: Mark) -> str:
    """How a question refers to the mark, e.g. "the red rectangle", "the green point"."""
    return f"the {mark.colour} {mark.kind}"


def parse_mark(spec: str) -> Mark:
    """Parse a CLI mark ``KIND:x0,y0,x1,y1[:COLOUR[:WIDTH]]`` into a Mark."""
    parts = spec.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"bad mark spec {spec!r}: expected {SPEC_FORM}")
    try:
        box = tuple(float(v) for v in parts[1].split(","))
        width = int(parts[3]) if len(parts) == 4 else None
    except ValueError:
        raise ValueError(f"bad mark spec {spec!r}: expected {SPEC_FORM}") from None
    if len(box) != 4:
        raise ValueError(f"bad mark spec {spec!r}: expected {SPEC_FORM}")
    try:
        return Mark(parts[0], box=box, colour=parts[2] if len(parts) >= 3 else "red", width=width)  # type: ignore[arg-type]
    except ValueError as err:
        raise ValueError(f"bad mark spec {spec!r}: {err}") from None


def draw_marks(image: Image.Image, marks: Sequence[Mark]) -> Image.Image:
    """Return a new RGB image with every mark drawn in order; ``image`` is left untouched.

    Raises ValueError (via ``Mark.check``) for a mark that does not fit the image.
    """
    out = image.convert("RGB")  # always a new image, even when already RGB
    for mark in marks:
        mark.check(out.size)
        _DRAWERS[mark.kind](out, mark, mark.width or default_width(out.size), np.random.default_rng(mark.seed))
    return out


# --- one drawer per kind: (image, mark, width, rng) -> None, drawing in place -----------------


def _pixel_box(box: Box) -> tuple[int, int, int, int]:
    """The inclusive pixel rectangle (px0, py0, px1, py1) a continuous box covers."""
    x0, y0, x1, y1 = box
    return math.floor(x0), math.floor(y0), math.ceil(x1) - 1, math.ceil(y1) - 1


def _dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Square (Chebyshev radius r) dilation of a bool (H, W) mask, separably along each axis."""
    for axis in (0, 1):
        pad = [(r, r) if a == axis else (0, 0) for a in (0, 1)]
        mask = np.lib.stride_tricks.sliding_window_view(np.pad(mask, pad), 2 * r + 1, axis=axis).any(-1)
    return mask


def _inside_point(mark: Mark, r: float, rng: np.random.Generator) -> tuple[float, float]:
    """A point of the region at least ``r`` from its edge where it fits: a jittered box centre
    (clamped into the box shrunk by r), or a random mask pixel (preferring ones >= r inside)."""
    if mark.mask is not None:
        deep = ~_dilate(~mark.mask, math.ceil(r))
        ys, xs = np.nonzero(deep if deep.any() else mark.mask)
        i = rng.integers(len(xs))
        return float(xs[i]), float(ys[i])
    px0, py0, px1, py1 = _pixel_box(mark.region)
    point = []
    for lo, hi in ((px0, px1), (py0, py1)):
        c = (lo + hi) / 2 + rng.uniform(-0.25, 0.25) * (hi - lo)
        point.append(min(max(c, lo + r), hi - r) if hi - lo >= 2 * r else (lo + hi) / 2)
    return point[0], point[1]


def _rectangle(img: Image.Image, mark: Mark, w: int, rng: np.random.Generator) -> None:
    px0, py0, px1, py1 = _pixel_box(mark.region)
    W, H = img.size
    # Outward by w; PIL draws the width inward from the given rectangle.
    outer = [max(px0 - w, 0), max(py0 - w, 0), min(px1 + w, W - 1), min(py1 + w, H - 1)]
    ImageDraw.Draw(img).rectangle(outer, outline=MARK_COLOURS[mark.colour], width=w)


def _ellipse(img: Image.Image, mark: Mark, w: int, rng: np.random.Generator) -> None:
    px0, py0, px1, py1 = _pixel_box(mark.region)
    W, H = img.size
    cx, cy = (px0 + px1) / 2, (py0 + py1) / 2
    # Semi-axes scaled by sqrt(2) pass through the box corners; + w keeps the inward-drawn line off them.
    ax, ay = (px1 - px0 + 1) / 2 * math.sqrt(2) + w, (py1 - py0 + 1) / 2 * math.sqrt(2) + w
    bbox = [max(cx - ax, 0), max(cy - ay, 0), min(cx + ax, W - 1), min(cy + ay, H - 1)]
    ImageDraw.Draw(img).ellipse(bbox, outline=MARK_COLOURS[mark.colour], width=w)


def _triangle(img: Image.Image, mark: Mark, w: int, rng: np.random.Generator) -> None:
    px0, py0, px1, py1 = _pixel_box(mark.region)
    W, H = img.size
    x0, y0, x1, y1 = px0 - 1.5 * w, py0 - 1.5 * w, px1 + 1.5 * w, py1 + 1.5 * w
    bw, bh, cx = x1 - x0, y1 - y0, (x0 + x1) / 2
    # The smallest isosceles triangle on the box's base line: apex one box height beyond the
    # box, base corners half a box width beyond its sides (its sides pass through the box corners).
    if y0 - bh >= 0 or y1 + bh > H - 1:
        points = [(cx, y0 - bh), (cx - bw, y1), (cx + bw, y1)]
    else:
        points = [(cx, y1 + bh), (cx - bw, y0), (cx + bw, y0)]
    points = [(min(max(x, 0), W - 1), min(max(y, 0), H - 1)) for x, y in points]
    ImageDraw.Draw(img).polygon(points, outline=MARK_COLOURS[mark.colour], width=w)


def _point(img: Image.Image, mark: Mark, w: int, rng: np.random.Generator) -> None:
    r = 1.5 * w
    cx, cy = _inside_point(mark, r, rng)
    ImageDraw.Draw(img).ellipse([cx - r, cy - r, cx + r, cy + r], fill=MARK_COLOURS[mark.colour])


def _arrow(img: Image.Image, mark: Mark, w: int, rng: np.random.Generator) -> None:
    W, H = img.size
    tip = np.array(_inside_point(mark, w, rng))
    px0, py0, px1, py1 = _pixel_box(mark.region)
    head = 3 * w + 3

    def reach(d: np.ndarray, lo: tuple[float, float], hi: tuple[float, float]) -> float:
        """How far from the tip, along unit direction d, the rectangle [lo, hi] ends."""
        ends = [((b if di > 0 else a) - p) / di for p, di, a, b in zip(tip, d, lo, hi, strict=True) if abs(di) > 1e-9]
        return min(ends)

    # Random directions; keep the first whose tail gets a head's length clear of the region
    # within the image, else the one that gets furthest out (a region filling the image: none).
    best, best_out = np.array([1.0, 0.0]), -math.inf
    for angle in rng.uniform(0, 2 * math.pi, size=16):
        d = np.array([math.cos(angle), math.sin(angle)])
        out = reach(d, (0, 0), (W - 1, H - 1)) - reach(d, (px0, py0), (px1, py1))
        if out > best_out:
            best, best_out = d, out
        if out >= head:
            break
    d = best
    length = min(reach(d, (px0, py0), (px1, py1)) + 2 * head, reach(d, (0, 0), (W - 1, H - 1)))
    tail = tip + d * length
    base, normal = tip + d * head, np.array([-d[1], d[0]])
    colour = MARK_COLOURS[mark.colour]
    draw = ImageDraw.Draw(img)
    draw.line([tuple(tail), tuple(tip + d * head * 0.8)], fill=colour, width=w)
    draw.polygon([tuple(tip), tuple(base + normal * head * 0.5), tuple(base - normal * head * 0.5)], fill=colour)


def _scribble(img: Image.Image, mark: Mark, w: int, rng: np.random.Generator) -> None:
    px0, py0, px1, py1 = _pixel_box(mark.region)
    m = w / 2  # keep the stroke (centred on the path) inside the box
    lo = np.array([px0 + m, py0 + m])
    hi = np.maximum(np.array([px1 - m, py1 - m]), lo)
    # (K, 2) control points sweeping across the box's longer side, wandering across the other.
    along = int(px1 - px0 < py1 - py0)  # 0: sweep along x, 1: along y
    points = rng.uniform(lo, hi, size=(5, 2))
    points[:, along] = np.linspace(lo[along], hi[along], 5)[:: rng.choice([-1, 1])]
    for _ in range(4):  # Chaikin corner cutting: smooth, and stays in the points' convex hull
        q, r = 0.75 * points[:-1] + 0.25 * points[1:], 0.25 * points[:-1] + 0.75 * points[1:]
        points = np.concatenate([points[:1], np.stack([q, r], axis=1).reshape(-1, 2), points[-1:]])
    ImageDraw.Draw(img).line([tuple(p) for p in points], fill=MARK_COLOURS[mark.colour], width=w, joint="curve")


def _contour(img: Image.Image, mark: Mark, w: int, rng: np.random.Generator) -> None:
    W, H = img.size
    if mark.mask is not None:
        mask = mark.mask
    else:
        px0, py0, px1, py1 = _pixel_box(mark.region)
        mask = np.zeros((H, W), dtype=bool)
        mask[py0 : py1 + 1, px0 : px1 + 1] = True
    edge = np.zeros((H, W), dtype=bool)  # (H, W) strip of width w along the image border
    edge[:w], edge[-w:], edge[:, :w], edge[:, -w:] = True, True, True, True
    band = (_dilate(mask, w) & ~mask) | (mask & edge)
    img.paste(MARK_COLOURS[mark.colour], mask=Image.fromarray(band))


_DRAWERS = {
    "rectangle": _rectangle,
    "ellipse": _ellipse,
    "arrow": _arrow,
    "triangle": _triangle,
    "point": _point,
    "scribble": _scribble,
    "contour": _contour,
}
assert set(_DRAWERS) == set(MARK_KINDS)
