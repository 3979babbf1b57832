"""``ShapesWorld``: the map-style dataset over ShapesWorld scenes (one :class:`Sample` each)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from lavit.config import ShapesWorldConfig
from lavit.data.sample import QA, Sample
from lavit.data.shapes import SPLITS, Scene, render, scene_for_index, shape_mask
from lavit.data.shapes import text as shapes_text

_TEXT_STREAM = 1 << 20  # a separate RNG stream for words, so changing templates never moves scenes


class Words(NamedTuple):
    """The text of one scene (also a plain tuple: ``captions, qa, prompt = world.words(i)``)."""

    captions: list[str]
    qa: list[QA]
    prompt: str


class ShapesWorld(Dataset):
    """Scenes rendered on the fly: ``ds[i]`` is the same on every machine and every run.

    Args:
        cfg: the generator's config (resolution, seed, split lengths...).
        split: 'train', 'val' or 'test'; the splits never share a scene.
    """

    def __init__(self, cfg: ShapesWorldConfig, split: str = "train") -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown ShapesWorld split {split!r}; choose one of {sorted(SPLITS)}")
        self.cfg, self.split = cfg, split

    def __len__(self) -> int:
        return self.cfg.split_size(self.split)

    def _check(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for ShapesWorld {self.split} of length {len(self)}")

    def image(self, index: int) -> Image.Image:
        """Only the image of sample ``index`` (no text): the fast path for image-only stages."""
        self._check(index)
        return render(scene_for_index(self.cfg, self.split, index), self.cfg.resolution, self.cfg.supersample)

    def scene(self, index: int) -> Scene:
        self._check(index)
        return scene_for_index(self.cfg, self.split, index)

    def focus_mask(self, index: int, resolution: int, descriptions: list[str]) -> torch.Tensor:
        """(1, R, R) float in {0, 1}: the boxes of sample ``index``'s shapes that fit
        ``descriptions`` in a ``resolution``-sided render (:func:`lavit.data.shapes.shape_mask`),
        where the focused VAE and diffusion losses weigh more."""
        return torch.from_numpy(shape_mask(self.scene(index), resolution, descriptions))[None].float()

    def words(self, index: int) -> Words:
        """Only the text of sample ``index``: captions, question/answers, text-to-image prompt."""
        scene = self.scene(index)
        rng = np.random.default_rng([self.cfg.seed, SPLITS[self.split], index, _TEXT_STREAM])
        return Words(
            shapes_text.captions(scene, rng), shapes_text.questions(scene, rng), shapes_text.prompt(scene, rng)
        )

    def __getitem__(self, index: int) -> Sample:
        scene = self.scene(index)
        captions, qa, prompt = self.words(index)
        res = self.cfg.resolution
        return Sample(
            image=render(scene, res, self.cfg.supersample),
            image_id=f"shapes-{self.split}-{index}",
            captions=captions,
            qa=qa,
            meta={
                "scene": scene.to_dict(),
                "boxes": [s.box(res) for s in scene.shapes],
                "prompt": prompt,
                "split": self.split,
                "index": index,
            },
        )
