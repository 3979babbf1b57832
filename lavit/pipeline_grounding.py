"""The pipeline's grounding and visual-prompt methods, for an LM trained with location tokens.

    boxes = pipe.ground(["scene.png"], ["the small red circle"])        # -> [Box(0.12, 0.14, ...)]
    pipe.describe_region(["scene.png"], [(8, 9, 17, 18)])              # -> ["a small red circle"]
    pipe.grounded_caption(["scene.png"])   # -> [["a small red circle", Box(...), " and a ...", Box(...)]]
    mark = Mark("ellipse", box=(8, 9, 17, 18), colour="red")
    pipe.answer(["scene.png"], ["what colour is the shape in the red ellipse?"], marks=[[mark]])

A :class:`~lavit.grounding.Box` holds fractions of the square the model sees (the image's centre
crop); :func:`~lavit.grounding.box_to_source` gives its pixels in the image it came from. Boxes
given to :meth:`describe_region` may be either a ``Box`` or (x0, y0, x1, y1) pixels of the image.
Marks are drawn on the image itself (ViP-LLaVA; lavit/visual_prompts.py), in the image's pixels,
before it is tokenized: the LM reads them through its ordinary vision path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from lavit.config import TextDecodingConfig, fills_once
from lavit.data.image_io import load_image
from lavit.data.transforms import to_pil
from lavit.grounding import Box, Segment, box_in_square, fill_box
from lavit.visual_prompts import Mark, draw_marks

PixelBox = tuple[float, float, float, float]


class GroundingMixin:
    """Grounding methods of :class:`~lavit.pipeline.LaVITPipeline` (they use its ``_understand``)."""

    def _pil(self, images) -> list[Image.Image]:
        """Paths / PIL images / a (B, 3, H, W) tensor -> PIL images at their own size."""
        if isinstance(images, torch.Tensor):
            return [to_pil(im) for im in (images[None] if images.ndim == 3 else images)]
        if len(images) == 0:
            raise ValueError("no images given")
        return [im if isinstance(im, Image.Image) else load_image(im) for im in images]

    def ground(
        self,
        images,
        phrases: Sequence[str],
        template: str | None = None,
        decoding: TextDecodingConfig | None = None,
    ) -> list[Box]:
        """Where each phrase is in its image (referring-expression comprehension): one box per
        (image, phrase) pair, asked as ``template.format(phrase)`` ("Where is {}?") and decoded
        as exactly four location tokens."""
        template = self.cfg.grounding_prompt if template is None else template
        _check_template(template, "grounding")
        prompts = [template.format(p) for p in phrases]
        answers = self._understand(images, prompts, decoding or self.cfg.grounding_decoding, mode="box")
        return [next(part for part in a if isinstance(part, Box)) for a in answers]

    def describe_region(
        self,
        images,
        boxes: Sequence[Box | PixelBox],
        template: str | None = None,
        decoding: TextDecodingConfig | None = None,
    ) -> list[str]:
        """What is in each box (referring-expression generation), asked as ``template`` with the
        box's location tokens in place of ``{}`` ("What is at {}?")."""
        template = self.cfg.region_prompt if template is None else template
        _check_template(template, "region")
        pil = self._pil(images)
        if len(boxes) != len(pil):
            raise ValueError(f"{len(pil)} images for {len(boxes)} boxes")
        prompts = []
        for image, box in zip(pil, boxes, strict=True):
            if not isinstance(box, Box):
                square = box_in_square(box, *image.size)
                if square is None:
                    raise ValueError(
                        f"box {tuple(box)} lies mostly outside the square the model sees of the "
                        f"{image.size[0]}x{image.size[1]} image (its centre crop); crop the image around it first"
                    )
                box = square
            prompts.append(fill_box(template, box))
        return self._understand(pil, prompts, decoding or self.cfg.region_decoding)

    def grounded_caption(
        self, images, prompt: str | None = None, decoding: TextDecodingConfig | None = None
    ) -> list[list[Segment]]:
        """A caption with a box after each thing it names: per image, its strings and boxes in
        order (``["a small red circle", Box(...), " and a large blue square", Box(...)]``)."""
        batch = self.images_to_tensor(images)
        prompt = self.cfg.grounded_caption_prompt if prompt is None else prompt
        return self._understand(
            batch, [prompt] * len(batch), decoding or self.cfg.grounded_caption_decoding, "grounded"
        )

    def mark_images(self, images, marks: Sequence[Sequence[Mark]]) -> list[Image.Image]:
        """Each image with its marks drawn on it (in its own pixels); what :meth:`answer` reads
        when given ``marks``."""
        pil = self._pil(images)
        if len(marks) != len(pil):
            raise ValueError(f"{len(pil)} images for {len(marks)} lists of marks: give one list per image")
        return [draw_marks(image, list(m)) for image, m in zip(pil, marks, strict=True)]


def _check_template(template: str, what: str) -> None:
    if not fills_once(template):
        raise ValueError(f"{what} template {template!r} must hold the phrase's or box's place as {{}} once")
