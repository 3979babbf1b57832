"""Save / load a VARGPT model folder:

    config.yaml           VARGPTConfig
    vargpt.safetensors    every weight (LLM, vision tower, projectors, VAR head, VQ-VAE)
    hf_config.json        the LLM's Hugging Face architecture
    vision_config.json    the CLIP tower's (vision: clip; our encoder's is in config.yaml)
    text_tokenizer/       the text tokenizer, when saved with one

Loading reads only the folder and runs no code from it: the two JSON files may not name custom
classes (``auto_map``), the weights are safetensors, the tokenizer is loaded as lavit loads every
tokenizer (lavit/text_tokenizer.py)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from transformers import CLIPVisionConfig, PretrainedConfig, PreTrainedTokenizerBase

from lavit.checkpoint import RESTORE, CheckpointError, load_model_dir, save_model_dir
from lavit.lm_io import read_transformers_config
from lavit.text_tokenizer import load_text_tokenizer
from lavit.vargpt.config import VARGPTConfig
from lavit.vargpt.model import VARGPT

HF_CONFIG_FILE = "hf_config.json"
VISION_CONFIG_FILE = "vision_config.json"
TOKENIZER_DIR = "text_tokenizer"


def save_vargpt(model: VARGPT, directory: str | Path, text_tokenizer: PreTrainedTokenizerBase | None = None) -> Path:
    """Write the folder whole (a crash leaves any old copy intact)."""
    extra: dict[str, str | bytes] = {HF_CONFIG_FILE: model.llm.config.to_json_string()}
    if model.cfg.vision == "clip":  # our encoder's architecture is in config.yaml
        extra[VISION_CONFIG_FILE] = model.vision.config.to_json_string()
    if text_tokenizer is not None:
        with tempfile.TemporaryDirectory() as tmp:
            text_tokenizer.save_pretrained(tmp)
            for f in Path(tmp).iterdir():
                extra[f"{TOKENIZER_DIR}/{f.name}"] = f.read_bytes()
    return save_model_dir(directory, model.cfg, {"vargpt": model}, extra_files=extra)


def load_vargpt(
    directory: str | Path, device: str = "cpu", root: str | Path | None = None
) -> tuple[VARGPT, PreTrainedTokenizerBase | None]:
    """(the model in eval mode, its text tokenizer or None).

    Raises:
        CheckpointError: a file missing, damaged, of another model, or asking for custom code.
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)
    hf_config = read_transformers_config(directory / HF_CONFIG_FILE, root, None)
    vision = read_vision_config(directory, root)
    _, modules = load_model_dir(
        directory, VARGPTConfig, lambda cfg: {"vargpt": _build(cfg, hf_config, vision, directory)}, root=root
    )
    tok = None
    if os.path.lexists(directory / TOKENIZER_DIR):
        tok = load_text_tokenizer(directory / TOKENIZER_DIR, root)
    return modules["vargpt"].to(device).eval(), tok


def read_vision_config(directory: str | Path, root: str | Path | None = None) -> CLIPVisionConfig | None:
    """The CLIP tower's architecture saved in a VARGPT folder (None: the model has no CLIP tower)."""
    path = Path(directory) / VISION_CONFIG_FILE
    root = Path(directory) if root is None else Path(root)
    return read_transformers_config(path, root, "clip_vision_model") if os.path.lexists(path) else None


def _build(cfg: VARGPTConfig, hf_config: PretrainedConfig, vision: CLIPVisionConfig | None, directory: Path):
    if cfg.vision == "clip" and vision is None:
        raise CheckpointError(f"{directory / VISION_CONFIG_FILE} is missing: vision is clip; {RESTORE}")
    return VARGPT(cfg, hf_config=hf_config, vision_config=vision, encoder_weights=False)
