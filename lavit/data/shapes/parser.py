"""Read a ShapesWorld image back into shapes: colour, kind, size, grid cell and box.

An analytic detector, no learning: it judges generated images, so it must not share the
failure modes of the models it judges.

1. Foreground = pixels with chroma (max - min of RGB) above a threshold. The background is a
   neutral grey, so its chroma is ~0 whatever its brightness.
2. Each foreground pixel gets the palette colour of nearest hue. Blending a colour with grey
   (anti-aliasing, blur) leaves its hue unchanged, so edges keep their shape's colour.
3. Connected components per colour (4-neighbour); specks below a minimum area are dropped.
4. Per component, a soft coverage map: each pixel's blend coefficient between the local
   background and the palette colour. For each kind the box is fitted from the map's area and centroid,
   which blur preserves; the kind is drawn there anti-aliased (sharp and blurred) and the best
   soft Dice wins. Binary masks are not enough: a 9-pixel diamond and circle differ by a few
   half-covered pixels.
5. Size from the fitted side (threshold halfway between the two sizes); cell from its centre.

Measured on 1,000 test scenes at 64 px (tests/test_shapes_parser.py): clean 100%; Gaussian blur
sigma 0.75 px + N(0, 0.05) noise 100%; blur sigma 1.0 + N(0, 0.03) 98.7%; JPEG q75 4:4:4 100%.
Weak spot: JPEG 4:2:0 chroma subsampling (74% at q75, 94.5% at q90), which erases the arms of
9-pixel crosses. At 32 px clean renders parse 100%, but small shapes are ~6 px and mild blur
already costs 10-20%, so judge generated images at 64 px or more.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image

from lavit.data.shapes import CELL_CENTRES, COLOURS, KINDS, SIZES, Scene, cell_name, colour_hue, relation
from lavit.data.shapes.text import stated_layout

CHROMA_THRESHOLD = 0.2  # palette chroma is >= 0.69; noise on grey stays far below
_PALETTE = list(COLOURS)
_PALETTE_HUES = np.array([colour_hue(c) for c in _PALETTE])  # (C,) degrees
_PALETTE_RGB = {c: np.array(rgb, dtype=np.float32) / 255 for c, rgb in COLOURS.items()}
_SIZE_SPLIT = (SIZES["small"] + SIZES["large"]) / 2
_CELL_SPLITS = ((CELL_CENTRES[0] + CELL_CENTRES[1]) / 2, (CELL_CENTRES[1] + CELL_CENTRES[2]) / 2)
# Per kind: area / side^2 in its box, and (box centre y - centroid y) / side. Together they give
# each kind's box from the blob's area and centroid alone.
_FILL = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5, "diamond": 0.5, "cross": 5 / 9}
_CENTROID_DY = {"circle": 0.0, "square": 0.0, "triangle": -1 / 6, "diamond": 0.0, "cross": 0.0}
_BLURS = (0.0, 0.7, 1.2)  # template blurs tried (Gaussian sigma, pixels)
_SS = 4  # template supersampling per pixel side


@dataclass(frozen=True)
class ParsedShape:
    """A shape found in an image. ``box`` is the fitted (x0, y0, x1, y1), sub-pixel, in pixels."""

    colour: str
    kind: str
    size: str
    row: int
    col: int
    box: tuple[float, float, float, float]
    area: float  # covered pixels (soft)
    score: float  # soft Dice with the best template: ~0.9+ on clean renders, low for blobs

    @property
    def position(self) -> str:
        return cell_name(self.row, self.col)

    def key(self) -> tuple[str, str, str, int, int]:
        return (self.colour, self.kind, self.size, self.row, self.col)


# --------------------------------------------------------------------------------------------
# Pixels -> components
# --------------------------------------------------------------------------------------------


def _hue_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue in degrees and chroma in [0, 1] of an (H, W, 3) float image in [0, 1]."""
    mx, mn = rgb.max(-1), rgb.min(-1)
    chroma = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.where(chroma > 0, chroma, 1.0)
    hue = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4))
    return hue * 60.0, chroma


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected components of a boolean (H, W) mask by min-label propagation.

    Returns (labels, n): labels in 1..n on the mask, 0 elsewhere. Vectorised: each pass takes
    the minimum label over the 4 neighbours; it converges in about the longest in-component path.
    """
    h, w = mask.shape
    big = np.iinfo(np.int64).max
    labels = np.where(mask, np.arange(1, h * w + 1, dtype=np.int64).reshape(h, w), big)
    while True:
        nb = labels.copy()
        nb[1:, :] = np.minimum(nb[1:, :], labels[:-1, :])
        nb[:-1, :] = np.minimum(nb[:-1, :], labels[1:, :])
        nb[:, 1:] = np.minimum(nb[:, 1:], labels[:, :-1])
        nb[:, :-1] = np.minimum(nb[:, :-1], labels[:, 1:])
        nb = np.where(mask, nb, big)
        if np.array_equal(nb, labels):
            break
        labels = nb
    roots = np.unique(labels[mask])
    out = np.zeros((h, w), dtype=np.int64)
    out[mask] = np.searchsorted(roots, labels[mask]) + 1
    return out, len(roots)


def _grow(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary dilation by ``steps`` 4-neighbour steps."""
    out = mask.copy()
    for _ in range(steps):
        g = out.copy()
        g[1:] |= out[:-1]
        g[:-1] |= out[1:]
        g[:, 1:] |= out[:, :-1]
        g[:, :-1] |= out[:, 1:]
        out = g
    return out


# --------------------------------------------------------------------------------------------
# Coverage -> kind and box
# --------------------------------------------------------------------------------------------


def _inside(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of points (u, v), box coordinates in [0, 1] with v down, in a kind."""
    in_box = (u >= 0) & (u <= 1) & (v >= 0) & (v <= 1)
    if kind == "circle":
        return (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25
    if kind == "square":
        return in_box
    if kind == "triangle":  # apex at the top: half-width grows linearly with v
        return (np.abs(u - 0.5) <= v / 2) & (v <= 1)
    if kind == "diamond":
        return np.abs(u - 0.5) + np.abs(v - 0.5) <= 0.5
    if kind == "cross":  # arms one third of the side wide
        return in_box & ((np.abs(u - 0.5) <= 1 / 6) | (np.abs(v - 0.5) <= 1 / 6))
    raise AssertionError(kind)


def template_coverage(kind: str, box: tuple[float, float, float, float], shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased (h, w) coverage of ``kind`` drawn in a sub-pixel ``box`` (x0, y0, x1, y1)."""
    h, w = shape
    x0, y0, x1, y1 = box
    ys = (np.arange(h * _SS) + 0.5) / _SS
    xs = (np.arange(w * _SS) + 0.5) / _SS
    v, u = np.meshgrid((ys - y0) / (y1 - y0), (xs - x0) / (x1 - x0), indexing="ij")
    fine = _inside(kind, u, v).astype(np.float32)
    return fine.reshape(h, _SS, w, _SS).mean(axis=(1, 3))


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur as two small matrix products (rows renormalised at the border)."""
    if sigma == 0:
        return img

    def mat(n: int) -> np.ndarray:
        idx = np.arange(n)
        g = np.exp(-0.5 * ((idx[:, None] - idx[None, :]) / sigma) ** 2)
        return g / g.sum(axis=1, keepdims=True)

    return mat(img.shape[0]) @ img @ mat(img.shape[1]).T


def classify_kind(coverage: np.ndarray) -> tuple[str, float, tuple[float, float, float, float]]:
    """Best kind for a soft (h, w) coverage map holding one shape.

    Returns:
        (kind, soft Dice, box) with the box (x0, y0, x1, y1) in the map's pixel coordinates.
    """
    h, w = coverage.shape
    area = float(coverage.sum())
    assert area > 0, "empty coverage map"
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    mx, my = float((coverage * xs).sum() / area), float((coverage * ys).sum() / area)
    best = (KINDS[0], -1.0, (0.0, 0.0, 1.0, 1.0))
    for kind in KINDS:
        side = float(np.sqrt(area / _FILL[kind]))
        cx, cy = mx, my + _CENTROID_DY[kind] * side
        box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
        sharp = template_coverage(kind, box, (h, w))
        for sigma in _BLURS:
            t = _blur(sharp, sigma)
            dice = 1.0 - float(np.abs(coverage - t).sum() / max((coverage + t).sum(), 1e-6))
            if dice > best[1]:
                best = (kind, dice, box)
    return best


def _measure(comp: np.ndarray, rgb: np.ndarray, fg: np.ndarray, colour: str) -> ParsedShape:
    """Kind, box, size and cell of one component (a boolean (H, W) mask).

    Coverage (the fraction of a pixel the shape covers) is the least-squares blend coefficient
    of the pixel between the local background and the shape's colour:
    ``a = (p - bg) . (c - bg) / |c - bg|^2``. It uses luma as well as chroma, so it stays sharp
    under JPEG's half-resolution chroma.
    """
    h, w = comp.shape
    ys, xs = np.nonzero(comp)
    pad = 3
    y0, y1 = max(int(ys.min()) - pad, 0), min(int(ys.max()) + pad + 1, h)
    x0, x1 = max(int(xs.min()) - pad, 0), min(int(xs.max()) + pad + 1, w)
    local, patch, local_fg = comp[y0:y1, x0:x1], rgb[y0:y1, x0:x1], fg[y0:y1, x0:x1]
    # This component and the background within 2 px of it; other shapes' pixels never count.
    own = _grow(local, 2) & (local | ~local_fg)
    bg = np.median(patch[~local_fg], axis=0) if (~local_fg).any() else np.zeros(3, np.float32)
    direction = _PALETTE_RGB[colour] - bg  # (3,)
    alpha = (patch - bg) @ direction / max(float(direction @ direction), 1e-6)  # (h, w)
    full = max(float(np.percentile(alpha[local], 95)), 0.9)  # off-palette (darker) renders
    coverage = np.where(own, np.clip(alpha / full, 0.0, 1.0), 0.0)
    kind, score, (bx0, by0, bx1, by1) = classify_kind(coverage)
    box = (bx0 + x0, by0 + y0, bx1 + x0, by1 + y0)
    extent = (bx1 - bx0) / float(min(h, w))
    cx, cy = (box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h
    col = int(cx >= _CELL_SPLITS[0]) + int(cx >= _CELL_SPLITS[1])
    row = int(cy >= _CELL_SPLITS[0]) + int(cy >= _CELL_SPLITS[1])
    size = "small" if extent < _SIZE_SPLIT else "large"
    return ParsedShape(colour, kind, size, row, col, box, float(coverage.sum()), score)


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def parse_scene(image: Image.Image | np.ndarray, *, min_area_frac: float = 0.3) -> list[ParsedShape]:
    """Find the shapes in a ShapesWorld-style image.

    Args:
        image: RGB PIL image, or an (H, W, 3) array (uint8, or float in [0, 1]).
        min_area_frac: components smaller than this fraction of the smallest shape's area
            (a small triangle) are ignored as specks.

    Returns:
        Shapes sorted by the top, then the left, of their box.
    """
    rgb = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"parse_scene needs an (H, W, 3) RGB image, got shape {rgb.shape}")
    rgb = rgb.astype(np.float32) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float32)
    h, w = rgb.shape[:2]
    hue, chroma = _hue_chroma(rgb)
    fg = chroma > CHROMA_THRESHOLD
    d = np.abs(hue[..., None] - _PALETTE_HUES)  # (H, W, C) hue distances, circular below
    cls = np.minimum(d, 360 - d).argmin(-1)
    min_area = min_area_frac * _FILL["triangle"] * (SIZES["small"] * min(h, w)) ** 2

    shapes = []
    for ci, colour in enumerate(_PALETTE):
        mask = fg & (cls == ci)
        if not mask.any():
            continue
        labels, n = label_components(mask)
        for lab in range(1, n + 1):
            comp = labels == lab
            if comp.sum() >= min_area:
                shapes.append(_measure(comp, rgb, fg, colour))
    return sorted(shapes, key=lambda s: (s.box[1], s.box[0]))


def scene_recovered(scene: Scene, parsed: list[ParsedShape]) -> bool:
    """True when the parsed shapes equal the scene's exactly: colour, kind, size and cell."""
    return Counter(s.key() for s in scene.shapes) == Counter(p.key() for p in parsed)


def colour_kinds(shapes) -> Counter:
    """How many shapes of each (colour, kind), for scene shapes and parsed shapes alike."""
    return Counter((s.colour, s.kind) for s in shapes)


def attributes_kept(scene: Scene, parsed: list[ParsedShape]) -> bool:
    """True when the parsed shapes have the scene's colours and kinds (counted), wherever they are
    and whatever their size: the reconstruction criterion for a detokenizer."""
    return colour_kinds(scene.shapes) == colour_kinds(parsed)


def _relation(a: ParsedShape, b: ParsedShape) -> str | None:
    """:func:`lavit.data.shapes.relation` for parsed shapes; None for two in one cell."""
    return None if (a.row, a.col) == (b.row, b.col) else relation(a, b)


def _matchings(scene: Scene, parsed: list[ParsedShape]):
    """Orderings of ``parsed`` that pair each scene shape with one of its colour and kind
    (shapes repeating a colour and kind may match either way)."""
    if not attributes_kept(scene, parsed):
        return
    for order in itertools.permutations(parsed):
        if all((p.colour, p.kind) == (s.colour, s.kind) for p, s in zip(order, scene.shapes, strict=True)):
            yield order


def prompt_satisfied(scene: Scene, parsed: list[ParsedShape]) -> bool:
    """Text-to-image correctness: the image shows what the prompt written from ``scene``
    (:func:`lavit.data.shapes.text.prompt`) says, no more. Every shape by colour, kind and size
    (so the count too); the stated relation of the first two shapes (left of / right of / above /
    below, as :func:`lavit.data.shapes.relation`); every shape the prompt places by name (a lone
    shape, a third one) in that cell. Relations the prompt leaves open are not judged."""
    stated, cells = stated_layout(scene)
    for order in _matchings(scene, parsed):
        if any(p.size != s.size for p, s in zip(order, scene.shapes, strict=True)):
            continue
        if stated is not None and _relation(order[stated[0]], order[stated[2]]) != stated[1]:
            continue
        if all((order[i].row, order[i].col) == cell for i, cell in cells.items()):
            return True
    return False


def layout_matches(scene: Scene, parsed: list[ParsedShape]) -> bool:
    """The layout check that text to image was judged by until 2026-11-24: the shapes
    of :func:`attributes_kept`, every pair in the scene's relative position and a lone shape in
    its cell. For three shapes it asks relations the prompt does not state (the third one's to
    the first two) and does not ask the third one's stated cell, nor any size."""
    shapes = scene.shapes
    for order in _matchings(scene, parsed):
        if len(shapes) == 1:
            if (order[0].row, order[0].col) == (shapes[0].row, shapes[0].col):
                return True
        elif all(
            _relation(order[i], order[j]) == relation(shapes[i], shapes[j])
            for i in range(len(shapes))
            for j in range(i + 1, len(shapes))
        ):
            return True
    return False
