"""UnifiedLM: any Hugging Face causal LM with the image codes appended to its vocabulary.

One next-token objective over text and image tokens. Image input for understanding is either
*discrete* (the code embeddings of the LM itself: truly unified, the default) or *continuous*
(the tokenizer's merger features through a linear projection, as LaVIT does for understanding).
Continuous input may add VW-LMM's visual words (``lm.visual_words_weight``,
``lm.pseudo_image_features``; :meth:`UnifiedLM.visual_word_logits`).

Modes are separate methods (house style): ``forward`` (training loss), ``prefill`` and
``decode_step`` (generation with a ``transformers`` KV cache; loops live in generate.py).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Cache, DynamicCache, PretrainedConfig

from lavit.config import ConfigError, LMConfig
from lavit.vocab import VocabLayout


@dataclass
class LMOutput:
    loss: torch.Tensor | None
    logits: torch.Tensor  # (B, L, V)
    logs: dict[str, torch.Tensor]


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 logits -> fp32 for sampling and losses; fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _hf_config(cfg: LMConfig, text_vocab_size: int):
    return AutoConfig.for_model(
        cfg.model_type,
        vocab_size=text_vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads or cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )


def hf_architecture(hf_config: PretrainedConfig) -> dict[str, Any]:
    """The LMConfig fields a Hugging Face config sets (the inverse of :func:`_hf_config`): field ->
    value, for the fields this model type has. ``num_kv_heads`` is the actual count (never None)."""
    out: dict[str, Any] = {"model_type": hf_config.model_type}
    for field_name, attr in HF_ATTRIBUTES.items():
        value = getattr(hf_config, attr, None)
        if value is not None:
            out[field_name] = value
    rope = getattr(hf_config, "rope_parameters", None)
    theta = rope.get("rope_theta") if isinstance(rope, dict) else getattr(hf_config, "rope_theta", None)
    if theta is not None:
        out["rope_theta"] = float(theta)
    return out


def cache_argument(model: nn.Module) -> str:
    """How ``model.forward`` (a transformers LM) takes a KV cache: ``cache`` in newer
    transformers 5.x, ``past_key_values`` in older ones (where newer ones warn that it goes in 5.40)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


# LMConfig field -> the Hugging Face config attribute _hf_config sets from it.
HF_ATTRIBUTES = {
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "num_kv_heads": "num_key_value_heads",
    "intermediate_size": "intermediate_size",
    "max_position_embeddings": "max_position_embeddings",
    "tie_embeddings": "tie_word_embeddings",
}


def _load_pretrained(path: Path, attn_implementation: str) -> nn.Module:
    """A local Hugging Face causal LM folder (``lm.pretrained_path``), safetensors weights only
    and no custom code.

    Raises:
        ConfigError: the folder is not a model folder, asks for custom code (``auto_map``), has
            only pickle weights (``pytorch_model.bin``), or does not load.
    """
    where = f"lm.pretrained_path={str(path)!r}"
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"lm.pretrained_path={path} is not a Hugging Face model directory (no config.json); "
            "download the model once elsewhere and point at the local folder"
        )
    try:
        auto_map = "auto_map" in json.loads((path / "config.json").read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{where}: {path / 'config.json'} does not read as JSON ({e})") from None
    if auto_map:
        raise ConfigError(
            f"{where}: config.json has auto_map (model classes defined by Python code in the folder), which "
            "lavit never runs; use a model type built into transformers"
        )
    if not any(path.glob("*.safetensors")):
        raise ConfigError(
            f"{where} holds no .safetensors weights (pickle files such as pytorch_model.bin are refused: "
            "loading them can run code); convert them once where you trust the file, e.g. "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)"
        )
    try:
        return AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            trust_remote_code=False,
            use_safetensors=True,
            attn_implementation=attn_implementation,
        )
    except (OSError, ValueError) as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise ConfigError(f"{where} does not load as a Hugging Face causal LM ({first})") from None


class UnifiedLM(nn.Module):
    """Args:
    cfg: the LM config. ``cfg.pretrained_path`` loads a local HF directory; otherwise a fresh
        model of ``cfg.text_vocab_size`` text ids is built.
    init_new_rows: draw the new embedding rows from the old rows' statistics; False when saved
        weights are about to replace them (loading a checkpoint), which skips that work.
    hf_config: build this Hugging Face architecture (its ``vocab_size`` text ids) instead of
        reading ``cfg.pretrained_path``; how a saved LM that started from a pretrained folder is
        rebuilt without it (lavit.lm_io).
    dtype: build the weights in this dtype (e.g. ``torch.bfloat16`` for a 7B model on a GPU;
        None: float32), without a float32 copy first.
    """

    def __init__(
        self,
        cfg: LMConfig,
        init_new_rows: bool = True,
        hf_config: PretrainedConfig | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        if hf_config is None and cfg.pretrained_path:
            self.hf = _load_pretrained(Path(cfg.pretrained_path), cfg.attn_implementation)
        else:
            if hf_config is None:
                hf_config = _hf_config(cfg, cfg.text_vocab_size)
            # No custom code: whatever a config's auto_map names, transformers builds its own class
            # (left unset, it may ask on stdin whether to import the module auto_map names).
            self.hf = AutoModelForCausalLM.from_config(
                hf_config, attn_implementation=cfg.attn_implementation, trust_remote_code=False, dtype=dtype
            )
        self._cache_name = cache_argument(self.hf)
        self.layout = self._layout(cfg, self.hf.get_input_embeddings().num_embeddings)
        # New rows (specials, codes, locations) are drawn from a Gaussian with the mean and
        # covariance of the existing rows (transformers' mean_resizing), not zeros; on the meta
        # device there are no values to take statistics of.
        on_meta = self.hf.get_input_embeddings().weight.is_meta
        self.hf.resize_token_embeddings(self.layout.total, mean_resizing=init_new_rows and not on_meta)
        self.hidden_size = self.hf.config.hidden_size
        self.feature_proj = (
            nn.Linear(cfg.feature_dim, self.hidden_size, dtype=dtype)
            if cfg.understanding_input == "continuous"
            else None
        )

    @staticmethod
    def _layout(cfg: LMConfig, rows: int) -> VocabLayout:
        """The vocabulary layout of an LM whose embedding has ``rows`` rows: they are its text
        vocabulary, unless they already number the config's text + specials + codes (+ locations),
        as LaVIT's 48,386-row Llama does; then the layout is the config's and nothing is added."""
        extended = VocabLayout(cfg.text_vocab_size, cfg.num_codes, num_locations=cfg.num_locations)
        text_size = cfg.text_vocab_size if rows == extended.total else rows
        return VocabLayout(text_size=text_size, num_codes=cfg.num_codes, num_locations=cfg.num_locations)

    @property
    def vocab_size(self) -> int:
        return self.layout.total

    def grow_locations(self, num_locations: int) -> None:
        """Give a trained LM ``num_locations`` location tokens (grounding) where it had fewer: the
        new rows of the embedding and the head are appended after every other id (the location
        block is the vocabulary's last), drawn like any new rows; no existing id moves."""
        if num_locations < self.layout.num_locations:
            raise ValueError(
                f"lm.num_locations={num_locations} < this LM's {self.layout.num_locations}: location "
                "tokens can be added to an LM, not taken away"
            )
        layout = self.layout
        self.layout = VocabLayout(layout.text_size, layout.num_codes, layout.specials, num_locations)
        self.cfg = dataclasses.replace(self.cfg, num_locations=num_locations)
        self.hf.resize_token_embeddings(self.layout.total, mean_resizing=True)

    # ----------------------------------------------------------------------------------------

    def embed(
        self, input_ids: torch.Tensor, features: torch.Tensor | None = None, feature_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, L) ids -> (B, L, H) input embeddings. With continuous understanding input,
        positions where ``feature_mask`` (B, L) is True take ``features`` (M, feature_dim), in
        order, through the projection instead of their code embeddings; with
        ``lm.pseudo_image_features``, through the projection and then to pseudo image features."""
        return self._embed(input_ids, features, feature_mask, want_words=False)[0]

    def _embed(
        self,
        input_ids: torch.Tensor,
        features: torch.Tensor | None,
        feature_mask: torch.Tensor | None,
        want_words: bool,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(:meth:`embed`'s (B, L, H), the visual-word logits (M, T) of the features when
        ``want_words`` or pseudo image features need them, else None)."""
        emb = self.hf.get_input_embeddings()(input_ids)
        words_MT = None
        if features is not None:
            if self.feature_proj is None:
                raise ValueError("continuous image features given, but lm.understanding_input is 'discrete'")
            assert feature_mask is not None and int(feature_mask.sum()) == features.shape[0], "feature count mismatch"
            projected = self.feature_proj(features.to(self.feature_proj.weight.dtype))  # (M, H)
            if want_words or self.cfg.pseudo_image_features:
                words_MT = self.visual_word_logits(projected)
            if self.cfg.pseudo_image_features:
                # VW-LMM's pseudo image features (Peng et al. 2024, arXiv 2403.07720): the text
                # embeddings averaged under each visual word, softmax(w) @ E[:T]:
                # (M, T) x (T, H) -> (M, H), inside the text embeddings' convex hull.
                text_rows_TH = self.hf.get_input_embeddings().weight[: self.layout.text_size]
                probs_MT = _at_least_fp32(words_MT).softmax(-1)
                projected = probs_MT.to(text_rows_TH.dtype) @ text_rows_TH
            emb = emb.masked_scatter(feature_mask.unsqueeze(-1), projected.to(emb.dtype))
        return emb, words_MT

    def visual_word_logits(self, projected: torch.Tensor) -> torch.Tensor:
        """VW-LMM's visual words (Peng et al. 2024, arXiv 2403.07720): projected image features
        (M, H) -> logits (M, T) over the text vocabulary [0, T), whose softmax is each image
        position's "visual word", a distribution over text tokens.

        VW-LMM learns a separate ``vm_head``; this is the LM's own output head restricted to the
        text rows (no new weights). With tied embeddings it is each feature's dot product with
        every text embedding. In the head's dtype (bf16 for a bf16 LM)."""
        head = self.hf.get_output_embeddings()
        text_size = self.layout.text_size
        bias = None if getattr(head, "bias", None) is None else head.bias[:text_size]
        return F.linear(projected.to(head.weight.dtype), head.weight[:text_size], bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_weights: torch.Tensor,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> LMOutput:
        """Training: next-token cross-entropy, each target weighted by ``loss_weights``, plus
        ``lm.visual_words_weight`` times the visual-words KL (:meth:`_visual_words_kl`) if set.

        Args:
            input_ids: (B, L); attention_mask: (B, L) 1 = real token (right padding).
            loss_weights: (B, L) weight of predicting token t from tokens < t (0 = no loss).
            features / feature_mask: continuous image input (see :meth:`embed`).

        Returns:
            LMOutput with the weighted mean loss and per-kind losses in ``logs`` (with
            ``loss_visual_words`` when that weight is set).
        """
        vw_weight = self.cfg.visual_words_weight
        logits, ce, words_MT = self._token_ce(input_ids, attention_mask, features, feature_mask, vw_weight > 0)
        targets, weights = input_ids[:, 1:], loss_weights[:, 1:].float()
        loss = (ce * weights).sum() / weights.sum().clamp_min(1e-6)
        is_code = self.layout.is_code(targets) & (weights > 0)
        is_box = self.layout.is_location(targets) & (weights > 0)
        is_text = ~self.layout.is_code(targets) & ~is_box & (weights > 0)
        logs = {
            "loss_image": (ce * is_code).sum().detach() / is_code.sum().clamp_min(1),
            "loss_text": (ce * is_text).sum().detach() / is_text.sum().clamp_min(1),
        }
        if self.layout.num_locations:  # every step of a model with boxes (ranks reduce the same keys)
            logs["loss_box"] = (ce * is_box).sum().detach() / is_box.sum().clamp_min(1)
        if vw_weight > 0:  # logged on every step (also without images): ranks reduce the same keys
            kl = self._visual_words_kl(logits, words_MT, feature_mask)
            loss = loss + vw_weight * kl
            logs["loss_visual_words"] = kl.detach()
        return LMOutput(loss=loss, logits=logits, logs=logs)

    def _visual_words_kl(
        self, logits: torch.Tensor, words_MT: torch.Tensor | None, feature_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """VW-LMM's visual modelling loss (Peng et al. 2024, arXiv 2403.07720): the LM's
        prediction at t - 1, over the text ids, of image position t's visual word, as
        KL(softmax(w_t) || softmax(logits[t-1, :T])), averaged over the image positions t >= 1
        (VW-LMM's KLDivLoss(reduction="batchmean") over those rows). The target is not detached,
        as in VW-LMM: the projection learns from both sides. 0 (fp32) with no image position."""
        if words_MT is None:  # no image in the batch
            return torch.zeros((), device=logits.device)
        # masked_scatter filled the image positions in row-major order, as nonzero() lists them.
        has_prev_M = feature_mask.nonzero()[:, 1] >= 1  # position 0 has no prediction
        target_NT = _at_least_fp32(words_MT[has_prev_M])
        pred_NT = _at_least_fp32(logits[:, :-1, : self.layout.text_size][feature_mask[:, 1:]])
        kl = F.kl_div(pred_NT.log_softmax(-1), target_NT.log_softmax(-1), reduction="sum", log_target=True)
        return kl / has_prev_M.sum().clamp_min(1)

    @torch.no_grad()
    def sequence_logprob(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        loss_weights: torch.Tensor,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scoring: each row's log-likelihood of its weighted targets, sum_t w_t log p(ids[t] |
        ids[:t]) -> (B,). The arguments are :meth:`forward`'s (``collate``'s output)."""
        _, ce, _ = self._token_ce(input_ids, attention_mask, features, feature_mask, want_words=False)
        return -(ce * loss_weights[:, 1:].float()).sum(dim=1)

    def _token_ce(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor | None,
        feature_mask: torch.Tensor | None,
        want_words: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(logits (B, L, V), cross-entropy of predicting ids[t] from ids[:t] (B, L - 1), fp32,
        the features' visual-word logits (M, T) or None: see :meth:`_embed`)."""
        emb, words_MT = self._embed(input_ids, features, feature_mask, want_words)
        logits = self.hf(inputs_embeds=emb, attention_mask=attention_mask, use_cache=False).logits  # (B, L, V)
        logits_BlV, targets = _at_least_fp32(logits[:, :-1]), input_ids[:, 1:]
        ce = F.cross_entropy(logits_BlV.transpose(1, 2), targets, reduction="none")  # (B, L - 1)
        return logits, ce, words_MT

    # ----------------------------------------------------------------------------------------
    # Generation steps (the loops are in lavit/generate.py)
    # ----------------------------------------------------------------------------------------

    def prefill(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        hf_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Cache]:
        """Run a left-padded prompt once: (B, L) -> (last-position logits (B, V), KV cache).

        ``cache`` defaults to a fresh ``DynamicCache``; ``hf_mask`` is a finished 4D mask to hand
        HF instead of the (B, L) padding mask (a static cache's keys outnumber the prompt's);
        positions always come from ``attention_mask``."""
        cache = DynamicCache() if cache is None else cache
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)
        out = self.hf(
            inputs_embeds=self.embed(input_ids, features, feature_mask),
            attention_mask=attention_mask if hf_mask is None else hf_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **self._cache_kwarg(cache),
        )
        return _at_least_fp32(out.logits[:, -1]), cache  # extended in place

    @property
    def takes_decode_mask(self) -> bool:
        """Whether :meth:`decode_step` may hand HF a finished 4D mask: SDPA attention (a boolean
        mask, True = attend) and no sliding-window layers (a 4D mask would switch the window off)."""
        config = self.hf.config
        windowed = getattr(config, "sliding_window", None) is not None or "sliding_attention" in (
            getattr(config, "layer_types", None) or ()
        )
        return config._attn_implementation == "sdpa" and not windowed

    def decode_step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Cache) -> torch.Tensor:
        """One token per sequence: (B, 1) new ids, (B, L+1) mask so far -> logits (B, V); the
        cache is extended in place. A (B, 1, 1, L) boolean mask (a static cache's, True = real
        key) is handed to HF as it is."""
        position_ids = attention_mask.long().flatten(1).sum(-1, keepdim=True) - 1  # (B, 1)
        mask = attention_mask
        if attention_mask.dim() == 2 and self.takes_decode_mask:
            # One new query sees every unpadded key: (B, 1, 1, L+1). Given the 2D mask, HF rebuilds
            # this each step, and first reads the padding back from the device to see whether it
            # may skip it: a host sync per generated token.
            mask = attention_mask[:, None, None, :].bool()
        out = self.hf(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=True,
            **self._cache_kwarg(cache),
        )
        return _at_least_fp32(out.logits[:, -1])

    def _cache_kwarg(self, cache: Cache) -> dict[str, Cache]:
        """The KV cache as a keyword argument of ``self.hf.forward``."""
        return {self._cache_name: cache}
