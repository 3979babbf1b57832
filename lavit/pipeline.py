"""LaVITPipeline: the trained stages behind one object, saved and loaded as one directory.

    pipe = LaVITPipeline.from_pretrained("checkpoints/my-model")      # or from_parts(...)
    pipe.caption(["cat.png"])                                         # -> ["a cat on a sofa"]
    pipe.answer(["cat.png"], ["What animal is this?"])                # -> ["cat"]
    codes = pipe.generate_tokens(["a red circle"], num_images=2, seed=0)

A pipeline directory holds one model directory per stage and the inference defaults:

    my-model/
      pipeline.yaml     PipelineConfig: prompts, text decoding, image-token sampling
      tokenizer/        the dynamic visual tokenizer (tokenizer/io.py)
      lm/               the unified LM, its vocabulary layout and text tokenizer (lavit/lm_io.py)

Images may be given as paths, PIL images or a (B, 3, H, W) float tensor in [0, 1].
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from lavit.checkpoint import CheckpointError, atomic_dir
from lavit.config import ImageSamplingConfig, PipelineConfig, TextDecodingConfig, from_yaml, to_yaml
from lavit.data.image_io import load_image
from lavit.data.transforms import to_tensor
from lavit.generate import generate_image_tokens, generate_text
from lavit.lm_io import load_lm, save_lm
from lavit.model import UnifiedLM
from lavit.sequence import SequenceBuilder
from tokenizer import DynamicVisualTokenizer, load_tokenizer, save_tokenizer

PIPELINE_FILE = "pipeline.yaml"
ImageInput = str | os.PathLike[str] | Image.Image
Images = Sequence[ImageInput] | torch.Tensor


class LaVITPipeline:
    """Tokenizer + unified LM (+ detokenizers, later) with LaVIT's inference defaults.

    Args:
        tokenizer: a trained dynamic visual tokenizer.
        lm: the unified LM whose code block matches the tokenizer's codebook.
        text_tokenizer: the LM's text tokenizer.
        cfg: prompts and decoding defaults (must match how the LM was trained).
    """

    def __init__(
        self,
        tokenizer: DynamicVisualTokenizer,
        lm: UnifiedLM,
        text_tokenizer: PreTrainedTokenizerBase,
        cfg: PipelineConfig | None = None,
    ) -> None:
        if lm.layout.num_codes != tokenizer.codebook_size:
            raise CheckpointError(
                f"the LM's vocabulary has {lm.layout.num_codes} image codes but the visual tokenizer's "
                f"codebook has {tokenizer.codebook_size}: they were not trained together; load the "
                "tokenizer the LM was trained on (its tokenizer_dir)"
            )
        self.tokenizer, self.lm, self.text_tokenizer = tokenizer.eval(), lm.eval(), text_tokenizer
        self.cfg = cfg or PipelineConfig()
        self.builder = SequenceBuilder(text_tokenizer, lm.layout, lm.hf.config.max_position_embeddings)

    # --- loading and saving --------------------------------------------------------------------

    @classmethod
    def from_parts(
        cls, tokenizer_dir: str | Path, lm_dir: str | Path, cfg: PipelineConfig | None = None, device: str = "cpu"
    ) -> LaVITPipeline:
        """Assemble from stage outputs, e.g. ``runs/tokenizer_tiny/model`` and ``runs/lm_tiny/model``."""
        lm, text_tok = load_lm(lm_dir, device)
        return cls(load_tokenizer(tokenizer_dir, device), lm, text_tok, cfg)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> LaVITPipeline:
        """Load a directory written by :meth:`save_pretrained`."""
        directory = Path(directory)
        cfg_path = directory / PIPELINE_FILE
        if not cfg_path.is_file():
            what = "does not exist" if not directory.exists() else f"has no {PIPELINE_FILE}"
            raise CheckpointError(
                f"{directory} {what}: a pipeline directory holds {PIPELINE_FILE}, tokenizer/ and lm/ "
                "(write one with LaVITPipeline.save_pretrained, or pass the stage folders to from_parts)"
            )
        cfg = from_yaml(cfg_path.read_text(), PipelineConfig, where=str(cfg_path))
        return cls.from_parts(directory / "tokenizer", directory / "lm", cfg, device)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write every stage and the defaults atomically (a crash leaves the old copy intact)."""
        with atomic_dir(directory) as tmp:
            save_tokenizer(self.tokenizer, tmp / "tokenizer")
            save_lm(self.lm, self.text_tokenizer, tmp / "lm")
            (tmp / PIPELINE_FILE).write_text(to_yaml(self.cfg))
        return Path(directory)

    def to(self, device: str | torch.device) -> LaVITPipeline:
        self.tokenizer.to(device)
        self.lm.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    # --- images -> codes -----------------------------------------------------------------------

    def images_to_tensor(self, images: Images) -> torch.Tensor:
        """Paths / PIL images / a tensor -> (B, 3, S, S) at the tokenizer's resolution."""
        size = self.tokenizer.cfg.encoder.image_size
        if isinstance(images, torch.Tensor):
            batch = images[None] if images.ndim == 3 else images
        else:
            if len(images) == 0:
                raise ValueError("no images given")
            pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
            batch = torch.stack([to_tensor(im, size) for im in pil])
        if batch.shape[-2:] != (size, size):
            raise ValueError(
                f"image tensors must be {size}x{size} (the tokenizer's resolution), got "
                f"{tuple(batch.shape[-2:])}; pass PIL images or paths to have them resized"
            )
        return batch.to(self.device)

    @torch.no_grad()
    def encode(self, images: Images) -> list[torch.Tensor]:
        """Images -> one LongTensor of codes each (variable length)."""
        return [c.cpu() for c in self.tokenizer.encode(self.images_to_tensor(images))]

    # --- understanding -------------------------------------------------------------------------

    def _understand(self, images: Images, prompts: list[str], decoding: TextDecodingConfig) -> list[str]:
        batch = self.images_to_tensor(images)
        if batch.shape[0] != len(prompts):
            raise ValueError(f"{batch.shape[0]} images for {len(prompts)} prompts")
        codes = self.tokenizer.encode(batch)
        features = None
        if self.lm.cfg.understanding_input == "continuous":
            features = self.tokenizer.encode_features(batch)
        seqs = [self.builder.understanding_prompt(c, p) for c, p in zip(codes, prompts, strict=True)]
        return generate_text(self.lm, self.builder, seqs, decoding, features=features)

    def caption(
        self, images: Images, prompt: str | None = None, decoding: TextDecodingConfig | None = None
    ) -> list[str]:
        """One caption per image (LaVIT: 2 beams, up to 36 new tokens)."""
        n = images.shape[0] if isinstance(images, torch.Tensor) and images.ndim == 4 else len(images)
        prompt = self.cfg.caption_prompt if prompt is None else prompt
        return self._understand(images, [prompt] * n, decoding or self.cfg.caption_decoding)

    def answer(
        self,
        images: Images,
        questions: Sequence[str],
        template: str | None = None,
        decoding: TextDecodingConfig | None = None,
    ) -> list[str]:
        """One answer per (image, question) pair, asked as ``template.format(question)``
        (LaVIT's "Question: {} Answer:", 5 beams, up to 10 new tokens)."""
        template = self.cfg.vqa_prompt if template is None else template
        empty = [i for i, q in enumerate(questions) if not q.strip()]
        if empty:
            raise ValueError(f"question {empty[0]} is empty")
        return self._understand(images, [template.format(q) for q in questions], decoding or self.cfg.vqa_decoding)

    # --- generation ----------------------------------------------------------------------------

    def _prompt(self, prompt: str | Sequence[str | ImageInput | torch.Tensor] | None):
        """Text, None (unconditional) or a multimodal list: images become their codes."""
        if prompt is None or isinstance(prompt, str):
            return prompt
        parts = list(prompt)
        if not parts:
            raise ValueError("empty multimodal prompt: give text, images or both")
        pending = [p for p in parts if not isinstance(p, str | torch.Tensor)]
        encoded = iter(self.encode(pending)) if pending else iter(())
        return [p if isinstance(p, str | torch.Tensor) else next(encoded) for p in parts]

    def generate_tokens(
        self,
        prompts: Sequence[str | Sequence[str | ImageInput | torch.Tensor] | None],
        *,
        num_images: int = 1,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        seed: int = 0,
        sampling: ImageSamplingConfig | None = None,
    ) -> list[torch.Tensor]:
        """Image codes for each prompt (text, a list mixing text and images, or None).

        Image ``j`` gets its own generator seeded ``seed + j`` (prompt-major order), so it is the
        same whatever else is generated with it.

        Returns:
            ``len(prompts) * num_images`` LongTensors of codes, prompt-major.
        """
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        sampling = sampling or self.cfg.image_sampling
        if guidance_scale is not None:
            sampling = dataclasses.replace(sampling, guidance_scale=guidance_scale)
        built = [self._prompt(p) for p in prompts]
        device = self.device
        generators = [torch.Generator(device=device).manual_seed(seed + j) for j in range(len(built) * num_images)]
        return generate_image_tokens(
            self.lm,
            self.builder,
            built,
            sampling,
            num_images=num_images,
            negative_prompt=negative_prompt,
            generator=generators,
        )
