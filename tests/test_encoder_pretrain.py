"""Stage 0: patch labels from scenes, and the encoder pretraining task end to end (debug size)."""

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lavit.config import ConfigError, EncoderRunConfig, TokenizerConfig, load_config
from lavit.data.shapes import COLOURS, KINDS, SIZES, Scene, Shape, patch_labels
from lavit.train.tasks.encoder import READOUT_CLASSES, EncoderTask
from lavit.train.trainer import fit
from tokenizer import DynamicVisualTokenizer

ROOT = Path(__file__).resolve().parent.parent


def test_patch_labels_mark_the_covered_patches():
    # A large (0.23 -> 14.72 px) red square centred at (32, 32) of 64 px covers x, y in [24.64, 39.36]:
    # patches 3 and 4 of each axis with 7.36 px each; a small blue cross at (12.8, 51.2).
    red = Shape("red", "square", "large", 1, 1, 0.5, 0.5)
    blue = Shape("blue", "cross", "small", 2, 0, 0.2, 0.8)
    labels = patch_labels(Scene((red, blue), 0.5), 64, 8)
    assert labels.shape == (3, 8, 8)
    want_red = (1 + list(COLOURS).index("red"), 1 + KINDS.index("square"), 1 + list(SIZES).index("large"))
    for r in (3, 4):
        for c in (3, 4):
            assert tuple(labels[:, r, c]) == want_red
    # The cross spans [8.32, 17.28] on both axes: patch 1 (7.68 px), patch 2 (1.28 px).
    # Rows are y: 51.2 +- 4.48 -> [46.72, 55.68] -> patches 5 (1.28 px) and 6 (7.68 px).
    assert labels[1, 6, 1] == 1 + KINDS.index("cross")
    assert labels[1, 6, 2] == 1 + KINDS.index("cross")  # 7.68 x 1.28 = 9.8 px^2 >= 10% of 64
    assert labels[1, 5, 1] == 1 + KINDS.index("cross")
    assert labels[1, 5, 2] == 0  # 1.28 x 1.28 = 1.6 px^2 < 6.4
    assert (labels > 0).sum(axis=(1, 2)).tolist() == [4 + 3, 4 + 3, 4 + 3]


def test_patch_labels_are_zero_on_an_empty_scene():
    assert not np.any(patch_labels(Scene((), 0.3), 32, 8))


def test_pretraining_runs_and_its_weights_load_into_the_tokenizer(tmp_path):
    cfg = load_config(
        ROOT / "configs" / "train" / "encoder_tiny.yaml",
        EncoderRunConfig,
        [
            f"train.out_dir={tmp_path}",
            "train.progress=false",
            "train.steps=4",
            "train.batch_size=8",
            "train.eval_every=0",
            "train.ckpt_every=2",
            "model.embed_dim=32",
            "model.num_heads=2",
            "model.depth=1",
            "eval_images=16",
        ],
    )
    metrics = fit(EncoderTask(cfg), cfg.train)
    assert set(metrics) == {"colour_acc", "kind_acc", "size_acc", "shape_patch_acc", "background_acc"}
    weights = tmp_path / "model" / "vit.safetensors"
    tok_cfg = load_config(
        ROOT / "configs" / "tokenizer" / "debug.yaml",
        TokenizerConfig,
        [
            f"encoder.weights={weights}",
            "encoder.image_size=64",
            "encoder.patch_size=8",
            "encoder.embed_dim=32",
            "encoder.num_heads=2",
            "encoder.depth=1",
            "quantizer.kmeans_init=false",
            "semantic_loss_weight=1.0",
            f"readout_weights={tmp_path / 'model' / 'readout.safetensors'}",
            f"readout_classes={READOUT_CLASSES}",
        ],
    )
    tok = DynamicVisualTokenizer(tok_cfg)
    for module, file in ((tok.encoder.vit, "vit"), (tok.readout, "readout")):
        saved = load_file(str(tmp_path / "model" / f"{file}.safetensors"))
        assert set(saved) == set(module.state_dict())
        for name, tensor in module.state_dict().items():
            torch.testing.assert_close(tensor, saved[name])
    assert not any(p.requires_grad for p in tok.encoder.parameters()), "the tokenizer keeps it frozen"
    assert not any(p.requires_grad for p in tok.readout.parameters()), "and its read-out"

    # The semantic loss is zero for features rebuilt exactly, and is part of the training loss.
    images = torch.rand(2, 3, 64, 64)
    target = tok.encoder(images)
    kl, agree = tok.semantic_loss(tok.standardise(target), target)
    assert float(kl) < 1e-5 and float(agree) == 1.0
    out = tok(images, quantize=False)
    assert float(out.logs["semantic_kl"]) > 0 and 0 <= float(out.logs["semantic_agree"]) <= 1
    out.loss.backward()
    assert tok.to_code.weight.grad.abs().sum() > 0


def test_semantic_loss_needs_the_readout_shape_and_file(tmp_path):
    with pytest.raises(ConfigError, match="readout_classes"):
        load_config(ROOT / "configs" / "tokenizer" / "debug.yaml", TokenizerConfig, ["semantic_loss_weight=1.0"])
    # Training against a read-out that was never loaded would be a random target.
    from lavit.config import TokenizerRunConfig
    from lavit.train.tasks.tokenizer import TokenizerTask

    run = load_config(
        ROOT / "configs" / "train" / "tokenizer_debug.yaml",
        TokenizerRunConfig,
        ["model.semantic_loss_weight=1.0", "model.readout_classes=[7,6,3]"],
    )
    with pytest.raises(ConfigError, match="model.readout_weights is null: point it at the encoder stage's"):
        TokenizerTask(run)
    with pytest.raises(ConfigError, match="readout.safetensors"):
        DynamicVisualTokenizer(
            load_config(
                ROOT / "configs" / "tokenizer" / "debug.yaml",
                TokenizerConfig,
                [
                    "semantic_loss_weight=1.0",
                    "readout_classes=[7,6,3]",
                    f"readout_weights={tmp_path / 'nowhere.safetensors'}",
                ],
            )
        )


def test_bad_patch_size_names_the_key():
    with pytest.raises(ConfigError, match="encoder.image_size"):
        load_config(None, EncoderRunConfig, ["model.image_size=60"])


def test_missing_encoder_weights_say_how_to_make_them(tmp_path):
    with pytest.raises(ConfigError, match="lavit train encoder"):
        DynamicVisualTokenizer(
            load_config(
                ROOT / "configs" / "tokenizer" / "debug.yaml",
                TokenizerConfig,
                [f"encoder.weights={tmp_path / 'nowhere.safetensors'}"],
            )
        )


def test_code_probe_reads_codes_that_name_the_shapes_and_not_random_ones():
    from lavit.config import ShapesWorldConfig
    from lavit.data.shapes.dataset import ShapesWorld
    from lavit.data.shapes.judge import code_probe

    world = ShapesWorld(ShapesWorldConfig(resolution=32), "train")
    scenes = [world.scene(i) for i in range(600)]
    named = [
        torch.tensor([list(COLOURS).index(s.colour) * len(KINDS) + KINDS.index(s.kind) for s in sc.shapes])
        for sc in scenes
    ]
    gen = torch.Generator().manual_seed(0)
    noise = [torch.randint(0, 30, (len(sc.shapes),), generator=gen) for sc in scenes]
    good, bad = code_probe(named, scenes, 30), code_probe(noise, scenes, 30)
    assert good["probe_colour_set_acc"] >= 0.95 and good["probe_colour_kind_set_acc"] >= 0.9, good
    assert bad["probe_colour_kind_set_acc"] <= 0.1, bad
