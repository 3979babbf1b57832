"""Configs of the VARGPT-style model (lavit/vargpt/model.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from detokenizer.var.config import VARConfig, VQVAEConfig
from lavit.config import GUIDANCE_FIX, LMConfig, check


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
        check(math.isfinite(self.guidance_scale), "guidance_scale", self.guidance_scale, GUIDANCE_FIX)
        check(self.top_k >= 0, "top_k", self.top_k, "use 0 (off) or a positive count")
        check(0 < self.top_p <= 1, "top_p", self.top_p, "use a value in (0, 1]")
        check(self.temperature > 0, "temperature", self.temperature, "use a positive temperature")


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
    # architecture in vision_config.json beside the weights) or "none".
    vision: str = "clip"
    vision_dim: int = 1024  # the tower's width: the projector's input
    vision_feature_layer: int = -2  # hidden_states[layer], CLS dropped (LLaVA's "default")
    # Token ids of the text tokenizer's special tokens.
    image_token_id: int = 32000  # <image>: one per understanding position, replaced by features
    gen_start_id: int = 32002  # <|image_gen_start|>: the image follows
    gen_end_id: int = 32003  # <|image_gen_end|>
    gen_pad_id: int = 32004  # <|image_gen_pad|>: one per scale token while training
    sampling: VARGPTSamplingConfig = field(default_factory=VARGPTSamplingConfig)

    def __post_init__(self) -> None:
        check(self.vision in ("clip", "none"), "vision", self.vision, "use 'clip' or 'none'")
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
