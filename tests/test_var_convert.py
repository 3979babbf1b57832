"""Converting VAR's multi-scale VQ-VAE (lavit/convert/var_vqvae.py): parity with VAR's own code
on a small random model (fixture made by tests/parity/make_var_vqvae_fixture.py), the published
size's names and shapes, the choice of phi per scale, and files the converter must refuse."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from detokenizer.var import MultiScaleVQVAE, VQVAEConfig
from detokenizer.var.io import load_vqvae
from detokenizer.var.quantizer import phi_index
from lavit.checkpoint import CheckpointError
from lavit.config import to_yaml
from lavit.convert.common import read_state_dict
from lavit.convert.var_vqvae import convert_state_dict, convert_var_vqvae, main, published_config

PARITY = Path(__file__).parent / "parity"
FIXTURE = PARITY / "var_vqvae.safetensors"
PUBLISHED_KEYS = PARITY / "var_vqvae_ch160_keys.json"
SHIPPED = Path(__file__).parents[1] / "checkpoints" / "lavit-shapes-tiny" / "var"

# The fixture's model: VAR's topology at ch = 4 (the script's SMALL), 10 scales at 160 px.
SMALL = VQVAEConfig(
    resolution=160,
    block_out_channels=[4, 4, 8, 8, 16],
    layers_per_block=2,
    norm_num_groups=2,
    mid_attention=True,
    lowest_level_attention=True,
    latent_channels=8,
    quant_conv_kernel=3,
    codebook_size=64,
    scales=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    num_phi=4,
    phi_ratio=0.5,
    dead_code_threshold=0.0,
    znorm=False,
)


@pytest.fixture(scope="module")
def fixture() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE))


def var_state(fixture: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference's state dict, in VAR's names."""
    return {k.removeprefix("sd."): v for k, v in fixture.items() if k.startswith("sd.")}


def ref_indices(fixture: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """VAR's (1, p^2) codes per scale, as our (1, p, p) maps."""
    return [fixture[f"ref.idx.{k}"].view(1, p, p) for k, p in enumerate(SMALL.scales)]


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory) -> MultiScaleVQVAE:
    """The fixture's weights through the whole converter: file -> model folder -> load_vqvae."""
    tmp = tmp_path_factory.mktemp("var")
    src = tmp / "vae_small.safetensors"
    save_file(var_state(fixture), str(src))
    return load_vqvae(convert_var_vqvae(src, tmp / "model", SMALL))


# ------------------------------------------------------------------------------------------------
# Parity with VAR
# ------------------------------------------------------------------------------------------------


def test_codes_match_var_at_every_scale(converted, fixture):
    images = fixture["input.images"].float() / 255  # VAR read u8 / 255 * 2 - 1; we take [0, 1]
    with torch.no_grad():
        latent = converted.latent(images)
    assert (latent - fixture["ref.latent"]).abs().max() < 1e-5
    codes = converted.encode(images)
    for k, (ours, theirs) in enumerate(zip(codes, ref_indices(fixture), strict=True)):
        assert torch.equal(ours, theirs), f"scale {k} ({SMALL.scales[k]}x{SMALL.scales[k]})"


def test_teacher_forcing_inputs_match_var(converted, fixture):
    with torch.no_grad():
        ours = converted.quantizer.teacher_forcing_inputs(ref_indices(fixture))
    assert ours.shape == fixture["ref.var_input"].shape == (1, sum(p * p for p in SMALL.scales[1:]), 8)
    assert (ours - fixture["ref.var_input"]).abs().max() < 1e-6


def test_pixels_decoded_from_the_codes_match_var(converted, fixture):
    with torch.no_grad():
        f_hat = converted.quantizer.indices_to_fhat(ref_indices(fixture))
        pixels = converted.decode(ref_indices(fixture)) * 2 - 1  # ours in [0, 1], VAR's in [-1, 1]
    assert (f_hat - fixture["ref.f_hat"]).abs().max() < 1e-6
    assert (pixels - fixture["ref.pixels"]).abs().max() < 1e-4


def test_each_scale_takes_vars_phi():
    # VAR: float64 nearest of ticks linspace(1/12, 11/12, 4) to k/9; 2/9 and 7/9 lie midway
    # between two ticks and float64 rounding puts them on the upper one (float32: the lower).
    assert [phi_index(k, 10, 4) for k in range(10)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert [phi_index(k, 10, 3) for k in range(10)] == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]  # ticks 1/(2K) apart
    assert {phi_index(k, 3, 1) for k in range(3)} == {0}


def test_shipped_var_decoder_keeps_its_phi_and_reconstruction():
    """The shipped 8-scale VQ-VAE maps every scale to the phi it was trained with (the float32
    rule gave these too), and reconstructs a fixed image as it did before VAR's rule came in
    (values recorded with the float32 rule)."""
    assert [phi_index(k, 8, 4) for k in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    model = load_vqvae(SHIPPED)
    assert model.cfg.scales == [1, 2, 3, 4, 6, 8, 11, 16]
    assert model.quantizer.phi_of_scale == [0, 0, 1, 1, 2, 2, 3, 3]
    r = 64
    y, x = torch.meshgrid(torch.arange(r, dtype=torch.float32), torch.arange(r, dtype=torch.float32), indexing="ij")
    image = torch.full((3, r, r), 0.5)
    image[:, (x >= 8) & (x < 28) & (y >= 10) & (y < 30)] = torch.tensor([0.9, 0.1, 0.1])[:, None]
    image[:, (x - 44) ** 2 + (y - 40) ** 2 < 12**2] = torch.tensor([0.1, 0.2, 0.9])[:, None]
    codes = model.encode(image[None])
    out = model.decode(codes)
    assert [c.flatten().tolist() for c in codes[:3]] == [[102], [53, 92, 22, 43], [100, 2, 25, 53, 62, 50, 55, 122, 2]]
    assert [int(c.sum()) for c in codes] == [102, 210, 471, 721, 2049, 3208, 6602, 13764]
    want = [0.4986494, 0.4978974, 0.5135309, 0.5404185, 0.5727740, 0.5719056, 0.5504092, 0.5152238]
    torch.testing.assert_close(out[0, 0, 30, 20:28], torch.tensor(want), atol=1e-4, rtol=0)
    assert abs(float(out.mean()) - 0.4750839) < 1e-5


# ------------------------------------------------------------------------------------------------
# The published size
# ------------------------------------------------------------------------------------------------


def test_published_names_and_shapes_map_onto_our_preset_exactly():
    keys = json.loads(PUBLISHED_KEYS.read_text())
    state = {name: torch.empty(shape, device="meta") for name, shape in keys["state_dict"]}
    cfg = published_config()
    ours = convert_state_dict(state, cfg, PUBLISHED_KEYS)
    with torch.device("meta"):
        model = MultiScaleVQVAE(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == expected
    model.load_state_dict(ours, strict=True, assign=True)
    count = sum(p.numel() for p in model.parameters())
    assert count == keys["parameters"] == 108_948_355
    assert keys["buffers"] == ["quantize.ema_vocab_hit_SV"]  # the one tensor we drop


# ------------------------------------------------------------------------------------------------
# Files the converter reads and writes
# ------------------------------------------------------------------------------------------------


def test_a_pth_state_dict_converts_like_the_safetensors_and_records_its_digest(fixture, tmp_path):
    src = tmp_path / "vae_small.pth"  # VAR publishes torch.save'd state dicts
    torch.save(var_state(fixture), src)
    (tmp_path / "small.yaml").write_text(to_yaml(SMALL))
    main([str(src), str(tmp_path / "out"), "--config", str(tmp_path / "small.yaml")])
    model = load_vqvae(tmp_path / "out")
    assert torch.equal(model.quantizer.codebook.weight, fixture["sd.quantize.embedding.weight"])
    record = json.loads((tmp_path / "out" / "convert.json").read_text())
    assert record["sources"] == [{"file": "vae_small.pth", "sha256": hashlib.sha256(src.read_bytes()).hexdigest()}]


class _WouldRunCode:
    """Unpickling this calls ``open(marker, "w")``: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_that_would_run_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    src = tmp_path / "evil.pth"
    torch.save({"encoder.conv_in.weight": torch.zeros(1), "x": _WouldRunCode(marker)}, src)
    raw = tmp_path / "evil.bin"
    raw.write_bytes(pickle.dumps({"x": _WouldRunCode(marker)}, protocol=2))
    for path in (src, raw):
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}") as err:
            convert_var_vqvae(path, tmp_path / "out", SMALL)
        assert "\n" not in str(err.value) and "refused" in str(err.value)
    assert not marker.exists() and not (tmp_path / "out").exists()
    torch.load(src, weights_only=False)  # the file is live: unpickled freely, it runs
    assert marker.exists()


def _convert_fails(state: dict[str, torch.Tensor], tmp_path: Path, match: str, cfg: VQVAEConfig = SMALL) -> str:
    src = tmp_path / "vae.safetensors"
    save_file(state, str(src))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CheckpointError, match=match) as err:
        convert_var_vqvae(src, tmp_path / "out", cfg)
    message = str(err.value)
    assert "\n" not in message and str(src) in message
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no out dir, no temporary sibling
    return message


def test_a_missing_tensor_is_named(fixture, tmp_path):
    state = var_state(fixture)
    del state["decoder.up.4.attn.2.qkv.bias"]
    _convert_fails(state, tmp_path, r"no tensor 'decoder\.up\.4\.attn\.2\.qkv\.bias'")


def test_an_unexpected_tensor_is_named(fixture, tmp_path):
    state = var_state(fixture) | {"decoder.up.4.attn.3.qkv.bias": torch.zeros(48)}
    _convert_fails(state, tmp_path, r"unexpected tensor 'decoder\.up\.4\.attn\.3\.qkv\.bias'")


def test_a_wrong_shape_is_named_with_both_shapes(fixture, tmp_path):
    state = var_state(fixture)
    state["quantize.embedding.weight"] = torch.zeros(128, 8)  # a larger codebook
    _convert_fails(state, tmp_path, r"'quantize\.embedding\.weight' has shape \(128, 8\), expected \(64, 8\)")


def test_another_width_or_a_var_transformer_is_refused(fixture, tmp_path):
    wider = VQVAEConfig(**{**vars(SMALL), "block_out_channels": [8, 8, 16, 16, 32]})
    _convert_fails(
        var_state(fixture),
        tmp_path,
        r"'encoder\.conv_in\.weight' has shape \(4, 3, 3, 3\), expected \(8, 3, 3, 3\)",
        wider,
    )
    transformer = {"class_emb.weight": torch.zeros(11, 16), "pos_start": torch.zeros(1, 1, 16)}
    _convert_fails(transformer, tmp_path, r"no tensor 'encoder\.conv_in\.weight'.*'class_emb\.weight'")


def test_a_failed_conversion_leaves_an_existing_model_folder_as_it_was(fixture, tmp_path):
    src = tmp_path / "vae.safetensors"
    save_file(var_state(fixture), str(src))
    out = convert_var_vqvae(src, tmp_path / "out", SMALL)
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    bad = tmp_path / "bad.safetensors"
    save_file({"pos_start": torch.zeros(1, 1, 16)}, str(bad))
    with pytest.raises(CheckpointError, match="no tensor"):
        convert_var_vqvae(bad, out, SMALL)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a model folder"):
        convert_var_vqvae(src, tmp_path / "notes", SMALL)
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(junk))} is not a readable safetensors file"):
        read_state_dict(junk)
    nested = tmp_path / "trainer.pth"
    torch.save({"trainer": {"vae_local": {"w": torch.zeros(1)}}}, nested)
    with pytest.raises(CheckpointError, match="'trainer' is a dict, not a tensor"):
        read_state_dict(nested)
