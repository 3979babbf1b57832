"""Configs of the VARGPT-style model (lavit/vargpt/model.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from detokenizer.var.config import VARConfig, VQVAEConfig
from lavit.config import (
    DataConfig,
    EncoderConfig,
    LMConfig,
    TextDecodingConfig,
    TrainConfig,
    check,
    check_sampling,
    fills_once,
)


@dataclass
class VARGPTSamplingConfig:
    """Next-scale sampling through the LLM and the VAR head. Defaults are VARGPT's: guidance 1.5
    against noise hidden states, top-k 900, top-p 0.96."""

    guidance_scale: float = 1.5  # logits = u + g (c - u); 1.0: the conditional branch alone
    # Ramp the guidance over scales as VAR does (g at the last scale, 1 at the first) instead of
    # VARGPT's constant g.
    ramp: bool = False
    top_k: int = 900
    top_p: float = 0.96
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_sampling(self)


@dataclass
class VARGPTConfig:
    """A causal LLM that reads images through a vision tower and a projector (LLaVA) and draws
    them scale by scale: VAR's scale tokens pass through the LLM, whose hidden states drive a
    VAR head of AdaLN blocks over a multi-scale VQ-VAE (Zhuang et al. 2025, VARGPT).

    ``lm`` gives the LLM's architecture; its ``text_vocab_size`` is the whole vocabulary of the
    text tokenizer, special tokens included (VARGPT: 32,064), and the LaVIT-only fields
    (``num_codes``, ``understanding_input``, ...) are not read. ``var`` is the head, conditioned
    on a class: VARGPT's AdaLN reads the class embedding of ``<|image_gen_start|>``, so
    ``var.num_classes`` is that token's id + 1 (the last row, the null class, is the
    unconditional one).
    """

    lm: LMConfig = field(default_factory=lambda: LMConfig(text_vocab_size=32064))
    var: VARConfig = field(default_factory=lambda: VARConfig(condition="class", num_classes=32003))
    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    # How images are read for understanding: "clip" (a transformers CLIPVisionModel, its
    # architecture in vision_config.json beside the weights; pixels CLIP-normalised), "encoder"
    # (our timm ViT, ``encoder``: its last-block patch features; pixels in [0, 1]) or "none".
    vision: str = "clip"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)  # vision: encoder
    vision_dim: int = 1024  # the tower's width: the projector's input
    vision_feature_layer: int = -2  # hidden_states[layer], CLS dropped (LLaVA's "default")
    # Token ids of the text tokenizer's special tokens.
    image_token_id: int = 32000  # <image>: one per understanding position, replaced by features
    gen_start_id: int = 32002  # <|image_gen_start|>: the image follows
    gen_end_id: int = 32003  # <|image_gen_end|>
    gen_pad_id: int = 32004  # <|image_gen_pad|>: one per scale token while training
    sampling: VARGPTSamplingConfig = field(default_factory=VARGPTSamplingConfig)

    def __post_init__(self) -> None:
        check(self.vision in ("clip", "encoder", "none"), "vision", self.vision, "use 'clip', 'encoder' or 'none'")
        check(self.var.condition == "class", "var.condition", self.var.condition, "VARGPT's head is class-conditioned")
        check(
            self.var.num_classes == self.gen_start_id + 1,
            "var.num_classes",
            self.var.num_classes,
            f"VARGPT's class embedding has a row per id up to <|image_gen_start|> ({self.gen_start_id}) and the "
            f"null class: set var.num_classes={self.gen_start_id + 1}",
        )
        ids = {"image_token_id": self.image_token_id, "gen_start_id": self.gen_start_id}
        ids |= {"gen_end_id": self.gen_end_id, "gen_pad_id": self.gen_pad_id}
        for key, value in ids.items():
            check(
                0 <= value < self.lm.text_vocab_size,
                key,
                value,
                f"a token id of the text tokenizer, below lm.text_vocab_size={self.lm.text_vocab_size}",
            )
        check(len(set(ids.values())) == len(ids), "gen_*_id", ids, "the special tokens need distinct ids")


CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


@dataclass
class VARGPTPipelineConfig:
    """Prompts and decoding defaults of a :class:`VARGPTPipeline`, saved as pipeline.yaml."""

    system: str = SYSTEM
    understanding_template: str = "USER: <image>\n{} ASSISTANT:"  # {}: the question or caption prompt
    generation_template: str = "USER: {} ASSISTANT:"
    caption_prompt: str = "Please describe this image briefly."
    vqa_prompt: str = "{}\nAnswer the question using a single word or phrase."  # LLaVA-1.5's VQA form
    caption_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(max_new_tokens=64))
    vqa_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(max_new_tokens=16))
    image_sampling: VARGPTSamplingConfig = field(default_factory=VARGPTSamplingConfig)
    image_size: int = 336  # the CLIP tower's input side (VARGPT: ViT-L/14 at 336 px)
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))

    def understanding_text(self, text: str, patches: int) -> str:
        """The prompt of an image and ``text``: its ``<image>`` repeated once per patch."""
        prompt = " ".join(filter(None, [self.system, self.understanding_template.format(text)]))
        return prompt.replace("<image>", "<image>" * patches, 1)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] -> what the vision tower reads (``image_mean``/``_std``)."""
        mean = images.new_tensor(self.image_mean).view(1, 3, 1, 1)
        return (images - mean) / images.new_tensor(self.image_std).view(1, 3, 1, 1)

    def generation_text(self, prompt: str) -> str:
        """The text before ``<|image_gen_start|>`` when drawing for ``prompt``."""
        return " ".join(filter(None, [self.system, self.generation_template.format(prompt)]))

    def __post_init__(self) -> None:
        for key in ("understanding_template", "generation_template", "vqa_prompt"):
            value = getattr(self, key)
            check(fills_once(value), key, value, "hold the text's place as {} exactly once")
        check("<image>" in self.understanding_template, "understanding_template", self.understanding_template,
              "place the image as <image>")  # fmt: skip


@dataclass
class VARGPTMixtureConfig:
    """What a training item is: the tasks a sample supports (captions, questions, a prompt or a
    caption to draw from), drawn with these relative weights."""

    caption: float = 1.0
    vqa: float = 1.0
    t2i: float = 1.0
    t2i_loss_weight: float = 1.0  # of the head's next-scale cross-entropy beside the text's
    cfg_drop_prob: float = 0.1  # drawing items whose prompt is dropped (empty, null class): for guidance

    def __post_init__(self) -> None:
        weights = (self.caption, self.vqa, self.t2i)
        check(min(weights) >= 0 and sum(weights) > 0, "mixture", weights, "give non-negative weights, one above 0")
        check(0 <= self.cfg_drop_prob < 1, "mixture.cfg_drop_prob", self.cfg_drop_prob, "use a share in [0, 1)")


# What each of VARGPT's training stages trains (parameter name prefixes); "all" trains every part
# but the frozen vision tower and VQ-VAE, as a model trained from scratch needs.
STAGE_TRAINABLE = {
    "projectors": ["projector.", "gen_in.", "gen_out."],
    "llm": ["llm.", "projector.", "gen_in.", "gen_out."],
    "head": ["head.", "gen_in.", "gen_out."],
    "all": ["llm.", "projector.", "gen_in.", "gen_out.", "head."],
}
# The special tokens a from-scratch text tokenizer puts right after pad, bos, eos and unk (ids 0-3).
SPECIAL_TOKENS = ("<image>", "<|image_gen_start|>", "<|image_gen_end|>", "<|image_gen_pad|>")


@dataclass
class VARGPTRunConfig:
    """``lavit train vargpt``: one of VARGPT's three stages (projectors, then the LLM for
    understanding, then the VAR head for generation), or all parts at once from scratch."""

    model: VARGPTConfig = field(default_factory=VARGPTConfig)  # model.vqvae: taken from vqvae_dir
    stage: str = "all"
    vqvae_dir: str = "runs/var_vqvae_tiny/model"  # a trained multi-scale VQ-VAE (lavit train var-vqvae)
    init_from: str | None = None  # a VARGPT folder (an earlier stage's model/) whose weights start this run
    # vision: encoder: a trained tokenizer folder whose frozen encoder the vision tower copies
    # (the shipped one's ShapesWorld ViT); null: model.encoder as configured (its weights file)
    encoder_from: str | None = None
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mixture: VARGPTMixtureConfig = field(default_factory=VARGPTMixtureConfig)
    prompts: VARGPTPipelineConfig = field(default_factory=VARGPTPipelineConfig)  # saved as pipeline.yaml
    num_scenes: int | None = 20_000  # items of each map-style train source (the first ones; null: all)
    eval_scenes: int = 100  # items of data.val evaluated (the first ones)

    def __post_init__(self) -> None:
        check(self.stage in STAGE_TRAINABLE, "stage", self.stage, f"use one of {', '.join(STAGE_TRAINABLE)}")
