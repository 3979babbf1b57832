"""ShapesWorld: procedural, seedable scenes of 1-3 coloured shapes, rendered at any resolution.

A scene is a small symbolic object (:class:`Scene`) from which everything else is derived: the
image (:func:`render`), the captions and question/answer pairs (:mod:`lavit.data.shapes.text`)
and the boxes. :mod:`lavit.data.shapes.parser` reads an image back into shapes, which is how
generated images are judged (a GenEval-style compositional check without any download).

Layout. Shapes sit in distinct cells of a 3x3 grid (centres at 0.2 / 0.5 / 0.8 of the side,
jittered by at most ``JITTER``), so "left of" / "above" and "in the top left" are never
ambiguous, and two shapes never touch: the closest pair (two large shapes in adjacent cells at
opposite jitter) keeps a gap of ``0.3 - 2 * JITTER - LARGE = 0.04`` of the side (2.6 px at 64).

Determinism and splits. Sample ``i`` of a split is drawn from ``numpy.random.default_rng(
[seed, split_id, i, attempt])`` (PCG64 over a SeedSequence: the same bits on every machine).
A scene's split is a hash of its discrete key (colours, kinds, sizes and grid cells, sorted),
and a draw whose key hashes to another split is rejected and redrawn. So train, val and test
never share a scene, not even the same composition in the same cells, and that holds for every
seed and every split length.
"""

from __future__ import annotations

import colorsys
import hashlib
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

from lavit.config import ShapesWorldConfig

# Six hues 60 degrees apart: the parser classifies colour by hue, which blending with the grey
# background does not change, so anti-aliased edges keep their shape's colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "yellow": (215, 215, 35),
    "green": (40, 190, 40),
    "cyan": (30, 200, 200),
    "blue": (40, 40, 225),
    "purple": (200, 40, 200),
}
KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")
# Side of a shape's bounding box as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.14, "large": 0.23}
CELL_CENTRES: tuple[float, ...] = (0.2, 0.5, 0.8)
JITTER = 0.015
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLS: tuple[str, ...] = ("left", "center", "right")
SPLITS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
# Fraction of the scene-key hash space given to each split (train 80%, val 10%, test 10%).
_SPLIT_BOUNDS: tuple[tuple[str, int], ...] = (("train", 800), ("val", 900), ("test", 1000))


def colour_hue(name: str) -> float:
    """Hue of a palette colour in degrees [0, 360)."""
    r, g, b = (c / 255 for c in COLOURS[name])
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0


@dataclass(frozen=True)
class Shape:
    """One shape: attributes, grid cell, and centre in [0, 1] image coordinates."""

    colour: str
    kind: str
    size: str
    row: int
    col: int
    cx: float
    cy: float

    @property
    def extent(self) -> float:
        """Side of the bounding box as a fraction of the image side."""
        return SIZES[self.size]

    @property
    def position(self) -> str:
        """The cell in words: 'top left', 'top', 'left', 'center', ..."""
        return cell_name(self.row, self.col)

    def box(self, resolution: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in pixels of a ``resolution``-sided image."""
        h = self.extent / 2
        return tuple(float(v * resolution) for v in (self.cx - h, self.cy - h, self.cx + h, self.cy + h))

    def key(self) -> tuple[str, str, str, int, int]:
        return (self.colour, self.kind, self.size, self.row, self.col)


@dataclass(frozen=True)
class Scene:
    """A background grey level and 1-3 shapes in distinct grid cells."""

    shapes: tuple[Shape, ...]
    background: float

    def key(self) -> tuple[tuple[str, str, str, int, int], ...]:
        """The discrete description that decides the split (continuous jitter ignored)."""
        return tuple(sorted(s.key() for s in self.shapes))

    def to_dict(self) -> dict:
        return {"background": self.background, "shapes": [asdict(s) for s in self.shapes]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(shapes=tuple(Shape(**s) for s in d["shapes"]), background=float(d["background"]))


def cell_name(row: int, col: int) -> str:
    """Words for a 3x3 grid cell: 'center', 'left', 'top', 'top left', ..."""
    if row == 1 and col == 1:
        return "center"
    if row == 1:
        return COLS[col]
    if col == 1:
        return ROWS[row]
    return f"{ROWS[row]} {COLS[col]}"


def relation(a: Shape, b: Shape) -> str:
    """Where ``a`` is relative to ``b``: horizontal when their columns differ, else vertical."""
    if a.col != b.col:
        return "left of" if a.col < b.col else "right of"
    assert a.row != b.row, "shapes share a cell"
    return "above" if a.row < b.row else "below"


def split_of(scene: Scene) -> str:
    """The split a scene belongs to, from a hash of its discrete key (seed-independent)."""
    digest = hashlib.sha256(repr(scene.key()).encode()).digest()
    bucket = int.from_bytes(digest[:8], "little") % 1000
    return next(name for name, bound in _SPLIT_BOUNDS if bucket < bound)


def sample_scene(rng: np.random.Generator, cfg: ShapesWorldConfig) -> Scene:
    """Draw one scene (split not yet checked)."""
    n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    cells = rng.choice(9, size=n, replace=False)
    colours, kinds, sizes = list(COLOURS), list(KINDS), list(SIZES)
    shapes: list[Shape] = []
    for cell in cells:
        if shapes and rng.random() < cfg.duplicate_prob:
            # Repeat an earlier shape's colour and kind, so counting ("two red circles") is learnt.
            prev = shapes[int(rng.integers(len(shapes)))]
            colour, kind = prev.colour, prev.kind
        else:
            colour, kind = colours[int(rng.integers(len(colours)))], kinds[int(rng.integers(len(kinds)))]
        size = sizes[int(rng.integers(len(sizes)))]
        row, col = divmod(int(cell), 3)
        cx = CELL_CENTRES[col] + float(rng.uniform(-JITTER, JITTER))
        cy = CELL_CENTRES[row] + float(rng.uniform(-JITTER, JITTER))
        shapes.append(Shape(colour, kind, size, row, col, cx, cy))
    background = float(rng.uniform(0.15, 0.85))
    return Scene(shapes=tuple(shapes), background=background)


def scene_for_index(cfg: ShapesWorldConfig, split: str, index: int) -> Scene:
    """Sample ``index`` of ``split``: the same scene on every machine, never in another split."""
    if split not in SPLITS:
        raise ValueError(f"unknown ShapesWorld split {split!r}; choose one of {sorted(SPLITS)}")
    if index < 0:
        raise IndexError(f"ShapesWorld index must be >= 0, got {index}")
    for attempt in range(10_000):
        rng = np.random.default_rng([cfg.seed, SPLITS[split], index, attempt])
        scene = sample_scene(rng, cfg)
        if split_of(scene) == split:
            return scene
    raise RuntimeError(f"no {split} scene found for index {index}: the split is empty for this config")


def _shape_polygons(shape: Shape, side: int) -> list[list[tuple[float, float]]]:
    """Polygons (pixel coordinates in a ``side``-sided canvas) whose union is the shape."""
    x0, y0, x1, y1 = shape.box(side)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape.kind == "square":
        return [[(x0, y0), (x1, y0), (x1, y1), (x0, y1)]]
    if shape.kind == "triangle":  # upright, apex at the top
        return [[(cx, y0), (x1, y1), (x0, y1)]]
    if shape.kind == "diamond":
        return [[(cx, y0), (x1, cy), (cx, y1), (x0, cy)]]
    if shape.kind == "cross":  # a plus sign with arms one third of the side wide
        t = (x1 - x0) / 6
        return [
            [(x0, cy - t), (x1, cy - t), (x1, cy + t), (x0, cy + t)],
            [(cx - t, y0), (cx + t, y0), (cx + t, y1), (cx - t, y1)],
        ]
    raise AssertionError(f"polygon for {shape.kind}")


def render(scene: Scene, resolution: int, supersample: int = 4) -> Image.Image:
    """Draw a scene as an RGB image, anti-aliased by drawing ``supersample`` x larger and
    area-averaging down (box filter: each output pixel is its exact coverage blend)."""
    side = resolution * supersample
    grey = round(scene.background * 255)
    img = Image.new("RGB", (side, side), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    for shape in scene.shapes:
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse(shape.box(side), fill=fill)
        else:
            for poly in _shape_polygons(shape, side):
                draw.polygon(poly, fill=fill)
    if supersample == 1:
        return img
    return img.resize((resolution, resolution), Image.Resampling.BOX)


def patch_labels(scene: Scene, resolution: int, patch: int, min_cover: float = 0.1) -> np.ndarray:
    """Per patch of a ``resolution``-sided render, the shape that covers it: (3, G, G) int64 of
    1 + the index of its colour / kind / size in COLOURS / KINDS / SIZES, 0 where no shape's box
    covers at least ``min_cover`` of the patch (G = resolution // patch). Where boxes overlap a
    patch the larger overlap wins. Targets of the tiny preset's encoder pretraining."""
    grid = resolution // patch
    labels = np.zeros((3, grid, grid), dtype=np.int64)
    best = np.full((grid, grid), min_cover * patch * patch)
    edges = np.arange(grid + 1) * patch
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box(resolution)
        cover_x = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None)  # (G,)
        cover_y = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None)
        cover = cover_y[:, None] * cover_x[None, :]  # (G rows, G cols)
        wins = cover >= best
        best = np.where(wins, cover, best)
        for channel, index in enumerate(
            (list(COLOURS).index(shape.colour), KINDS.index(shape.kind), list(SIZES).index(shape.size))
        ):
            labels[channel][wins] = 1 + index
    return labels


def shape_matches(shape: Shape, description: str) -> bool:
    """Whether ``shape`` fits a description of size and/or kind words ("small cross", "cross",
    "small")."""
    return set(description.split()) <= {shape.size, shape.kind}


def check_shape_description(description: str) -> str | None:
    """None for a valid description of size and/or kind words, else what is wrong with it."""
    words = description.split()
    unknown = [w for w in words if w not in SIZES and w not in KINDS]
    if not words or unknown:
        return f"{description!r}: use size and/or kind words, e.g. 'small cross' ({', '.join([*SIZES, *KINDS])})"
    return None


def shape_mask(scene: Scene, resolution: int, descriptions: list[str], pad: int = 2) -> np.ndarray:
    """(R, R) bool: the bounding boxes, grown by ``pad`` pixels, of the scene's shapes that fit
    any of ``descriptions`` (:func:`shape_matches`) in a ``resolution``-sided render."""
    mask = np.zeros((resolution, resolution), dtype=bool)
    for shape in scene.shapes:
        if any(shape_matches(shape, d) for d in descriptions):
            x0, y0, x1, y1 = shape.box(resolution)
            r0, c0 = max(int(np.floor(y0)) - pad, 0), max(int(np.floor(x0)) - pad, 0)
            mask[r0 : int(np.ceil(y1)) + pad, c0 : int(np.ceil(x1)) + pad] = True
    return mask
