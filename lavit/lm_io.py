"""Save / load the unified LM as a model directory: config.yaml (LMConfig), lm.safetensors,
vocab.json (the VocabLayout) and text_tokenizer/ (the tokenizer the layout was built for)."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from lavit.checkpoint import CheckpointError, load_model_dir, save_model_dir
from lavit.config import LMConfig
from lavit.model import UnifiedLM
from lavit.text_tokenizer import load_text_tokenizer
from lavit.vocab import VocabLayout

TOKENIZER_DIR = "text_tokenizer"


def save_lm(lm: UnifiedLM, text_tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write the LM, its layout and its text tokenizer atomically. A model loaded from
    ``pretrained_path`` is saved whole, so the copy no longer needs the original folder."""
    if lm.cfg.pretrained_path:
        # Rebuilding needs the base architecture; keep pretrained_path so load_lm rebuilds the
        # same HF model (its weights are then replaced by the saved ones, strictly).
        cfg = lm.cfg
    else:
        cfg = dataclasses.replace(lm.cfg, text_vocab_size=lm.layout.text_size)
    extra = {"vocab.json": json.dumps(lm.layout.to_dict(), indent=2)}
    with tempfile.TemporaryDirectory() as tmp:
        text_tokenizer.save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            extra[f"{TOKENIZER_DIR}/{f.name}"] = f.read_bytes()
    return save_model_dir(directory, cfg, {"lm": lm}, extra_files=extra)


def load_lm(directory: str | Path, device: str = "cpu") -> tuple[UnifiedLM, PreTrainedTokenizerBase]:
    """(UnifiedLM in eval mode, its text tokenizer); the saved layout must match the rebuilt one."""
    directory = Path(directory)
    _, modules = load_model_dir(directory, LMConfig, lambda c: {"lm": UnifiedLM(c, init_new_rows=False)})
    lm = modules["lm"]
    saved = VocabLayout.from_dict(json.loads((directory / "vocab.json").read_text()))
    if saved != lm.layout:
        raise CheckpointError(f"{directory / 'vocab.json'} describes {saved}, but the config rebuilds {lm.layout}")
    tok = load_text_tokenizer(directory / TOKENIZER_DIR)
    if len(tok) > lm.layout.text_size:
        raise CheckpointError(f"{directory / TOKENIZER_DIR} has {len(tok)} ids; the LM reserves {lm.layout.text_size}")
    return lm.to(device).eval(), tok
