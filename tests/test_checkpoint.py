"""Checkpoints: round trips, atomic writes, and a clear error for every way loading can fail."""

import json
import pickle

import pytest
import torch
from torch import nn

from lavit.checkpoint import (
    CheckpointError,
    cast_weights,
    load_model_dir,
    load_tree,
    load_weights,
    read_config,
    save_model_dir,
    save_tree,
    state_mismatch,
)
from lavit.config import ConfigError, ShapesWorldConfig


class Tied(nn.Module):
    """A tiny model with tied input/output weights (as LMs have) and a buffer."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.emb = nn.Embedding(10, width)
        self.proj = nn.Linear(width, width)
        self.head = nn.Linear(width, 10, bias=False)
        self.head.weight = self.emb.weight
        self.register_buffer("scale", torch.ones(1))


def build(cfg: ShapesWorldConfig):
    # Tests reuse ShapesWorldConfig as a stand-in model config: width comes from max_shapes.
    return {"net": Tied(width=cfg.max_shapes + 1)}


def _saved(tmp_path, cfg=None):
    cfg = cfg or ShapesWorldConfig(max_shapes=3)
    torch.manual_seed(0)
    model = build(cfg)["net"]
    save_model_dir(tmp_path / "m", cfg, {"net": model}, extra_files={"notes.txt": "hello"})
    return cfg, model, tmp_path / "m"


def test_round_trip_rebuilds_from_saved_config(tmp_path):
    cfg, model, d = _saved(tmp_path)
    assert sorted(p.name for p in d.iterdir()) == ["config.yaml", "meta.json", "net.safetensors", "notes.txt"]
    loaded_cfg, modules = load_model_dir(d, ShapesWorldConfig, build)
    assert loaded_cfg == cfg
    for k, v in model.state_dict().items():
        assert torch.equal(modules["net"].state_dict()[k], v), k
    # The tie survives: one tensor, two names.
    assert modules["net"].head.weight.data_ptr() == modules["net"].emb.weight.data_ptr()


def test_half_precision_storage_loads_back_as_float32(tmp_path):
    cfg, model, d = _saved(tmp_path)
    assert cast_weights(d, "float16") == (d / "net.safetensors").stat().st_size
    from safetensors.torch import load_file

    assert {v.dtype for v in load_file(d / "net.safetensors").values()} == {torch.float16}
    _, modules = load_model_dir(d, ShapesWorldConfig, build)
    for k, v in model.state_dict().items():
        got = modules["net"].state_dict()[k]
        assert got.dtype == torch.float32 and torch.equal(got, v.half().float()), k
    with torch.no_grad():
        model.proj.weight[0, 0] = 1e6  # beyond float16's range
    save_model_dir(d, cfg, {"net": model})
    with pytest.raises(CheckpointError, match="proj.weight.*do not fit in float16"):
        cast_weights(d, "float16")


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    cfg, _, d = _saved(tmp_path)
    save_model_dir(d, cfg, {"net": Tied(width=4)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert "notes.txt" not in {p.name for p in d.iterdir()}


def test_failed_save_keeps_the_old_model(tmp_path):
    cfg, _, d = _saved(tmp_path)

    class Bad(nn.Module):
        def state_dict(self, *a, **k):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_model_dir(d, cfg, {"net": Bad()})
    load_model_dir(d, ShapesWorldConfig, build)  # still loads
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_missing_tensor_is_named(tmp_path):
    cfg, _, d = _saved(tmp_path)

    def build_extra(c):
        m = Tied(width=4)
        m.extra = nn.Linear(2, 2)
        return {"net": m}

    with pytest.raises(CheckpointError, match=r"missing \['extra.bias', 'extra.weight'\]"):
        load_model_dir(d, ShapesWorldConfig, build_extra)


def test_unexpected_tensor_is_named(tmp_path):
    cfg, _, d = _saved(tmp_path)

    def build_less(c):
        m = Tied(width=4)
        del m.proj
        return {"net": m}

    with pytest.raises(CheckpointError, match="unexpected.*proj.weight"):
        load_model_dir(d, ShapesWorldConfig, build_less)


def test_misshaped_tensor_is_named(tmp_path):
    _, model, d = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"proj.weight: file \(4, 4\) vs model \(6, 6\)"):
        load_weights(Tied(width=6), d / "net.safetensors")


def test_config_mismatch_lists_keys(tmp_path):
    cfg, _, d = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="resolution: 64 != 128"):
        load_model_dir(d, ShapesWorldConfig, build, expect_config=ShapesWorldConfig(max_shapes=3, resolution=128))


def test_wrong_schema_and_bad_config_key(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class OtherConfig:
        x: int = 1

    _, _, d = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="holds a ShapesWorldConfig model, not a OtherConfig"):
        read_config(d, OtherConfig)
    (d / "config.yaml").write_text((d / "config.yaml").read_text() + "colour_depth: 8\n")
    with pytest.raises(ConfigError, match="colour_depth.*config.yaml"):
        read_config(d, ShapesWorldConfig)


def test_component_set_mismatch(tmp_path):
    _, _, d = _saved(tmp_path)
    with pytest.raises(CheckpointError, match=r"holds components \['net'\] but the model builds \['lm', 'net'\]"):
        load_model_dir(d, ShapesWorldConfig, lambda c: {"net": Tied(4), "lm": Tied(4)})


def test_pickle_is_refused(tmp_path):
    d = tmp_path / "hf"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_model_dir(d, ShapesWorldConfig, build)
    with pytest.raises(CheckpointError, match="pickle"):
        load_weights(Tied(), d / "pytorch_model.bin")
    # A pickle renamed to .safetensors is not read either.
    (d / "fake.safetensors").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_weights(Tied(), d / "fake.safetensors")


def test_missing_dir_and_non_model_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model_dir(tmp_path / "nope", ShapesWorldConfig, build)
    with pytest.raises(CheckpointError, match="not a lavit model directory"):
        load_model_dir(tmp_path, ShapesWorldConfig, build)


def test_future_format_version_is_refused(tmp_path):
    _, _, d = _saved(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    meta["format_version"] = 99
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version 99"):
        read_config(d, ShapesWorldConfig)


def test_state_tree_round_trip_keeps_structure_and_types(tmp_path):
    model = Tied()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.head(model.emb(torch.tensor([1, 2]))).sum().backward()
    opt.step()
    tree = {
        "optimizer": opt.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": (3, (1, 2, 3), None)},
        "step": 7,
        "loss": float("nan"),
        "name": "run",
    }
    save_tree(tmp_path / "state.safetensors", tree)
    back = load_tree(tmp_path / "state.safetensors")
    assert back["step"] == 7 and back["name"] == "run" and back["loss"] != back["loss"]
    assert back["rng"]["python"] == (3, (1, 2, 3), None)
    assert torch.equal(back["rng"]["torch"], tree["rng"]["torch"])
    opt2 = torch.optim.AdamW(Tied().parameters(), lr=1e-3)
    opt2.load_state_dict(back["optimizer"])  # integer param ids and nested groups survive
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v)


def test_state_tree_rejects_unstorable_values(tmp_path):
    with pytest.raises(TypeError, match="cannot store a set"):
        save_tree(tmp_path / "s.safetensors", {"x": {1, 2}})
    assert not (tmp_path / "s.safetensors").exists()
    with pytest.raises(CheckpointError, match="not a lavit state file"):
        from safetensors.torch import save_file

        save_file({"a": torch.zeros(1)}, str(tmp_path / "plain.safetensors"))
        load_tree(tmp_path / "plain.safetensors")


def test_state_mismatch_names_tensors_in_one_only_or_of_another_shape():
    a = {"w": torch.zeros(2, 3), "b": torch.zeros(3), "only_a": torch.zeros(1)}
    b = {"w": torch.zeros(3, 2), "b": torch.ones(3), "only_b": torch.zeros(1)}
    assert state_mismatch(a, b) == ["only_a", "only_b", "w"]
    assert state_mismatch(a, a) == []
    # Parts b grew under a prefix do not count; anything else still does.
    grown = {**a, "reader.w": torch.zeros(2), "reader.b": torch.zeros(1)}
    assert state_mismatch(a, grown, grown=("reader.",)) == []
    assert state_mismatch(a, grown) == ["reader.b", "reader.w"]
    assert state_mismatch(grown, a, grown=("reader.",)) == ["reader.b", "reader.w"]


@pytest.mark.timeout(60)  # a FIFO opened by mistake would block forever
def test_files_are_checked_before_they_are_opened_and_stay_inside_the_root(tmp_path):
    import os

    _, _, d = _saved(tmp_path)
    meta = (d / "meta.json").read_text()
    for text, message in [
        ("{", r"meta.json is not valid JSON"),
        ("[]", r"meta.json must hold a JSON object"),
        ('{"format_version": 1, "schema": "ShapesWorldConfig"}', r"meta.json has no 'components'"),
        ('{"format_version": 1, "schema": "ShapesWorldConfig", "components": ["../net"]}', "component names"),
    ]:
        (d / "meta.json").write_text(text)
        with pytest.raises(CheckpointError, match=message):
            load_model_dir(d, ShapesWorldConfig, build)
    (d / "meta.json").unlink()
    os.mkfifo(d / "meta.json")
    with pytest.raises(CheckpointError, match=r"meta.json is not a regular file \(a FIFO\)"):
        read_config(d, ShapesWorldConfig)
    (d / "meta.json").unlink()
    (d / "meta.json").write_text(meta)
    # Weights: a directory, then a symlink out of the model folder (fine with the folder above as root).
    weights = d / "net.safetensors"
    weights.rename(tmp_path / "net.safetensors")
    weights.mkdir()
    with pytest.raises(CheckpointError, match="net.safetensors is a directory, not a file"):
        load_model_dir(d, ShapesWorldConfig, build)
    weights.rmdir()
    weights.symlink_to(tmp_path / "net.safetensors")
    with pytest.raises(CheckpointError, match="net.safetensors resolves to .* outside the model folder"):
        load_model_dir(d, ShapesWorldConfig, build)
    load_model_dir(d, ShapesWorldConfig, build, root=tmp_path)


def test_a_config_the_model_cannot_be_built_from_names_the_file(tmp_path):
    _, _, d = _saved(tmp_path)

    def fails(cfg):
        raise RuntimeError("negative dimension -1\nmore detail")

    with pytest.raises(CheckpointError, match=r"config.yaml: the model does not build .*negative dimension -1\)") as e:
        load_model_dir(d, ShapesWorldConfig, fails)
    assert "\n" not in str(e.value)
