"""VAR's class-conditional transformers (var_d16 ... var_d30) convert into our next-scale
transformer and give VAR's teacher-forcing logits.

The fixtures come from tests/parity/make_var_transformer_fixture.py, which builds VAR's own model
from a checkout of FoundationVision/VAR: two small ones with random weights and their logits on
fixed inputs (var_transformer.safetensors), and the (name, shape) lists and parameter counts of
the published sizes (var_transformer_keys.json).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from detokenizer.var.config import VARConfig, VARSamplingConfig, VQVAEConfig
from detokenizer.var.quantizer import MultiScaleQuantizer
from detokenizer.var.transformer import NextScaleTransformer
from lavit.checkpoint import CheckpointError
from lavit.config import ConfigError, load_config
from lavit.convert.var_transformer import load_var_transformer, var_config_for, var_transformer_state_dict

ROOT = Path(__file__).resolve().parent.parent
PARITY = ROOT / "tests" / "parity"
FIXTURE = PARITY / "var_transformer.safetensors"
KEYS = PARITY / "var_transformer_keys.json"
# VAR's own parameter counts (models.build_vae_var); our presets must have exactly these.
PUBLISHED_PARAMETERS = {
    "var_d16": 310_283_520,
    "var_d20": 600_917_136,
    "var_d24": 1_033_399_360,
    "var_d30": 2_010_020_356,
}
# The fixture's small VQ-VAE sizes: 64 codes of 8 dims, scales 1..4 (L = 30).
SMALL_VQ = VQVAEConfig(resolution=16, scales=[1, 2, 3, 4], codebook_size=64, latent_channels=8)


def small_var(variant: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small VAR's state dict (published key layout), its labels, inputs and logits."""
    tensors = load_file(FIXTURE)
    prefix = f"{variant}.sd."
    ref = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    return ref, tensors[f"{variant}.labels"], tensors[f"{variant}.inputs"], tensors[f"{variant}.logits"]


def converted(variant: str) -> NextScaleTransformer:
    ref, _, _, _ = small_var(variant)
    cfg = var_config_for(ref)
    model = NextScaleTransformer(cfg, SMALL_VQ)
    model.load_state_dict(var_transformer_state_dict(ref, cfg, SMALL_VQ), strict=True)
    return model.eval()


@pytest.mark.parametrize("variant", ["plain", "shared"])
def test_converted_var_gives_vars_teacher_forcing_logits(variant):
    ref, labels, inputs, want = small_var(variant)
    cfg = var_config_for(ref)
    assert (cfg.depth, cfg.num_classes, cfg.shared_adaln) == (2, 10, variant == "shared")
    assert labels.tolist() == [3, 7, 10, 0]  # 10: the null class
    model = converted(variant)
    with torch.no_grad():
        got = model.forward_classes(labels, inputs)
        dropped = model.forward_classes(labels, inputs, drop=torch.tensor([True, False, False, False]))
    assert got.shape == want.shape == (4, 30, 64)
    # Measured: 1.2e-6 (plain) and 9.5e-7 (shared), on logits of std 1.2-1.8.
    assert (got - want).abs().max() < 1e-4
    # The fixture tells VAR's choices apart: exact GELU, or LayerNorm eps 1e-5, leaves more.
    for option in ({"gelu": "exact"}, {"norm_eps": 1e-5}):
        other = NextScaleTransformer(dataclasses.replace(cfg, **option), SMALL_VQ).eval()
        other.load_state_dict(model.state_dict(), strict=True)
        with torch.no_grad():
            assert (other.forward_classes(labels, inputs) - want).abs().max() > 2e-4, option
    # A dropped label is the null class.
    null = model.forward_classes(torch.tensor([10, 7, 10, 0]), inputs)
    torch.testing.assert_close(dropped, null, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["plain", "shared"])
def test_class_sampling_with_a_kv_cache_gives_the_guided_teacher_forcing_logits(variant):
    model = converted(variant)
    torch.manual_seed(0)
    q = MultiScaleQuantizer(8, 64, SMALL_VQ.scales).eval()
    q.codebook.weight.data.normal_()
    indices = [torch.randint(0, 64, (2, p, p)) for p in SMALL_VQ.scales]
    labels = torch.tensor([3, 7])
    out = model.sample_classes(labels, q, VARSamplingConfig(guidance_scale=2.5), forced=indices)
    inputs = q.teacher_forcing_inputs(indices)
    with torch.no_grad():
        cond, null = model.forward_classes(labels, inputs), model.forward_classes(torch.tensor([10, 10]), inputs)
    for k, (a, b) in enumerate(model.spans):
        t = 2.5 * k / 3
        torch.testing.assert_close(out.logits[k], (1 + t) * cond[:, a:b] - t * null[:, a:b], atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="conditioned on class.*forward_classes"):
        model.sample(torch.zeros(2, 3, 128), torch.ones(2, 3, dtype=torch.bool), q, VARSamplingConfig())
    with pytest.raises(ValueError, match=r"class labels must be integers in \[0, 10\]"):
        model.forward_classes(torch.tensor([11, 0]), inputs)


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMETERS))
def test_published_sizes_map_onto_our_presets(name):
    published = json.loads(KEYS.read_text())["models"][name]
    ref = {k: torch.empty(shape, device="meta") for k, shape in published["state_dict"]}
    cfg = load_config(ROOT / "configs" / "var" / f"{name}.yaml", VARConfig)
    assert var_config_for(ref) == cfg
    vq = load_config(ROOT / "configs" / "var" / "vqvae_ch160v4096z32.yaml", VQVAEConfig)
    with torch.device("meta"):
        model = NextScaleTransformer(cfg, vq)
    ours = var_transformer_state_dict(ref, cfg, vq)
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in model.state_dict().items()}
    model.load_state_dict(ours, strict=True)
    assert sum(p.numel() for p in model.parameters()) == published["parameters"] == PUBLISHED_PARAMETERS[name]


def test_a_vqvae_or_a_damaged_state_dict_is_refused_with_one_line_naming_the_tensor(tmp_path):
    vqvae = {"encoder.conv_in.weight": torch.zeros(160, 3, 3, 3), "quantize.embedding.weight": torch.zeros(4096, 32)}
    with pytest.raises(CheckpointError, match="no tensor 'class_emb.weight'.*not a VAR transformer") as err:
        var_config_for(vqvae)
    assert "\n" not in str(err.value)

    ref, _, _, _ = small_var("plain")
    cfg = var_config_for(ref)
    cases = {
        "truncated": (
            {k: v for k, v in ref.items() if k != "blocks.1.ffn.fc2.bias"},
            "no tensor 'blocks.1.ffn.fc2.bias'",
        ),
        "extra": (
            {**ref, "blocks.2.attn.q_bias": ref["blocks.1.attn.q_bias"]},
            "unexpected tensor 'blocks.2.attn.q_bias'",
        ),
        "k bias": ({**ref, "blocks.0.attn.zero_k_bias": torch.ones(64)}, "'blocks.0.attn.zero_k_bias' is not zero"),
    }
    for damaged, message in cases.values():
        with pytest.raises(CheckpointError, match=message) as err:
            var_transformer_state_dict(damaged, cfg, SMALL_VQ)
        assert "\n" not in str(err.value)
    other_vq = VQVAEConfig(resolution=16, scales=[1, 2, 3, 4], codebook_size=128, latent_channels=8)
    with pytest.raises(CheckpointError, match=r"'head.weight' has shape \(64, 64\), expected \(128, 64\)"):
        var_transformer_state_dict(ref, cfg, other_vq)
    with pytest.raises(ValueError, match="gelu='exact': VAR's transformer needs gelu='tanh'"):
        var_transformer_state_dict(ref, dataclasses.replace(cfg, gelu="exact"), SMALL_VQ)
    no_l2 = {k: v for k, v in ref.items() if "scale_mul" not in k}
    with pytest.raises(CheckpointError, match="without attn_l2_norm"):
        var_config_for(no_l2)

    # From a file, as a user converts a checkpoint: the same model, loaded strictly.
    path = tmp_path / "var_small.safetensors"
    save_file({k: v.contiguous() for k, v in ref.items()}, path)
    model = load_var_transformer(path, SMALL_VQ)
    for (k, a), b in zip(model.state_dict().items(), converted("plain").state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)


@pytest.mark.parametrize(
    "override, key",
    [
        ({"condition": "text"}, "condition"),
        ({"condition": "class", "layout_queries": 9}, "layout_queries"),
        ({"qkv_bias": "k"}, "qkv_bias"),
        ({"gelu": "erf"}, "gelu"),
        ({"norm_eps": 0.0}, "norm_eps"),
    ],
)
def test_var_options_name_the_bad_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        VARConfig(**override)
