"""Tests for lavit.visual_prompts: every kind draws, covers its region, stays in the image, is
deterministic, and each kind of bad input fails with a message naming the bad value.

Marks are drawn in red on a plain grey image, so "changed pixels" are exactly the mark's pixels
(ImageDraw does not antialias).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from lavit.visual_prompts import (
    MARK_COLOURS,
    MARK_KINDS,
    Mark,
    default_width,
    draw_marks,
    mark_phrase,
    parse_mark,
)

GREY = (128, 128, 128)
OUTLINE_KINDS = ("rectangle", "ellipse", "triangle", "contour")


def _changed(kind: str, size: int, box=None, mask=None, seed: int = 0) -> np.ndarray:
    """(H, W) bool: the pixels a single red mark changes on a grey size x size image."""
    base = Image.new("RGB", (size, size), GREY)
    out = draw_marks(base, [Mark(kind, box=box, mask=mask, seed=seed)])
    assert out.size == base.size and out.mode == "RGB"
    return (np.asarray(out) != np.asarray(base)).any(-1)


def _bbox(changed: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box (x0, y0, x1, y1), exclusive ends, of the True pixels."""
    ys, xs = np.nonzero(changed)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlap_fraction(outer: tuple, box: tuple) -> float:
    """Fraction of ``box``'s area inside ``outer``."""
    w = max(0.0, min(outer[2], box[2]) - max(outer[0], box[0]))
    h = max(0.0, min(outer[3], box[3]) - max(outer[1], box[1]))
    return w * h / ((box[2] - box[0]) * (box[3] - box[1]))


def _near_box(changed: np.ndarray, box: tuple, tol: float) -> bool:
    """Whether every changed pixel lies within ``tol`` px of ``box``."""
    ys, xs = np.nonzero(changed)
    return bool(
        (xs >= box[0] - tol).all()
        and (xs + 1 <= box[2] + tol).all()
        and (ys >= box[1] - tol).all()
        and (ys + 1 <= box[3] + tol).all()
    )


def _boxes(size: int) -> list[tuple[float, float, float, float]]:
    """An interior box, boxes touching one corner or the opposite one, and the whole image."""
    s = size / 64
    return [
        (20 * s, 18 * s, 44 * s, 40 * s),
        (0.0, 0.0, 30 * s, 26 * s),
        (size - 24 * s, size - 20 * s, float(size), float(size)),
        (0.0, 0.0, float(size), float(size)),
    ]


@pytest.mark.parametrize("size", [64, 256])
@pytest.mark.parametrize("kind", MARK_KINDS)
def test_every_kind_draws_and_covers_its_region(kind: str, size: int) -> None:
    w = default_width((size, size))
    for box in _boxes(size):
        changed = _changed(kind, size, box=box)
        assert changed.any(), f"{kind} at {box} drew nothing"
        inside = changed[int(box[1]) : int(box[3]), int(box[0]) : int(box[2])]
        if kind in OUTLINE_KINDS:
            # The outline encloses the box: its extent covers the box (clipping at the image
            # edge only removes what lies outside), and the box's centre is left visible.
            assert _overlap_fraction(_bbox(changed), box) >= 0.9, (kind, box, _bbox(changed))
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            assert not changed[cy, cx], (kind, box)
        elif kind in ("point", "scribble"):
            assert _near_box(changed, box, tol=w), (kind, box, _bbox(changed))
        else:  # arrow: the head lies in the box; the shaft comes from outside it when there is room
            assert inside.any(), (kind, box)
            if box != (0.0, 0.0, float(size), float(size)):
                assert inside.sum() < changed.sum(), (kind, box)


@pytest.mark.parametrize("kind", ["point", "scribble", "arrow"])
def test_small_box_marks_stay_near_it(kind: str) -> None:
    box = (30.0, 30.0, 36.0, 35.0)
    changed = _changed(kind, 64, box=box)
    if kind == "arrow":
        assert changed[30:35, 30:36].any()
    else:  # a dot of radius 1.5 w may overhang a box smaller than the dot
        assert _near_box(changed, box, tol=1.5 * default_width((64, 64)) + 1)


def _disk_mask(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - 30) ** 2 / 200 + (yy - 34) ** 2 / 90 < 1  # (H, W) ellipse, off the image edge


def test_contour_follows_the_mask() -> None:
    mask = _disk_mask()
    w = default_width((64, 64))
    changed = _changed("contour", 64, mask=mask)
    # Mask boundary: mask pixels with a 4-neighbour outside the mask.
    pad = np.pad(mask, 1)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    by, bx = np.nonzero(mask & ~interior)
    cy, cx = np.nonzero(changed)
    # Chebyshev distance from each changed pixel to the nearest boundary pixel: (N, M) -> (N,)
    dist = np.maximum(abs(cx[:, None] - bx[None]), abs(cy[:, None] - by[None])).min(1)
    assert dist.max() <= w
    # ...and it goes all the way round: every boundary pixel has the contour next to it.
    back = np.maximum(abs(bx[:, None] - cx[None]), abs(by[:, None] - cy[None])).min(1)
    assert back.max() <= 1
    assert not (changed & interior).any()


@pytest.mark.parametrize("kind", MARK_KINDS)
def test_mask_marks_use_the_mask(kind: str) -> None:
    mask = _disk_mask()
    changed = _changed(kind, 64, mask=mask, seed=3)
    assert changed.any()
    if kind in ("point", "arrow"):  # the dot / arrow tip is on a mask pixel
        assert (changed & mask).any()


def test_mask_touching_the_image_edge_keeps_a_visible_contour() -> None:
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, :20] = True  # the whole left strip
    changed = _changed("contour", 64, mask=mask)
    assert changed[:, 20:22].all() and changed[:, :2].all()


def test_input_untouched_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    before = np.asarray(image).copy()
    marks = [Mark(k, box=(10, 12, 40, 44), colour=c, seed=7) for k, c in zip(MARK_KINDS, MARK_COLOURS, strict=False)]
    first, second = draw_marks(image, marks), draw_marks(image, marks)
    assert np.array_equal(np.asarray(image), before)
    assert np.array_equal(np.asarray(first), np.asarray(second))
    assert not np.array_equal(np.asarray(first), before)


def test_grey_input_modes_become_rgb() -> None:
    out = draw_marks(Image.new("L", (64, 64), 128), [Mark("rectangle", box=(10, 10, 30, 30))])
    assert out.mode == "RGB" and out.getpixel((8, 20)) == MARK_COLOURS["red"]


@pytest.mark.parametrize("kind", ["scribble", "arrow", "point"])
def test_seeds_change_the_random_parts(kind: str) -> None:
    drawn = {_changed(kind, 64, box=(8, 8, 56, 56), seed=s).tobytes() for s in range(4)}
    assert len(drawn) > 1


def test_explicit_width_scales_the_line() -> None:
    thin = _changed("rectangle", 256, box=(100, 100, 150, 150))
    thick = draw_marks(Image.new("RGB", (256, 256), GREY), [Mark("rectangle", box=(100, 100, 150, 150), width=9)])
    assert (np.asarray(thick) != GREY).any(-1).sum() > 3 * thin.sum()
    assert default_width((64, 64)) >= 2 and default_width((1024, 1024)) > default_width((64, 64))


def test_parse_mark_and_phrase() -> None:
    mark = parse_mark("ellipse:10,12,30,40:blue:3")
    assert (mark.kind, mark.box, mark.colour, mark.width) == ("ellipse", (10.0, 12.0, 30.0, 40.0), "blue", 3)
    assert parse_mark("point:1,2,3,4").colour == "red"
    assert mark_phrase(mark) == "the blue ellipse"
    assert mark_phrase(Mark("scribble", box=(0, 0, 5, 5), colour="yellow")) == "the yellow scribble"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "star", "box": (0, 0, 5, 5)}, "'star'.*rectangle, ellipse"),
        ({"kind": "point", "box": (0, 0, 5, 5), "colour": "mauve"}, "'mauve'.*red, green"),
        ({"kind": "point"}, "no region"),
        ({"kind": "contour", "mask": np.zeros((8, 8), dtype=bool)}, "mask has no True pixels"),
        ({"kind": "rectangle", "box": (10, 5, 10, 9)}, re.escape("(10.0, 5.0, 10.0, 9.0) is degenerate")),
        ({"kind": "rectangle", "box": (10, 9, 20, 5)}, "degenerate"),
        ({"kind": "rectangle", "box": (0, 0, 5)}, re.escape("(0, 0, 5)")),
        ({"kind": "rectangle", "box": (0, 0, 5, 5), "width": 0}, "width 0"),
        ({"kind": "contour", "mask": np.ones(8, dtype=bool)}, re.escape("shape (8,)")),
    ],
)
def test_bad_marks_name_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Mark(**kwargs)


@pytest.mark.parametrize(
    ("mark", "match"),
    [
        (
            Mark("rectangle", box=(50, 10, 70, 30)),
            re.escape("(50.0, 10.0, 70.0, 30.0) lies outside the 64x64 image") + ".*clip",
        ),
        (Mark("point", box=(-1, 0, 10, 10)), "outside the 64x64 image"),
        (
            Mark("contour", mask=np.ones((32, 64), dtype=bool)),
            re.escape("shape (32, 64) is not the image's (H, W) = (64, 64)"),
        ),
    ],
)
def test_marks_that_do_not_fit_the_image(mark: Mark, match: str) -> None:
    image = Image.new("RGB", (64, 64), GREY)
    with pytest.raises(ValueError, match=match):
        draw_marks(image, [mark])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("ellipse", "'ellipse'.*KIND:x0,y0,x1,y1"),
        ("ellipse:1,2,3:red", "'ellipse:1,2,3:red'.*KIND:x0,y0,x1,y1"),
        ("ellipse:a,b,c,d", "'ellipse:a,b,c,d'"),
        ("ellipse:1,2,3,4:red:thick", "'ellipse:1,2,3,4:red:thick'"),
        ("ellipse:1,2,3,4:red:2:extra", "KIND:x0,y0,x1,y1"),
        ("blob:1,2,3,4", "'blob:1,2,3,4'.*unknown mark kind 'blob'"),
        ("point:1,2,3,4:mauve", "unknown mark colour 'mauve'"),
        ("point:5,2,3,4", "degenerate"),
    ],
)
def test_parse_mark_errors_name_the_spec(spec: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_mark(spec)
