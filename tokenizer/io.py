"""Save / load a tokenizer as a model directory (config.yaml + tokenizer.safetensors)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from lavit.checkpoint import CONFIG_FILE, CheckpointError, load_model_dir, save_model_dir
from lavit.config import TokenizerConfig
from tokenizer.model import DynamicVisualTokenizer


def save_tokenizer(tok: DynamicVisualTokenizer, directory: str | Path) -> Path:
    """Write ``directory`` atomically. The encoder's (and read-out's) weights are inside the
    safetensors file, so the saved config no longer points at the original local weights files."""
    cfg = dataclasses.replace(tok.cfg, encoder=dataclasses.replace(tok.cfg.encoder, weights=None), readout_weights=None)
    return save_model_dir(directory, cfg, {"tokenizer": tok})


def load_tokenizer(
    directory: str | Path, device: str = "cpu", root: str | Path | None = None
) -> DynamicVisualTokenizer:
    """Rebuild from the saved config, load strictly, and return in eval mode.

    Args:
        directory: a folder written by :func:`save_tokenizer`.
        device: where the tokenizer goes.
        root: the folder every file read must resolve inside (default: ``directory``).

    Raises:
        CheckpointError: a file is missing or damaged, or config.yaml names a weights file
            (``encoder.weights``, ``readout_weights``): a saved tokenizer holds every weight in
            tokenizer.safetensors, and loading never reads a path outside its folder.
    """
    directory = Path(directory)

    def build(cfg: TokenizerConfig) -> dict[str, DynamicVisualTokenizer]:
        for key, value in (("encoder.weights", cfg.encoder.weights), ("readout_weights", cfg.readout_weights)):
            if value:
                raise CheckpointError(
                    f"{directory / CONFIG_FILE}: {key}={value!r} names a file outside the model; a saved "
                    f"tokenizer holds those weights in tokenizer.safetensors: set {key}: null (save_tokenizer does)"
                )
        return {"tokenizer": DynamicVisualTokenizer(cfg)}

    _, modules = load_model_dir(directory, TokenizerConfig, build, root=root)
    return modules["tokenizer"].to(device).eval()
