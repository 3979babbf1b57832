"""The parts of a :class:`~lavit.pipeline.LaVITPipeline` that are settings, not behaviour: its
inference defaults (:class:`PipelineConfig`, saved as pipeline.yaml) and the kinds of
detokenizer it can hold (:data:`DECODERS`, found by stage name)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from detokenizer.diffusion import DiffusionSamplingConfig
from detokenizer.diffusion.io import decode_diffusion_stage, load_diffusion_stage, save_diffusion_stage
from detokenizer.var.config import VARSamplingConfig
from detokenizer.var.decoder import decode_codes_var, load_var_decoder, save_var_decoder
from lavit.config import (
    CAPTION_PROMPT,
    GROUNDED_CAPTION_PROMPT,
    GROUNDING_PROMPT,
    REGION_PROMPT,
    VQA_PROMPT,
    ImageSamplingConfig,
    TextDecodingConfig,
    check,
    fills_once,
)


class Decoder(NamedTuple):
    """How the pipeline handles one kind of detokenizer."""

    load: Callable  # (directory, device, *, root) -> model; root: the folder every file must stay inside
    save: Callable  # (model, directory) -> None
    decode: Callable  # (model, tokenizer, codes, sampling, *, size, generator) -> (B, 3, H, W) in [0, 1]


DECODERS = {
    "diffusion": Decoder(load_diffusion_stage, save_diffusion_stage, decode_diffusion_stage),  # or LaVIT's
    "var": Decoder(load_var_decoder, save_var_decoder, decode_codes_var),
}


def check_decoder_names(names) -> None:
    unknown = set(names) - set(DECODERS)
    if unknown:
        raise ValueError(f"unknown decoder(s) {sorted(unknown)}: use one of {sorted(DECODERS)}")


@dataclass
class PipelineConfig:
    """Inference defaults of a :class:`LaVITPipeline`, saved as pipeline.yaml.

    The prompts must be the ones the LM was trained with; decoding defaults are LaVIT's."""

    caption_prompt: str = CAPTION_PROMPT
    vqa_prompt: str = VQA_PROMPT
    caption_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(num_beams=2))
    vqa_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(num_beams=5, max_new_tokens=10))
    image_sampling: ImageSamplingConfig = field(default_factory=ImageSamplingConfig)
    diffusion_sampling: DiffusionSamplingConfig = field(default_factory=DiffusionSamplingConfig)
    var_sampling: VARSamplingConfig = field(default_factory=VARSamplingConfig)
    # The diffusion decoder's settings for reconstruction (None: diffusion_sampling's); LaVIT
    # reconstructs with 50 steps at guidance 5 and generates with 25 at 7.
    reconstruction_sampling: DiffusionSamplingConfig | None = None
    # Text to image: draw this many images per one asked for and keep the one the LM's own
    # understanding likes best (LaVITPipeline.generate); 1 draws one and skips the scoring.
    image_candidates: int = 1
    # Grounding (an LM trained with lm.num_locations > 0): where a phrase is, what is in a box,
    # a caption with a box after each thing it names (lavit/grounding.py).
    grounding_prompt: str = GROUNDING_PROMPT
    region_prompt: str = REGION_PROMPT
    grounded_caption_prompt: str = GROUNDED_CAPTION_PROMPT
    grounding_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(max_new_tokens=5))
    region_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(max_new_tokens=16))
    grounded_caption_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(max_new_tokens=60))

    def sampling_for(self, decoder: str, reconstruction: bool = False):
        """The default sampling settings of ``decoder`` (for reconstruction, or for generation)."""
        if reconstruction and decoder == "diffusion" and self.reconstruction_sampling is not None:
            return self.reconstruction_sampling
        return getattr(self, f"{decoder}_sampling")

    def __post_init__(self) -> None:
        check("{}" in self.vqa_prompt, "vqa_prompt", self.vqa_prompt, "put {} where the question goes")
        for key in ("grounding_prompt", "region_prompt"):
            check(fills_once(getattr(self, key)), key, getattr(self, key), "put one {} where the phrase or box goes")
        check(self.image_candidates >= 1, "image_candidates", self.image_candidates, "use 1 (no reranking) or more")
