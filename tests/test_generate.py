"""Generation loops: cache == recompute, batched CFG == unbatched reference, batch == alone,
the image slice mask, beam search optimality, and bad input."""

import dataclasses
import itertools
import math
from pathlib import Path

import pytest
import torch

from lavit.config import ConfigError, ImageSamplingConfig, LMConfig, TextDecodingConfig, load_config
from lavit.generate import generate_image_tokens, generate_text, sample_logits
from lavit.model import UnifiedLM
from lavit.sequence import SequenceBuilder, left_pad
from lavit.vocab import VocabLayout

TEXTS = [
    "a red circle on the left.",
    "a blue square above a green triangle.",
    "what colour is the circle? red",
    "Question: how many shapes are there? Answer: 2",
    "there are two small cyan diamonds.",
]


@pytest.fixture(scope="module")
def setup(small_lm):
    return small_lm(TEXTS)


# A deprecated cache argument (transformers >= 5.24 warns about past_key_values) fails here.
@pytest.mark.filterwarnings("error::FutureWarning")
def test_cached_decoding_matches_full_recompute_with_left_padding(setup):
    lm, sb = setup
    assert lm.takes_decode_mask  # decode_step hands HF a prebuilt 4D mask: this checks it too
    seqs = [sb.generation_prompt("a red circle on the left."), sb.generation_prompt(None)]
    ids, mask = left_pad(seqs, sb.tok.pad_token_id)
    logits, cache = lm.prefill(ids, mask)
    new = torch.randint(lm.layout.code_start, lm.layout.code_end, (2, 5))
    for t in range(5):
        mask = torch.cat([mask, mask.new_ones(2, 1)], 1)
        logits = lm.decode_step(new[:, t : t + 1], mask, cache)
        full_ids = torch.cat([ids, new[:, : t + 1]], 1)
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        full = lm.hf(input_ids=full_ids, attention_mask=mask, position_ids=pos).logits[:, -1]
        torch.testing.assert_close(logits, full, atol=1e-9, rtol=1e-9)


def test_no_prebuilt_decode_mask_where_hf_must_build_it(setup):
    lm, _ = setup
    config = lm.hf.config
    saved = config.sliding_window if hasattr(config, "sliding_window") else None
    try:
        config.sliding_window = 16  # a 4D mask would switch the window off
        assert not lm.takes_decode_mask
    finally:
        config.sliding_window = saved
    assert lm.takes_decode_mask


def _reference_unbatched_cfg(lm, sb, prompt, cfg, generator, negative_prompt=None):
    """LaVIT's method: conditional and unconditional contexts each with their own cache,
    two sequential forwards per step."""
    c_ids, c_mask = left_pad([sb.generation_prompt(prompt)], sb.tok.pad_token_id)
    u_ids, u_mask = left_pad([sb.generation_prompt(negative_prompt)], sb.tok.pad_token_id)
    c_logits, c_cache = lm.prefill(c_ids, c_mask)
    u_logits, u_cache = lm.prefill(u_ids, u_mask)
    allowed, end, out = lm.layout.image_mask(), lm.layout.image_end_id, []
    for t in range(cfg.max_tokens):
        logits = u_logits + cfg.guidance_scale * (c_logits - u_logits)
        logits = logits.masked_fill(~allowed, float("-inf"))
        if t < cfg.min_tokens:
            logits[:, end] = float("-inf")
        nxt = sample_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p, generator)
        if int(nxt) == end:
            break
        out.append(int(nxt) - lm.layout.code_start)
        c_mask, u_mask = torch.cat([c_mask, c_mask.new_ones(1, 1)], 1), torch.cat([u_mask, u_mask.new_ones(1, 1)], 1)
        c_logits = lm.decode_step(nxt[:, None], c_mask, c_cache)
        u_logits = lm.decode_step(nxt[:, None], u_mask, u_cache)
    return torch.tensor(out, dtype=torch.long)


@pytest.mark.parametrize("kv_cache", ["dynamic", "static"])
@pytest.mark.parametrize("negative", [None, "a blue square above a green triangle."])
def test_batched_cfg_equals_unbatched_reference(setup, negative, kv_cache):
    lm, sb = setup
    cfg = ImageSamplingConfig(guidance_scale=3.0, top_k=10, top_p=0.9, min_tokens=3, max_tokens=12, kv_cache=kv_cache)
    outs = []
    for seed in range(3):
        ours = generate_image_tokens(
            lm,
            sb,
            ["a red circle on the left."],
            cfg,
            negative_prompt=negative,
            generator=torch.Generator().manual_seed(seed),
        )[0]
        ref = _reference_unbatched_cfg(
            lm, sb, "a red circle on the left.", cfg, torch.Generator().manual_seed(seed), negative
        )
        assert torch.equal(ours, ref), (seed, ours, ref)
        outs.append(ours)
    if negative is not None:  # the negative prompt really is the unconditional context
        plain = [
            generate_image_tokens(
                lm, sb, ["a red circle on the left."], cfg, generator=torch.Generator().manual_seed(seed)
            )[0]
            for seed in range(3)
        ]
        assert any(not torch.equal(a, b) for a, b in zip(outs, plain, strict=True))


def test_image_mask_never_lets_text_inside_an_image(setup):
    lm, sb = setup
    cfg = ImageSamplingConfig(guidance_scale=4.0, top_k=0, temperature=2.0, min_tokens=5, max_tokens=30)
    out = generate_image_tokens(lm, sb, TEXTS, cfg, num_images=4, generator=torch.Generator().manual_seed(0))
    assert len(out) == 20
    for codes in out:
        assert 5 <= codes.numel() <= 30
        assert int(codes.min()) >= 0 and int(codes.max()) < 40


class BigramLM:
    """A hand-built LM over a 6-id vocabulary (ids 0-3 text, 4 = <img>.., 5 = </img>) whose
    next-token distribution depends on the last token only, so every sequence's log-probability
    is known exactly."""

    def __init__(self, table: torch.Tensor, layout: VocabLayout):
        self.table, self.layout, self.dummy = table, layout, torch.nn.Parameter(torch.zeros(1))
        self.hf = type("HF", (), {"config": type("C", (), {"max_position_embeddings": 64})()})()

    def parameters(self):
        return iter([self.dummy])

    def prefill(self, ids, mask, features=None, feature_mask=None):
        cache = type("Cache", (), {"reorder_cache": lambda self, idx: None})()
        return self.table[ids[:, -1]].clone(), cache

    def decode_step(self, ids, mask, cache):
        return self.table[ids[:, 0]].clone()


def test_beam_search_finds_the_best_hypothesis_on_a_constructed_case():
    # Text ids 0..3; id 2 is </s>. Greedy takes 0 (p=0.5) then a flat distribution; the best
    # sequence goes through 1 (p=0.4), after which </s> is near certain.
    layout = VocabLayout(text_size=4, num_codes=1)
    logp = torch.full((layout.total, layout.total), -1e9, dtype=torch.float64)
    probs = {3: [0.5, 0.4, 0.05, 0.05], 0: [0.3, 0.3, 0.1, 0.3], 1: [0.01, 0.01, 0.97, 0.01]}
    for src, row in probs.items():
        logp[src, :4] = torch.tensor(row).log()
    logp[2, :4] = torch.tensor([0.25] * 4).log()
    lm = BigramLM(logp, layout)
    tok = type("Tok", (), {"pad_token_id": 3, "decode": lambda self, ids, **k: " ".join(map(str, ids))})()
    sb = type("SB", (), {"tok": tok, "eos": 2})()
    prompt = type("P", (), {"ids": [3], "__len__": lambda self: 1})()
    best = generate_text(lm, sb, [prompt], TextDecodingConfig(num_beams=3, max_new_tokens=4, length_penalty=0.0))
    greedy = generate_text(lm, sb, [prompt], TextDecodingConfig(num_beams=1, max_new_tokens=4))

    # Exhaustive search over finished sequences (ending in </s>) of up to 4 tokens.
    def score(seq):
        prev, total = 3, 0.0
        for t in seq:
            total += float(logp[prev, t])
            prev = t
        return total

    cands = [list(s) + [2] for n in range(4) for s in itertools.product([0, 1, 3], repeat=n)]
    optimum = max(cands, key=score)
    assert optimum == [1, 2] and math.isclose(score(optimum), math.log(0.4 * 0.97), rel_tol=1e-6)
    assert best == ["1"]
    assert greedy != best


class CountingBigramLM(BigramLM):
    def __init__(self, table, layout):
        super().__init__(table, layout)
        self.steps = 0

    def decode_step(self, ids, mask, cache):
        self.steps += 1
        return super().decode_step(ids, mask, cache)


@pytest.mark.parametrize("beams", [1, 3])
def test_stop_strings_cut_the_text_and_end_decoding(setup, beams):
    # A bigram LM that spells out TARGET then </s>, with the real BPE tokenizer.
    _, sb = setup
    target = " a red circle on top."
    chain = sb.text(target)
    assert len(set(chain)) == len(chain)
    prompt = sb.understanding_prompt(torch.tensor([1]), "what?")
    logp = torch.full((sb.layout.total, sb.layout.total), -1e9, dtype=torch.float64)
    for prev, nxt in zip([prompt.ids[-1], *chain], [*chain, sb.eos], strict=True):
        logp[prev, nxt] = 0.0
    lm = CountingBigramLM(logp, sb.layout)
    full = generate_text(lm, sb, [prompt], TextDecodingConfig(num_beams=beams, max_new_tokens=20))[0]
    assert full == target.strip()
    lm.steps = 0
    stops = TextDecodingConfig(num_beams=beams, max_new_tokens=20, stop_strings=["@@never", " on"])
    assert generate_text(lm, sb, [prompt], stops)[0] == "a red circle"
    if beams == 1:  # greedy stops decoding once the stop string appears
        assert lm.steps < len(chain) - 2


def test_lavit_7b_vocabulary_has_lavits_numbers():
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / "lm" / "lavit-7b.yaml", LMConfig)
    with torch.device("meta"):
        lm = UnifiedLM(cfg)
    v = lm.layout
    assert (v.image_start_id, v.image_end_id, v.code_start, v.total) == (32000, 32001, 32002, 48386)
    assert lm.hf.get_input_embeddings().weight.shape == (48386, 4096)
    assert lm.hf.get_output_embeddings().weight.shape == (48386, 4096)
    n = sum(p.numel() for p in lm.parameters())
    assert n == 6_738_415_616 + 2 * 16386 * 4096  # Llama-2-7B + the new rows of embedding and head


def test_bad_input(setup, tmp_path):
    lm, sb = setup
    cfg = ImageSamplingConfig(min_tokens=1, max_tokens=4)
    with pytest.raises(ValueError, match="no prompts"):
        generate_image_tokens(lm, sb, [], cfg)
    with pytest.raises(ValueError, match="empty text"):
        generate_image_tokens(lm, sb, ["  "], cfg)
    with pytest.raises(ValueError, match="sequence of .* tokens exceeds the LM context of 128"):
        sb.understanding_prompt(torch.tensor([1]), "a red circle " * 60)
    prompt = sb.understanding_prompt(torch.tensor([1]), "a red circle " * 25)
    assert len(prompt) < 128
    with pytest.raises(ValueError, match="max_new_tokens=60 exceeds the LM context of 128"):
        generate_text(lm, sb, [prompt], TextDecodingConfig(max_new_tokens=60))
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        sb.understanding_prompt(torch.tensor([40]), "what?")
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        UnifiedLM(LMConfig(pretrained_path=str(tmp_path)))
    small = VocabLayout(text_size=100, num_codes=40)
    with pytest.raises(ValueError, match="do not belong together"):
        SequenceBuilder(sb.tok, small, 128)


def test_an_lm_started_from_a_pretrained_folder_loads_without_it(setup, tmp_path):
    """lm.pretrained_path (LaVIT's LLaMA) is where training starts; the saved directory carries the
    architecture (hf_config.json) and loads after that folder is gone, giving the same logits."""
    import shutil

    from lavit.lm_io import load_lm, save_lm

    lm, sb = setup
    base = tmp_path / "text_lm"
    text_only = UnifiedLM(dataclasses.replace(lm.cfg, num_codes=1)).hf
    text_only.resize_token_embeddings(lm.layout.text_size)
    text_only.save_pretrained(base)
    started = UnifiedLM(dataclasses.replace(lm.cfg, pretrained_path=str(base))).eval()
    save_lm(started, sb.tok, tmp_path / "saved")
    shutil.rmtree(base)
    loaded, tok = load_lm(tmp_path / "saved")
    assert loaded.cfg.pretrained_path == str(base) and loaded.layout == started.layout and len(tok) == len(sb.tok)
    ids = torch.randint(0, started.layout.total, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded.hf(ids).logits, started.hf(ids).logits)
