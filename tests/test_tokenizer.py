"""DynamicVisualTokenizer: variable lengths, batch == one-by-one, determinism, VQ invariants,
causality of the merger, save/load, the LaVIT-shaped preset, and bad input."""

from pathlib import Path

import pytest
import torch

from lavit.config import ConfigError, TokenizerConfig, load_config
from tokenizer import DynamicVisualTokenizer, load_tokenizer, save_tokenizer
from tokenizer.model import compact, patchify, unpatchify

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def debug_cfg(*overrides: str) -> TokenizerConfig:
    # Random (not k-means) codebook init: distinct codes, so nearest-code ties cannot occur.
    return load_config(
        CONFIGS / "tokenizer" / "debug.yaml", TokenizerConfig, ["quantizer.kmeans_init=false", *overrides]
    )


@pytest.fixture(scope="module")
def tok():
    torch.manual_seed(0)
    t = DynamicVisualTokenizer(debug_cfg())
    t.calibrate(torch.rand(16, 3, 32, 32))
    return t.eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g)


def test_encode_gives_variable_length_code_sequences(tok):
    codes = tok.encode(images(8))
    assert len(codes) == 8
    assert all(c.dtype == torch.long and c.ndim == 1 and 1 <= c.numel() <= 16 for c in codes)
    assert all(0 <= int(c.min()) and int(c.max()) < 64 for c in codes)
    assert len({c.numel() for c in codes}) > 1, "lengths should vary between images"
    emb, mask = tok.code_embeddings(codes)
    assert emb.shape == (8, max(c.numel() for c in codes), 32)
    assert mask.sum(1).tolist() == [c.numel() for c in codes]
    assert torch.all(emb[~mask] == 0)
    feats = tok.encode_features(images(8))
    assert [f.shape for f in feats] == [(c.numel(), 32) for c in codes]


def test_batch_equals_one_by_one(tok):
    x = images(6, seed=1)
    batch = tok.encode(x)
    single = [tok.encode(x[i : i + 1])[0] for i in range(6)]
    for b, s in zip(batch, single, strict=False):
        assert torch.equal(b, s)
    fb = tok.encode_features(x)
    for i in range(6):
        torch.testing.assert_close(fb[i], tok.encode_features(x[i : i + 1])[0], atol=1e-5, rtol=1e-5)


def test_inference_is_deterministic_unless_sampling(tok):
    x = images(4, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(tok.encode(x), tok.encode(x), strict=False))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    s1, s2 = tok.encode(x, sample=True, generator=g1), tok.encode(x, sample=True, generator=g2)
    assert all(torch.equal(a, b) for a, b in zip(s1, s2, strict=False))
    lengths = {
        tuple(c.numel() for c in tok.encode(x, sample=True, generator=torch.Generator().manual_seed(s)))
        for s in range(6)
    }
    assert len(lengths) > 1, "sampling the keep mask should change token counts"


def test_eval_quantized_equals_codebook_lookup(tok):
    x = images(4, seed=3)
    _, _, merged, mask = tok._merged(x, lambda lg: tok._infer_keep(lg).float())
    quantized, indices, _ = tok._quantize_eval(merged, mask)
    lookup = tok.from_code(tok.quantizer.get_output_from_indices(indices))
    torch.testing.assert_close(quantized[mask], lookup[mask], atol=0, rtol=0)
    # Masked (padded batch) equals unmasked (one image, no padding).
    one = mask[0].sum()
    _, idx0, _ = tok._quantize_eval(merged[:1, :one], torch.ones(1, int(one), dtype=torch.bool))
    assert torch.equal(idx0[0], indices[0, :one])


def test_merger_is_causal_among_kept_and_reads_dropped_tokens(tok):
    torch.manual_seed(0)
    h = torch.randn(1, 16, 32)
    keep = torch.zeros(1, 16)
    keep[0, [0, 3, 5, 9, 12]] = 1
    base = tok.merger(h, keep)
    later = h.clone()
    later[0, 12] += torch.randn(32)  # a later kept token (random: a constant shift is invisible to LayerNorm)
    out = tok.merger(later, keep)
    torch.testing.assert_close(out[0, [0, 3, 5, 9]], base[0, [0, 3, 5, 9]])
    assert not torch.allclose(out[0, 12], base[0, 12])
    dropped = h.clone()
    dropped[0, 7] += torch.randn(32)  # a dropped token: every kept token cross-attends to it
    out = tok.merger(dropped, keep)
    assert not torch.allclose(out[0, 0], base[0, 0])


def test_calibrated_threshold_hits_the_target_fraction_and_stays_deterministic():
    torch.manual_seed(0)
    t = DynamicVisualTokenizer(debug_cfg("selector.target_keep=0.25")).eval()
    x = images(32, seed=7)
    t.calibrate_keep(x)
    lengths = [c.numel() for c in t.encode(x)]
    assert sum(lengths) / (32 * 16) == pytest.approx(0.25, abs=0.02)
    assert len(set(lengths)) > 1, "the count should still vary per image"
    assert [c.numel() for c in t.encode(x)] == lengths


def test_topk_inference_keeps_the_best_patches_of_each_image():
    torch.manual_seed(0)
    t = DynamicVisualTokenizer(debug_cfg("selector.target_keep=0.25", "selector.inference=topk")).eval()
    x = images(5, seed=8)
    codes = t.encode(x)
    assert [c.numel() for c in codes] == [4] * 5  # round(0.25 * 16)
    logits = t.selector(t.proj_in(t.encoder(x)))
    margin = logits[..., 0] - logits[..., 1]
    keep = t._infer_keep(logits)
    for m, k in zip(margin, keep, strict=True):
        assert m[k].min() >= m[~k].max()


def test_compact_keeps_raster_order():
    x = torch.arange(10.0).view(2, 5, 1)
    keep = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    out, mask = compact(x, keep)
    assert out[0, :, 0].tolist() == [1, 3, 4] and out[1, 0, 0] == 5
    assert mask.tolist() == [[True, True, True], [True, False, False]]


def test_training_forward_two_phases_and_gradients():
    torch.manual_seed(0)
    t = DynamicVisualTokenizer(debug_cfg("quantizer.kmeans_init=true"))
    x = images(8, seed=4)
    out = t(x, quantize=False)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.codes is None
    assert not bool(t.quantizer._codebook.initted), "phase one must not touch the codebook"
    for name in ("selector", "merger", "decoder", "to_code", "from_code"):
        grads = [p.grad for p in getattr(t, name).parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name
    assert all(p.grad is None for p in t.encoder.parameters()), "frozen encoder got gradients"
    out = t(x, quantize=True)
    assert bool(t.quantizer._codebook.initted)
    assert set(out.logs) >= {"recon_cos", "keep_frac", "vq_loss", "code_usage", "perplexity"}
    assert ((out.codes >= 0) == out.keep.sum(1, keepdim=True).gt(torch.arange(out.codes.shape[1]))).all()


def test_save_load_round_trip(tok, tmp_path):
    save_tokenizer(tok, tmp_path / "tok")
    back = load_tokenizer(tmp_path / "tok")
    x = images(4, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(tok.encode(x), back.encode(x), strict=False))
    torch.testing.assert_close(back.feat_mean, tok.feat_mean)


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.rand(2, 1, 32, 32), "3 \\(RGB\\) channels"),
        (torch.rand(2, 3, 64, 64), "must be 32x32"),
        (torch.rand(0, 3, 32, 32), "non-empty"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), "float"),
        (torch.rand(3, 32, 32), "non-empty \\(B, 3, 32, 32\\)"),
    ],
)
def test_bad_images_raise_clear_errors(tok, x, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tok.encode(x)


def test_bad_codes_raise_clear_errors(tok):
    with pytest.raises(ValueError, match="outside \\[0, 64\\)"):
        tok.code_embeddings([torch.tensor([1, 64])])
    with pytest.raises(ValueError, match="code sequence 1 has codes outside .* min -1, max 3"):
        tok.code_embeddings([torch.tensor([1, 2]), torch.tensor([3, -1])])
    with pytest.raises(ValueError, match="non-empty 1-D"):
        tok.code_embeddings([torch.tensor([], dtype=torch.long)])
    with pytest.raises(ValueError, match="at least one"):
        tok.code_embeddings([])


def test_code_embeddings_read_the_device_once_for_a_whole_batch(tok):
    from conftest import HostReads

    codes = [torch.randint(0, 64, (n,)) for n in (3, 5, 1, 5)]
    with HostReads() as reads:
        emb, mask = tok.code_embeddings(codes)
    assert reads.calls == ["tolist"]  # the range check, one for the batch (it was 2 per sequence)
    assert mask.tolist() == [[i < n for i in range(5)] for n in (3, 5, 1, 5)]
    padded, _ = tok.pad_codes(codes)
    assert all(torch.equal(padded[i, : len(c)], c) and not padded[i, len(c) :].any() for i, c in enumerate(codes))
    assert emb[2, 1:].abs().sum() == 0 and emb.shape == (4, 5, tok.cfg.width)


def test_encode_never_initialises_the_codebook():
    t = DynamicVisualTokenizer(debug_cfg("quantizer.kmeans_init=true")).eval()
    with pytest.raises(RuntimeError, match="never initialised"):
        t.encode(images(2))
    assert not bool(t.quantizer._codebook.initted)


def test_unknown_encoder_name_is_a_config_error():
    with pytest.raises(ConfigError, match="not a timm model"):
        DynamicVisualTokenizer(debug_cfg("encoder.name=vit_nonexistent_42"))


def test_lavit_preset_on_meta_device():
    cfg = load_config(CONFIGS / "tokenizer" / "lavit.yaml", TokenizerConfig)
    with torch.device("meta"):
        tok = DynamicVisualTokenizer(cfg)
    assert tok.encoder.dim == 1408 and cfg.encoder.num_patches == 256
    assert tok.quantizer.codebook.shape == (16384, 32)
    assert len(tok.merger.blocks) == 12
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # EVA-CLIP ViT-g/14 (40 blocks, 1408 wide, 16 heads, MLP 6144) and LaVIT's merger (12 blocks,
    # MLP 6144, no null key, ln_vision on the context): the published tokenizer's counts
    # (tests/test_lavit_tokenizer_convert.py maps its keys onto this preset).
    assert count(tok.encoder) == 1_011_146_112
    assert count(tok.merger) == 398_267_392
    x = torch.empty(2, 3, 224, 224, device="meta")
    assert tok.encoder(x).shape == (2, 256, 1408)


def test_pixel_head_decoding_and_saliency_weighted_loss():
    x = images(2)
    assert torch.equal(unpatchify(patchify(x, 8), 8, 32), x)
    torch.manual_seed(0)
    t = DynamicVisualTokenizer(debug_cfg("pixel_loss_weight=1.0", "pixel_saliency=20")).eval()
    out = t.decode_pixels(t.encode(x))
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="no pixel head"):
        DynamicVisualTokenizer(debug_cfg()).eval().decode_pixels([torch.tensor([1])])
    # A grey image with one red square: the same error costs more on the square than elsewhere.
    img = torch.full((1, 3, 32, 32), 0.5)
    img[:, :, 8:16, 8:16] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    target = patchify(img, 8)
    on_object, on_background = target.clone(), target.clone()
    on_object[0, 5] += 0.1  # patch (1, 1) holds the square
    on_background[0, 0] += 0.1
    assert t.pixel_loss(on_object, img) > 5 * t.pixel_loss(on_background, img)
    plain = DynamicVisualTokenizer(debug_cfg("pixel_loss_weight=1.0"))
    torch.testing.assert_close(plain.pixel_loss(on_object, img), plain.pixel_loss(on_background, img))


def test_selector_saliency_loss_teaches_keeping_the_content_patches():
    t = DynamicVisualTokenizer(debug_cfg("selector.target_keep=0.25", "selector.saliency_weight=1.0"))
    img = torch.full((1, 3, 32, 32), 0.5)
    img[:, :, 8:16, 8:24] = torch.tensor([0.0, 0.0, 1.0])[:, None, None]  # patches 5 and 6
    img[:, :, 24:32, 0:8] = torch.tensor([0.0, 1.0, 0.0])[:, None, None]  # patch 12
    sal = t.patch_saliency(img)
    assert set(sal[0].topk(3).indices.tolist()) == {5, 6, 12}
    good = torch.zeros(1, 16, 2)
    good[0, [5, 6, 12], 0] = 4.0  # keep the content patches
    good[0, :, 1] = 2.0
    bad = good.flip(1)
    assert t.selector_saliency_loss(good, img) < t.selector_saliency_loss(bad, img)
    # the training forward adds it and logs it
    t.train()
    out = t(img.expand(2, -1, -1, -1), quantize=False)
    assert "selector_saliency_loss" in out.logs and torch.isfinite(out.loss)


def test_position_embedding_option_is_trained_and_saved(tmp_path):
    torch.manual_seed(0)
    t = DynamicVisualTokenizer(debug_cfg("position_embedding=true"))
    assert t.patch_pos.shape == (1, 16, t.cfg.width) and t.patch_pos.requires_grad
    t.calibrate(images(8))
    t.train()(images(2), quantize=False).loss.backward()
    assert t.patch_pos.grad is not None and t.patch_pos.grad.abs().sum() > 0
    with torch.no_grad():
        t.patch_pos.normal_()
    t.eval()
    save_tokenizer(t, tmp_path / "tok")
    again = load_tokenizer(tmp_path / "tok")
    torch.testing.assert_close(again.patch_pos, t.patch_pos)
    assert DynamicVisualTokenizer(debug_cfg()).patch_pos is None
