"""Config loading: YAML mirrors the dataclasses; every mistake names the key and the source."""

from pathlib import Path

import pytest

from lavit.config import ConfigError, ShapesWorldConfig, TrainConfig, config_diff, from_yaml, load_config, to_yaml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "data").glob("*.yaml")), ids=lambda p: p.name)
def test_every_data_yaml_loads_and_mirrors_the_dataclass(path):
    cfg = load_config(path, ShapesWorldConfig)
    assert isinstance(cfg, ShapesWorldConfig)
    # A mirror names every field, so editing the dataclass without the YAML is caught here.
    import yaml

    assert set(yaml.safe_load(path.read_text())) == set(ShapesWorldConfig.__dataclass_fields__)


def test_overrides_apply_and_parse_types():
    cfg = load_config(CONFIGS / "data" / "shapes64.yaml", ShapesWorldConfig, ["resolution=128", "duplicate_prob=0.5"])
    assert cfg.resolution == 128 and cfg.duplicate_prob == 0.5
    assert load_config(None, ShapesWorldConfig) == ShapesWorldConfig()


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("resolution: 64\nresolutoin: 32\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, ShapesWorldConfig)
    assert "resolutoin" in str(e.value) and str(f) in str(e.value)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError) as e:
        load_config(None, ShapesWorldConfig, ["seed=abc"])
    assert "'seed'" in str(e.value) and "abc" in str(e.value)


def test_invalid_value_names_key_and_source(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("resolution: 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(f, ShapesWorldConfig)
    assert "resolution" in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize("bad", ["resolution", "a.b.c"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match="key=value|unknown key"):
        load_config(None, ShapesWorldConfig, [bad])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", ShapesWorldConfig)
    f = tmp_path / "broken.yaml"
    f.write_text("resolution: [64\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(f, ShapesWorldConfig)
    f.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(f, ShapesWorldConfig)


def test_yaml_round_trip_and_diff():
    cfg = ShapesWorldConfig(resolution=96, seed=3)
    assert from_yaml(to_yaml(cfg), ShapesWorldConfig) == cfg
    assert config_diff(cfg, ShapesWorldConfig()) == ["resolution: 96 != 64", "seed: 3 != 0"]


SCHEMAS = {
    "tokenizer/*.yaml": "lavit.config:TokenizerConfig",
    "lm/*.yaml": "lavit.config:LMConfig",
    "diffusion/*.yaml": "detokenizer.diffusion.config:DiffusionConfig",
    "train/tokenizer_*.yaml": "lavit.config:TokenizerRunConfig",
    "train/lm_*.yaml": "lavit.config:LMRunConfig",
    "train/diffusion_*.yaml": "detokenizer.diffusion.config:DiffusionRunConfig",
    "train/encoder_*.yaml": "lavit.config:EncoderRunConfig",
    "vae/*.yaml": "detokenizer.diffusion.config:VAEConfig",
    "train/vae_*.yaml": "detokenizer.diffusion.config:VAERunConfig",
    "var/vqvae_*.yaml": "detokenizer.var.config:VQVAEConfig",
    "var/tiny.yaml": "detokenizer.var.config:VARConfig",
    "var/var_d*.yaml": "detokenizer.var.config:VARConfig",
    "train/var_vqvae_*.yaml": "detokenizer.var.config:VQVAERunConfig",
    "train/var_tiny.yaml": "detokenizer.var.config:VARRunConfig",
    "train/var_layout_tiny.yaml": "detokenizer.var.config:VARRunConfig",
    "train/var_last_head_tiny.yaml": "detokenizer.var.config:VARRunConfig",
    "train/var_head_all_tiny.yaml": "detokenizer.var.config:VARRunConfig",
    "vargpt/*.yaml": "lavit.vargpt.config:VARGPTConfig",
    "train/vargpt_*.yaml": "lavit.vargpt.config:VARGPTRunConfig",
}


@pytest.mark.parametrize(
    "path, schema",
    [(p, schema) for pattern, schema in SCHEMAS.items() for p in sorted(CONFIGS.glob(pattern))],
    ids=lambda x: x.name if isinstance(x, Path) else x,
)
def test_every_shipped_config_loads_against_its_schema(path, schema):
    import importlib

    module, name = schema.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert isinstance(load_config(path, cls), cls)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("recipes/*.yaml")), ids=lambda p: p.name)
def test_every_recipe_loads(path):
    from lavit.train.recipe import load_recipe
    from lavit.train.stages import STAGES

    stages = [s.stage for s in load_recipe(path).stages]
    order = list(STAGES)  # the order a full recipe trains them: each reads only earlier ones
    assert "tokenizer" in stages and stages == sorted(stages, key=order.index)


def test_every_config_folder_is_covered():
    covered = {p for pattern in SCHEMAS for p in CONFIGS.glob(pattern)} | set((CONFIGS / "data").glob("*.yaml"))
    covered |= set(CONFIGS.glob("recipes/*.yaml"))  # test_every_recipe_loads
    covered |= set(CONFIGS.glob("eval/*.yaml"))  # tests/test_evaluation.py::test_every_eval_config_loads
    assert covered == set(CONFIGS.rglob("*.yaml"))


def test_ema_decay_outside_its_range_names_key_and_fix():
    with pytest.raises(ConfigError, match=r"1\.0 for .train\.ema_decay.: use 0 \(off\) or a decay in \(0, 1\)"):
        load_config(None, TrainConfig, ["ema_decay=1.0"])
