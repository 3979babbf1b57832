"""The LM stage end to end at debug size: codes from a freshly trained debug tokenizer, a few
steps of the mixture, evaluation, and a model directory that loads back; discrete and
continuous understanding input."""

import shutil

import pytest
import torch

from lavit.config import ConfigError
from lavit.data.shapes import Scene
from lavit.lm_io import load_lm
from lavit.sequence import SequenceBuilder
from lavit.train.tasks.lm import LMTask
from lavit.train.trainer import fit


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_lm_stage_trains_evaluates_and_saves(tmp_path, tokenizer_dir, lm_cfg, mode):
    cfg = lm_cfg(tmp_path, tokenizer_dir, f"lm.understanding_input={mode}")
    task = LMTask(cfg)
    assert len(task.codes) == 64 and all(task.codes.codes(i).numel() >= 1 for i in range(64))
    metrics = fit(task, cfg.train)
    assert 0.0 <= metrics["caption_attribute_acc"] <= 1.0 and 0.0 <= metrics["vqa_acc"] <= 1.0
    assert metrics["caption_bleu4"] >= 0 and metrics["caption_cider"] >= 0
    assert metrics["t2i_code_loss"] > 0 and metrics["code_unigram_entropy"] > 0
    lm, text_tok = load_lm(tmp_path / "model")
    assert lm.layout.num_codes == 64 and lm.cfg.understanding_input == mode
    builder = SequenceBuilder(text_tok, lm.layout, 128)
    seq = builder.understanding(task.codes.codes(0), cfg.mixture.caption_prompt, "a red circle.")
    assert seq.ids[-1] == text_tok.eos_token_id and sum(w > 0 for w in seq.weights) >= 3
    # The code cache is reused on a second run, and rebuilt when the data config changes.
    cache = tmp_path / "codes" / "train-0" / "index.json"
    mtime = cache.stat().st_mtime_ns
    assert torch.equal(LMTask(cfg).codes.codes(5), task.codes.codes(5)) and cache.stat().st_mtime_ns == mtime
    LMTask(lm_cfg(tmp_path, tokenizer_dir, f"lm.understanding_input={mode}", "data.shapes.seed=1"))
    assert cache.stat().st_mtime_ns != mtime


def test_mismatched_tokenizer_is_a_clear_error(tmp_path, tokenizer_dir, lm_cfg):
    with pytest.raises(ConfigError, match="lm.num_codes=512 but the tokenizer .* has 64 codes"):
        LMTask(lm_cfg(tmp_path, tokenizer_dir, "lm.num_codes=512"))
    with pytest.raises(ConfigError, match="feature_dim=16 must equal the tokenizer width 32"):
        LMTask(lm_cfg(tmp_path, tokenizer_dir, "lm.understanding_input=continuous", "lm.feature_dim=16"))


def test_init_from_trains_a_saved_lm_on(tmp_path, tokenizer_dir, lm_cfg, lm_dirs):
    """init_from starts the run at the saved LM (float16 weights too, as a pipeline ships them)
    with its text tokenizer, and the saved result loads; a run config that describes another
    model is a clear error naming each field and its fix."""
    from lavit.checkpoint import cast_weights

    source = tmp_path / "shipped"
    shutil.copytree(lm_dirs["continuous"], source)
    cast_weights(source, "float16")
    ref, ref_tok = load_lm(lm_dirs["continuous"])
    cfg = lm_cfg(tmp_path / "run", tokenizer_dir, "lm.understanding_input=continuous", f"init_from={source}")
    task = LMTask(cfg)
    assert task.text_tok.get_vocab() == ref_tok.get_vocab()
    model = task.build_model()
    assert all(p.dtype == torch.float32 for p in model.parameters()) and model.training
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        assert torch.allclose(p, q.float(), atol=1e-2, rtol=1e-2), name
    fit(task, cfg.train)
    lm, _ = load_lm(tmp_path / "run" / "model")
    assert lm.layout == ref.layout

    bad = lm_cfg(tmp_path / "bad", tokenizer_dir, f"init_from={source}", "lm.num_layers=3")
    with pytest.raises(
        ConfigError,
        match=r"lm.num_layers=3, lm.understanding_input='discrete' differ .* set lm.num_layers=2 lm.understanding_input=continuous",
    ):
        LMTask(bad).build_model()
    with pytest.raises(ConfigError, match="has no text_tokenizer/tokenizer.json"):
        LMTask(lm_cfg(tmp_path / "bad2", tokenizer_dir, f"init_from={tmp_path / 'nowhere'}"))


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_synthesis_items_are_the_prompts_synthesize_gives(tmp_path, tokenizer_dir, lm_cfg, mode):
    """A synthesis item is a train scene as the answer to a prompt built from its parts: the
    prompt's images are the scene's shapes in parts (their codes the tokenizer's), a text part
    names the shape left out, the sequence is the one generation_prompt builds for synthesize
    with the scene's codes after it (the loss on them alone); a run on them trains."""
    import re

    from lavit.data.shapes import COLOURS, KINDS
    from lavit.data.shapes.parser import colour_kinds, parse_scene
    from lavit.data.transforms import to_pil

    mix = "mixture.caption_prob=0 mixture.vqa_prob=0 mixture.t2i_prob=0 mixture.synthesis_prob=1"
    cfg = lm_cfg(tmp_path, tokenizer_dir, f"lm.understanding_input={mode}", *mix.split(), "data.shapes.resolution=64")
    task = LMTask(cfg)
    task.build_model()
    items = task.train_dataset()
    builder, layout = items.builder, task.layout
    named = re.compile(rf"^a (?:(?:small|large) )?({'|'.join(COLOURS)}) ({'|'.join(KINDS)})$")
    kinds = set()
    for j in range(12):
        seq, images = items[j]
        scene = j % cfg.num_scenes
        target = layout.codes_to_ids(task.codes.codes(scene)).tolist() + [layout.image_end_id]
        prompt_len = len(seq) - len(target)
        assert seq.ids[prompt_len:] == target and seq.ids[prompt_len - 1] == layout.image_start_id
        assert all(w == 0 for w in seq.weights[:prompt_len]) and all(w == 1 for w in seq.weights[prompt_len:])
        # The prompt's parts, read back: image spans (codes) and the text between them.
        spans, parts, at = seq.image_spans, [], 1
        for start, end in spans:
            if start > at:
                parts.append(task.text_tok.decode(seq.ids[at:start]).strip())
            parts.append(layout.ids_to_codes(torch.tensor(seq.ids[start:end])))
            at = end
        if prompt_len - 1 > at:
            parts.append(task.text_tok.decode(seq.ids[at : prompt_len - 1]).strip())
        assert seq.ids[:prompt_len] == builder.generation_prompt(parts).ids
        # The images' codes are the tokenizer's; what they show plus the named shape is the scene.
        shown = [p for p in parts if isinstance(p, torch.Tensor)]
        text = [p for p in parts if isinstance(p, str)]
        assert len(shown) + len(text) == 2 and all(named.match(t) for t in text), parts
        if mode == "continuous":
            assert images.shape[0] == len(shown)
            for codes, got in zip(task.tokenizer.encode(images), shown, strict=True):
                assert torch.equal(codes, got)
            have = sum((colour_kinds(parse_scene(to_pil(im))) for im in images), start=colour_kinds(()))
            for m in map(named.match, text):
                have[(m.group(1), m.group(2))] += 1
            assert have == colour_kinds(Scene.from_dict(task.codes[scene].meta["scene"]).shapes)
        else:
            assert images is None
        kinds.add("text" if text else "images")
    assert kinds == {"text", "images"}
    fit(task, cfg.train)
    assert (tmp_path / "model").is_dir()
    with pytest.raises(ConfigError, match="mixture.synthesis_prob"):
        lm_cfg(tmp_path, tokenizer_dir, "mixture.synthesis_prob=-1")
