"""VARGPTPipeline: a VARGPT folder behind the same calls as :class:`~lavit.pipeline.LaVITPipeline`.

    pipe = VARGPTPipeline.from_pretrained("models/vargpt")
    pipe.caption(["cat.png"])                                   # -> ["A cat sitting on a sofa."]
    pipe.answer(["cat.png"], ["What animal is this?"])          # -> ["Cat"]
    pipe.generate_image(["a red circle"], seed=0)               # PIL images

Prompts follow LLaVA-1.5's conversation format, as VARGPT was trained: the system line, then
``USER: <image>\\n{question} ASSISTANT:`` (the one ``<image>`` expanded to a token per patch) or
``USER: {prompt} ASSISTANT:`` followed by ``<|image_gen_start|>`` for an image. Text is decoded
greedily or by beam search (transformers' ``generate`` on the input embeddings, the image
tokens suppressed); images by :meth:`VARGPT.sample`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from lavit.checkpoint import CheckpointError, read_config_file
from lavit.config import TextDecodingConfig, fills_once, to_yaml
from lavit.data.image_io import load_image
from lavit.data.transforms import to_pil, to_tensor
from lavit.generate import cut_at_stop, seeded_generators
from lavit.vargpt.config import VARGPTPipelineConfig, VARGPTSamplingConfig
from lavit.vargpt.io import load_vargpt, save_vargpt
from lavit.vargpt.model import VARGPT

PIPELINE_FILE = "pipeline.yaml"


class VARGPTPipeline:
    """Args:
    model: the VARGPT model; tokenizer: its text tokenizer (with ``<image>``).
    cfg: prompts and decoding defaults (must match how the model was trained).
    """

    def __init__(
        self, model: VARGPT, tokenizer: PreTrainedTokenizerBase, cfg: VARGPTPipelineConfig | None = None
    ) -> None:
        self.model, self.tok, self.cfg = model.eval(), tokenizer, cfg or VARGPTPipelineConfig()
        if tokenizer.convert_tokens_to_ids("<image>") != model.cfg.image_token_id:
            raise CheckpointError(
                f"the text tokenizer's <image> is id {tokenizer.convert_tokens_to_ids('<image>')}, the model's "
                f"image_token_id {model.cfg.image_token_id}: they do not belong together"
            )

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> VARGPTPipeline:
        """A VARGPT folder (``lavit convert vargpt``) with its text tokenizer; pipeline.yaml, if
        the folder has one, sets the prompts and decoding."""
        directory = Path(directory)
        model, tok = load_vargpt(directory, device)
        if tok is None:
            raise CheckpointError(f"{directory} has no text_tokenizer/: a VARGPT pipeline needs the model's tokenizer")
        cfg = None
        if os.path.lexists(directory / PIPELINE_FILE):
            cfg = read_config_file(directory / PIPELINE_FILE, VARGPTPipelineConfig, root=directory)
        return cls(model, tok, cfg)

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = save_vargpt(self.model, directory, self.tok)
        (directory / PIPELINE_FILE).write_text(to_yaml(self.cfg))
        return directory

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- understanding -------------------------------------------------------------------------

    def images_to_tensor(self, images: Sequence[str | os.PathLike | Image.Image] | torch.Tensor) -> torch.Tensor:
        """Paths / PIL images / a (B, 3, S, S) tensor in [0, 1] -> (B, 3, S, S) in [0, 1] at the
        tower's side (the tower's normalisation is :meth:`_understand`'s, applied once)."""
        size = self.cfg.image_size
        if isinstance(images, torch.Tensor):
            batch = images[None] if images.ndim == 3 else images
            if batch.shape[-2:] != (size, size):
                raise ValueError(f"image tensors must be {size}x{size}, got {tuple(batch.shape[-2:])}")
        else:
            if not len(images):
                raise ValueError("no images given")
            pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
            batch = torch.stack([to_tensor(im, size) for im in pil])
        return batch.to(self.device)

    def _understand(self, images, texts: list[str], decoding: TextDecodingConfig) -> list[str]:
        pixels = self.cfg.normalise(self.images_to_tensor(images))
        if pixels.shape[0] != len(texts):
            raise ValueError(f"{pixels.shape[0]} images for {len(texts)} prompts")
        prompts = [self.cfg.understanding_text(t, self.model.patches) for t in texts]
        ids, mask = self._left_padded(prompts)
        emb, _ = self.model.embed(ids, pixels)
        banned = [self.model.cfg.gen_start_id, self.model.cfg.gen_end_id, self.model.cfg.gen_pad_id]
        out = self.model.llm.generate(
            inputs_embeds=emb,
            attention_mask=mask,
            max_new_tokens=decoding.max_new_tokens,
            min_new_tokens=decoding.min_new_tokens,
            num_beams=decoding.num_beams,
            length_penalty=decoding.length_penalty,
            do_sample=False,
            suppress_tokens=[self.model.cfg.image_token_id, *banned],
            eos_token_id=self.tok.eos_token_id,
            pad_token_id=self.tok.pad_token_id,
        )
        texts = [t.strip() for t in self.tok.batch_decode(out, skip_special_tokens=True)]
        return [cut_at_stop(t, decoding.stop_strings) for t in texts]

    def caption(self, images, prompt: str | None = None, decoding: TextDecodingConfig | None = None) -> list[str]:
        """One caption per image."""
        pixels = self.images_to_tensor(images)
        prompt = self.cfg.caption_prompt if prompt is None else prompt
        return self._understand(pixels, [prompt] * len(pixels), decoding or self.cfg.caption_decoding)

    def answer(
        self,
        images,
        questions: Sequence[str],
        template: str | None = None,
        decoding: TextDecodingConfig | None = None,
    ) -> list[str]:
        """One answer per (image, question) pair, asked as ``template.format(question)``."""
        template = self.cfg.vqa_prompt if template is None else template
        if not fills_once(template):
            raise ValueError(f"VQA template {template!r} must hold the question's place as {{}} once")
        return self._understand(images, [template.format(q) for q in questions], decoding or self.cfg.vqa_decoding)

    # --- generation ----------------------------------------------------------------------------

    def generate_image(
        self,
        prompts: Sequence[str],
        *,
        seed: int = 0,
        num_images: int = 1,
        guidance_scale: float | None = None,
        sampling: VARGPTSamplingConfig | None = None,
    ) -> list[Image.Image]:
        """Text prompts -> ``len(prompts) * num_images`` PIL images, prompt-major; image ``j`` is
        drawn with seed ``seed + j`` (the same whatever else shares the batch)."""
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        sampling = sampling or self.cfg.image_sampling
        if guidance_scale is not None:
            sampling = dataclasses.replace(sampling, guidance_scale=guidance_scale)
        texts = [self.cfg.generation_text(p) for p in prompts for _ in range(num_images)]
        ids, mask = self._left_padded(texts, end=self.model.cfg.gen_start_id)
        drawn = self.model.sample(ids, mask, sampling, seeded_generators(len(texts), seed, self.device))
        return [to_pil(im) for im in self.model.vqvae.decode_fhat(drawn.f_hat)]

    def _left_padded(self, texts: list[str], end: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenised texts (their special tokens as the tokenizer adds them), ``end`` appended,
        left-padded -> (ids, mask) on the model's device."""
        rows = [self.tok(t)["input_ids"] + ([] if end is None else [end]) for t in texts]
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r) :], mask[i, width - len(r) :] = torch.tensor(r), 1
        return ids.to(self.device), mask.to(self.device)
