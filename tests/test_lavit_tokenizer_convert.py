"""Converting LaVIT-7B-v2's visual tokenizer (lavit/convert/lavit_tokenizer.py): parity with
LaVIT's own code on a small random model (fixture made by
tests/parity/make_lavit_tokenizer_fixture.py), the published size's names, shapes and parameter
count, and files the converter must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lavit.checkpoint import CheckpointError
from lavit.config import ConfigError, TokenizerConfig, load_config
from lavit.convert.lavit_tokenizer import (
    EVA_FILE,
    TOKENIZER_FILE,
    convert_lavit_tokenizer,
    eva_key_map,
    published_config,
    tokenizer_key_map,
)
from tokenizer import load_tokenizer
from tokenizer.merger import policy_softmax

PARITY = Path(__file__).parent / "parity"
FIXTURE = PARITY / "lavit_tokenizer.safetensors"
PUBLISHED_KEYS = PARITY / "lavit_tokenizer_keys.json"
PRESET = Path(__file__).parents[1] / "configs" / "tokenizer" / "lavit.yaml"

# The fixture's model: the published preset at width 32, 2 + 2 blocks, 64 x 8 codes, 56 px.
SMALL = [
    "encoder.image_size=56",
    "encoder.embed_dim=32",
    "encoder.depth=2",
    "encoder.num_heads=4",
    "width=32",
    "heads=4",
    "merger_depth=2",
    "quantizer.codebook_size=64",
    "quantizer.codebook_dim=8",
]


def small_config(*overrides: str) -> TokenizerConfig:
    return load_config(PRESET, TokenizerConfig, [*SMALL, *overrides])


@pytest.fixture(scope="module")
def fixture() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE))


def write_published(fixture: dict[str, torch.Tensor], root: Path, extra: dict | None = None) -> Path:
    """The fixture's weights as LaVIT publishes them: two torch.save'd state dicts."""
    (root / "visual_tokenizer").mkdir(parents=True)
    eva = {k.removeprefix("eva."): v for k, v in fixture.items() if k.startswith("eva.")}
    tok = {k.removeprefix("tok."): v for k, v in fixture.items() if k.startswith("tok.")}
    # The unused understanding projection and CLIP head are in the published files: ignored.
    tok["vit_proj.weight"], tok["vit_proj.bias"] = torch.randn(4096, 32), torch.randn(4096)
    tok.update(extra or {})
    torch.save(eva, root / EVA_FILE)
    torch.save(tok, root / TOKENIZER_FILE)
    return root


@pytest.fixture(scope="module")
def converted(fixture, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lavit")
    out = convert_lavit_tokenizer(write_published(fixture, tmp / "LaVIT-7B-v2"), tmp / "out", small_config())
    return load_tokenizer(out)


def ref_keep(fixture) -> torch.Tensor:
    return fixture["ref.keep"].bool()


def test_encoder_and_selector_match_lavit(converted, fixture):
    feats = converted.encoder(fixture["input.images"])
    torch.testing.assert_close(feats, fixture["ref.encoder"], atol=1e-5, rtol=0)
    logits = converted.selector(feats)
    torch.testing.assert_close(logits.log_softmax(-1), fixture["ref.log_probs"], atol=1e-5, rtol=0)


def test_merger_features_match_lavit_given_its_keep_mask(converted, fixture):
    keep = ref_keep(fixture)
    assert keep[0].all() and not keep[1:].all(dim=1).any()  # image 0 drops nothing
    feats = converted.encode_features_with_keep(fixture["input.images"], keep)
    assert [len(f) for f in feats] == fixture["ref.lengths"].tolist()
    torch.testing.assert_close(torch.cat(feats), fixture["ref.merged"], atol=1e-5, rtol=0)


def test_codes_match_lavit_given_its_keep_mask(converted, fixture):
    codes = converted.encode_with_keep(fixture["input.images"], ref_keep(fixture))
    assert torch.equal(torch.cat(codes), fixture["ref.codes"])
    # The codebook's norms range 0.5..1.5: a cosine lookup would pick other codes.
    assert not torch.equal(cosine_codes(converted, fixture), fixture["ref.codes"])


def cosine_codes(tok, fixture) -> torch.Tensor:
    feats = torch.cat(tok.encode_features_with_keep(fixture["input.images"], ref_keep(fixture)))
    z = torch.nn.functional.normalize(tok.to_code(feats), dim=-1)
    return (z @ torch.nn.functional.normalize(tok.quantizer.codebook, dim=-1).T).argmax(-1)


def test_nothing_dropped_cross_attention_is_a_uniform_mean():
    scores = torch.randn(1, 2, 3, 5)
    w = policy_softmax(scores, torch.zeros(1, 1, 1, 5))
    torch.testing.assert_close(w, torch.full_like(w, 0.2))


def test_sampled_keep_mask_follows_lavits_keep_probability(converted, fixture):
    assert converted.cfg.selector.inference == "sample"
    images = fixture["input.images"][1:2].expand(400, -1, -1, -1)
    g = torch.Generator().manual_seed(0)
    logits = converted.selector(converted.encoder(images[:1]))
    keep = converted._infer_keep(logits.expand(400, -1, -1), g).float().mean(0)
    # LaVIT's hard Gumbel-softmax keeps a patch with probability softmax(logits)[keep].
    expected = fixture["ref.log_probs"][1, :, 0].exp()
    assert (keep - expected).abs().max() < 0.1
    codes = converted.encode(fixture["input.images"], generator=g)
    assert [len(c) > 0 for c in codes] == [True] * 3


def test_published_names_and_shapes_map_onto_our_preset_exactly():
    published = json.loads(PUBLISHED_KEYS.read_text())
    cfg = published_config()
    with torch.device("meta"):
        from tokenizer import DynamicVisualTokenizer

        ours = DynamicVisualTokenizer(cfg)
    mapped: dict[str, tuple[int, ...]] = {}
    for file, key_map, ignored in (
        ("eva_vitg_psz14.bin", eva_key_map(cfg), {"head.weight", "head.bias"}),
        ("tokenizer_encoder.bin", tokenizer_key_map(cfg), {"vit_proj.weight", "vit_proj.bias"}),
    ):
        names = {k for k, _ in published[file]}
        assert names - set(key_map) == ignored and set(key_map) <= names, file
        for name, shape in published[file]:
            if name in key_map:
                assert key_map[name].shape == tuple(shape), name
                for our, t in key_map[name].to_ours(torch.empty(shape, device="meta")).items():
                    mapped[our] = tuple(t.shape)
    state = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    filled = {"quantizer._codebook.initted", "quantizer._codebook.cluster_size", "feat_mean", "feat_std"}
    assert set(state) - set(mapped) == filled | {"keep_threshold"}
    assert all(state[k] == s for k, s in mapped.items())
    # LaVIT's parameters less EVA-CLIP's head (1408 x 1024) and vit_proj (1408 x 4096), with
    # bias; our codebook is a buffer, its parameter.
    n_ours = sum(p.numel() for p in ours.parameters()) + ours.quantizer.codebook.numel()
    assert published["parameters"] == 1_422_408_322
    assert n_ours == published["parameters"] - (1408 * 1024 + 1024) - (1408 * 4096 + 4096) == 1_415_194_242


def test_tokenizer_file_holding_the_encoder_wins_as_in_lavit(fixture, tmp_path):
    enc = {f"encoder.{k.removeprefix('eva.')}": v for k, v in fixture.items() if k.startswith("eva.")}
    enc["encoder.pos_embed"] = enc["encoder.pos_embed"] + 1.0
    root = write_published(fixture, tmp_path / "src", extra=enc)
    tok = load_tokenizer(convert_lavit_tokenizer(root, tmp_path / "out", small_config()))
    torch.testing.assert_close(tok.encoder.vit.pos_embed, enc["encoder.pos_embed"])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda t: t.pop("causal_encoder.norm.bias"),
            r"tokenizer_encoder\.bin has no tensor 'causal_encoder\.norm\.bias'",
        ),
        (lambda t: t.update(extra=torch.zeros(1)), r"tokenizer_encoder\.bin holds an unexpected tensor 'extra'"),
        (
            lambda t: t.update({"encode_task_layer.2.weight": torch.zeros(9, 32)}),
            r"tokenizer_encoder\.bin: tensor 'encode_task_layer\.2\.weight' has shape \(9, 32\)",
        ),
    ],
)
def test_wrong_files_fail_with_one_line_naming_file_and_key(fixture, tmp_path, change, match):
    tok = {k.removeprefix("tok."): v for k, v in fixture.items() if k.startswith("tok.")}
    change(tok)
    root = tmp_path / "src"
    write_published({**{k: v for k, v in fixture.items() if k.startswith("eva.")}}, root)
    torch.save(tok, root / TOKENIZER_FILE)
    with pytest.raises(CheckpointError, match=match) as e:
        convert_lavit_tokenizer(root, tmp_path / "out", small_config())
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()


def test_missing_file_and_wrong_options_are_refused(fixture, tmp_path):
    with pytest.raises(CheckpointError, match=r"eva_vitg_psz14\.bin not found"):
        convert_lavit_tokenizer(tmp_path, tmp_path / "out", small_config())
    root = write_published(fixture, tmp_path / "src")
    with pytest.raises(ConfigError, match="merger=lavit"):
        convert_lavit_tokenizer(root, tmp_path / "out", small_config("merger=null_key"))
    with pytest.raises(CheckpointError, match="set quantizer.lookup=l2"):
        convert_lavit_tokenizer(root, tmp_path / "out", small_config("quantizer.lookup=cosine"))
