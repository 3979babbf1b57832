"""The `lavit` command and the package's import-time guarantees."""

import json
import subprocess
import sys

import pytest

from lavit.cli import main


def test_info_json(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packages"]["torch"] and "cuda_available" in info["device"]
    assert "xformers_available" in info and "java" in info


def test_shapes_writes_grid_and_json(tmp_path, capsys):
    assert main(["shapes", "--out", str(tmp_path), "--num", "6", "--split", "test", "resolution=32"]) == 0
    from PIL import Image

    grid = Image.open(tmp_path / "shapes.png")
    assert grid.size[0] == 4 * 128
    records = json.loads((tmp_path / "shapes.json").read_text())
    assert len(records) == 6 and records[0]["image_id"] == "shapes-test-0"
    assert records[0]["captions"] and records[0]["qa"] and records[0]["scene"]["shapes"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["shapes", "resolutoin=32"], "unknown key 'resolutoin'"),
        (["shapes", "--config", "nope.yaml"], "config file not found: nope.yaml"),
        (["shapes", "--num", "0"], "--num must be 1 to 256"),
        (["shapes", "--start", "999", "val_size=1000", "--num", "5"], "out of range"),
    ],
)
def test_user_errors_are_one_line_exit_2(argv, message, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o" / "shapes.png").exists()


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "lavit.cli", "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "lavit 0.1.0" in out.stdout


def test_import_lavit_is_light():
    code = (
        "import sys, lavit, lavit.config, lavit.checkpoint, lavit.data.shapes.dataset\n"
        "heavy = [m for m in ('pycocoevalcap', 'torchmetrics', 'matplotlib', 'nbclient', 'pytest', 'xformers') if m in sys.modules]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_shadowing_tokenizer_package_fails_loudly(tmp_path):
    fake = tmp_path / "tokenizer"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    code = "import lavit"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert out.returncode != 0
    assert "Another package named 'tokenizer' is shadowing it" in out.stderr
