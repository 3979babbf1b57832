"""Boxes as tokens of the LM's vocabulary: written, parsed and constrained in one place.

OFA, Kosmos-2, Shikra and Qwen-VL put a region in the same token stream as the words about it,
so one next-token objective teaches a model both to name a region (box -> text: referring-
expression generation, grounded captions) and to find one (text -> box: comprehension). Here,
as in OFA, each coordinate is quantised to one of ``bins`` location tokens shared by x and y
(the ``VocabLayout``'s location block, ids ``[location_start, location_start + bins)``), and a
box is exactly four of them, ``x0 y0 x1 y1``::

    "a small red circle" <loc 9> <loc 10> <loc 14> <loc 15> " and a blue square" <loc ..> x4

Coordinates are fractions of the *model's* square image (what ``to_tensor`` feeds the
tokenizer: a centre crop, resized), so a box survives any resolution; :func:`box_in_square`
maps a box given in a source image's pixels through that crop. Bin ``b`` covers
``[b / bins, (b + 1) / bins)`` and decodes to its centre, so box -> tokens -> box moves each
side by at most half a bin.

:class:`BoxGrammar` is the decoding constraint: which ids may come next given what a row has
generated, so that a box is always four location tokens with ``x1 >= x0`` and ``y1 >= y0``,
no text id ever lands inside a box, and (mode ``box``) an answer is exactly one box.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lavit.vocab import VocabLayout

BOX_TOKENS = 4  # x0 y0 x1 y1
GRAMMAR_MODES = ("text", "grounded", "box")


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in fractions of the model's square image: 0 <= x0 <= x1 <= 1 (same
    for y). Zero width is allowed: a box whose two x coordinates fall in one bin decodes to that
    bin's centre for both."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        coords = (self.x0, self.y0, self.x1, self.y1)
        if not all(0.0 <= c <= 1.0 for c in coords) or self.x1 < self.x0 or self.y1 < self.y0:
            raise ValueError(
                f"box {coords} is not inside the image: a Box holds fractions of the image side with "
                "0 <= x0 <= x1 <= 1 and 0 <= y0 <= y1 <= 1 (from pixels: Box.from_pixels(box, width, height))"
            )

    @classmethod
    def from_pixels(cls, box: Sequence[float], width: int, height: int) -> Box:
        """(x0, y0, x1, y1) in pixels of a ``width`` x ``height`` image -> fractions of it.

        Raises:
            ValueError: the box is degenerate or leaves the image (named, with the image size).
        """
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(
                f"box {tuple(box)} is not inside the {width}x{height} image: give (x0, y0, x1, y1) in pixels "
                f"with 0 <= x0 < x1 <= {width} and 0 <= y0 < y1 <= {height} (clip it to the image first)"
            )
        return cls(x0 / width, y0 / height, x1 / width, y1 / height)

    def to_pixels(self, width: int, height: int | None = None) -> tuple[float, float, float, float]:
        height = width if height is None else height
        return (self.x0 * width, self.y0 * height, self.x1 * width, self.y1 * height)

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (two empty boxes: 1 if equal, else 0)."""
    w = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    h = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    inter = w * h
    union = a.area + b.area - inter
    return inter / union if union > 0 else float(a == b)


def box_in_square(box: Sequence[float], width: int, height: int, min_kept: float = 0.5) -> Box | None:
    """A box in pixels of a ``width`` x ``height`` source image -> the same region in the square
    the model sees (``to_tensor``'s centre crop of side ``min(width, height)``), clipped to it; None
    when less than ``min_kept`` of its area survives the crop (the crop cut the region away)."""
    Box.from_pixels(box, width, height)  # validates
    full = tuple(float(v) for v in box)
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    x0, y0 = max(full[0] - left, 0.0), max(full[1] - top, 0.0)
    x1, y1 = min(full[2] - left, side), min(full[3] - top, side)
    if x1 <= x0 or y1 <= y0:
        return None
    if (x1 - x0) * (y1 - y0) < min_kept * (full[2] - full[0]) * (full[3] - full[1]):
        return None
    return Box(x0 / side, y0 / side, x1 / side, y1 / side)


def box_to_source(box: Box, width: int, height: int) -> tuple[float, float, float, float]:
    """The inverse of :func:`box_in_square`: a box in the model's square -> (x0, y0, x1, y1) in
    pixels of the ``width`` x ``height`` source image it was cropped from."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (left + box.x0 * side, top + box.y0 * side, left + box.x1 * side, top + box.y1 * side)


# --- box <-> location ids --------------------------------------------------------------------


def _require_locations(layout: VocabLayout) -> int:
    if layout.num_locations < 1:
        raise ValueError(
            "this LM has no location tokens (lm.num_locations=0), so it cannot read or write boxes; "
            "train one with lm.num_locations > 0 (e.g. 32; configs/train/lm_grounding_tiny.yaml)"
        )
    return layout.num_locations


def box_to_ids(box: Box, layout: VocabLayout) -> list[int]:
    """Four location ids ``x0 y0 x1 y1``: each coordinate's bin ``min(floor(c * bins), bins - 1)``."""
    bins = _require_locations(layout)
    return [layout.location_start + min(int(c * bins), bins - 1) for c in (box.x0, box.y0, box.x1, box.y1)]


def ids_to_box(ids: Sequence[int], layout: VocabLayout) -> Box:
    """Four location ids -> the box through their bins' centres (at most half a bin from the box
    :func:`box_to_ids` was given). A far corner binned before the near one (only a model that
    was not constrained writes that) gives the box of the two corners, sorted."""
    bins = _require_locations(layout)
    if len(ids) != BOX_TOKENS or not all(layout.is_location_id(i) for i in ids):
        raise ValueError(f"a box is {BOX_TOKENS} location ids, got {list(ids)}")
    x0, y0, x1, y1 = ((i - layout.location_start + 0.5) / bins for i in ids)
    return Box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


Segment = str | Box  # text with boxes in it: ["a red circle", Box(...), " and a blue square", Box(...)]


def fill_box(template: str, box: Box) -> list[Segment]:
    """A prompt template with a box where its ``{}`` is ("What is at {}?" -> ["What is at ",
    box, "?"]): how a region is asked about, in training and at inference."""
    before, after = template.split("{}")
    return [before, box, after]


def split_boxes(ids: Sequence[int], layout: VocabLayout) -> list[list[int] | Box]:
    """Generated ids -> runs of non-location ids and the boxes between them, in order. A run of
    location ids that is not a whole number of boxes keeps its complete boxes and drops the rest
    (a generation cut off inside a box)."""
    out: list[list[int] | Box] = []
    run: list[int] = []
    locs: list[int] = []
    for i in list(ids) + [-1]:
        if i >= 0 and layout.is_location_id(i):
            if run:
                out.append(run)
                run = []
            locs.append(i)
            continue
        for k in range(0, len(locs) - len(locs) % BOX_TOKENS, BOX_TOKENS):
            out.append(ids_to_box(locs[k : k + BOX_TOKENS], layout))
        locs = []
        if i >= 0:
            run.append(i)
    if run:
        out.append(run)
    return out


# --- the decoding constraint -----------------------------------------------------------------


class BoxGrammar:
    """Which ids may come next, per row, given what each row has generated so far.

    Modes:
        ``text``: text ids only (no boxes; what plain captioning and VQA generate).
        ``grounded``: text, and boxes of exactly four location ids wherever the model starts one.
        ``box``: exactly one box, then the end of sequence (referring-expression comprehension).

    Inside a box only location ids are allowed, and the far corner's bins are never below the
    near one's. ``eos`` is allowed wherever a row may stop.
    """

    def __init__(self, layout: VocabLayout, mode: str, eos: int, device: torch.device | str = "cpu") -> None:
        if mode not in GRAMMAR_MODES:
            raise ValueError(f"unknown box grammar mode {mode!r}; use one of {GRAMMAR_MODES}")
        if mode != "text":
            _require_locations(layout)
        self.layout, self.mode, self.eos = layout, mode, eos
        self.text = layout.text_mask(device)  # (V,) text ids, eos among them
        self.locations = layout.location_mask(device)  # (V,)
        self.text_or_box = self.text | self.locations
        self.eos_only = torch.zeros_like(self.text)
        self.eos_only[eos] = True

    def allowed(self, generated: Sequence[Sequence[int]]) -> torch.Tensor:
        """(B, V) bool: the ids row ``b`` may emit after ``generated[b]``."""
        if self.mode == "text":
            return self.text.expand(len(generated), -1)
        return torch.stack([self._row(g) for g in generated])

    def _row(self, generated: Sequence[int]) -> torch.Tensor:
        trailing = 0  # location ids at the end of the row
        while trailing < len(generated) and self.layout.is_location_id(generated[len(generated) - 1 - trailing]):
            trailing += 1
        inside = trailing % BOX_TOKENS
        if self.mode == "box" and trailing >= BOX_TOKENS:
            return self.eos_only
        if inside == 0:
            return self.locations if self.mode == "box" else self.text_or_box
        if inside < 2:
            return self.locations
        # x1 (inside == 2) may not bin below x0; y1 (inside == 3) not below y0.
        near = generated[len(generated) - 2]
        mask = self.locations.clone()
        mask[self.layout.location_start : near] = False
        return mask
