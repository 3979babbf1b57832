"""notebooks/: every walkthrough runs top to bottom on a pipeline directory, is stored without
outputs, and defines nothing (house style: notebooks use only the public API).

The model is the directory in LAVIT_MODEL, by default the shipped checkpoints/lavit-shapes-tiny;
the test skips when neither is there. Run one notebook:
    LAVIT_MODEL=/path/to/pipeline pytest tests/test_notebooks.py -k understanding
"""

import ast
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
kernelspec = pytest.importorskip("ipykernel.kernelspec")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the skips)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["understanding", "text2image_synthesis", "multimodal_synthesis", "image_detokenize"]
DEFAULT_MODEL = "checkpoints/lavit-shapes-tiny"
KERNEL = "lavit-test-python"
CELL_TIMEOUT = 120  # seconds per cell; a notebook takes well under 30 s on the tiny model


def read(name: str):
    return nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)


def code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.fixture(scope="module")
def model_dir() -> Path:
    if "LAVIT_MODEL" in os.environ:
        path = Path(os.environ["LAVIT_MODEL"]).resolve()  # relative to where pytest runs, as a shell would read it
        assert (path / "pipeline.yaml").is_file(), f"LAVIT_MODEL={path} is not a pipeline directory (no pipeline.yaml)"
        return path
    path = ROOT / DEFAULT_MODEL
    if not (path / "pipeline.yaml").is_file():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL}; set LAVIT_MODEL to a pipeline directory")
    return path


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernelspec that runs this very interpreter, found first through JUPYTER_PATH, so the
    notebooks import the lavit of this checkout whatever kernels the machine has installed."""
    jupyter_dir = tmp_path_factory.mktemp("jupyter")
    # kernel.json's argv: [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernelspec.write_kernel_spec(jupyter_dir / "kernels" / KERNEL)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(jupyter_dir), prepend=os.pathsep)
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
        assert Path(spec.argv[0]) == Path(sys.executable), f"kernel runs {spec.argv[0]}, not {sys.executable}"
        yield KERNEL


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_stored_clean(name):
    nb = read(name)
    nbformat.validate(nb)
    cells = code_cells(nb)
    assert nb.cells[0].cell_type == "markdown", "start with a markdown intro: what it shows, which model it loads"
    assert 'MODEL = os.environ.get("LAVIT_MODEL", "checkpoints/lavit-shapes-tiny")' in cells[0].source
    for i, cell in enumerate(cells):
        assert cell.outputs == [] and cell.execution_count is None, f"{name} code cell {i} has outputs: clear them"
        defined = [
            n for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.FunctionDef | ast.ClassDef | ast.Lambda)
        ]
        assert not defined, (
            f"{name} code cell {i} defines something (line {defined[0].lineno}); notebooks define nothing"
        )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, model_dir, kernel, monkeypatch):
    monkeypatch.setenv("LAVIT_MODEL", str(model_dir))  # the kernel inherits the environment
    nb = read(name)
    client = nbclient.NotebookClient(
        nb, kernel_name=kernel, timeout=CELL_TIMEOUT, resources={"metadata": {"path": str(ROOT)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for c in code_cells(nb) for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} displayed no image"
