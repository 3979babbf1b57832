"""`lavit convert var` and `lavit generate-class`: VAR's published checkpoints into a model
folder, then ImageNet-class images from it (tests/parity/ holds small VAR checkpoints in the
published layout; the converters' parity with VAR's code is tested beside them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_var_transformer_convert import SMALL_VQ, small_var

import lavit.convert.var as convert_module
from detokenizer.var.vqvae import MultiScaleVQVAE
from lavit.cli import main


@pytest.fixture
def converted(tmp_path, monkeypatch) -> Path:
    """The small VAR transformer fixture (published layout, as a .pth) converted with a VQ-VAE
    of its token sizes; VAR's VQ-VAE load is stood in for by a random one of those sizes (the
    VQ-VAE converter is proven by tests/test_var_convert.py)."""
    ref, *_ = small_var("plain")
    torch.save(ref, tmp_path / "var_small.pth")
    torch.save({"w": torch.zeros(1)}, tmp_path / "vae.pth")  # hashed into convert.json only
    torch.manual_seed(0)
    vq = MultiScaleVQVAE(SMALL_VQ).eval()
    monkeypatch.setattr(convert_module, "load_var_vqvae", lambda path: vq)
    out = tmp_path / "var_model"
    argv = ["convert", "var", "--vqvae", str(tmp_path / "vae.pth"), "--transformer", str(tmp_path / "var_small.pth")]
    assert main([*argv, str(out)]) == 0
    return out


def test_convert_records_sources_and_generate_class_writes_seeded_images(converted, tmp_path, capsys):
    record = json.loads((converted / "convert.json").read_text())
    assert [s["file"] for s in record["sources"]] == ["vae.pth", "var_small.pth"]
    assert all(len(s["sha256"]) == 64 for s in record["sources"])
    out = tmp_path / "samples"
    assert (
        main(["generate-class", "--model", str(converted), "--class", "3", "7", "--num-images", "2", "--out", str(out)])
        == 0
    )
    manifest = json.loads((out / "classes.json").read_text())
    assert [(r["class"], r["seed"], r["file"]) for r in manifest] == [
        (3, 0, "0003_0.png"),
        (3, 1, "0003_1.png"),
        (7, 2, "0007_0.png"),
        (7, 3, "0007_1.png"),
    ]
    images = [Image.open(out / r["file"]) for r in manifest]
    assert all(im.size == (16, 16) for im in images)
    # Image j depends on its class and seed alone, not on what shares its batch.
    alone = tmp_path / "alone"
    argv = ["generate-class", "--model", str(converted), "--class", "3", "7", "--num-images", "2", "--batch-size", "1"]
    assert main([*argv, "--out", str(alone)]) == 0
    assert all((out / r["file"]).read_bytes() == (alone / r["file"]).read_bytes() for r in manifest)


def test_generate_class_refuses_a_class_out_of_range_and_a_codes_decoder(converted, tmp_path, capsys):
    assert main(["generate-class", "--model", str(converted), "--class", "10", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "class 10 is not one of this model's 10 classes (0..9)" in err[0]
    assert not (tmp_path / "o").exists()  # nothing written
    shipped = Path(__file__).resolve().parent.parent / "checkpoints" / "lavit-shapes-tiny" / "var"
    assert main(["generate-class", "--model", str(shipped), "--class", "1", "--out", str(tmp_path / "o")]) == 2
    assert "a VAR decoder of LaVIT codes, not of classes" in capsys.readouterr().err


def test_convert_var_refuses_a_pickle_with_code_and_a_transformer_given_as_the_vqvae(tmp_path, capsys):
    class Boom:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "ran",))

    torch.save({"w": Boom()}, tmp_path / "evil.pth")
    assert main(["convert", "var", "--vqvae", str(tmp_path / "evil.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.pth" in err[0]
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
    ref, *_ = small_var("plain")
    torch.save(ref, tmp_path / "var_small.pth")
    assert main(["convert", "var", "--vqvae", str(tmp_path / "var_small.pth"), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "var_small.pth" in err[0] and not (tmp_path / "out").exists()
    assert main(["convert", "var", "--vqvae", str(tmp_path / "missing.pth"), str(tmp_path / "out")]) == 2
    assert "--vqvae" in capsys.readouterr().err


def test_generate_class_refuses_bf16_without_a_gpu(converted, tmp_path, capsys):
    argv = ["generate-class", "--model", str(converted), "--class", "3", "--bf16", "--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert "--bf16 runs the model in bfloat16 on a GPU: add --device cuda" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
