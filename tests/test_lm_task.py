"""The LM stage end to end at debug size: codes from a freshly trained debug tokenizer, a few
steps of the mixture, evaluation, and a model directory that loads back; discrete and
continuous understanding input."""

import shutil

import pytest
import torch

from lavit.config import ConfigError
from lavit.lm_io import load_lm
from lavit.sequence import SequenceBuilder
from lavit.train.tasks.lm import LMTask
from lavit.train.trainer import fit


@pytest.mark.parametrize("mode", ["discrete", "continuous"])
def test_lm_stage_trains_evaluates_and_saves(tmp_path, tokenizer_dir, lm_cfg, mode):
    cfg = lm_cfg(tmp_path, tokenizer_dir, f"lm.understanding_input={mode}")
    task = LMTask(cfg)
    assert len(task.codes) == 64 and all(c.numel() >= 1 for c in task.codes)
    metrics = fit(task, cfg.train)
    assert 0.0 <= metrics["caption_attribute_acc"] <= 1.0 and 0.0 <= metrics["vqa_acc"] <= 1.0
    assert metrics["t2i_code_loss"] > 0 and metrics["code_unigram_entropy"] > 0
    lm, text_tok = load_lm(tmp_path / "model")
    assert lm.layout.num_codes == 64 and lm.cfg.understanding_input == mode
    builder = SequenceBuilder(text_tok, lm.layout, 128)
    seq = builder.understanding(task.codes[0], cfg.mixture.caption_prompt, "a red circle.")
    assert seq.ids[-1] == text_tok.eos_token_id and sum(w > 0 for w in seq.weights) >= 3
    # The code cache is reused on a second run, and rebuilt when the data config changes.
    cache = tmp_path / "codes_train.safetensors"
    mtime = cache.stat().st_mtime_ns
    assert torch.equal(LMTask(cfg).codes[5], task.codes[5]) and cache.stat().st_mtime_ns == mtime
    LMTask(lm_cfg(tmp_path, tokenizer_dir, f"lm.understanding_input={mode}", "data.seed=1"))
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
