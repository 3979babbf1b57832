"""VARGPT: one causal LLM for understanding and next-scale image generation (docs/design.md §7).

    understanding   <image> x N in the prompt -> the vision tower's hidden states (layer -2, CLS
                    dropped) -> projector (Linear-GELU-Linear) in their place -> LLM -> text
    generation      prompt ... <|image_gen_start|> then VAR's scale tokens *through the LLM*:
                    VAR embeddings (the start token: class embedding of <|image_gen_start|> +
                    pos_start; then word_embed of the next-scale inputs; + level + position)
                    -> gen_in -> the LLM (plain causal, continuing the prompt's cache)
                    -> last hidden states -> gen_out -> VAR head (AdaLN blocks, block-causal,
                    conditioned on that class embedding) -> next-scale logits of the VQ-VAE

Training reads the scale tokens at the ``<|image_gen_pad|>`` positions of the sequence
(:meth:`VARGPT.forward`); sampling feeds them one scale at a time with both KV caches
(:meth:`VARGPT.sample`). Guidance contrasts the head's logits on the LLM's hidden states with
those on Gaussian noise in their place (and the null class), batched as one doubled head batch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel, DynamicCache, PretrainedConfig

from detokenizer.var.transformer import NextScaleTransformer, VARSample, draw_scale
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.generate import Generators
from lavit.model import _hf_config, cache_argument
from lavit.vargpt.config import VARGPTConfig, VARGPTSamplingConfig
from tokenizer.encoder import VisionEncoder


class Projector(nn.Module):
    """Linear -> GELU -> Linear: ``hidden`` wide in the middle (LLaVA's projector, VARGPT's
    ``image_gen_projector``/``_out`` without their unused LayerNorm)."""

    def __init__(self, d_in: int, hidden: int, d_out: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


@dataclass
class VARGPTOutput:
    logits: torch.Tensor  # (B, T, V_text) the LLM's next-token logits
    scale_logits: torch.Tensor | None  # (G, L, V_vq) the head's for the G images drawn; None without


class VARGPT(nn.Module):
    """Args:
    cfg: the model config.
    hf_config: the LLM's Hugging Face architecture (its ``vocab_size`` rows); default: built
        from ``cfg.lm`` (from-scratch sizes).
    vision_config: the CLIP tower's (``cfg.vision == "clip"``); default: a CLIPVisionConfig
        of ``cfg.vision_dim`` width.
    encoder_weights: with ``vision: encoder``, load ``cfg.encoder.weights`` (a fresh model);
        False when a saved model's weights are about to replace them.
    """

    def __init__(
        self,
        cfg: VARGPTConfig,
        hf_config: PretrainedConfig | None = None,
        vision_config: CLIPVisionConfig | None = None,
        encoder_weights: bool = True,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        hf_config = _hf_config(cfg.lm, cfg.lm.text_vocab_size) if hf_config is None else hf_config
        self.llm = AutoModelForCausalLM.from_config(
            hf_config, attn_implementation=cfg.lm.attn_implementation, trust_remote_code=False
        )
        hidden = self.llm.config.hidden_size
        self.vision = self.projector = None
        if cfg.vision == "clip":
            vision_config = vision_config or CLIPVisionConfig(hidden_size=cfg.vision_dim)
            if vision_config.hidden_size != cfg.vision_dim:
                raise ValueError(
                    f"the CLIP tower is {vision_config.hidden_size} wide but vision_dim={cfg.vision_dim}: "
                    "set vision_dim to the tower's hidden_size"
                )
            self.vision = CLIPVisionModel(vision_config)
            self.projector = Projector(cfg.vision_dim, hidden, hidden)
        elif cfg.vision == "encoder":
            enc = cfg.encoder if encoder_weights else dataclasses.replace(cfg.encoder, weights=None)
            self.vision = VisionEncoder(enc)
            if self.vision.dim != cfg.vision_dim:
                raise ValueError(
                    f"the encoder is {self.vision.dim} wide but vision_dim={cfg.vision_dim}: set vision_dim"
                )
            self.projector = Projector(cfg.vision_dim, hidden, hidden)
        self.head = NextScaleTransformer(cfg.var, cfg.vqvae)
        width = cfg.var.width
        self.gen_in = Projector(width, width, hidden)
        self.gen_out = Projector(hidden, hidden, width)
        self.vqvae = MultiScaleVQVAE(cfg.vqvae).requires_grad_(False).eval()
        self._cache_name = cache_argument(self.llm)

    def train(self, mode: bool = True) -> VARGPT:
        super().train(mode)
        self.vqvae.eval()  # frozen
        return self

    @property
    def num_scale_tokens(self) -> int:
        """L: the scale tokens of one image (VARGPT's 680 at 10 scales up to 16)."""
        return self.head.spans[-1][1]

    # ----------------------------------------------------------------------------------------
    # Inputs
    # ----------------------------------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) images (CLIP-normalised for a CLIP tower, in [0, 1] for our encoder) ->
        (N, P, H) projected patch features (CLIP: layer ``vision_feature_layer``, CLS dropped)."""
        if self.vision is None:
            raise ValueError("this VARGPT model has no vision tower (vision: none): it cannot read images")
        if self.cfg.vision == "encoder":
            return self.projector(self.vision(pixel_values))
        states = self.vision(pixel_values, output_hidden_states=True).hidden_states[self.cfg.vision_feature_layer]
        return self.projector(states[:, 1:])

    @property
    def patches(self) -> int:
        """Image features per understanding image: the ``<image>`` tokens it fills."""
        return image_patches(self.cfg, self.vision.config if self.cfg.vision == "clip" else None)

    def start_vector(self, batch: int, device: torch.device, drop: torch.Tensor | None = None) -> torch.Tensor:
        """(B, width) class embedding of <|image_gen_start|> (the null class where ``drop``)."""
        labels = torch.full((batch,), self.cfg.gen_start_id, dtype=torch.long, device=device)
        return self.head.class_vector(labels, drop)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        scale_inputs: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T) ids -> ((B, T, H) input embeddings, the (G, width) start vectors or None).

        ``<image>`` positions take ``pixel_values``' projected features (in order; each image
        fills as many positions as it has patches). The G rows that hold ``<|image_gen_pad|>``
        tokens (L each) take their scale tokens there through ``gen_in``, from the (G, L - 1,
        Cvae) next-scale ``scale_inputs`` of their images, in row order; rows in the (G,)
        ``drop`` start from the null class. A batch may mix understanding and generation rows.
        """
        emb = self.llm.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            feats = self.image_features(pixel_values).flatten(0, 1)
            where = input_ids == self.cfg.image_token_id
            if int(where.sum()) != feats.shape[0]:
                raise ValueError(f"{int(where.sum())} <image> tokens for {feats.shape[0]} image features")
            emb = emb.masked_scatter(where[..., None], feats.to(emb.dtype))
        vector = None
        if scale_inputs is not None:
            where = input_ids == self.cfg.gen_pad_id
            per_row = where.sum(1)
            rows = per_row > 0
            if not bool((per_row[rows] == self.num_scale_tokens).all()) or int(rows.sum()) != scale_inputs.shape[0]:
                raise ValueError(
                    f"{scale_inputs.shape[0]} images to draw, but the rows hold {per_row.tolist()} "
                    f"<|image_gen_pad|> tokens: a row drawing an image needs {self.num_scale_tokens}"
                )
            vector = self.start_vector(scale_inputs.shape[0], input_ids.device, drop)
            tokens = self.head.embed(vector, scale_inputs, 0, self.num_scale_tokens)
            emb = emb.masked_scatter(where[..., None], self.gen_in(tokens).to(emb.dtype))
        return emb, vector

    # ----------------------------------------------------------------------------------------
    # Training (teacher forcing)
    # ----------------------------------------------------------------------------------------

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        scale_inputs: torch.Tensor | None = None,
        drop: torch.Tensor | None = None,
    ) -> VARGPTOutput:
        """The LLM's logits over the sequence and, with ``scale_inputs``, the head's logits of
        every scale token (read from the LLM's last hidden states at the pad positions).

        Args:
            input_ids, attention_mask: (B, T) (right padding).
            pixel_values: images for the ``<image>`` positions (see :meth:`embed`).
            scale_inputs: (G, L - 1, Cvae) next-scale inputs of the images of the G rows that
                draw one (``vqvae.quantizer.teacher_forcing_inputs`` of their token maps).
            drop: (G,) bool, images whose head starts from the null class (condition dropout).
        """
        emb, vector = self.embed(input_ids, pixel_values, scale_inputs, drop)
        out = self.llm(inputs_embeds=emb, attention_mask=attention_mask, output_hidden_states=True, use_cache=False)
        if vector is None:
            return VARGPTOutput(out.logits, None)
        states = out.hidden_states[-1][input_ids == self.cfg.gen_pad_id].view(vector.shape[0], -1, emb.shape[-1])
        return VARGPTOutput(out.logits, self.head.blocks_and_head(self.gen_out(states), vector))

    # ----------------------------------------------------------------------------------------
    # Sampling
    # ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cfg: VARGPTSamplingConfig | None = None,
        generator: Generators = None,
        pixel_values: torch.Tensor | None = None,
        forced: list[torch.Tensor] | None = None,
    ) -> VARSample:
        """Draw one image per row after its prompt, scale by scale.

        Args:
            input_ids, attention_mask: (B, T) left-padded prompts, each ending with
                ``<|image_gen_start|>``.
            cfg: guidance and sampling (default: ``self.cfg.sampling``).
            generator: one generator, or one per row (a row is then the same whatever shares
                its batch: its noise hidden states and its tokens are drawn from it alone).
            pixel_values: images for the prompts' ``<image>`` positions.
            forced: per-scale (B, p, p) token maps to use instead of sampling (a None entry
                samples that scale).

        Returns:
            The tokens, ``f_hat`` (``vqvae.decode_fhat`` makes pixels) and each scale's logits
            after guidance.
        """
        cfg = cfg or self.cfg.sampling
        b, device = input_ids.shape[0], input_ids.device
        if not bool((input_ids[:, -1] == self.cfg.gen_start_id).all()):
            raise ValueError("every prompt must end with <|image_gen_start|> (left padding)")
        limit = self.llm.config.max_position_embeddings
        if input_ids.shape[1] + self.num_scale_tokens > limit:
            raise ValueError(
                f"a prompt of {input_ids.shape[1]} tokens + {self.num_scale_tokens} scale tokens runs past the "
                f"LLM's context of {limit}: shorten the prompt"
            )
        guided = cfg.guidance_scale != 1.0
        cache = DynamicCache()
        emb, _ = self.embed(input_ids, pixel_values)
        mask = attention_mask.long()
        self._llm_states(emb, mask, cache)  # the prompt into the cache
        vector = self.start_vector(b, device)
        head_vector = vector  # guided: [start class; null class] for the [LLM; noise] halves
        if guided:
            head_vector = torch.cat(
                [vector, self.start_vector(b, device, torch.ones(b, dtype=torch.bool, device=device))]
            )
        caches = [{} for _ in self.head.blocks]
        quantizer = self.vqvae.quantizer
        f_hat = quantizer.codebook.weight.new_zeros(b, quantizer.dim, quantizer.side, quantizer.side)
        x = self.head.embed(vector, None, 0, 1)
        tokens, all_logits, f_hats = [], [], []
        num = len(self.head.scales)
        for k, p in enumerate(self.head.scales):
            mask = torch.cat([mask, mask.new_ones(b, x.shape[1])], dim=1)
            states = self.gen_out(self._llm_states(self.gen_in(x), mask, cache))
            if guided:
                noise = _noise(states.shape[:2] + (self.llm.config.hidden_size,), generator, states)
                states = torch.cat([states, self.gen_out(noise)])
            logits = self.head.blocks_and_head(states, head_vector, caches).float()
            if guided:
                g = 1 + (cfg.guidance_scale - 1) * k / max(num - 1, 1) if cfg.ramp else cfg.guidance_scale
                logits = logits[b:] + g * (logits[:b] - logits[b:])
            all_logits.append(logits)
            idx = draw_scale(logits, cfg, generator, None if forced is None else forced[k])
            tokens.append(idx.view(b, p, p))
            f_hat, nxt = quantizer.step(f_hat, tokens[-1], k)
            f_hats.append(f_hat)
            if nxt is not None:
                start, end = self.head.spans[k + 1]
                x = self.head.embed(None, nxt, start, end)
        return VARSample(tokens=tokens, f_hat=f_hat, logits=all_logits, f_hats=f_hats)

    def _llm_states(self, emb: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """Run ``emb`` (the newest positions of ``mask``) through the LLM with ``cache``: its last
        hidden states (B, n, H); positions follow from the padding mask."""
        n = emb.shape[1]
        positions = (mask.cumsum(-1) - 1).clamp_min(0)[:, -n:]
        out = self.llm(
            inputs_embeds=emb,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **{self._cache_name: cache},
            output_hidden_states=True,
            logits_to_keep=1,
        )
        return out.hidden_states[-1]


def image_patches(cfg: VARGPTConfig, vision_config: CLIPVisionConfig | None = None) -> int:
    """The ``<image>`` tokens an understanding image fills: the vision tower's patches (a CLIP
    tower's from ``vision_config``, default the one :class:`VARGPT` builds; 0 without a tower)."""
    if cfg.vision == "encoder":
        return cfg.encoder.num_patches
    if cfg.vision == "clip":
        config = vision_config or CLIPVisionConfig(hidden_size=cfg.vision_dim)
        return (config.image_size // config.patch_size) ** 2
    return 0


def _noise(shape: tuple[int, ...], generator: Generators, like: torch.Tensor) -> torch.Tensor:
    """Standard normal hidden states: the unconditional branch's, one generator per row if given."""
    if isinstance(generator, list):
        return torch.stack(
            [torch.randn(shape[1:], generator=g, device=like.device, dtype=like.dtype) for g in generator]
        )
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
