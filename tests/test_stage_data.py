"""The image stages read through the data layer: real photographs from a JSONL file or tar
shards train the tokenizer, the VAE and the VQ-VAE; preprocessing (crops, buckets) is
deterministic; a run over shards with DataLoader workers resumes bit for bit; and ShapesWorld,
the default, trains exactly as before the data layer (golden losses)."""

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DEBUG_VQVAE, crashing
from PIL import Image
from safetensors.torch import load_file
from sklearn.datasets import load_sample_images

from detokenizer.diffusion.config import VAERunConfig
from detokenizer.diffusion.vae import open_autoencoder
from detokenizer.var.config import VQVAERunConfig
from detokenizer.var.io import load_vqvae
from lavit.cli import main
from lavit.config import ConfigError, EncoderRunConfig, TokenizerRunConfig, load_config
from lavit.data.preprocess import MappedDataset, buckets, crop_box, nearest_bucket, preprocess, to_bucket
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.sources import expand_shorthand
from lavit.data.transforms import to_tensor
from lavit.train.tasks.encoder import EncoderTask
from lavit.train.tasks.tokenizer import TokenizerTask
from lavit.train.tasks.vae import VAETask
from lavit.train.tasks.var_vqvae import VQVAETask
from lavit.train.trainer import fit
from tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "configs" / "train"
COMMON = ["train.progress=false", "train.log_every=1", "train.ckpt_every=100"]
TOKENIZER = ["train.batch_size=4", "vq_start_step=2", "eval_images=4", "calibration_images=8"]
VAE = [
    "model.resolution=32",
    "model.block_out_channels=[8,16]",
    "model.norm_num_groups=4",
    "model.sample_posterior=false",
    "train.batch_size=4",
    "train.optim.lr=0.01",
    "eval_images=4",
    "calibration_images=8",
]
VQVAE = [
    *DEBUG_VQVAE,
    "train.batch_size=4",
    "train.eval_every=0",
    "eval_images=4",
]


# ------------------------------------------------------------------------------ fixtures


def _crops() -> list[tuple[str, Image.Image]]:
    """16 small photographs of varied aspect: crops of scikit-learn's two sample photos."""
    photos = load_sample_images()
    out = []
    for name, arr in zip(("china", "flower"), photos.images, strict=True):
        img = Image.fromarray(arr)  # 640 x 427
        for i in range(8):
            left, top = 40 * i, 20 * (i % 4)
            w, h = (200, 300) if i % 3 == 0 else (320, 200) if i % 3 == 1 else (240, 240)
            out.append((f"{name}{i}", img.crop((left, top, left + w, top + h)).resize((w // 4, h // 4))))
    return out


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    """{"jsonl": a JSONL of 16 JPEGs with captions, "shards": a folder of 4 tar shards of the
    same (img2dataset layout; one extra sample of shard 2 is an undecodable JPEG)}."""
    root = tmp_path_factory.mktemp("photos")
    lines, members = [], [[] for _ in range(4)]
    for i, (key, img) in enumerate(_crops()):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        (root / f"{key}.jpg").write_bytes(buf.getvalue())
        lines.append(json.dumps({"image": f"{key}.jpg", "text": f"a photo, part {i} of {key[:-1]}"}))
        members[i % 4] += [(f"{key}.jpg", buf.getvalue()), (f"{key}.txt", f"a photo {key}".encode())]
    members[2].insert(2, ("broken.jpg", b"\xff\xd8 not a jpeg"))
    (root / "photos.jsonl").write_text("\n".join(lines) + "\n")
    (root / "shards").mkdir()
    for s, files in enumerate(members):
        with tarfile.open(root / "shards" / f"{s:05d}.tar", "w") as tar:
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return {"jsonl": root / "photos.jsonl", "shards": root / "shards"}


def _losses(out: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


# ------------------------------------------------------------------------------ preprocessing


def test_shapes_images_come_out_as_to_tensor_gives_them():
    world = ShapesWorld(load_config(None, TokenizerRunConfig, ["data.shapes.resolution=32"]).data.shapes)
    image = world.image(3)
    for crop in ("centre", "random", "resize"):
        assert torch.equal(preprocess(image, 32, crop, key="x", counter=5), to_tensor(image, 32))
        assert torch.equal(preprocess(image, 48, crop, key="x", counter=5), to_tensor(image, 48))


def test_centre_crop_is_to_tensor_and_resize_keeps_the_whole_image():
    (_, photo), *_ = _crops()  # 50 x 75, portrait
    assert torch.equal(preprocess(photo, 32, "centre"), to_tensor(photo, 32))
    whole = preprocess(photo, 32, "resize")
    assert whole.shape == (3, 32, 32) and not torch.equal(whole, to_tensor(photo, 32))
    assert crop_box(75, 50, 1, 1, "centre") == (12, 0, 62, 50)


def test_random_crop_is_a_pure_function_of_seed_key_and_counter():
    photo = _crops()[1][1]  # 80 x 50, landscape: the crop slides along x
    torch.manual_seed(0)
    np.random.seed(0)
    state = (torch.get_rng_state(), np.random.get_state()[1].copy())
    a = preprocess(photo, 32, "random", seed=1, key="k", counter=0)
    assert torch.equal(a, preprocess(photo, 32, "random", seed=1, key="k", counter=0))
    assert torch.equal(torch.get_rng_state(), state[0]) and (np.random.get_state()[1] == state[1]).all()
    others = [
        preprocess(photo, 32, "random", seed=s, key=k, counter=c)
        for s, k, c in [(2, "k", 0), (1, "j", 0), (1, "k", 1), (1, "k", 2), (1, "k", 3)]
    ]
    assert sum(not torch.equal(a, o) for o in others) >= 3  # 31 offsets: some draws may coincide
    assert all(o.shape == (3, 32, 32) for o in others)


def test_buckets_are_sdxl_scaled_and_the_nearest_is_chosen():
    choices = buckets(1024, multiple=64)
    assert (1024, 1024) in choices and (896, 1152) in choices and (1344, 768) in choices and len(choices) == 7
    assert buckets(256) == [(336, 192), (304, 208), (288, 224), (256, 256), (224, 288), (208, 304), (192, 336)]
    assert nearest_bucket(640, 427, buckets(256)) == (304, 208)  # 1.50 -> 1.46
    assert nearest_bucket(427, 640, buckets(256)) == (208, 304)
    assert nearest_bucket(500, 500, buckets(256)) == (256, 256)
    assert nearest_bucket(1000, 100, buckets(256)) == (336, 192)  # past the widest: the widest
    photo = Image.fromarray(load_sample_images().images[0])
    out = to_bucket(photo, 256)
    assert out.shape == (3, 208, 304) and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(to_bucket(photo, 256, crop="random", key="a"), to_bucket(photo, 256, crop="random", key="b"))


def test_a_map_style_dataset_passes_the_epoch_as_the_crop_counter():
    ds = MappedDataset([10, 20], lambda sample, counter: (sample, counter))
    assert ds[1] == (20, 0) and ds[(1, 3)] == (20, 3) and len(ds) == 2


# ------------------------------------------------------------------------------ stages on photos


@pytest.mark.parametrize("source", ["jsonl", "shards"])
def test_tokenizer_trains_on_photos_and_saves_a_model_that_loads(photos, source, tmp_path):
    out = tmp_path / "tok"
    argv = ["train", "tokenizer", "--config", str(TRAIN / "tokenizer_debug.yaml"), f"data.train={photos[source]}"]
    argv += [f"data.val={photos['jsonl']}", f"train.out_dir={out}", "train.steps=3", *COMMON, *TOKENIZER]
    assert main(argv) == 0
    assert len(_losses(out)) == 3 and all(np.isfinite(_losses(out)))
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert 0 < metrics["eval/code_usage"] <= 1 and metrics["eval/keep_frac"] > 0
    assert "eval/probe_colour_set_acc" not in metrics  # no ShapesWorld judgement off ShapesWorld
    assert load_tokenizer(out / "model").cfg.encoder.image_size == 32


@pytest.mark.parametrize("source", ["jsonl", "shards"])
def test_vae_and_vqvae_train_on_photos_and_save_models_that_load(photos, source, tmp_path):
    data = [f"data.train={photos[source]}", f"data.val={photos['jsonl']}", "train.steps=2", *COMMON]
    cfg = load_config(None, VAERunConfig, expand_shorthand([*VAE, *data, f"train.out_dir={tmp_path / 'vae'}"]))
    metrics = fit(VAETask(cfg), cfg.train)
    assert set(metrics) == {"psnr"} and metrics["psnr"] > 0
    assert open_autoencoder(tmp_path / "vae" / "model", "vae").config.sample_size == 32
    cfg = load_config(None, VQVAERunConfig, expand_shorthand([*VQVAE, *data, f"train.out_dir={tmp_path / 'vq'}"]))
    metrics = fit(VQVAETask(cfg), cfg.train)
    assert "scene_kept" not in metrics and metrics["psnr"] > 0 and 0 < metrics["usage_scale8"] <= 1
    assert load_vqvae(tmp_path / "vq" / "model").cfg.resolution == 32


def test_shapes_only_stages_name_the_non_shapes_source(photos, tmp_path):
    overrides = expand_shorthand([f"data.train={photos['jsonl']}"])
    with pytest.raises(ConfigError, match=r"data.train\[0\] is kind jsonl: encoder pretraining"):
        EncoderTask(load_config(TRAIN / "encoder_tiny.yaml", EncoderRunConfig, overrides))
    with pytest.raises(ConfigError, match=r"data.train\[0\] is kind jsonl: model.focus_weight"):
        VAETask(load_config(None, VAERunConfig, [*overrides, "model.focus_weight=1", "model.focus_shapes=[cross]"]))


# ------------------------------------------------------------------------------ exact resume


CrashingVQVAE = crashing(VQVAETask)  # dies in the middle of step crash_at


def test_a_killed_run_over_shards_with_workers_resumes_bit_for_bit(photos, tmp_path):
    def cfg(out: Path) -> VQVAERunConfig:
        overrides = [*VQVAE, *COMMON, f"data.train={photos['shards']}", "data.shuffle_buffer=3"]
        overrides += [f"train.out_dir={out}", "train.steps=8", "train.ckpt_every=3", "train.num_workers=2"]
        return load_config(None, VQVAERunConfig, expand_shorthand(overrides))

    # 17 raw samples (one bad) in 4 shards: 2 readers of 8-9 per epoch, batches of 4 -> the
    # crash (step 5) and the resume (step 3, an odd batch count) fall mid-epoch.
    fit(VQVAETask(cfg(tmp_path / "a")), cfg(tmp_path / "a").train)
    with pytest.raises(KeyboardInterrupt):
        fit(CrashingVQVAE(cfg(tmp_path / "b"), crash_at=5), cfg(tmp_path / "b").train)
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step_0000003"
    fit(VQVAETask(cfg(tmp_path / "b")), cfg(tmp_path / "b").train)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and len(_losses(tmp_path / "a")) == 8
    a, b = (load_file(tmp_path / run / "model" / "vqvae.safetensors") for run in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------ ShapesWorld unchanged

# Losses of the default data config (ShapesWorld at 32 px), recorded with the code before the
# stages read the data layer (data: ShapesWorldConfig); the same runs must give the same losses.
GOLDEN = {
    "tokenizer": [1.8069639205932617, 1.7300045490264893, 1.6525250673294067, 1.6219803094863892,
                  1.4977136850357056, 1.4216246604919434, 1.3398386240005493, 1.2900336980819702],
    "encoder": [5.250735759735107, 4.980156898498535, 5.209965229034424, 5.51970911026001],
    "vae_focus": [0.6529610753059387, 1.0897727012634277, 0.8362260460853577],
    "vqvae": [0.25741586089134216, 0.518690824508667, 0.3948388993740082],
}  # fmt: skip
SHAPES32 = "data.shapes.resolution=32"
GOLDEN_RUNS = {
    "tokenizer": (
        TRAIN / "tokenizer_debug.yaml",
        TokenizerRunConfig,
        TokenizerTask,
        ["train.steps=8", "vq_start_step=4", "eval_images=8", "calibration_images=16", "model.pixel_loss_weight=1.0"],
    ),
    "encoder": (
        TRAIN / "encoder_tiny.yaml",
        EncoderRunConfig,
        EncoderTask,
        ["model.image_size=32", "model.embed_dim=32", "model.depth=2", "model.num_heads=2", SHAPES32]
        + ["train.steps=4", "train.batch_size=8", "train.eval_every=0", "eval_images=8"],
    ),
    "vae_focus": (
        None,
        VAERunConfig,
        VAETask,
        [*VAE, SHAPES32, "train.steps=3", "model.focus_weight=10", "model.focus_shapes=[small cross]"],
    ),
    "vqvae": (None, VQVAERunConfig, VQVAETask, [*VQVAE, SHAPES32, "train.steps=3"]),
}


@pytest.mark.parametrize("stage", list(GOLDEN))
def test_shapesworld_trains_exactly_as_before_the_data_layer(stage, tmp_path):
    path, schema, task_cls, overrides = GOLDEN_RUNS[stage]
    cfg = load_config(path, schema, [f"train.out_dir={tmp_path}", *COMMON, *overrides])
    fit(task_cls(cfg), cfg.train)
    assert _losses(tmp_path) == pytest.approx(GOLDEN[stage], rel=1e-5)


def test_no_val_source_trains_and_evaluates_nothing(photos, tmp_path):
    data = expand_shorthand([f"data.train={photos['jsonl']}", "data.val=[]", "train.steps=1", *COMMON])
    cfg = load_config(None, VQVAERunConfig, [*VQVAE, *data, f"train.out_dir={tmp_path}"])
    assert fit(VQVAETask(cfg), cfg.train) == {} and (tmp_path / "model" / "vqvae.safetensors").is_file()
