"""What a sample can carry beyond its image and text, and what the training stages do with it.

A source puts annotations in ``Sample.meta`` (JSON-able, so they survive the codes cache).
The training stages never interpret a source's metadata themselves: they ask this module, the
one place that knows which annotations exist and which source gives them. Today one kind does:

``scene`` (ShapesWorld, :mod:`lavit.data.shapes`): the symbolic scene an image was rendered
from. It gives per-patch labels (encoder pretraining), a focus mask over named shapes (the VAE
and diffusion losses' ``focus_weight``), the parser's verdict on a reconstructed image, a
caption check, the code probe of a tokenizer, and multimodal synthesis prompts made of a
scene's parts (the LM's ``synthesis_prob``).

Every function takes ``meta`` dicts (a ``Sample.meta`` or a cached record's ``meta``). A stage
that needs an annotation asks :func:`require_scenes` first, so a source without it is refused
with one line before anything trains.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lavit.config import ConfigError, DataConfig
from lavit.data import shapes
from lavit.data.shapes import judge, parser, text
from lavit.data.sources import resolve_kind

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
