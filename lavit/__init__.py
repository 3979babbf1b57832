"""lavit: a unified discrete-token multimodal model (LaVIT / VARGPT style).

Importing ``lavit`` is cheap: it pulls in no training- or evaluation-only package. Submodules
are imported where they are used (``from lavit.data.shapes.dataset import ShapesWorld``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__version__ = "0.1.0"

# Our sibling packages have generic names that unrelated PyPI projects also use ('tokenizer',
# 'detokenizer'). Fail at import, with the fix, rather than later with a baffling AttributeError.
_SIBLINGS = ("tokenizer", "detokenizer")


def _check_sibling_packages() -> None:
    root = Path(__file__).resolve().parent.parent
    for name in _SIBLINGS:
        spec = importlib.util.find_spec(name)
        found = Path(spec.origin).resolve().parent if spec is not None and spec.origin else None
        if found != root / name:
            raise ImportError(
                f"'import {name}' resolves to {found or 'nothing'}, not lavit's own package at {root / name}. "
                f"Another package named '{name}' is shadowing it (a PyPI package, or a '{name}.py' / '{name}/' "
                "in the current or the script's folder): rename that file, or run 'pip uninstall "
                f"{name}' and reinstall lavit with 'pip install -e .' from the repository root."
            )


_check_sibling_packages()
