"""Diffusion detokenizer: seeded golden values, guidance g=1 == conditional alone, every bucket's
output shape, batch == alone, every scheduler, latent space from a local AutoencoderKL folder,
the training stage at debug size, fine-tuning from a trained detokenizer onto another VAE, and
bad input."""

from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from detokenizer.diffusion import (
    DiffusionConfig,
    DiffusionDetokenizer,
    DiffusionRunConfig,
    DiffusionSamplingConfig,
    decode_codes,
    denoise,
    load_detokenizer,
    save_detokenizer,
)
from detokenizer.diffusion.model import parse_ratio
from detokenizer.diffusion.sampling import noise_scheduler, sampling_scheduler, training_target
from lavit.checkpoint import CheckpointError
from lavit.config import ConfigError, from_yaml, load_config, to_yaml
from lavit.train.tasks.diffusion import DiffusionTask, batch_codes, collate_scene_codes
from lavit.train.trainer import fit
from tokenizer import load_tokenizer

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def debug_cfg(*overrides: str) -> DiffusionConfig:
    return load_config(CONFIGS / "diffusion" / "debug.yaml", DiffusionConfig, list(overrides))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = DiffusionDetokenizer(debug_cfg()).eval()
    # A fresh UNet has zero-initialised output convs (it would predict 0 everywhere): perturb
    # every parameter so the tests exercise a non-trivial network.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def cond_for(model, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, 5, model.cfg.code_dim, generator=g)
    mask = torch.ones(n, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return model.condition(emb, mask)


def test_seeded_sampler_golden_values(model):
    cond = cond_for(model, 2)
    sampling = DiffusionSamplingConfig(scheduler="ddim", steps=3, guidance_scale=2.0)
    out = denoise(model, cond, sampling, (32, 32), torch.Generator().manual_seed(0))
    again = denoise(model, cond, sampling, (32, 32), torch.Generator().manual_seed(0))
    assert out.shape == (2, 3, 32, 32) and torch.equal(out, again)
    # Recorded from this implementation (torch 2.14.1, diffusers 0.42.1, CPU).
    golden = torch.tensor([0.97424, 0.08517, 0.87043, 0.16205, 0.52606])
    got = torch.stack([out[0, 0, 5, 7], out[0, 2, 5, 7], out[1, 1, 20, 11], out[1, 0, 3, 30], out.mean()])
    torch.testing.assert_close(got, golden, atol=2e-4, rtol=0)


def test_guidance_one_is_the_conditional_prediction_alone(model):
    cond = cond_for(model, 2)
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    g1 = denoise(model, cond, DiffusionSamplingConfig(steps=3, guidance_scale=1.0), (32, 32), gen())

    # By hand: the same DDIM loop with the conditional prediction only.
    sched = sampling_scheduler("ddim", model.cfg)
    sched.set_timesteps(3)
    x = torch.randn((2, 3, 32, 32), generator=gen()) * sched.init_noise_sigma
    for t in sched.timesteps:
        x = sched.step(model.predict(sched.scale_model_input(x, t), t, cond), t, x).prev_sample
    torch.testing.assert_close(g1, model.from_space(x))
    # and guidance really mixes in the unconditional branch
    g3 = denoise(model, cond, DiffusionSamplingConfig(steps=3, guidance_scale=3.0), (32, 32), gen())
    assert not torch.allclose(g1, g3)


def test_every_bucket_and_every_scheduler(model):
    buckets = model.buckets()
    assert buckets[0] == (32, 32) and len(buckets) == 7
    assert all(h % model.multiple == 0 and w % model.multiple == 0 for h, w in buckets)
    assert model.size_for("1:1") == (32, 32)
    h, w = model.size_for("16:9")
    assert w > h and model.size_for("9:16") == (w, h)
    cond = cond_for(model, 1)
    for size in buckets:
        out = denoise(model, cond, DiffusionSamplingConfig(steps=1), size, torch.Generator().manual_seed(0))
        assert out.shape == (1, 3, *size)
    for name in ("ddim", "ddpm", "euler", "dpm"):
        out = denoise(model, cond, DiffusionSamplingConfig(scheduler=name, steps=3), (32, 32), None)
        assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1


def test_a_batch_equals_each_alone(model):
    cond = cond_for(model, 3)
    sampling = DiffusionSamplingConfig(steps=3, guidance_scale=2.5)
    batch = denoise(model, cond, sampling, (32, 32), [torch.Generator().manual_seed(s) for s in range(3)])
    for i in range(3):
        alone = denoise(model, cond[i : i + 1], sampling, (32, 32), [torch.Generator().manual_seed(i)])
        torch.testing.assert_close(batch[i : i + 1], alone, atol=1e-5, rtol=0)


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """A randomly initialised 32 px AutoencoderKL: 16x16x4 latents."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )


def test_latent_space_from_a_local_vae(tmp_path):
    tiny_vae().save_pretrained(tmp_path / "vae")
    cfg = debug_cfg("space=latent", f"vae_path={tmp_path / 'vae'}")
    model = DiffusionDetokenizer(cfg).eval()
    assert model.channels == 4 and model.space_factor == 2 and model.multiple == 4
    images = torch.rand(2, 3, 32, 32)
    assert model.to_space(images).shape == (2, 4, 16, 16)
    out = denoise(model, cond_for(model, 2), DiffusionSamplingConfig(steps=2), (32, 32), None)
    assert out.shape == (2, 3, 32, 32)
    # saved whole (VAE included) and loaded without the original VAE folder
    save_detokenizer(model, tmp_path / "detok")
    (tmp_path / "vae" / "config.json").unlink()
    again = load_detokenizer(tmp_path / "detok")
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="is not an AutoencoderKL folder"):
        DiffusionDetokenizer(cfg)
    with pytest.raises(ConfigError, match="latent space needs vae_path"):
        debug_cfg("space=latent")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_what_the_samplers_read(kind):
    # A UNet that outputs exactly the training target lets the scheduler recover x0 exactly.
    cfg = debug_cfg(f"prediction_type={kind}")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(2, 3, 8, 8, generator=g) * 2 - 1, torch.randn(2, 3, 8, 8, generator=g)
    t = torch.tensor([600, 600])
    noisy = noise_scheduler(cfg).add_noise(x0, noise, t)
    target = training_target(noise_scheduler(cfg), x0, noise, t)
    for name in ("ddim", "ddpm"):
        sched = sampling_scheduler(name, cfg)
        sched.set_timesteps(5)
        got = sched.step(target, 600, noisy, generator=g).pred_original_sample
        torch.testing.assert_close(got, x0, atol=1e-4, rtol=0, msg=f"{name} with {kind}")


def test_training_stage_and_bad_input(tmp_path, tokenizer_dir):
    cfg = load_config(
        CONFIGS / "train" / "diffusion_debug.yaml",
        DiffusionRunConfig,
        [f"tokenizer_dir={tokenizer_dir}", f"train.out_dir={tmp_path}", "train.progress=false", "train.steps=6"],
    )
    metrics = fit(DiffusionTask(cfg), cfg.train)
    assert set(metrics) == {"recon_scene_kept", "recon_scene_recovered", "recon_psnr"}
    assert (tmp_path / "recon_step6.png").is_file()
    model, tok = load_detokenizer(tmp_path / "model"), load_tokenizer(tokenizer_dir)
    codes = [torch.tensor([1, 2, 3]), torch.tensor([4] * 10)]
    sampling = DiffusionSamplingConfig(steps=2)
    out = decode_codes(model, tok, codes, sampling, generator=[torch.Generator().manual_seed(i) for i in range(2)])
    assert out.shape == (2, 3, 32, 32)
    alone = decode_codes(model, tok, codes[1:], sampling, generator=[torch.Generator().manual_seed(1)])
    torch.testing.assert_close(out[1:], alone, atol=1e-5, rtol=0)

    with pytest.raises(ValueError, match="code sequence 1 must be a non-empty"):
        decode_codes(model, tok, [torch.tensor([1]), torch.tensor([], dtype=torch.long)], sampling)
    with pytest.raises(ValueError, match=r"codes outside \[0, 64\)"):
        decode_codes(model, tok, [torch.tensor([1, 64])], sampling)
    with pytest.raises(ValueError, match="unsupported size 31x32"):
        decode_codes(model, tok, codes, sampling, size=(31, 32))
    with pytest.raises(ValueError, match="exceed the conditioner's max_codes=16"):
        decode_codes(model, tok, [torch.ones(17, dtype=torch.long)], sampling)
    with pytest.raises(ValueError, match="bad aspect ratio"):
        parse_ratio("wide")
    with pytest.raises(ConfigError, match="model.code_dim=48 but the tokenizer"):
        DiffusionTask(
            load_config(
                CONFIGS / "train" / "diffusion_debug.yaml",
                DiffusionRunConfig,
                [
                    f"tokenizer_dir={tokenizer_dir}",
                    f"train.out_dir={tmp_path}",
                    "model.code_dim=48",
                ],
            )
        )
    with pytest.raises(ConfigError, match="scheduler"):
        DiffusionSamplingConfig(scheduler="plms")
    with pytest.raises(CheckpointError):
        load_detokenizer(tmp_path / "nope")


def test_spatial_layout(tmp_path, tokenizer_dir):
    """The condition laid out on a 2x2 grid and stacked on the denoiser's input: it trains,
    decodes any bucket, and a batch equals each alone."""
    tok = load_tokenizer(tokenizer_dir)
    cfg = load_config(
        CONFIGS / "train" / "diffusion_debug.yaml",
        DiffusionRunConfig,
        [
            f"tokenizer_dir={tokenizer_dir}",
            f"train.out_dir={tmp_path}",
            "train.progress=false",
            "train.steps=4",
            "model.spatial_channels=3",
        ],
    )
    fit(DiffusionTask(cfg), cfg.train)
    model = load_detokenizer(tmp_path / "model")
    assert model.unet.config.in_channels == model.channels + 3
    codes = [torch.tensor([1, 2, 3]), torch.tensor([4] * 10)]
    sampling = DiffusionSamplingConfig(steps=2)
    size = model.size_for("16:9")
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    out = decode_codes(model, tok, codes, sampling, size=size, generator=gens(0, 1))
    assert out.shape == (2, 3, *size)
    torch.testing.assert_close(out[1:], decode_codes(model, tok, codes[1:], sampling, size=size, generator=gens(1)))
    with pytest.raises(ConfigError, match="num_queries to be a square"):
        debug_cfg("spatial_channels=4", "conditioner.num_queries=6")
    with pytest.raises(ConfigError, match="condition"):
        debug_cfg("condition=features")  # removed (measured no gain): an unknown key now


def test_vae_stage_trains_calibrates_and_serves_latent_space(tmp_path):
    from detokenizer.diffusion.config import VAERunConfig
    from detokenizer.diffusion.vae import VAETrainer
    from lavit.train.tasks.vae import VAETask

    cfg = load_config(
        None,
        VAERunConfig,
        [
            "model.resolution=32",
            "model.block_out_channels=[8,16]",
            "model.norm_num_groups=4",
            "data.shapes.resolution=32",
            f"train.out_dir={tmp_path}",
            "train.steps=3",
            "train.batch_size=4",
            "train.progress=false",
            "eval_images=4",
            "calibration_images=8",
        ],
    )
    metrics = fit(VAETask(cfg), cfg.train)
    assert set(metrics) == {"psnr", "scene_kept"}
    # The saved folder is a plain diffusers AutoencoderKL whose scaling factor makes its
    # latents unit-variance on training images (not Stable Diffusion's 0.18215).
    vae = AutoencoderKL.from_pretrained(tmp_path / "model")
    images = torch.stack([VAETask(cfg).train_dataset()[i] for i in range(8)])
    with torch.no_grad():
        latents = vae.encode(images * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
    assert vae.config.scaling_factor != 0.18215
    torch.testing.assert_close(latents.std(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # ... which latent-space diffusion reads through vae_path, and the trainer reloads.
    model = DiffusionDetokenizer(debug_cfg("space=latent", f"vae_path={tmp_path / 'model'}"))
    assert model.channels == 4 and model.space_factor == 2
    trainer = VAETrainer(cfg.model)
    trainer.vae.load_state_dict(vae.state_dict())
    assert VAETask(cfg).evaluate(trainer, step=3) == metrics
    with pytest.raises(ConfigError, match="multiple of the VAE's downsampling factor 4"):
        load_config(None, VAERunConfig, ["model.resolution=30"])
    with pytest.raises(
        ConfigError, match=r"'norm_num_groups': must divide every entry of block_out_channels \[32, 64, 64\]"
    ):
        load_config(None, VAERunConfig, ["model.norm_num_groups=24"])


def test_edge_weighted_vae_loss():
    from detokenizer.diffusion.config import VAEConfig
    from detokenizer.diffusion.vae import VAETrainer, edge_weights

    # A grey image with one red square: weight 1 on the flat background and inside the square,
    # 1 + strength / 2 along its outline (both sides of it), 1 + strength at a corner.
    images = torch.full((1, 3, 16, 16), 0.5)
    images[:, :, 4:10, 4:10] = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    w = edge_weights(images, 9.0)[0, 0]
    assert w.shape == (16, 16)
    assert w[0, 0] == 1 and w[7, 7] == 1  # far background, the square's middle
    assert w.max() == 10 and w[9, 9] == 10 and w[10, 10] == 10
    assert w[3, 6] == 5.5 and w[9, 6] == 5.5 and w[6, 3] == 5.5 and w[6, 10] == 5.5
    # edge_weight 0 is the plain pixel loss: mean squared + mean absolute error.
    cfg = dict(resolution=16, block_out_channels=[8, 16], norm_num_groups=4, sample_posterior=False, kl_weight=0.0)
    torch.manual_seed(0)
    plain = VAETrainer(VAEConfig(**cfg))
    out = plain(images)
    target = images * 2 - 1
    expected = ((out.images - target) ** 2).mean() + (out.images - target).abs().mean()
    torch.testing.assert_close(out.loss, expected)
    # edge_weight 9: the same errors, averaged with those weights (outlines count up to 10x).
    weighted = VAETrainer(VAEConfig(**cfg, edge_weight=9.0))
    weighted.load_state_dict(plain.state_dict())
    out_w = weighted(images)
    err = (out_w.images - target) ** 2 + (out_w.images - target).abs()
    torch.testing.assert_close(out_w.loss, (err * w).sum() / (w.sum() * 3))
    assert not torch.isclose(out_w.loss, out.loss)
    with pytest.raises(ConfigError, match="'edge_weight'"):
        load_config(None, VAEConfig, ["edge_weight=-1"])


def test_init_from_takes_the_denoiser_and_keeps_its_own_vae(tmp_path, tokenizer_dir):
    old_vae, new_vae = tmp_path / "vae_old", tmp_path / "vae_new"
    tiny_vae(0).save_pretrained(old_vae)
    tiny_vae(1).save_pretrained(new_vae)
    source = DiffusionDetokenizer(debug_cfg("space=latent", f"vae_path={old_vae}"))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_detokenizer(source, tmp_path / "trained")

    def task(*overrides: str) -> DiffusionTask:
        cfg = load_config(
            CONFIGS / "train" / "diffusion_debug.yaml",
            DiffusionRunConfig,
            [f"tokenizer_dir={tokenizer_dir}", f"train.out_dir={tmp_path / 'run'}", "model.space=latent", *overrides],
        )
        return DiffusionTask(cfg)

    model = task(f"model.vae_path={new_vae}", f"init_from={tmp_path / 'trained'}").build_model()
    fresh_vae = AutoencoderKL.from_pretrained(new_vae).state_dict()
    for k, v in model.state_dict().items():
        if k.startswith("vae."):
            assert torch.equal(v, fresh_vae[k.removeprefix("vae.")]), k
        else:
            assert torch.equal(v, source.state_dict()[k]), k
    with pytest.raises(ConfigError, match="its denoiser differs from model's"):
        task(f"model.vae_path={new_vae}", f"init_from={tmp_path / 'trained'}", "model.spatial_channels=4").build_model()
    with pytest.raises(ConfigError, match="not a loadable diffusion detokenizer"):
        task(f"model.vae_path={new_vae}", f"init_from={tmp_path / 'nope'}").build_model()


def test_a_batch_of_scene_codes_is_two_tensors_whatever_its_size():
    # A worker sends each tensor of a batch through its own file descriptor: a list of B code
    # tensors ran a batch-128 run with 5 workers out of descriptors ("Too many open files").
    items = [(torch.arange(n) + 10 * n, torch.full((3, 4, 4), float(n))) for n in (3, 1, 5, 2)]
    for size in (1, 4):
        batch = collate_scene_codes(items[:size])
        assert sorted(k for k, v in batch.items() if isinstance(v, torch.Tensor)) == ["codes", "images"]
        assert batch["code_lengths"] == [len(c) for c, _ in items[:size]]  # ints: no GPU read-back
        assert batch["images"].shape == (size, 3, 4, 4)
        assert [c.tolist() for c in batch_codes(batch)] == [c.tolist() for c, _ in items[:size]]


def test_patch_feature_reader_grows_into_a_trained_decoder(tmp_path, tokenizer_dir):
    """``patch_features``: the tokenizer's rebuilt per-patch features, on the query grid, added to
    the condition. Grown from a codes-only decoder (``init_from``) it starts as a no-op; it trains,
    saves, loads and decodes (a batch equals each alone), and bad input is named."""
    tok = load_tokenizer(tokenizer_dir)
    width = tok.encoder.dim
    source = DiffusionDetokenizer(debug_cfg())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_detokenizer(source, tmp_path / "trained")
    cfg = load_config(
        CONFIGS / "train" / "diffusion_debug.yaml",
        DiffusionRunConfig,
        [
            f"tokenizer_dir={tokenizer_dir}",
            f"train.out_dir={tmp_path / 'run'}",
            "train.progress=false",
            "train.steps=3",
            f"model.patch_features={width}",
            f"init_from={tmp_path / 'trained'}",
        ],
    )
    task = DiffusionTask(cfg)
    grown = task.build_model().eval()
    codes = [torch.tensor([1, 2, 3]), torch.tensor([4] * 10)]
    emb, mask = tok.code_embeddings(codes)
    patches = tok.decode_features(codes)
    with torch.no_grad():
        torch.testing.assert_close(grown.condition(emb, mask, patches=patches), source.condition(emb, mask))
        with pytest.raises(ValueError, match="rebuilt patch features"):
            grown.condition(emb, mask)
    fit(task, cfg.train)
    model = load_detokenizer(tmp_path / "run" / "model")
    assert model.cfg.patch_features == width
    assert model.patch_in[-1].weight.abs().sum() > 0  # trained away from its zero start
    sampling = DiffusionSamplingConfig(steps=2)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    out = decode_codes(model, tok, codes, sampling, size=(32, 32), generator=gens(0, 1))
    torch.testing.assert_close(out[1:], decode_codes(model, tok, codes[1:], sampling, size=(32, 32), generator=gens(1)))
    with pytest.raises(ConfigError, match="patch_features"):
        debug_cfg("patch_features=8", "conditioner.num_queries=6")
    with pytest.raises(ConfigError, match="encoder's width"):
        debug_cfg("patch_features=-1")
    bad = load_config(
        CONFIGS / "train" / "diffusion_debug.yaml",
        DiffusionRunConfig,
        [f"tokenizer_dir={tokenizer_dir}", f"train.out_dir={tmp_path / 'bad'}", f"model.patch_features={width + 1}"],
    )
    with pytest.raises(ConfigError, match=f"model.patch_features={width + 1}"):
        DiffusionTask(bad)


def test_to_grid_resizes_a_raster_patch_grid():
    from detokenizer.diffusion.model import to_grid

    x = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)  # a 2x2 grid of 3-vectors
    torch.testing.assert_close(to_grid(x, 2), x)
    up = to_grid(x, 4)  # each patch's vector at its own corner of the 4x4 grid
    assert up.shape == (2, 16, 3)
    torch.testing.assert_close(up[:, [0, 3, 12, 15]], x)
    with pytest.raises(ValueError, match="square grid"):
        to_grid(x[:, :3], 2)


def test_a_saved_config_naming_a_removed_option_at_its_kept_value_loads():
    """condition and sigma_data left DiffusionConfig (they measured no gain); a config.yaml saved
    before holds them at the only value models now have, and loads; any other value is refused
    with the key named, since that model needs the removed code."""

    saved = to_yaml(debug_cfg()) + "condition: codes\nsigma_data: 0.0\n"
    assert from_yaml(saved, DiffusionConfig, where="old/config.yaml") == debug_cfg()
    with pytest.raises(ConfigError, match=r"old/config.yaml: sigma_data=0.4 was removed"):
        from_yaml(saved.replace("sigma_data: 0.0", "sigma_data: 0.4"), DiffusionConfig, where="old/config.yaml")
