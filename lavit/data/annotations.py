"""What a sample can carry beyond its image and text, and what the training stages do with it.

A source puts annotations in ``Sample.meta`` (JSON-able, so they survive the codes cache).
The training stages never interpret a source's metadata themselves: they ask this module, the
one place that knows which annotations exist and which source gives them. Today one kind does:

``scene`` (ShapesWorld, :mod:`lavit.data.shapes`): the symbolic scene an image was rendered
from. It gives per-patch labels (encoder pretraining), a focus mask over named shapes (the VAE
and diffusion losses' ``focus_weight``), the parser's verdict on a reconstructed image, a
caption check, the code probe of a tokenizer, and multimodal synthesis prompts made of a
scene's parts (the LM's ``synthesis_prob``).

``regions`` (RefCOCO, :mod:`lavit.data.refcoco`, or a JSONL record's ``regions``): boxes in the
source image's pixels with the phrases that refer to them. ShapesWorld gives its shapes as
regions too, from the scene. They feed the grounding tasks (:func:`regions`) and the visual-
prompt questions (:func:`marked_question`).

Every function takes ``meta`` dicts (a ``Sample.meta`` or a cached record's ``meta``). A stage
that needs an annotation asks :func:`require_scenes` first, so a source without it is refused
with one line before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from lavit.config import ConfigError, DataConfig
from lavit.data import shapes
from lavit.data.shapes import judge, parser, text
from lavit.data.sources import resolve_kind
from lavit.grounding import Box, Segment, box_in_square, iou
from lavit.visual_prompts import MARK_COLOURS, MARK_KINDS, Mark, draw_marks, mark_phrase

Meta = dict[str, Any]
SCENE_KIND = "shapes"  # the source kind whose samples carry a ``scene``
# The per-patch label sets of :func:`patch_labels`: (attribute, classes), 0 = no shape.
PATCH_ATTRIBUTES: tuple[tuple[str, int], ...] = (
    ("colour", len(shapes.COLOURS)),
    ("kind", len(shapes.KINDS)),
    ("size", len(shapes.SIZES)),
)


def has_scene(meta: Meta) -> bool:
    """Whether the sample knows the scene it shows."""
    return "scene" in meta


def scenes_known(cfg: DataConfig, split: str) -> bool:
    """Whether every (weighted) source of ``cfg.<split>`` gives its samples' scenes."""
    sources = getattr(cfg, split)
    return bool(sources) and all(resolve_kind(s) == SCENE_KIND for s in sources if s.weight > 0)


def require_scenes(cfg: DataConfig, what: str) -> None:
    """Raise a one-line ConfigError unless every train and val source gives scenes."""
    for split in ("train", "val"):
        for i, s in enumerate(getattr(cfg, split)):
            if s.weight > 0 and (kind := resolve_kind(s)) != SCENE_KIND:
                raise ConfigError(f"data.{split}[{i}] is kind {kind}: {what} needs ShapesWorld scenes (kind: shapes)")


def _scene(meta: Meta) -> shapes.Scene:
    return shapes.Scene.from_dict(meta["scene"])


def patch_labels(meta: Meta, resolution: int, patch: int) -> np.ndarray:
    """(len(PATCH_ATTRIBUTES), N) int labels per ``patch``-sided patch, 0 where no shape covers it."""
    return shapes.patch_labels(_scene(meta), resolution, patch)


def focus_mask(meta: Meta, resolution: int, descriptions: list[str]) -> torch.Tensor:
    """(1, R, R) float mask over the boxes of the shapes that fit ``descriptions`` ("small cross")."""
    return torch.from_numpy(shapes.shape_mask(_scene(meta), resolution, descriptions))[None].float()


def judge_images(metas: list[Meta], images: torch.Tensor) -> tuple[int, int]:
    """(kept, recovered) of reconstructions ``images`` (B, 3, H, W) in [0, 1]: how many show every
    shape of their scene with its colour and kind, and how many the whole scene."""
    return judge.judge_scenes([_scene(m) for m in metas], images)


def prompt_drawn(meta: Meta, image) -> bool:
    """Whether ``image`` (PIL) shows what the sample's prompt asks for, as the parser reads it."""
    return parser.prompt_satisfied(_scene(meta), parser.parse_scene(image))


def caption_right(meta: Meta, caption: str) -> bool:
    """Whether ``caption`` names the scene's shapes (colours, kinds and count)."""
    return text.caption_names_scene(_scene(meta), caption)


def code_probe(codes: list[torch.Tensor], metas: list[Meta], codebook_size: int) -> dict[str, float]:
    """How well a linear probe on the bag of codes reads the scenes' colours and shapes."""
    return judge.code_probe(codes, [_scene(m) for m in metas], codebook_size)


def synthesis_prompt(meta: Meta, rng: np.random.Generator, resolution: int, supersample: int) -> list:
    """A multimodal prompt whose answer is the sample's scene, made of its parts in the order
    ``pipe.synthesize`` takes them: [image, "a <size> <colour> <kind>"] (one shape left out of
    the image and named; the size half the time) or [image, image] (the shapes split between
    the two, in random order). Images are PIL renders; a part may show no shape."""
    target = _scene(meta)
    parts = [target.shapes[i] for i in rng.permutation(len(target.shapes))]
    if rng.random() < 0.5:
        named = parts.pop()
        size = f"{named.size} " if rng.random() < 0.5 else ""
        pieces: list = [tuple(parts), f"a {size}{named.colour} {named.kind}"]
    else:
        cut = int(rng.integers(len(parts) + 1))
        pieces = [tuple(parts[:cut]), tuple(parts[cut:])]
    return [
        p if isinstance(p, str) else shapes.render(shapes.Scene(p, target.background), resolution, supersample)
        for p in pieces
    ]


# --- regions: grounding and visual prompts -------------------------------------------------------

# Marks a training or evaluation question draws around a region (contour needs a mask; the
# others take the region's box).
BOX_MARKS = tuple(k for k in MARK_KINDS if k != "contour")


@dataclass(frozen=True)
class Region:
    """A region of a sample's image and what refers to it.

    Attributes:
        pixels: (x0, y0, x1, y1) in pixels of the source image (where marks are drawn).
        box: the same region in the model's square image (lavit.grounding), None when the centre
            crop cuts it away.
        phrases: referring expressions that single it out ("the small red circle").
        description: what naming it answers ("a small red circle").
        shape: ShapesWorld: the index of its shape in the scene; else None.
    """

    pixels: tuple[float, float, float, float]
    box: Box | None
    phrases: tuple[str, ...]
    description: str
    shape: int | None = None


def has_regions(meta: Meta) -> bool:
    """Whether the sample gives boxes with phrases (ShapesWorld scenes always do)."""
    return has_scene(meta) or bool(meta.get("regions"))


def regions(meta: Meta, image_size: tuple[int, int] | None = None) -> list[Region]:
    """The sample's regions, for a source image of ``image_size`` (width, height; default the
    ``image_size`` a reader stored, or the unit square for a scene): ShapesWorld's shapes (from
    the scene), or the ``regions`` a reader stored, boxes mapped through the model's centre crop."""
    if image_size is None and not has_scene(meta):
        if "image_size" not in meta:
            raise ValueError(
                "a sample with regions but no image_size: its boxes are pixels of an image of unknown size; "
                'give its record "image_size": [width, height] beside "regions" (RefCOCO\'s reader does)'
            )
        image_size = tuple(meta["image_size"])
    image_size = image_size or (1, 1)
    w, h = image_size
    if has_scene(meta):
        scene, out = _scene(meta), []
        for i, shape in enumerate(scene.shapes):
            x0, y0, x1, y1 = (min(max(v, 0.0), 1.0) for v in shape.box(1))
            pixels = (x0 * w, y0 * h, x1 * w, y1 * h)
            phrases = tuple(text.referring_phrases(scene, i))
            out.append(Region(pixels, box_in_square(pixels, w, h), phrases, text.region_description(shape), i))
        return out
    out = []
    for r in meta.get("regions") or []:
        pixels = tuple(float(v) for v in r["box"])
        phrases = tuple(r["phrases"])
        out.append(Region(pixels, box_in_square(pixels, w, h), phrases, phrases[0]))
    return out


def grounded_caption(meta: Meta) -> list[Segment] | None:
    """A caption that boxes every shape it names, in the scene's order ("a small red circle"
    <box> ", and a large blue square" <box>); None without a scene."""
    if not has_scene(meta):
        return None
    parts: list[Segment] = []
    found = regions(meta)
    for k, region in enumerate(found):
        sep = "" if k == 0 else (" and " if k == len(found) - 1 else ", ")
        parts += [sep + region.description, region.box]
    return parts


def grounded_caption_right(meta: Meta, parts: list[Segment], min_iou: float = 0.5) -> bool:
    """Whether a grounded caption names every shape (colour and kind, the caption check) and boxes
    each named shape: the phrase before each box names a shape that box overlaps with IoU >=
    ``min_iou``, every shape once."""
    phrases = [p for p in parts if isinstance(p, str)]
    if not caption_right(meta, " ".join(phrases)):
        return False
    scene, found = _scene(meta), regions(meta)
    unmatched = set(range(len(found)))
    for before, box in pairwise(parts):
        if not (isinstance(before, str) and isinstance(box, Box)):
            continue
        named = text.parse_mentions(before)
        if len(named) != 1:
            return False
        hit = [
            i for i in unmatched
            if (scene.shapes[i].colour, scene.shapes[i].kind) == (named[0].colour, named[0].kind)
            and iou(found[i].box, box) >= min_iou
        ]  # fmt: skip
        if not hit:
            return False
        unmatched.discard(hit[0])
    return not unmatched


def region_named(meta: Meta, region: Region, answer: str) -> bool:
    """Referring-expression generation, checked: on ShapesWorld the answer names exactly the
    region's shape (colour and kind); elsewhere it equals one of the region's phrases (lowercased)."""
    if has_scene(meta) and region.shape is not None:
        s = _scene(meta).shapes[region.shape]
        return [(m.colour, m.kind) for m in text.parse_mentions(answer)] == [(s.colour, s.kind)]
    return answer.strip().lower() in {p.strip().lower() for p in region.phrases}


# The questions a mark stands in for, about a ShapesWorld shape: (template, answer attribute).
MARKED_QUESTIONS = (
    ("what colour is the shape in {}?", "colour"),
    ("what shape is in {}?", "kind"),
    ("is the shape in {} large or small?", "size"),
)


class MarkedQuestion(NamedTuple):
    """A question that refers to a region through a mark (:func:`marked_question`)."""

    image: Image.Image  # the image with the mark drawn on it
    question: str  # "what colour is the shape in the red ellipse?"
    answer: str
    worded: str | None  # the same question, the region named in words (None: the source has none)
    mark: Mark


def marked_question(
    meta: Meta, image: Image.Image, rng: np.random.Generator, region: int | None = None, question: int | None = None
) -> MarkedQuestion:
    """A question that refers to one region only through a mark drawn on the image (ViP-LLaVA).

    A region (``region``, else drawn) gets a mark of a random kind and colour; on ShapesWorld the
    question asks the colour, kind or size of "the shape in the red rectangle" (``question``:
    the index in :data:`MARKED_QUESTIONS`, else drawn), elsewhere "what is in the red rectangle?"
    (answered by the region's first phrase).

    """
    found = regions(meta, image.size)
    if not found:
        raise ValueError("marked_question needs a sample with regions (ShapesWorld, RefCOCO or JSONL regions)")
    r = found[int(rng.integers(len(found)))] if region is None else found[region]
    colour = list(MARK_COLOURS)[int(rng.integers(len(MARK_COLOURS)))]
    mark = Mark(
        BOX_MARKS[int(rng.integers(len(BOX_MARKS)))], box=r.pixels, colour=colour, seed=int(rng.integers(2**31))
    )
    marked = draw_marks(image, [mark])
    if r.shape is None:
        return MarkedQuestion(marked, f"what is in {mark_phrase(mark)}?", r.phrases[0], None, mark)
    q = int(rng.integers(len(MARKED_QUESTIONS))) if question is None else question
    template, attribute = MARKED_QUESTIONS[q]
    shape = _scene(meta).shapes[r.shape]
    worded = text.attribute_question(shape, attribute)
    return MarkedQuestion(marked, template.format(mark_phrase(mark)), getattr(shape, attribute), worded, mark)
