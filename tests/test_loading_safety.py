"""Loading a model folder never runs code, reads only what is inside the folder asked for, and
answers every damaged file with one line naming it (exit code 2 from the CLI).

The catalogue copies stages of the shipped model into a temporary pipeline folder, damages the
copy, and runs ``lavit caption IMG --model DIR`` on it. The other tests show that loading code
would have run without the guards (a tokenizer's or a config's ``auto_map``, a pickle), that the
paths a saved config names are never read, and which symlinks are followed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import assert_user_error, write_image
from safetensors.torch import load_file, save_file

from lavit.checkpoint import CheckpointError, load_weights
from lavit.cli import main
from lavit.config import ConfigError, LMConfig
from lavit.lm_io import load_lm, save_lm
from lavit.pipeline import LaVITPipeline
from lavit.text_tokenizer import load_text_tokenizer

SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "lavit-shapes-tiny"
MARKER = "code_ran.txt"


def copy_pipeline(dest: Path, stages: tuple[str, ...] = ("tokenizer", "lm")) -> Path:
    """pipeline.yaml and ``stages`` of the shipped model, copied (never linked) into ``dest``."""
    dest.mkdir(parents=True)
    shutil.copy(SHIPPED / "pipeline.yaml", dest / "pipeline.yaml")
    for stage in stages:
        shutil.copytree(SHIPPED / stage, dest / stage)
    return dest


def evil_code(folder: Path, marker: Path) -> None:
    """Python files and a pickle in ``folder`` that create ``marker`` if anything runs them."""
    folder.mkdir(parents=True, exist_ok=True)
    body = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    (folder / "evil.py").write_text(
        body + "from transformers import PreTrainedTokenizerFast, LlamaForCausalLM\n"
        "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
        "class EvilLM(LlamaForCausalLM):\n    pass\n"
    )

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for name in ("pytorch_model.bin", "diffusion_pytorch_model.bin"):
        (folder / name).write_bytes(pickle.dumps(Payload()))


def edit_json(path: Path, change: Callable[[dict], object]) -> None:
    fields = json.loads(path.read_text())
    change(fields)
    path.write_text(json.dumps(fields))


def edit_tensors(path: Path, change: Callable[[dict[str, torch.Tensor]], object]) -> None:
    tensors = load_file(str(path))
    change(tensors)
    path.unlink()  # a new file, never one written through
    save_file(tensors, str(path))


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


@pytest.fixture
def image(tmp_path):
    return str(write_image(tmp_path / "img.png", (200, 40, 40)))


# --------------------------------------------------------------------------------------------
# 1. No loading path runs code
# --------------------------------------------------------------------------------------------


def _evil_tokenizer(text_tokenizer: Path, marker: Path) -> None:
    """A tokenizer folder whose config asks transformers to import its own evil.py."""
    evil_code(text_tokenizer, marker)
    for name in ("pytorch_model.bin", "diffusion_pytorch_model.bin"):
        (text_tokenizer / name).unlink()

    def custom(f):
        f["auto_map"] = {"AutoTokenizer": [None, "evil.EvilTokenizer"]}
        f["tokenizer_class"] = "EvilTokenizer"

    edit_json(text_tokenizer / "tokenizer_config.json", custom)


def test_a_tokenizer_with_custom_code_is_refused_even_when_stdin_says_yes(tmp_path, image, monkeypatch, capsys):
    marker = tmp_path / MARKER
    model = copy_pipeline(tmp_path / "model")
    _evil_tokenizer(model / "lm" / "text_tokenizer", marker)
    before = snapshot(model)
    # transformers, left to decide, asks "run the custom code? [y/N]" on stdin: answer yes.
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
    rc = main(["caption", image, "--model", str(model)])
    line = assert_user_error(rc, capsys.readouterr().err, "tokenizer_config.json", "auto_map")
    assert "never runs" in line
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
    with pytest.raises(CheckpointError, match="auto_map"):
        LaVITPipeline.from_pretrained(model)
    assert not marker.exists() and snapshot(model) == before


def test_transformers_is_told_not_to_trust_remote_code(tmp_path, monkeypatch):
    """Without lavit's own auto_map check, transformers still refuses (trust_remote_code=False):
    the check is a clearer message, not the only guard."""
    import lavit.text_tokenizer

    marker = tmp_path / MARKER
    folder = tmp_path / "tok"
    shutil.copytree(SHIPPED / "lm" / "text_tokenizer", folder)
    _evil_tokenizer(folder, marker)
    monkeypatch.setattr(lavit.text_tokenizer, "CODE_CONFIGS", ())
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
    with pytest.raises(CheckpointError, match="custom code") as err:
        load_text_tokenizer(folder)
    assert "\n" not in str(err.value) and not marker.exists()


def test_an_hf_config_naming_custom_model_code_is_not_run(tmp_path, monkeypatch):
    """A saved LM's hf_config.json with auto_map is refused by name; a config with auto_map
    reaching UnifiedLM (the from_config path) builds transformers' own class, without a prompt."""
    from transformers import AutoConfig

    from lavit.model import UnifiedLM

    marker = tmp_path / MARKER
    code = tmp_path / "code"
    evil_code(code, marker)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\ny\ny\n"))
    lm_dir = tmp_path / "lm"
    shutil.copytree(SHIPPED / "lm", lm_dir)

    def custom(f):
        f["auto_map"] = {"AutoModelForCausalLM": "evil.EvilLM"}
        f["_name_or_path"] = str(code)

    edit_json(lm_dir / "hf_config.json", custom)
    with pytest.raises(CheckpointError, match=r"hf_config.json has auto_map"):
        load_lm(lm_dir)

    cfg = LMConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, text_vocab_size=64, num_codes=8)
    hf = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64)
    hf.auto_map = {"AutoModelForCausalLM": "evil.EvilLM"}
    hf._name_or_path = str(code)
    # A config class built into transformers has its own model class: trust_remote_code=False
    # keeps it, whatever auto_map names.
    assert type(UnifiedLM(cfg, hf_config=hf).hf).__name__ == "LlamaForCausalLM"
    assert not marker.exists()


def _tiny_hf_folder(folder: Path, **arch) -> None:
    """A 1-layer Llama saved with save_pretrained (safetensors) in ``folder``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    fields.update(arch)
    hf = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", vocab_size=300, **fields))
    hf.save_pretrained(folder)


def test_pretrained_path_loads_safetensors_only_and_no_custom_code(tmp_path):
    from lavit.model import UnifiedLM

    marker = tmp_path / MARKER
    folder = tmp_path / "hf"
    _tiny_hf_folder(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    evil_code(folder, marker)  # pytorch_model.bin: a pickle that runs code when unpickled
    cfg = LMConfig(pretrained_path=str(folder), num_codes=8)
    with pytest.raises(ConfigError, match=r"no .safetensors weights.*pytorch_model.bin are refused"):
        UnifiedLM(cfg)
    _tiny_hf_folder(folder)
    edit_json(folder / "config.json", lambda f: f.update(auto_map={"AutoModelForCausalLM": "evil.EvilLM"}))
    with pytest.raises(ConfigError, match="auto_map"):
        UnifiedLM(cfg)
    assert not marker.exists()


def test_a_vae_folder_with_pickle_weights_only_is_refused(tmp_path):
    from detokenizer.diffusion.config import VAEConfig
    from detokenizer.diffusion.model import load_vae
    from detokenizer.diffusion.vae import build_vae, load_vae_weights, save_vae

    marker = tmp_path / MARKER
    cfg = VAEConfig(block_out_channels=[8, 8], norm_num_groups=4, latent_channels=4, resolution=16)
    folder = save_vae(build_vae(cfg), tmp_path / "vae")
    assert load_vae(str(folder)).config.latent_channels == 4  # safetensors: loads
    for f in folder.glob("*.safetensors"):
        f.unlink()
    evil_code(folder, marker)
    with pytest.raises(ConfigError, match="vae_path=.*safetensors"):
        load_vae(str(folder))
    with pytest.raises(ConfigError, match="init_from=.*AutoencoderKL folder with safetensors weights"):
        load_vae_weights(build_vae(cfg), folder)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# 2. Paths a saved config names are never read; symlinks stay inside the folder asked for
# --------------------------------------------------------------------------------------------


def test_paths_in_saved_configs_are_not_read(tmp_path, monkeypatch):
    """lm.pretrained_path and the diffusion model's vae_path are provenance: pointing them at a
    folder of code and pickles changes nothing (the folders carry hf_config.json and
    vae_config.json). Run from an empty directory, so a relative path cannot resolve either."""
    marker = tmp_path / MARKER
    evil = tmp_path / "evil"
    evil_code(evil, marker)
    (evil / "config.json").write_text(json.dumps({"model_type": "llama", "auto_map": {"AutoModel": "evil.EvilLM"}}))
    model = copy_pipeline(tmp_path / "model", ("tokenizer", "lm", "diffusion"))
    edit_text(model / "lm" / "config.yaml", "pretrained_path: runs/lm_prev_text", f"pretrained_path: {evil}")
    edit_text(model / "diffusion" / "config.yaml", "vae_path: runs/vae_shipped", f"vae_path: {evil}")
    monkeypatch.chdir(tmp_path)
    pipe = LaVITPipeline.from_pretrained(model)
    assert pipe.lm.cfg.pretrained_path == str(evil) and "diffusion" in pipe.decoders
    assert not marker.exists()


def test_a_saved_lm_with_pretrained_path_but_no_hf_config_is_an_error(tmp_path):
    lm_dir = tmp_path / "lm"
    shutil.copytree(SHIPPED / "lm", lm_dir)
    (lm_dir / "hf_config.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"hf_config.json is missing.*pretrained_path='runs/lm_prev_text'.*re-save"
    ):
        load_lm(lm_dir)


def test_save_lm_writes_the_architecture_it_saves(tmp_path):
    """An LM started from a pretrained folder with config fields that do not describe it saves a
    config.yaml that does (so loading's check that config.yaml agrees with hf_config.json holds)."""
    from lavit.model import UnifiedLM
    from lavit.text_tokenizer import train_bpe

    folder = tmp_path / "hf"
    _tiny_hf_folder(folder, num_key_value_heads=1, tie_word_embeddings=False)
    lm = UnifiedLM(LMConfig(pretrained_path=str(folder), num_codes=8))  # defaults: 256 wide, 4 layers
    tok = train_bpe(["a red circle", "a blue square"] * 5, 300)
    save_lm(lm, tok, tmp_path / "saved")
    loaded, _ = load_lm(tmp_path / "saved")
    c = loaded.cfg
    assert (c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads, c.intermediate_size) == (32, 1, 2, 1, 64)
    assert c.tie_embeddings is False and c.pretrained_path == str(folder)


def test_symlinks_are_followed_inside_the_folder_and_refused_out_of_it(tmp_path, image, capsys):
    """The root is the folder asked to load: for from_pretrained the pipeline folder, for
    from_parts each stage folder. A link that stays inside it is followed; one out is refused."""
    model = copy_pipeline(tmp_path / "model")
    # A stage kept elsewhere inside the pipeline folder, linked into place: loads.
    (model / "store").mkdir()
    (model / "lm").rename(model / "store" / "lm")
    (model / "lm").symlink_to(Path("store") / "lm")
    (model / "store" / "lm" / "lm.safetensors").rename(model / "store" / "lm_weights.safetensors")
    (model / "store" / "lm" / "lm.safetensors").symlink_to(Path("..") / "lm_weights.safetensors")
    pipe = LaVITPipeline.from_pretrained(model)
    assert pipe.lm is not None
    # The same lm/ stage loaded on its own: its weights link out of the stage folder.
    with pytest.raises(CheckpointError, match=r"lm.safetensors resolves to .*outside the model folder"):
        LaVITPipeline.from_parts(model / "tokenizer", model / "lm")
    # A stage folder given as a symlink is itself the root: loads.
    (tmp_path / "tok_link").symlink_to(model / "tokenizer")
    LaVITPipeline.from_parts(tmp_path / "tok_link")
    # A stage linked out of the pipeline folder: refused, though it is a good model folder.
    outside = copy_pipeline(tmp_path / "elsewhere", ("lm",))
    (model / "lm").unlink()
    (model / "lm").symlink_to(outside / "lm")
    rc = main(["caption", image, "--model", str(model)])
    assert_user_error(rc, capsys.readouterr().err, str(model / "lm"), "outside the model folder", "copy the target")
    LaVITPipeline.from_parts(model / "tokenizer", outside / "lm")  # on its own it is fine


# --------------------------------------------------------------------------------------------
# 3 and 4. The catalogue: each damaged folder fails with exit code 2 and one line naming it
# --------------------------------------------------------------------------------------------

LM = ("tokenizer", "lm")
DIFFUSION = ("tokenizer", "diffusion")  # the CLI loads every stage before it looks for the LM


def _int_for_float(t):
    t["feature_proj.bias"] = t["feature_proj.bias"].long()


def _float_for_bool(t):
    t["quantizer._codebook.initted"] = t["quantizer._codebook.initted"].float()


def _nan(t):
    t["hf.model.norm.weight"][3] = float("nan")


def _inf(t):
    t["hf.model.layers.1.mlp.up_proj.weight"][0, 0] = float("inf")


def _symlink_out(d: Path, rel: str) -> None:
    target = d.parent / "outside" / Path(rel).name
    target.parent.mkdir(exist_ok=True)
    (d / rel).rename(target)
    (d / rel).symlink_to(target)


def _pickle_instead(d: Path) -> None:
    (d / "lm" / "lm.safetensors").unlink()
    (d / "lm" / "pytorch_model.bin").write_bytes(pickle.dumps({"w": [1, 2]}))


def _pickle_renamed(d: Path) -> None:
    path = d / "lm" / "lm.safetensors"
    path.unlink()
    torch.save({"w": torch.zeros(2)}, path)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data[: len(data) // 2])


def _dir_for_file(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _broken_symlink(path: Path) -> None:
    path.unlink()
    path.symlink_to(path.parent / "gone.json")


# (id, stages copied, damage(d), names the one error line must contain; {d} = the pipeline folder)
CATALOGUE: list[tuple[str, tuple[str, ...], Callable[[Path], object], tuple[str, ...]]] = [
    # pipeline.yaml and the stages
    ("pipeline-yaml-unparsable", LM, lambda d: (d / "pipeline.yaml").write_text("a: [\n"), ("{d}/pipeline.yaml",)),
    (
        "pipeline-yaml-unknown-key",
        LM,
        lambda d: (d / "pipeline.yaml").write_text((d / "pipeline.yaml").read_text() + "beam_width: 3\n"),
        ("{d}/pipeline.yaml", "beam_width"),
    ),
    (
        "pipeline-yaml-interpolation",
        LM,
        lambda d: (d / "pipeline.yaml").write_text("caption_prompt: ${oc.env:HOME}\n"),
        ("{d}/pipeline.yaml", "caption_prompt", "interpolation"),
    ),
    ("pipeline-yaml-fifo", LM, lambda d: replace_with_fifo(d / "pipeline.yaml"), ("{d}/pipeline.yaml", "FIFO")),
    ("pipeline-yaml-missing", LM, lambda d: (d / "pipeline.yaml").unlink(), ("{d}", "has no pipeline.yaml")),
    ("no-tokenizer-stage", ("lm",), lambda d: None, ("{d}/tokenizer", "tokenizer/ stage")),
    (
        "tokenizer-stage-is-a-file",
        ("lm",),
        lambda d: (d / "tokenizer").write_text("x"),
        ("{d}/tokenizer", "not a directory"),
    ),
    # meta.json
    (
        "meta-not-json",
        LM,
        lambda d: (d / "tokenizer" / "meta.json").write_text("{format"),
        ("{d}/tokenizer/meta.json", "not valid JSON"),
    ),
    ("meta-a-list", LM, lambda d: (d / "lm" / "meta.json").write_text("[1]"), ("{d}/lm/meta.json", "JSON object")),
    (
        "meta-no-components",
        LM,
        lambda d: edit_json(d / "lm" / "meta.json", lambda f: f.pop("components")),
        ("{d}/lm/meta.json", "components"),
    ),
    (
        "meta-version-a-string",
        LM,
        lambda d: edit_json(d / "lm" / "meta.json", lambda f: f.update(format_version="1")),
        ("{d}/lm/meta.json", "format_version"),
    ),
    (
        "meta-wrong-schema",
        LM,
        lambda d: edit_json(d / "lm" / "meta.json", lambda f: f.update(schema="TokenizerConfig")),
        ("{d}/lm", "TokenizerConfig", "schema"),
    ),
    ("meta-fifo", LM, lambda d: replace_with_fifo(d / "lm" / "meta.json"), ("{d}/lm/meta.json", "FIFO")),
    (
        "meta-broken-symlink",
        LM,
        lambda d: _broken_symlink(d / "lm" / "meta.json"),
        ("{d}/lm/meta.json", "broken symlink"),
    ),
    # config.yaml
    (
        "config-unparsable",
        LM,
        lambda d: (d / "lm" / "config.yaml").write_text("hidden_size: [\n"),
        ("{d}/lm/config.yaml",),
    ),
    (
        "config-unknown-key",
        LM,
        lambda d: (d / "lm" / "config.yaml").write_text((d / "lm" / "config.yaml").read_text() + "colour: red\n"),
        ("{d}/lm/config.yaml", "colour"),
    ),
    (
        "config-interpolation",
        LM,
        lambda d: edit_text(d / "lm" / "config.yaml", "num_codes: 4096", "num_codes: ${oc.env:HOME}"),
        ("{d}/lm/config.yaml", "num_codes", "interpolation"),
    ),
    (
        "config-zero-heads",
        LM,
        lambda d: edit_text(d / "lm" / "config.yaml", "num_heads: 4", "num_heads: 0"),
        ("{d}/lm/config.yaml",),
    ),
    (
        "config-binary",
        LM,
        lambda d: (d / "tokenizer" / "config.yaml").write_bytes(b"\xff\xfe\x00junk"),
        ("{d}/tokenizer/config.yaml", "UTF-8"),
    ),
    # 3: config.yaml disagreeing with the architecture the weights were saved with
    (
        "config-width-edited",
        LM,
        lambda d: edit_text(d / "lm" / "config.yaml", "hidden_size: 256", "hidden_size: 128"),
        ("{d}/lm/config.yaml", "hidden_size=128", "hf_config.json", "256"),
    ),
    (
        "config-layers-edited",
        LM,
        lambda d: edit_text(d / "lm" / "config.yaml", "num_layers: 4", "num_layers: 2"),
        ("{d}/lm/config.yaml", "num_layers", "hf_config.json"),
    ),
    (
        "config-context-edited",
        LM,
        lambda d: edit_text(d / "lm" / "config.yaml", "max_position_embeddings: 256", "max_position_embeddings: 1024"),
        ("{d}/lm/config.yaml", "max_position_embeddings"),
    ),
    (
        "config-untied",
        LM,
        lambda d: edit_text(d / "lm" / "config.yaml", "tie_embeddings: true", "tie_embeddings: false"),
        ("{d}/lm/config.yaml", "tie_embeddings"),
    ),
    (
        "tokenizer-config-names-weights",
        LM,
        lambda d: edit_text(
            d / "tokenizer" / "config.yaml", "weights: null", f"weights: {d.parent / 'vit.safetensors'}"
        ),
        ("{d}/tokenizer/config.yaml", "encoder.weights", "set encoder.weights: null"),
    ),
    # hf_config.json
    (
        "hf-config-missing",
        LM,
        lambda d: (d / "lm" / "hf_config.json").unlink(),
        ("{d}/lm/hf_config.json", "pretrained_path"),
    ),
    (
        "hf-config-not-json",
        LM,
        lambda d: (d / "lm" / "hf_config.json").write_text("{"),
        ("{d}/lm/hf_config.json", "JSON"),
    ),
    (
        "hf-config-unknown-model-type",
        LM,
        lambda d: edit_json(d / "lm" / "hf_config.json", lambda f: f.update(model_type="no-such-model")),
        ("{d}/lm/hf_config.json", "not a transformers config"),
    ),
    (
        "hf-config-auto-map",
        LM,
        lambda d: edit_json(d / "lm" / "hf_config.json", lambda f: f.update(auto_map={"AutoModelForCausalLM": "x.Y"})),
        ("{d}/lm/hf_config.json", "auto_map"),
    ),
    # vocab.json
    (
        "vocab-not-json",
        LM,
        lambda d: (d / "lm" / "vocab.json").write_text("text_size=512"),
        ("{d}/lm/vocab.json", "JSON"),
    ),
    (
        "vocab-missing-key",
        LM,
        lambda d: edit_json(d / "lm" / "vocab.json", lambda f: f.pop("text_size")),
        ("{d}/lm/vocab.json", "text_size"),
    ),
    (
        "vocab-wrong-type",
        LM,
        lambda d: edit_json(d / "lm" / "vocab.json", lambda f: f.update(num_codes="many")),
        ("{d}/lm/vocab.json", "num_codes", "integer"),
    ),
    (
        "vocab-disagrees",
        LM,
        lambda d: edit_json(d / "lm" / "vocab.json", lambda f: f.update(num_codes=512)),
        ("{d}/lm/vocab.json", "num_codes=512"),
    ),
    # weights files
    ("weights-missing", LM, lambda d: (d / "lm" / "lm.safetensors").unlink(), ("{d}/lm/lm.safetensors", "not found")),
    (
        "weights-a-directory",
        LM,
        lambda d: _dir_for_file(d / "lm" / "lm.safetensors"),
        ("{d}/lm/lm.safetensors", "directory"),
    ),
    (
        "weights-fifo",
        LM,
        lambda d: replace_with_fifo(d / "tokenizer" / "tokenizer.safetensors"),
        ("tokenizer.safetensors", "FIFO"),
    ),
    (
        "weights-truncated",
        LM,
        lambda d: _truncate(d / "lm" / "lm.safetensors"),
        ("{d}/lm/lm.safetensors", "not a readable safetensors"),
    ),
    ("weights-pickle-instead", LM, _pickle_instead, ("{d}/lm/lm.safetensors", "pytorch_model.bin", "pickle")),
    ("weights-pickle-renamed", LM, _pickle_renamed, ("{d}/lm/lm.safetensors", "pickle")),
    (
        "weights-nan",
        LM,
        lambda d: edit_tensors(d / "lm" / "lm.safetensors", _nan),
        ("{d}/lm/lm.safetensors", "hf.model.norm.weight", "NaN"),
    ),
    (
        "weights-inf",
        LM,
        lambda d: edit_tensors(d / "lm" / "lm.safetensors", _inf),
        ("{d}/lm/lm.safetensors", "hf.model.layers.1.mlp.up_proj.weight", "inf"),
    ),
    (
        "weights-int-for-float",
        LM,
        lambda d: edit_tensors(d / "lm" / "lm.safetensors", _int_for_float),
        ("{d}/lm/lm.safetensors", "feature_proj.bias", "torch.int64", "torch.float32"),
    ),
    (
        "weights-float-for-bool",
        LM,
        lambda d: edit_tensors(d / "tokenizer" / "tokenizer.safetensors", _float_for_bool),
        ("{d}/tokenizer/tokenizer.safetensors", "quantizer._codebook.initted", "torch.bool"),
    ),
    (
        "weights-tensor-missing",
        LM,
        lambda d: edit_tensors(d / "lm" / "lm.safetensors", lambda t: t.pop("hf.model.norm.weight")),
        ("{d}/lm/lm.safetensors", "missing ['hf.model.norm.weight']"),
    ),
    (
        "weights-tensor-misshaped",
        LM,
        lambda d: edit_tensors(d / "lm" / "lm.safetensors", lambda t: t.update({"feature_proj.bias": torch.zeros(3)})),
        ("{d}/lm/lm.safetensors", "feature_proj.bias: file (3,) vs model (256,)"),
    ),
    # the text tokenizer
    (
        "text-tokenizer-missing",
        LM,
        lambda d: shutil.rmtree(d / "lm" / "text_tokenizer"),
        ("{d}/lm/text_tokenizer", "not found"),
    ),
    (
        "text-tokenizer-auto-map",
        LM,
        lambda d: edit_json(
            d / "lm" / "text_tokenizer" / "tokenizer_config.json",
            lambda f: f.update(auto_map={"AutoTokenizer": ["x.Y", None]}),
        ),
        ("{d}/lm/text_tokenizer/tokenizer_config.json", "auto_map"),
    ),
    (
        "tokenizer-json-broken",
        LM,
        lambda d: (d / "lm" / "text_tokenizer" / "tokenizer.json").write_text('{"model": 1}'),
        ("{d}/lm/text_tokenizer", "not a loadable tokenizer"),
    ),
    (
        "tokenizer-json-fifo",
        LM,
        lambda d: replace_with_fifo(d / "lm" / "text_tokenizer" / "tokenizer.json"),
        ("{d}/lm/text_tokenizer/tokenizer.json", "FIFO"),
    ),
    # 2: links out of the pipeline folder
    ("stage-links-out", LM, lambda d: _symlink_out(d, "tokenizer"), ("{d}/tokenizer", "outside the model folder")),
    (
        "weights-link-out",
        LM,
        lambda d: _symlink_out(d, "lm/lm.safetensors"),
        ("{d}/lm/lm.safetensors", "outside the model folder"),
    ),
    (
        "vocab-links-out",
        LM,
        lambda d: _symlink_out(d, "lm/vocab.json"),
        ("{d}/lm/vocab.json", "outside the model folder"),
    ),
    # the diffusion stage
    (
        "vae-config-missing",
        DIFFUSION,
        lambda d: (d / "diffusion" / "vae_config.json").unlink(),
        ("{d}/diffusion", "vae_config.json"),
    ),
    (
        "vae-config-not-json",
        DIFFUSION,
        lambda d: (d / "diffusion" / "vae_config.json").write_text("]"),
        ("{d}/diffusion/vae_config.json", "JSON"),
    ),
    (
        "vae-config-bad-value",
        DIFFUSION,
        lambda d: edit_json(d / "diffusion" / "vae_config.json", lambda f: f.update(norm_num_groups=7)),
        ("{d}/diffusion/vae_config.json", "AutoencoderKL"),
    ),
    ("diffusion-stage-is-a-file", LM, lambda d: (d / "diffusion").write_text(""), ("{d}/diffusion", "not a directory")),
]


@pytest.mark.timeout(60)  # a FIFO opened by mistake would block forever
@pytest.mark.parametrize(("stages", "damage", "names"), [c[1:] for c in CATALOGUE], ids=[c[0] for c in CATALOGUE])
def test_a_damaged_model_folder_is_one_line_and_exit_code_2(stages, damage, names, tmp_path, image, capsys):
    model = copy_pipeline(tmp_path / "model", stages)
    damage(model)
    before = snapshot(tmp_path)
    rc = main(["caption", image, "--model", str(model)])
    err = capsys.readouterr().err
    assert_user_error(rc, err, *(n.replace("{d}", str(model)) for n in names))
    assert len(err.strip().splitlines()) == 1, err
    assert snapshot(tmp_path) == before  # nothing written
    shutil.rmtree(model)  # keep the 40+ copies from piling up in the kept tmp folders


def test_the_catalogue_is_large_and_its_ids_distinct():
    ids = [c[0] for c in CATALOGUE]
    assert len(ids) == len(set(ids)) >= 20


def test_the_undamaged_copy_loads(tmp_path, image, capsys):
    """The catalogue's failures come from the damage: the same copy, undamaged, captions (the
    diffusion stage's undamaged copy loads in test_paths_in_saved_configs_are_not_read)."""
    model = copy_pipeline(tmp_path / "model", LM)
    assert main(["caption", image, "--model", str(model), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["caption"]


def test_load_weights_names_non_finite_and_wrongly_typed_tensors(tmp_path):
    net = torch.nn.Linear(3, 2)
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.ones(2, 3), "bias": torch.tensor([0.0, float("-inf")])}, str(path))
    with pytest.raises(CheckpointError, match=r"tensor bias holds NaN or inf \(1 of 2 values\)"):
        load_weights(net, path)
    save_file({"weight": torch.ones(2, 3, dtype=torch.int32), "bias": torch.zeros(2)}, str(path))
    with pytest.raises(CheckpointError, match=r"weight: file torch.int32 vs model torch.float32"):
        load_weights(net, path)
    save_file(
        {"weight": torch.ones(2, 3, dtype=torch.bfloat16), "bias": torch.zeros(2, dtype=torch.float16)}, str(path)
    )
    load_weights(net, path)  # another float width is cast, as cast_weights ships them
    assert net.weight.dtype == torch.float32 and bool((net.weight == 1).all())
