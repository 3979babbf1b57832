"""The one sample type every reader yields.

ShapesWorld, JSONL, COCO captions, VQAv2 and image folders all produce :class:`Sample`, so a
training task or an evaluation script never branches on where its data came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass
class QA:
    """One question with its reference answers (VQAv2 has 10 annotators; ShapesWorld one)."""

    question: str
    answers: list[str]
    question_id: str | None = None


@dataclass
class Sample:
    """An RGB image with whatever text the source provides.

    Attributes:
        image: RGB PIL image (already through :func:`lavit.data.image_io.load_image`).
        image_id: stable identifier (file path relative to its root, COCO id, scene index...).
        captions: zero or more reference captions.
        qa: zero or more question/answer groups.
        meta: source-specific extras (ShapesWorld: the scene and boxes; COCO: the file name).
    """

    image: Image.Image
    image_id: str
    captions: list[str] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
