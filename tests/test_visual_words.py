"""VW-LMM's visual words on the continuous understanding path (lm.visual_words_weight,
lm.pseudo_image_features): off changes nothing, the KL loss matches a hand-written reference,
no image gives exactly 0 with finite gradients, and pseudo image features are the text
embeddings averaged under each visual word, in training and in prefill."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from lavit.config import ConfigError, LMConfig
from lavit.model import UnifiedLM

T, K, D = 100, 16, 8  # text ids, image codes, feature width

BASE = LMConfig(
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    text_vocab_size=T,
    num_codes=K,
    understanding_input="continuous",
    feature_dim=D,
)


def make_lm(dtype: torch.dtype = torch.float32, **options) -> UnifiedLM:
    """The same tiny weights for every option set (seeded)."""
    torch.manual_seed(0)
    lm = UnifiedLM(dataclasses.replace(BASE, **options)).to(dtype)
    return lm.eval()


def batch(dtype: torch.dtype = torch.float32):
    """Two right-padded rows: row 0 has image positions 1..4 (after <img>), row 1 has 0..2 (the
    one at t=0 has no prediction) and two padding positions. Returns forward's arguments."""
    g = torch.Generator().manual_seed(1)
    B, L = 2, 10
    ids = torch.randint(0, T, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, -2:] = 0
    fmask = torch.zeros(B, L, dtype=torch.bool)
    fmask[0, 1:5] = True
    fmask[1, 0:3] = True
    ids[fmask] = T + 2  # the first code id; the ids under features do not matter
    weights = mask.float()
    feats = torch.randn(int(fmask.sum()), D, generator=g, dtype=dtype)
    return ids, mask, weights, feats, fmask


def old_path(lm: UnifiedLM, ids, mask, weights, feats, fmask):
    """The continuous path before visual words: project, scatter, weighted CE."""
    emb = lm.hf.get_input_embeddings()(ids).clone()
    emb[fmask] = lm.feature_proj(feats)
    logits = lm.hf(inputs_embeds=emb, attention_mask=mask, use_cache=False).logits
    ce = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), ids[:, 1:], reduction="none")
    w = weights[:, 1:]
    return logits, (ce * w).sum() / w.sum()


def reference_kl(lm: UnifiedLM, logits, feats, fmask) -> torch.Tensor:
    """KL(softmax(head(proj f_t)[:T]) || softmax(logits[t-1, :T])), mean over image t >= 1, fp64."""
    words = (lm.feature_proj(feats) @ lm.hf.get_output_embeddings().weight[:T].T).double()  # (M, T)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for k, (b, t) in enumerate(fmask.nonzero().tolist()):
        if t == 0:
            continue
        p = words[k].softmax(-1)
        q = logits[b, t - 1, :T].double().softmax(-1)
        total = total + (p * (p.log() - q.log())).sum()
        count += 1
    return total / count


def test_off_by_default_changes_nothing(monkeypatch):
    default, explicit = make_lm(), make_lm(visual_words_weight=0.0, pseudo_image_features=False)
    assert default.cfg.visual_words_weight == 0.0 and not default.cfg.pseudo_image_features
    explicit.load_state_dict(default.state_dict())
    args = batch()
    for lm in (default, explicit):
        # Off: the visual-word head is never evaluated (no extra work).
        monkeypatch.setattr(lm, "visual_word_logits", lambda *_: pytest.fail("visual words computed while off"))
    with torch.no_grad():
        a, b = default(*args), explicit(*args)
        ref_logits, ref_loss = old_path(default, *args)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert torch.equal(a.logits, ref_logits) and torch.equal(a.loss, ref_loss)
    assert set(a.logs) == {"loss_image", "loss_text"}
    ids, mask, _, feats, fmask = args
    with torch.no_grad():
        last, _ = default.prefill(ids[:1], mask[:1], feats[:4], fmask[:1])
    torch.testing.assert_close(last[0], ref_logits[0, -1])  # the head on one row: not bit-equal


def test_kl_matches_reference_fp64():
    w = 0.7
    lm, plain = make_lm(torch.float64, visual_words_weight=w), make_lm(torch.float64)
    args = batch(torch.float64)
    ids, mask, weights, feats, fmask = args
    with torch.no_grad():
        out, base = lm(*args), plain(*args)
        ref = reference_kl(lm, out.logits, feats, fmask)
        assert lm.visual_word_logits(lm.feature_proj(feats)).shape == (len(feats), T)
    assert torch.equal(out.logits, base.logits)  # the loss term only; PIF off leaves the input alone
    torch.testing.assert_close(out.logs["loss_visual_words"], ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.loss, base.loss + w * ref, rtol=1e-10, atol=1e-12)
    assert out.logs["loss_text"] == base.logs["loss_text"]


@pytest.mark.parametrize("case", ["no_features", "empty_features", "padding_row"])
@pytest.mark.parametrize("pif", [False, True])
def test_no_image_gives_zero_and_finite_gradients(case, pif):
    lm = make_lm(visual_words_weight=1.0, pseudo_image_features=pif).train()
    ids, mask, weights, _, _ = batch()
    fmask = torch.zeros_like(ids, dtype=torch.bool)
    feats = None if case == "no_features" else torch.zeros(0, D)
    if case == "padding_row":  # a row that is padding only
        mask[1], weights[1] = 0, 0
    out = lm(ids, mask, weights, feats, None if feats is None else fmask)
    assert out.logs["loss_visual_words"].item() == 0.0
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in lm.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("pif", [False, True])
def test_kl_gradient_reaches_feature_proj(pif):
    lm = make_lm(visual_words_weight=1.0, pseudo_image_features=pif).train()
    ids, mask, weights, feats, fmask = batch()
    out = lm(ids, mask, torch.zeros_like(weights), feats, fmask)  # no CE: the loss is the KL alone
    assert out.logs["loss_visual_words"] > 0
    torch.testing.assert_close(out.loss, out.logs["loss_visual_words"])
    out.loss.backward()
    for p in lm.feature_proj.parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_pseudo_image_features():
    lm = make_lm(pseudo_image_features=True)
    ids, mask, weights, feats, fmask = batch()
    E = lm.hf.get_input_embeddings().weight
    head = lm.hf.get_output_embeddings().weight
    assert head.data_ptr() == E.data_ptr()  # tied: head(v) is v's similarity to each text row
    with torch.no_grad():
        emb = lm.embed(ids, feats, fmask)
        expected = (lm.feature_proj(feats) @ head[:T].T).softmax(-1) @ E[:T]  # (M, H)
        torch.testing.assert_close(emb[fmask], expected)
        assert torch.equal(emb[~fmask], E[ids[~fmask]])  # text positions untouched
        assert (emb[fmask].norm(dim=-1) <= E[:T].norm(dim=-1).max() + 1e-6).all()  # convex hull

        # Prefill reads the same inputs: its last logits are the full forward's.
        out = lm(ids[:1], mask[:1], weights[:1], feats[:4], fmask[:1])
        last, _ = lm.prefill(ids[:1], mask[:1], feats[:4], fmask[:1])
        torch.testing.assert_close(last[0], out.logits[0, -1], rtol=1e-5, atol=1e-5)
        plain = make_lm()
        plain_last, _ = plain.prefill(ids[:1], mask[:1], feats[:4], fmask[:1])
        assert not torch.allclose(last, plain_last)  # the pseudo features, not the projection


def test_bfloat16_runs_in_fp32_losses():
    lm = make_lm(torch.bfloat16, visual_words_weight=1.0, pseudo_image_features=True)
    ids, mask, weights, feats, fmask = batch()
    with torch.no_grad():
        out = lm(ids, mask, weights, feats, fmask)  # fp32 features into a bf16 LM
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    assert out.logs["loss_visual_words"].dtype == torch.float32 and out.logs["loss_visual_words"] > 0


@pytest.mark.parametrize(
    "options, key",
    [
        ({"visual_words_weight": -0.1}, "visual_words_weight"),
        ({"visual_words_weight": float("nan")}, "visual_words_weight"),
        ({"visual_words_weight": 1.0, "understanding_input": "discrete"}, "visual_words_weight"),
        ({"pseudo_image_features": True, "understanding_input": "discrete"}, "pseudo_image_features"),
    ],
)
def test_config_errors(options, key):
    with pytest.raises(ConfigError, match=f"'{key}'") as e:
        dataclasses.replace(BASE, **options)
    assert "\n" not in str(e.value)
