"""Static KV cache decoders (lavit/decoding.py): the same logits as the dynamic cache, reuse
across generations, CUDA-graph replay (on a GPU) and bad input."""

import pytest
import torch

from lavit.config import ConfigError, ImageSamplingConfig
from lavit.decoding import DynamicDecoder, StaticDecoder, make_decoder
from lavit.generate import generate_image_tokens
from lavit.sequence import left_pad

TEXTS = ["a red circle on the left.", "a blue square above a green triangle.", "two cyan diamonds."]


@pytest.fixture(scope="module")
def setup(small_lm):
    return small_lm(TEXTS)


def _prompts(sb, texts, device="cpu"):
    ids, mask = left_pad([sb.generation_prompt(t) for t in texts], sb.tok.pad_token_id)
    return ids.to(device), mask.to(device)


def _run(decoder, ids, mask, new):
    out = [decoder.prefill(ids, mask)]
    for t in range(new.shape[1]):
        out.append(decoder.step(new[:, t]).clone())  # a graph's output buffer is reused
    return torch.stack(out)


@torch.no_grad()
def test_static_cache_gives_the_dynamic_caches_logits_and_resets_on_prefill(setup):
    lm, sb = setup
    static = StaticDecoder(lm, batch=3, max_len=64, graph=False)
    # Two generations through one static decoder: the second prompt set is shorter and padded
    # differently, so stale slots from the first must not leak into it.
    for texts in (TEXTS, [None, TEXTS[0], TEXTS[2]]):
        ids, mask = _prompts(sb, texts)
        new = torch.randint(lm.layout.code_start, lm.layout.code_end, (3, 6))
        want = _run(DynamicDecoder(lm, 6), ids, mask, new)
        got = _run(static, ids, mask, new)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


def test_make_decoder_keeps_static_decoders_per_shape(setup):
    lm, _ = setup
    lm.__dict__.pop("_static_decoders", None)
    a = make_decoder(lm, 2, 10, 20, "static")
    assert make_decoder(lm, 2, 30, 20, "static") is a  # 30 and 50 slots both round up to 64
    assert make_decoder(lm, 2, 50, 20, "static") is not a
    assert isinstance(make_decoder(lm, 2, 10, 20, "auto"), DynamicDecoder)  # CPU: dynamic
    for n in range(1, 8):
        make_decoder(lm, n, 10, 20, "static")
    assert len(lm._static_decoders) == 4  # each holds a KV cache: only the last few stay
    b = make_decoder(lm, 2, 10, 20, "static")
    try:
        lm.float()  # new weight tensors: a graph captured on the old ones must not be reused
        assert make_decoder(lm, 2, 10, 20, "static") is not b
    finally:
        lm.double()


def test_bad_input(setup):
    lm, sb = setup
    with pytest.raises(ConfigError, match="kv_cache"):
        ImageSamplingConfig(kv_cache="paged")
    with pytest.raises(ValueError, match="kv_cache"):
        make_decoder(lm, 1, 4, 4, "paged")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            StaticDecoder(lm, 1, 64, graph=True)
    ids, mask = _prompts(sb, TEXTS)
    with pytest.raises(ValueError, match="does not fit"):
        StaticDecoder(lm, 2, 64, graph=False).prefill(ids, mask)
    dec = StaticDecoder(lm, 3, ids.shape[1] + 1, graph=False)
    dec.prefill(ids, mask)
    dec.step(ids[:, -1])
    with pytest.raises(ValueError, match="all are used"):
        dec.step(ids[:, -1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@torch.no_grad()
def test_cuda_graph_replays_the_static_step(small_lm):
    lm, sb = small_lm(TEXTS, torch.float32, "cuda")
    ids, mask = _prompts(sb, TEXTS, "cuda")
    new = torch.randint(lm.layout.code_start, lm.layout.code_end, (3, 8), device="cuda")
    graphed = StaticDecoder(lm, 3, 64, graph=True)
    eager = _run(StaticDecoder(lm, 3, 64, graph=False), ids, mask, new)
    for _ in range(2):  # the second run replays the graph captured in the first
        torch.testing.assert_close(_run(graphed, ids, mask, new), eager, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(_run(DynamicDecoder(lm, 8), ids, mask, new), eager, atol=1e-4, rtol=1e-4)
    cfg = ImageSamplingConfig(guidance_scale=3.0, top_k=10, min_tokens=5, max_tokens=20)
    runs = [
        generate_image_tokens(lm, sb, TEXTS, cfg, generator=torch.Generator("cuda").manual_seed(0)) for _ in range(2)
    ]
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
