"""Slow tier: the tiny tokenizer recipe on ShapesWorld, on a shortened schedule (encoder
pretraining 1,000 steps, tokenizer 700 steps with VQ on at 300; ~9 minutes on 2 CPU cores),
meets the issue's bars on held-out scenes and its codes name the shapes. The full recipe and its
figures are in docs/experiments.md."""

from pathlib import Path

import pytest

from lavit.config import EncoderRunConfig, TokenizerRunConfig, load_config
from lavit.train.tasks.encoder import EncoderTask
from lavit.train.tasks.tokenizer import TokenizerTask
from lavit.train.trainer import fit

TRAIN = Path(__file__).resolve().parent.parent / "configs" / "train"


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_tiny_recipe_codes_carry_the_scene(tmp_path):
    enc_cfg = load_config(
        TRAIN / "encoder_tiny.yaml",
        EncoderRunConfig,
        [f"train.out_dir={tmp_path / 'encoder'}", "train.progress=false", "train.steps=1000", "train.eval_every=0"],
    )
    enc = fit(EncoderTask(enc_cfg), enc_cfg.train)
    assert enc["shape_patch_acc"] >= 0.7, enc  # colour, kind and size all right on shape patches

    cfg = load_config(
        TRAIN / "tokenizer_tiny.yaml",
        TokenizerRunConfig,
        [
            f"model.encoder.weights={tmp_path / 'encoder' / 'model' / 'vit.safetensors'}",
            f"model.readout_weights={tmp_path / 'encoder' / 'model' / 'readout.safetensors'}",
            f"train.out_dir={tmp_path / 'tokenizer'}",
            "train.progress=false",
            "train.steps=700",
            "vq_start_step=300",
            "train.eval_every=0",
            "eval_images=1000",
        ],
    )
    m = fit(TokenizerTask(cfg), cfg.train)
    assert m["code_usage"] >= 0.5, m
    assert abs(m["keep_frac"] - cfg.model.selector.target_keep) <= 0.1 * cfg.model.selector.target_keep, m
    # Codes carry the image: a linear probe from rebuilt features beats a collapsed tokenizer by > 5 dB.
    assert m["pixel_probe_psnr"] > m["pixel_probe_baseline_psnr"] + 5, m
    # ... and name the shapes. This probe (500 fit / 500 held-out val scenes) scored the full
    # recipe 0.536 / 0.192 and the old random-encoder recipe 0.344 / 0.034; collapsed codes ~0.
    assert m["probe_colour_set_acc"] >= 0.3, m
    assert m["probe_colour_kind_set_acc"] >= 0.08, m
