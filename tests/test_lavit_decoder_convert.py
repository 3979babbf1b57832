"""Converting LaVIT-7B-v2's pixel decoder (lavit/convert/lavit_decoder.py): parity with LaVIT's
own conditioner and sampling loop on a small random model and a tiny SDXL-shaped UNet (fixture
made by tests/parity/make_lavit_decoder_fixture.py), the published size's names and shapes, and
the files the converter must refuse."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import safe_open
from safetensors.torch import load_file

from detokenizer.diffusion.config import (
    DiffusionSamplingConfig,
    LaVITConditionerConfig,
    LaVITPixelDecoderConfig,
)
from detokenizer.diffusion.lavit_decoder import (
    LaVITConditioner,
    LaVITPixelDecoder,
    load_lavit_pixel_decoder,
    save_lavit_pixel_decoder,
)
from lavit.checkpoint import CheckpointError
from lavit.convert.lavit_decoder import CODEBOOK_KEY, convert_lavit_decoder, convert_state_dict, lavit_key_map

FIXTURE = Path(__file__).parent / "parity" / "lavit_decoder.safetensors"
PUBLISHED_PARAMETERS = 414_002_304  # HighresVQDecoder(depth=12), LaVIT-7B-v2's conditioner
TOL = 1e-4


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return load_file(str(FIXTURE)), meta


def small_config(meta) -> LaVITPixelDecoderConfig:
    return LaVITPixelDecoderConfig(conditioner=LaVITConditionerConfig(**meta["conditioner"]))


def write_sources(tensors, meta, root: Path, unet_as_pickle: bool = True) -> dict[str, Path]:
    """The fixture laid out as LaVIT publishes it: .bin state dicts (read as tensors only) and a
    highres_pixel_decoding/ folder of diffusers models (the UNet's weights as a .bin)."""
    root.mkdir(parents=True, exist_ok=True)
    decoder = root / "highres_tokenizer_decoder.bin"
    torch.save({k.removeprefix("sd."): v for k, v in tensors.items() if k.startswith("sd.")}, decoder)
    codebook = root / "tokenizer_encoder.bin"
    torch.save({CODEBOOK_KEY: tensors["codebook"], "encoder.cls_token": torch.zeros(1, 1, 4)}, codebook)
    pixel = root / "highres_pixel_decoding"
    for name, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
        model = cls.from_config(meta[f"{name}_config"])
        model.load_state_dict(
            {k.removeprefix(f"{name}."): v.float() for k, v in tensors.items() if k.startswith(f"{name}.")}
        )
        model.save_pretrained(pixel / name, safe_serialization=not (unet_as_pickle and name == "unet"))
    DDIMScheduler.from_config(meta["scheduler_config"]).save_pretrained(pixel / "scheduler")
    return {"decoder": decoder, "codebook": codebook, "pixel": pixel}


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory) -> LaVITPixelDecoder:
    """The fixture through the whole converter: files -> model folder -> load_lavit_pixel_decoder."""
    tensors, meta = fixture
    tmp = tmp_path_factory.mktemp("lavit")
    src = write_sources(tensors, meta, tmp / "LaVIT-7B-v2")
    out = convert_lavit_decoder(src["decoder"], src["codebook"], src["pixel"], tmp / "model", small_config(meta))
    return load_lavit_pixel_decoder(out)


def codes_of(tensors) -> list[torch.Tensor]:
    return [tensors[f"codes.{i}"] for i in range(2)]


# ------------------------------------------------------------------------------------------------
# Parity with LaVIT
# ------------------------------------------------------------------------------------------------


def test_conditioning_and_pooled_vector_match_lavit(converted, fixture):
    tensors, _ = fixture
    cond, pooled = converted.condition(codes_of(tensors))
    assert cond.shape == tensors["ref.cond"].shape and pooled.shape == tensors["ref.pooled"].shape
    assert (cond - tensors["ref.cond"]).abs().max() < TOL
    assert (pooled - tensors["ref.pooled"]).abs().max() < TOL


def test_three_guided_ddim_steps_and_pixels_match_lavit(converted, fixture):
    tensors, meta = fixture
    s = meta["sampling"]
    sampling = DiffusionSamplingConfig(scheduler="ddim", steps=s["steps"], guidance_scale=s["guidance_scale"])
    cond, pooled = converted.condition(codes_of(tensors))
    steps = list(converted.denoise_steps(tensors["ref.noise"], cond, pooled, sampling, (s["height"], s["width"])))
    assert len(steps) == 3
    for k, latents in enumerate(steps):
        assert (latents - tensors[f"ref.latents.{k}"]).abs().max() < TOL, k
    pixels = (tensors["ref.decoded"] / 2 + 0.5).clamp(0, 1)  # LaVIT's map of the VAE's output
    assert (converted.to_pixels(steps[-1]) - pixels).abs().max() < TOL


def test_decode_is_the_loop_from_the_generators_noise(converted, fixture):
    tensors, meta = fixture
    s = meta["sampling"]
    sampling = DiffusionSamplingConfig(scheduler="ddim", steps=2, guidance_scale=7.0)
    size = (s["height"], s["width"])
    images = converted.decode(codes_of(tensors), sampling, size=size, generator=torch.Generator().manual_seed(3))
    assert images.shape == (2, 3, *size) and 0 <= images.min() and images.max() <= 1
    noise = torch.randn((2, 4, size[0] // 8, size[1] // 8), generator=torch.Generator().manual_seed(3))
    *_, latents = converted.denoise_steps(noise, *converted.condition(codes_of(tensors)), sampling, size)
    assert torch.equal(images, converted.to_pixels(latents))


def test_lavit_defaults_and_buckets(converted):
    cfg = converted.cfg
    assert (cfg.generation.steps, cfg.generation.guidance_scale) == (25, 7.0)
    assert (cfg.reconstruction.steps, cfg.reconstruction.guidance_scale) == (50, 5.0)
    assert converted.size_for() == (1024, 1024)
    assert converted.size_for("16:9") == (768, 1344)
    assert converted.size_for("3:4") == (1152, 896)
    with pytest.raises(ValueError, match="multiples of 16"):
        converted.size_for(size=(40, 48))


def test_save_and_load_round_trip(converted, fixture, tmp_path):
    tensors, _ = fixture
    again = load_lavit_pixel_decoder(save_lavit_pixel_decoder(converted, tmp_path / "again"))
    assert torch.equal(again.condition(codes_of(tensors))[0], converted.condition(codes_of(tensors))[0])


def test_bad_codes_are_named(converted):
    with pytest.raises(ValueError, match="outside this codebook"):
        converted.condition([torch.tensor([0, 64])])
    with pytest.raises(ValueError, match="give 1 to 16 codes"):
        converted.condition([torch.zeros(17, dtype=torch.long)])


# ------------------------------------------------------------------------------------------------
# The published size
# ------------------------------------------------------------------------------------------------


def test_published_conditioner_maps_onto_our_full_size_exactly(fixture):
    _, meta = fixture
    published = {k: tuple(shape) for k, shape in meta["published_keys"]}
    cfg = LaVITConditionerConfig()  # our defaults are LaVIT-7B-v2's
    key_map = lavit_key_map(cfg)
    assert sorted(key_map) == sorted(published)  # the same names, none left over on either side
    assert {k: s.shape for k, s in key_map.items()} == published
    assert sum(torch.Size(s).numel() for s in published.values()) == PUBLISHED_PARAMETERS
    with torch.device("meta"):
        state = {k: torch.empty(s) for k, s in published.items()}
        converted = convert_state_dict(state, torch.empty(16384, 32), cfg, "highres_tokenizer_decoder.bin")
        ours = LaVITConditioner(cfg)
    ours.load_state_dict(converted, strict=True, assign=True)
    assert sum(p.numel() for p in ours.parameters()) == PUBLISHED_PARAMETERS  # + the 16384 x 32 codebook buffer


# ------------------------------------------------------------------------------------------------
# Files the converter refuses, in one line naming the file and the tensor
# ------------------------------------------------------------------------------------------------


class RunsCode:
    def __reduce__(self):
        return (print, ("ran",))


def convert(src, out, meta):
    return convert_lavit_decoder(src["decoder"], src["codebook"], src["pixel"], out, small_config(meta))


def one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


def test_refusals(fixture, tmp_path):
    tensors, meta = fixture
    src = write_sources(tensors, meta, tmp_path / "src", unet_as_pickle=False)

    state = torch.load(src["decoder"], weights_only=True)
    bad = tmp_path / "missing.bin"
    torch.save({k: v for k, v in state.items() if k != "blocks.1.cross_attn.key.bias"}, bad)
    with pytest.raises(CheckpointError) as e:
        convert({**src, "decoder": bad}, tmp_path / "out", meta)
    assert "missing.bin" in one_line(e) and "blocks.1.cross_attn.key.bias" in one_line(e)

    evil = tmp_path / "evil.bin"
    with open(evil, "wb") as f:
        pickle.dump({"in_proj.weight": RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused") as e:
        convert({**src, "decoder": evil}, tmp_path / "out", meta)
    assert "evil.bin" in one_line(e)

    unet = src["pixel"] / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    with open(unet / "diffusion_pytorch_model.bin", "wb") as f:
        pickle.dump({"conv_in.weight": RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused") as e:
        convert(src, tmp_path / "out", meta)
    assert "diffusion_pytorch_model.bin" in one_line(e)

    config = json.loads((unet / "config.json").read_text())
    (unet / "config.json").write_text(json.dumps({**config, "cross_attention_dim": 32}))
    with pytest.raises(CheckpointError, match="cross_attention_dim 32") as e:
        convert(src, tmp_path / "out", meta)
    assert "config.json" in one_line(e)
    assert not (tmp_path / "out").exists()  # nothing half-written
