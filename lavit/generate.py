"""Generation loops over UnifiedLM.prefill / decode_step with a KV cache (no HF ``generate``).

Image tokens (:func:`generate_image_tokens`): the prompt is prefilled once, then one forward per
step. Classifier-free guidance is *batched*: conditional and unconditional contexts sit in one
batch [cond; uncond] and every step is a single forward, ``logits = u + g * (c - u)``. (LaVIT,
like HF's ``guidance_scale``, runs the unconditional branch as a second sequential forward with
its own cache, doubling per-step latency.) Inside an image only codes and </img> are allowed (a
slice mask), with min/max code counts, top-k, top-p, temperature and a seeded generator.

Text (:func:`generate_text`): greedy or beam search, image ids suppressed, stop at </s> or a
stop string, batches of prompts with left padding. Text with boxes (:func:`generate_grounded`):
the same loops under :class:`lavit.grounding.BoxGrammar`, which allows location ids only as
whole boxes (or, for comprehension, one box and nothing else).

The image loop's KV cache is a :mod:`lavit.decoding` decoder: on a GPU a static cache whose
decode step is one replayed CUDA graph (``ImageSamplingConfig.kv_cache``).
"""

from __future__ import annotations

import torch

from lavit.config import ImageSamplingConfig, TextDecodingConfig
from lavit.decoding import make_decoder
from lavit.grounding import BOX_TOKENS, Box, BoxGrammar, Segment, split_boxes
from lavit.model import UnifiedLM
from lavit.sequence import SequenceBuilder, TokenSeq, left_pad

Prompt = str | list[str | torch.Tensor] | None


Generators = torch.Generator | list[torch.Generator] | None


def seeded_generators(n: int, seed: int, device: torch.device | str = "cpu") -> list[torch.Generator]:
    """One generator per output, the j-th seeded ``seed + j``: an output is then the same
    whatever else shares its batch."""
    return [torch.Generator(device=device).manual_seed(seed + j) for j in range(n)]


def sample_logits(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: Generators
) -> torch.Tensor:
    """(B, V) logits (disallowed ids at -inf) -> (B,) ids: temperature, top-k, then top-p.

    ``generator`` may be one generator for the batch or one per row; per-row generators make a
    row's samples independent of what else is in the batch.
    """
    logits = logits / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # Drop tokens once the mass *before* them exceeds top_p (the top token always stays).
        drop = (probs.cumsum(-1) - probs) > top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    if isinstance(generator, list):
        assert len(generator) == probs.shape[0], "one generator per row"
        return torch.cat(
            [torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator, strict=True)]
        ).squeeze(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_image_tokens(
    lm: UnifiedLM,
    builder: SequenceBuilder,
    prompts: list[Prompt],
    cfg: ImageSamplingConfig,
    *,
    num_images: int = 1,
    negative_prompt: str | None = None,
    generator: Generators = None,
    features: list[torch.Tensor | None] | None = None,
    step_logits: list[torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Sample image codes for each prompt.

    Args:
        lm: the unified LM (eval mode).
        builder: sequence builder with the LM's text tokenizer and layout.
        prompts: text, a multimodal list of text and code tensors, or None (unconditional).
        cfg: guidance and sampling settings.
        num_images: images per prompt.
        negative_prompt: unconditional context text (default: the lone <img>).
        generator: a seeded torch.Generator, or one per output image (prompt-major order) so
            each image is the same whatever else is in the batch.
        features: for an LM with continuous understanding input, per prompt the (N_i, D)
            tokenizer features of its images, in order (None for a prompt without images); they
            replace the images' code embeddings, as in understanding.
        step_logits: if a list, each step's (B, V) logits that sampling draws from (guided,
            disallowed ids at -inf; before temperature, top-k and top-p) are appended to it.

    Returns:
        ``len(prompts) * num_images`` LongTensors of codes (prompt-major order), each of
        ``min_tokens..max_tokens`` codes.
    """
    if not prompts:
        raise ValueError("no prompts given")
    layout, device = lm.layout, next(lm.parameters()).device
    cond = [builder.generation_prompt(p) for p in prompts for _ in range(num_images)]
    b = len(cond)
    guided = cfg.guidance_scale != 1.0
    seqs = cond + [builder.generation_prompt(negative_prompt)] * b if guided else cond
    if features is not None and len(features) != len(prompts):
        raise ValueError(f"{len(features)} feature entries for {len(prompts)} prompts")
    as_features = lm.cfg.prompt_images_as_features
    if features is not None and not as_features:
        raise ValueError(
            "image features given, but this LM reads a prompt's images as codes "
            f"(lm.understanding_input: {lm.cfg.understanding_input}, lm.synthesis_input: {lm.cfg.synthesis_input})"
        )
    if as_features and features is None and any(s.image_spans for s in seqs):
        raise ValueError(
            "this LM reads a prompt's images as continuous features (lm.understanding_input: continuous): "
            "pass the prompt images' tokenizer features (LaVITPipeline does, given images)"
        )
    per_seq = None
    if features is not None:  # cond rows are prompt-major; the unconditional rows have no image
        empty = next(lm.feature_proj.parameters()).new_zeros(0, lm.feature_proj.in_features)
        per_seq = [empty if f is None else f for f in features for _ in range(num_images)]
        per_seq += [empty] * (len(seqs) - b)
    ids, mask, feats, fmask = _prompt_inputs(seqs, per_seq, builder.tok.pad_token_id, device)
    limit = lm.hf.config.max_position_embeddings
    if ids.shape[1] + cfg.max_tokens > limit:  # the prompt (padded), the codes and </img>
        raise ValueError(
            f"a prompt of {ids.shape[1]} tokens + max_tokens={cfg.max_tokens} image codes runs past the LM "
            f"context of {limit}: shorten the prompt or lower max_tokens"
        )
    decoder = make_decoder(lm, ids.shape[0], ids.shape[1], cfg.max_tokens, cfg.kv_cache)
    logits = decoder.prefill(ids, mask, feats, fmask)
    allowed = layout.image_mask(device)  # (V,) codes and </img>
    end = layout.image_end_id
    codes = torch.full((b, cfg.max_tokens), -1, dtype=torch.long, device=device)
    lengths = torch.full((b,), cfg.max_tokens, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for t in range(cfg.max_tokens):
        if guided:
            c, u = logits[:b], logits[b:]
            logits = u + cfg.guidance_scale * (c - u)  # (B, V)
        logits = logits.masked_fill(~allowed, float("-inf"))
        if t < cfg.min_tokens:
            logits[:, end] = float("-inf")
        if step_logits is not None:
            step_logits.append(logits.clone())
        nxt = sample_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, end), nxt)
        finished_now = (nxt == end) & ~done
        lengths = torch.where(finished_now, torch.full_like(lengths, t), lengths)
        done |= finished_now
        codes[:, t] = torch.where(done, -1, nxt - layout.code_start)
        if t == cfg.max_tokens - 1:
            break
        # </img> is banned before min_tokens, so nothing can finish there: skip reading `done`
        # back from the device (each read waits for the step to finish).
        if t >= cfg.min_tokens and bool(done.all()):
            break
        logits = decoder.step(torch.cat([nxt, nxt]) if guided else nxt)
    return [codes[i, : lengths[i]].cpu() for i in range(b)]


@torch.no_grad()
def generate_text(
    lm: UnifiedLM,
    builder: SequenceBuilder,
    prompts: list[TokenSeq],
    cfg: TextDecodingConfig,
    features: list[torch.Tensor] | None = None,
) -> list[str]:
    """Decode text after each prompt (built with ``builder.understanding_prompt``).

    Greedy when ``cfg.num_beams == 1``, else beam search. Only text ids may be generated.
    ``features`` (continuous understanding input): per prompt, the (N_i, D) tokenizer features
    of its input image, which replace that image's code embeddings.

    Returns:
        One string per prompt, stripped, cut at the first stop string.
    """
    out = generate_ids(lm, builder, prompts, cfg, features)
    texts = [builder.tok.decode(ids, skip_special_tokens=True).strip() for ids in out]
    return [cut_at_stop(t, cfg.stop_strings) for t in texts]


@torch.no_grad()
def generate_grounded(
    lm: UnifiedLM,
    builder: SequenceBuilder,
    prompts: list[TokenSeq],
    cfg: TextDecodingConfig,
    mode: str,
    features: list[torch.Tensor] | None = None,
) -> list[list[Segment]]:
    """Decode text that may hold boxes (``mode`` "grounded": a grounded caption, a phrase with its
    box) or exactly one box ("box": comprehension), under :class:`BoxGrammar`; the arguments are
    :func:`generate_text`'s.

    Returns:
        Per prompt, its strings and :class:`~lavit.grounding.Box` es in order (strings stripped,
        empty ones dropped).
    """
    if mode == "box" and not cfg.min_new_tokens <= BOX_TOKENS <= cfg.max_new_tokens:
        raise ValueError(
            f"a box is {BOX_TOKENS} tokens and then the end: decode it with max_new_tokens >= {BOX_TOKENS} and "
            f"min_new_tokens <= {BOX_TOKENS} (got {cfg.max_new_tokens} and {cfg.min_new_tokens})"
        )
    device = next(lm.parameters()).device
    grammar = BoxGrammar(lm.layout, mode, builder.eos, device)
    out = []
    for ids in generate_ids(lm, builder, prompts, cfg, features, grammar):
        parts = [
            part if isinstance(part, Box) else builder.tok.decode(part, skip_special_tokens=True).strip()
            for part in split_boxes(ids, lm.layout)
        ]
        out.append([p for p in parts if isinstance(p, Box) or p])
    return out


def generate_ids(
    lm: UnifiedLM,
    builder: SequenceBuilder,
    prompts: list[TokenSeq],
    cfg: TextDecodingConfig,
    features: list[torch.Tensor] | None = None,
    grammar: BoxGrammar | None = None,
) -> list[list[int]]:
    """The ids :func:`generate_text` decodes (``grammar``: which may come next; default text only)."""
    if not prompts:
        raise ValueError("no prompts given")
    _check_lengths(lm, prompts, cfg)
    if features is not None and len(features) != len(prompts):
        raise ValueError(f"{len(features)} feature tensors for {len(prompts)} prompts")
    grammar = grammar or BoxGrammar(lm.layout, "text", builder.eos, next(lm.parameters()).device)
    if cfg.num_beams == 1:
        return _greedy(lm, builder, prompts, cfg, grammar, features)
    return [
        _beam_search(lm, builder, p, cfg, grammar, None if features is None else features[i])
        for i, p in enumerate(prompts)
    ]


def _check_lengths(lm: UnifiedLM, prompts: list[TokenSeq], cfg: TextDecodingConfig) -> None:
    limit = lm.hf.config.max_position_embeddings
    for p in prompts:
        if len(p) + cfg.max_new_tokens > limit:
            raise ValueError(
                f"prompt of {len(p)} tokens + max_new_tokens={cfg.max_new_tokens} exceeds the LM context of {limit}"
            )


def cut_at_stop(text: str, stops: list[str]) -> str:
    """``text`` up to the first of ``stops`` it holds, stripped."""
    for s in stops:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def _text_logits(logits: torch.Tensor, allowed: torch.Tensor, eos: int, step: int, cfg: TextDecodingConfig):
    """Log-probabilities over the allowed ids; </s> too only from ``cfg.min_new_tokens`` on."""
    logits = logits.masked_fill(~allowed, float("-inf"))
    if step < cfg.min_new_tokens:
        logits[:, eos] = float("-inf")
    return logits.log_softmax(-1)


def _prompt_inputs(
    prompts: list[TokenSeq], features: list[torch.Tensor] | None, pad_id: int, device: torch.device, repeat: int = 1
):
    """Left-padded (ids, mask) for ``prompts`` each repeated ``repeat`` times, plus the
    continuous features and the (B, L) mask of the positions they replace (or None, None)."""
    seqs = [p for p in prompts for _ in range(repeat)]
    ids, mask = left_pad(seqs, pad_id)
    if features is None:
        return ids.to(device), mask.to(device), None, None
    fmask = torch.zeros_like(ids, dtype=torch.bool)
    for i, s in enumerate(seqs):
        offset = ids.shape[1] - len(s)
        for a, b in s.image_spans:
            fmask[i, offset + a : offset + b] = True
    feats = torch.cat([features[i // repeat] for i in range(len(seqs))])
    if int(fmask.sum()) != feats.shape[0]:
        raise ValueError(f"{feats.shape[0]} feature vectors for {int(fmask.sum())} image positions in the prompts")
    return ids.to(device), mask.to(device), feats.to(device), fmask.to(device)


def _greedy(
    lm: UnifiedLM,
    builder: SequenceBuilder,
    prompts: list[TokenSeq],
    cfg: TextDecodingConfig,
    grammar: BoxGrammar,
    features: list[torch.Tensor] | None = None,
) -> list[list[int]]:
    device = next(lm.parameters()).device
    ids, mask, feats, fmask = _prompt_inputs(prompts, features, builder.tok.pad_token_id, device)
    eos = builder.eos
    logits, cache = lm.prefill(ids, mask, feats, fmask)
    out: list[list[int]] = [[] for _ in prompts]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    for step in range(cfg.max_new_tokens):
        nxt = _text_logits(logits, grammar.allowed(out), eos, step, cfg).argmax(-1)
        for i in range(len(prompts)):
            if not done[i]:
                if int(nxt[i]) == eos:
                    done[i] = True
                else:
                    out[i].append(int(nxt[i]))
        if bool(done.all()) or _all_stopped(builder, out, done, cfg.stop_strings):
            break
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = lm.decode_step(nxt[:, None], mask, cache)
    return out


def _all_stopped(builder: SequenceBuilder, out: list[list[int]], done: torch.Tensor, stops: list[str]) -> bool:
    if not stops:
        return False
    return all(bool(done[i]) or any(s in builder.tok.decode(o) for s in stops) for i, o in enumerate(out))


def _beam_search(
    lm: UnifiedLM,
    builder: SequenceBuilder,
    prompt: TokenSeq,
    cfg: TextDecodingConfig,
    grammar: BoxGrammar,
    features: torch.Tensor | None = None,
) -> list[int]:
    """Beam search for one prompt; returns the hypothesis with the best length-normalised score
    ``sum log p / len ** length_penalty`` among finished ones (running ones if none finished)."""
    k, device = cfg.num_beams, next(lm.parameters()).device
    feats_in = None if features is None else [features]
    ids, mask, feats, fmask = _prompt_inputs([prompt], feats_in, builder.tok.pad_token_id, device, repeat=k)
    eos = builder.eos
    logits, cache = lm.prefill(ids, mask, feats, fmask)
    beams: list[list[int]] = [[] for _ in range(k)]
    scores = torch.full((k,), float("-inf"), device=device)
    scores[0] = 0.0  # all beams start identical: expand only the first
    finished: list[tuple[float, list[int]]] = []

    def normed(score: float, length: int) -> float:
        return score / max(length, 1) ** cfg.length_penalty

    for step in range(cfg.max_new_tokens):
        logp = _text_logits(logits, grammar.allowed(beams), eos, step, cfg)  # (k, V)
        cand = (scores[:, None] + logp).flatten()  # (k * V,)
        top = torch.topk(cand, 2 * k)
        next_beams, next_scores, sources, tokens = [], [], [], []
        for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if score == float("-inf"):
                break
            src, tok = divmod(flat, logp.shape[-1])
            if tok == eos:
                finished.append((normed(score, len(beams[src]) + 1), beams[src]))
                continue
            next_beams.append(beams[src] + [tok])
            next_scores.append(score)
            sources.append(src)
            tokens.append(tok)
            if len(next_beams) == k:
                break
        best_finished = max((f[0] for f in finished), default=float("-inf"))
        # Stop when no running beam can still beat the best finished one (scores only fall).
        if not next_beams or (
            len(finished) >= k
            and max(normed(s, len(b)) for s, b in zip(next_scores, next_beams, strict=True)) <= best_finished
            and cfg.length_penalty >= 0
        ):
            break
        beams, scores = next_beams, torch.tensor(next_scores, device=device)
        while len(beams) < k:  # fewer live candidates than beams: pad with dead copies
            beams.append(beams[0])
            sources.append(sources[0])
            tokens.append(tokens[0])
            scores = torch.cat([scores, scores.new_full((1,), float("-inf"))])
        cache.reorder_cache(torch.tensor(sources, device=device))
        mask = torch.cat([mask, mask.new_ones(k, 1)], dim=1)
        logits = lm.decode_step(torch.tensor(tokens, device=device)[:, None], mask, cache)
        if step == cfg.max_new_tokens - 1:
            finished += [
                (normed(float(s), len(b)), b) for s, b in zip(scores.tolist(), beams, strict=True) if s > float("-inf")
            ]
    if not finished:
        finished = [(normed(float(s), len(b)), b) for s, b in zip(scores.tolist(), beams, strict=True)]
    return max(finished, key=lambda f: f[0])[1]
