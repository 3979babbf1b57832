"""Location tokens: box <-> ids round trips, the decoding grammar, sequences and bad input."""

import dataclasses

import numpy as np
import pytest
import torch

from lavit.config import LMConfig, TextDecodingConfig
from lavit.generate import generate_grounded, generate_ids
from lavit.grounding import BOX_TOKENS, Box, BoxGrammar, box_in_square, box_to_ids, ids_to_box, iou, split_boxes
from lavit.model import UnifiedLM
from lavit.sequence import SequenceBuilder
from lavit.vocab import VocabLayout

LAYOUT = VocabLayout(text_size=50, num_codes=20, num_locations=16)


def random_boxes(n: int, seed: int = 0) -> list[Box]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        x, y = np.sort(rng.random(2)), np.sort(rng.random(2))
        if x[1] > x[0] and y[1] > y[0]:
            out.append(Box(float(x[0]), float(y[0]), float(x[1]), float(y[1])))
    return out + [Box(0.0, 0.0, 1.0, 1.0), Box(0.0, 0.5, 0.0625, 1.0)]


@pytest.mark.parametrize("bins", [1, 7, 16, 100])
def test_box_to_tokens_to_box_within_half_a_bin(bins):
    layout = VocabLayout(text_size=50, num_codes=20, num_locations=bins)
    for box in random_boxes(300):
        ids = box_to_ids(box, layout)
        assert len(ids) == BOX_TOKENS and all(layout.is_location_id(i) for i in ids)
        back = ids_to_box(ids, layout)
        for a, b in zip(dataclasses.astuple(box), dataclasses.astuple(back), strict=True):
            assert abs(a - b) <= 0.5 / bins + 1e-12
        assert box_to_ids(back, layout) == ids  # a decoded box re-encodes to the same tokens


def test_pixel_boxes_and_the_centre_crop():
    assert Box.from_pixels((16, 8, 48, 40), 64, 64) == Box(0.25, 0.125, 0.75, 0.625)
    # A 200 x 100 image is cropped to its middle 100 x 100 (x from 50 to 150).
    moved = box_in_square((60, 10, 110, 60), 200, 100)
    assert dataclasses.astuple(moved) == pytest.approx((0.1, 0.1, 0.6, 0.6))
    clipped = box_in_square((40, 0, 100, 50), 200, 100)  # 10 of its 60 px fall outside the crop
    assert dataclasses.astuple(clipped) == pytest.approx((0.0, 0.0, 0.5, 0.5))
    assert box_in_square((0, 0, 40, 50), 200, 100) is None  # wholly cut away
    assert box_in_square((20, 0, 70, 50), 200, 100) is None  # 40% kept < min_kept 0.5
    assert iou(Box(0, 0, 0.5, 0.5), Box(0.25, 0.25, 0.75, 0.75)) == pytest.approx(1 / 7)
    assert iou(Box(0, 0, 0.5, 0.5), Box(0.5, 0.5, 1, 1)) == 0.0


def test_split_boxes_reads_text_and_boxes_back_in_order():
    a, b = Box(0.1, 0.2, 0.3, 0.4), Box(0.5, 0.5, 0.9, 0.95)
    ids = [3, 4] + box_to_ids(a, LAYOUT) + [5] + box_to_ids(b, LAYOUT) + box_to_ids(a, LAYOUT)[:2]
    parts = split_boxes(ids, LAYOUT)
    assert parts[0] == [3, 4] and parts[2] == [5]
    assert iou(parts[1], a) > 0.7 and iou(parts[3], b) > 0.7
    assert len(parts) == 4  # the cut-off half box is dropped


def test_grammar_never_lets_a_text_id_into_a_box():
    """Walk many random rows through the grammar: inside a box only location ids (far corner
    not before the near one); in box mode exactly one box and then only eos."""
    eos, rng = 2, np.random.default_rng(0)
    is_loc = LAYOUT.location_mask()
    for mode in ("grounded", "box"):
        grammar = BoxGrammar(LAYOUT, mode, eos)
        for _ in range(200):
            row: list[int] = []
            for step in range(40):
                allowed = grammar.allowed([row])[0]
                trailing = 0
                while trailing < len(row) and is_loc[row[-1 - trailing]]:
                    trailing += 1
                if trailing % BOX_TOKENS:
                    assert not (allowed & ~is_loc).any(), (mode, row)
                    if trailing % BOX_TOKENS >= 2:
                        near = row[-2]
                        assert not allowed[LAYOUT.location_start : near].any()
                elif step >= 14:
                    break  # stop at a box boundary
                if mode == "box":
                    assert not allowed[: LAYOUT.text_size].any() or (allowed.sum() == 1 and allowed[eos])
                    if trailing == BOX_TOKENS:
                        assert allowed.sum() == 1 and allowed[eos]
                choice = int(rng.choice(torch.nonzero(allowed).flatten().numpy()))
                if choice == eos:
                    break
                row.append(choice)
            if mode == "box":
                assert len(row) == BOX_TOKENS
            parts = split_boxes(row, LAYOUT)
            assert sum(isinstance(p, Box) for p in parts) * BOX_TOKENS == sum(map(LAYOUT.is_location_id, row))
    text_only = BoxGrammar(LAYOUT, "text", eos).allowed([[1], []])
    assert text_only.shape == (2, LAYOUT.total) and not (text_only & is_loc).any()


@pytest.fixture(scope="module")
def grounded_lm():
    from lavit.text_tokenizer import train_bpe

    torch.manual_seed(0)
    cfg = LMConfig(
        text_vocab_size=300, num_codes=40, num_locations=32, hidden_size=64, num_layers=2, num_heads=4,
        intermediate_size=128, max_position_embeddings=128,
    )  # fmt: skip
    tok = train_bpe(["where is the red circle?", "a small blue square and a red circle."] * 5, 300)
    lm = UnifiedLM(cfg).double().eval()
    return lm, SequenceBuilder(tok, lm.layout, 128)


def test_sequences_hold_boxes_and_constrained_decoding_writes_whole_boxes(grounded_lm):
    lm, sb = grounded_lm
    box = Box(0.25, 0.25, 0.5, 0.75)
    codes = torch.arange(6)
    seq = sb.understanding(codes, "where is the red circle?", [box])
    loss_ids = [i for i, w in zip(seq.ids, seq.weights, strict=True) if w > 0]
    assert loss_ids == box_to_ids(box, lm.layout) + [sb.eos]
    seq = sb.understanding(codes, ["what is at", box, "?"], "a red circle")
    assert box_to_ids(box, lm.layout) == [i for i in seq.ids if lm.layout.is_location_id(i)]

    prompts = [sb.understanding_prompt(codes, "where is the red circle?"), sb.understanding_prompt(codes[:3], "a")]
    # A random LM, biased towards text: only the grammar puts the boxes in order.
    with torch.no_grad():
        lm.hf.get_output_embeddings().weight[lm.layout.location_start :] *= 0.2
    for beams in (1, 3):
        cfg = TextDecodingConfig(num_beams=beams, max_new_tokens=12)
        for answer in generate_grounded(lm, sb, prompts, cfg, "box"):
            assert len(answer) == 1 and isinstance(answer[0], Box)
        rows = generate_ids(lm, sb, prompts, cfg)  # text mode: no location id at all
        assert not any(lm.layout.is_location_id(i) for r in rows for i in r)
    for short in (TextDecodingConfig(max_new_tokens=3), TextDecodingConfig(max_new_tokens=8, min_new_tokens=5)):
        with pytest.raises(ValueError, match=r"decode it with max_new_tokens >= 4 and min_new_tokens <= 4"):
            generate_grounded(lm, sb, prompts, short, "box")


def test_bad_boxes_and_models_without_location_tokens():
    with pytest.raises(ValueError, match=r"not inside the 64x64 image.*clip"):
        Box.from_pixels((10, 10, 70, 20), 64, 64)
    with pytest.raises(ValueError, match=r"not inside the 64x64 image"):
        Box.from_pixels((30, 10, 20, 20), 64, 64)
    with pytest.raises(ValueError, match=r"0 <= x0 <= x1 <= 1"):
        Box(0.5, 0.1, 1.2, 0.3)
    plain = VocabLayout(text_size=50, num_codes=20)
    with pytest.raises(ValueError, match=r"no location tokens \(lm.num_locations=0\)"):
        box_to_ids(Box(0, 0, 1, 1), plain)
    with pytest.raises(ValueError, match=r"no location tokens"):
        BoxGrammar(plain, "box", eos=2)
    with pytest.raises(ValueError, match=r"unknown box grammar mode 'boxes'"):
        BoxGrammar(LAYOUT, "boxes", eos=2)
    with pytest.raises(ValueError, match=r"a box is 4 location ids"):
        ids_to_box([LAYOUT.location_start] * 3, LAYOUT)
