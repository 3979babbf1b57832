"""Save / load the unified LM as a model directory: config.yaml (LMConfig), lm.safetensors,
vocab.json (the VocabLayout) and text_tokenizer/ (the tokenizer the layout was built for); an LM
started from ``pretrained_path`` also gets hf_config.json (its Hugging Face config), so the
directory loads without that folder."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

from transformers import AutoConfig, PreTrainedTokenizerBase

from lavit.checkpoint import CheckpointError, load_model_dir, save_model_dir
from lavit.config import LMConfig
from lavit.model import UnifiedLM
from lavit.text_tokenizer import load_text_tokenizer
from lavit.vocab import VocabLayout

TOKENIZER_DIR = "text_tokenizer"
HF_CONFIG_FILE = "hf_config.json"


def save_lm(lm: UnifiedLM, text_tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write the LM, its layout and its text tokenizer atomically. A model loaded from
    ``pretrained_path`` is saved whole with its HF architecture (hf_config.json), so the copy no
    longer needs the original folder; config.yaml keeps the path as provenance."""
    extra = {"vocab.json": json.dumps(lm.layout.to_dict(), indent=2)}
    if lm.cfg.pretrained_path:
        cfg = lm.cfg
        extra[HF_CONFIG_FILE] = lm.hf.config.to_json_string()
    else:
        cfg = dataclasses.replace(lm.cfg, text_vocab_size=lm.layout.text_size)
    with tempfile.TemporaryDirectory() as tmp:
        text_tokenizer.save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            extra[f"{TOKENIZER_DIR}/{f.name}"] = f.read_bytes()
    return save_model_dir(directory, cfg, {"lm": lm}, extra_files=extra)


def load_lm(directory: str | Path, device: str = "cpu") -> tuple[UnifiedLM, PreTrainedTokenizerBase]:
    """(UnifiedLM in eval mode, its text tokenizer); the saved layout must match the rebuilt one."""
    directory = Path(directory)
    saved = VocabLayout.from_dict(json.loads((directory / "vocab.json").read_text()))
    hf_config = None
    if (directory / HF_CONFIG_FILE).is_file():
        fields = json.loads((directory / HF_CONFIG_FILE).read_text())
        hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        hf_config.vocab_size = saved.text_size  # UnifiedLM adds the specials and codes again
    _, modules = load_model_dir(
        directory, LMConfig, lambda c: {"lm": UnifiedLM(c, init_new_rows=False, hf_config=hf_config)}
    )
    lm = modules["lm"]
    if saved != lm.layout:
        raise CheckpointError(f"{directory / 'vocab.json'} describes {saved}, but the config rebuilds {lm.layout}")
    tok = load_text_tokenizer(directory / TOKENIZER_DIR)
    if len(tok) > lm.layout.text_size:
        raise CheckpointError(f"{directory / TOKENIZER_DIR} has {len(tok)} ids; the LM reserves {lm.layout.text_size}")
    return lm.to(device).eval(), tok
