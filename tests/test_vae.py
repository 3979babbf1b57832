"""The latent-space VAE's training options: the loss focused on named shapes, and a decoder-only
fine-tune (``init_from`` + ``freeze_encoder``) whose latents, and so the diffusion detokenizer
trained in them, stay valid. (The stage itself and the edge weights: test_diffusion.py.)"""

import pytest
import torch
from diffusers import AutoencoderKL

from detokenizer.diffusion.config import VAEConfig, VAERunConfig
from detokenizer.diffusion.vae import VAETrainer, build_vae
from lavit.config import ConfigError, load_config
from lavit.data.shapes import Scene, Shape, shape_mask
from lavit.train.tasks.vae import VAETask
from lavit.train.trainer import fit

SMALL = dict(resolution=32, block_out_channels=[8, 16], norm_num_groups=4)


def test_shape_mask_covers_the_boxes_of_the_named_shapes():
    cross = Shape("red", "cross", "small", 0, 0, cx=0.2, cy=0.2)  # box 4.2..8.6 px at 32 px
    circle = Shape("blue", "circle", "large", 2, 2, cx=0.8, cy=0.8)
    scene = Scene(shapes=(cross, circle), background=0.5)
    mask = shape_mask(scene, 32, ["small cross"])
    rows, cols = mask.nonzero()
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (2, 10, 2, 10)  # pixels 4..8, grown by 2
    assert mask.sum() == 9 * 9
    assert (shape_mask(scene, 32, ["cross"]) == mask).all()
    assert shape_mask(scene, 32, ["large cross", "square"]).sum() == 0
    both = shape_mask(scene, 32, ["small", "circle"])
    assert both.sum() > mask.sum() and both[26, 26]
    for bad in ("tiny cross", "", "small blob"):
        with pytest.raises(ConfigError, match="'focus_shapes'.*size and/or kind words"):
            load_config(None, VAEConfig, ["focus_weight=1", f"focus_shapes=[{bad!r}]"])
    with pytest.raises(ConfigError, match="name the shapes focus_weight weighs"):
        load_config(None, VAEConfig, ["focus_weight=1"])


def test_focus_weight_scales_the_loss_inside_the_mask():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    focus = torch.zeros(2, 1, 32, 32)
    focus[0, :, 4:12, 4:12] = 1
    base = dict(SMALL, sample_posterior=False, kl_weight=0.0)
    plain = VAETrainer(VAEConfig(**base))
    focused = VAETrainer(VAEConfig(**base, focus_weight=4.0, focus_shapes=["small cross"]))
    focused.load_state_dict(plain.state_dict())
    out = focused(images, focus)
    err = (out.images - (images * 2 - 1)) ** 2 + (out.images - (images * 2 - 1)).abs()
    w = 1 + 4 * focus
    torch.testing.assert_close(out.loss, (err * w).sum() / (w.sum() * 3))
    torch.testing.assert_close(plain(images, focus).loss, err.mean())  # focus_weight 0 ignores it
    with pytest.raises(ValueError, match="needs the batch's focus masks"):
        focused(images)


def run_cfg(tmp_path, *overrides: str) -> VAERunConfig:
    return load_config(
        None,
        VAERunConfig,
        [
            *(f"model.{k}={v}" for k, v in SMALL.items()),
            "model.sample_posterior=false",
            "data.shapes.resolution=32",
            f"train.out_dir={tmp_path / 'run'}",
            "train.steps=3",
            "train.batch_size=4",
            "train.progress=false",
            "train.optim.lr=0.01",
            "eval_images=4",
            *overrides,
        ],
    )


def test_a_decoder_only_finetune_keeps_every_latent(tmp_path):
    source = build_vae(VAEConfig(**SMALL))
    source.register_to_config(scaling_factor=0.7)
    source.save_pretrained(tmp_path / "source")
    cfg = run_cfg(
        tmp_path,
        f"init_from={tmp_path / 'source'}",
        "freeze_encoder=true",
        "model.focus_weight=10",
        "model.focus_shapes=[small cross]",
    )
    task = VAETask(cfg)
    image, focus = task.train_dataset()[0]
    assert image.shape == (3, 32, 32) and focus.shape == (1, 32, 32)
    fit(task, cfg.train)
    tuned = AutoencoderKL.from_pretrained(tmp_path / "run" / "model")
    before, after = source.state_dict(), tuned.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert tuned.config.scaling_factor == 0.7  # the latents did not move: no recalibration


def test_init_from_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="'freeze_encoder'.*set init_from"):
        run_cfg(tmp_path, "freeze_encoder=true")
    build_vae(VAEConfig(resolution=32, block_out_channels=[8, 8], norm_num_groups=4)).save_pretrained(
        tmp_path / "other"
    )
    with pytest.raises(ConfigError, match="its architecture differs from model's"):
        VAETask(run_cfg(tmp_path, f"init_from={tmp_path / 'other'}")).build_model()
    with pytest.raises(ConfigError, match="not an AutoencoderKL folder"):
        VAETask(run_cfg(tmp_path, f"init_from={tmp_path / 'nope'}")).build_model()
