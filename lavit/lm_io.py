"""Save / load the unified LM as a model directory: config.yaml (LMConfig), lm.safetensors,
vocab.json (the VocabLayout) and text_tokenizer/ (the tokenizer the layout was built for); an LM
started from ``pretrained_path`` also gets hf_config.json (its Hugging Face config), so the
directory loads without that folder.

Loading reads only the directory (lavit/checkpoint.py): ``pretrained_path`` is provenance and
never read, so an LM that has it set needs its hf_config.json; config.yaml's architecture fields
must agree with hf_config.json (the architecture the weights were saved with), and neither the
text tokenizer nor the HF config may name custom code (``auto_map``)."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from lavit.checkpoint import (
    CONFIG_FILE,
    RESTORE,
    CheckpointError,
    load_model_dir,
    read_config,
    read_json,
    save_model_dir,
)
from lavit.config import LMConfig
from lavit.model import UnifiedLM, hf_architecture
from lavit.text_tokenizer import load_text_tokenizer
from lavit.vocab import VocabLayout

TOKENIZER_DIR = "text_tokenizer"
HF_CONFIG_FILE = "hf_config.json"
VOCAB_FILE = "vocab.json"


def save_lm(lm: UnifiedLM, text_tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Write the LM, its layout and its text tokenizer atomically. A model loaded from
    ``pretrained_path`` is saved whole with its HF architecture (hf_config.json), so the copy no
    longer needs the original folder; config.yaml keeps the path as provenance and takes its
    architecture fields from the HF config (loading checks that the two agree)."""
    extra = {VOCAB_FILE: json.dumps(lm.layout.to_dict(), indent=2)}
    if lm.cfg.pretrained_path:
        arch = hf_architecture(lm.hf.config)
        if arch.get("num_kv_heads") == arch.get("num_heads", lm.cfg.num_heads):
            arch["num_kv_heads"] = None
        cfg = dataclasses.replace(lm.cfg, **arch, text_vocab_size=lm.layout.text_size)
        extra[HF_CONFIG_FILE] = lm.hf.config.to_json_string()
    else:
        cfg = dataclasses.replace(lm.cfg, text_vocab_size=lm.layout.text_size)
    with tempfile.TemporaryDirectory() as tmp:
        text_tokenizer.save_pretrained(tmp)
        for f in Path(tmp).iterdir():
            extra[f"{TOKENIZER_DIR}/{f.name}"] = f.read_bytes()
    return save_model_dir(directory, cfg, {"lm": lm}, extra_files=extra)


def load_lm(
    directory: str | Path, device: str = "cpu", root: str | Path | None = None, dtype: torch.dtype | None = None
) -> tuple[UnifiedLM, PreTrainedTokenizerBase]:
    """(UnifiedLM in eval mode, its text tokenizer); the saved layout must match the rebuilt one.

    Args:
        directory: a folder written by :func:`save_lm`.
        device: where the LM goes.
        root: the folder every file read must resolve inside (default: ``directory``).
        dtype: the weights' dtype (None: float32); the model is built in it, not cast after.

    Raises:
        CheckpointError: a file is missing, damaged or disagrees with another (one line naming it).
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)
    cfg = read_config(directory, LMConfig, root)
    saved = _read_layout(directory / VOCAB_FILE, root)
    hf_config = _read_hf_config(directory, cfg, saved, root)
    tok = load_text_tokenizer(directory / TOKENIZER_DIR, root)  # before the weights: it is cheap
    _, modules = load_model_dir(
        directory,
        LMConfig,
        lambda c: {"lm": UnifiedLM(c, init_new_rows=False, hf_config=hf_config, dtype=dtype)},
        root=root,
    )
    lm = modules["lm"]
    if saved != lm.layout:
        raise CheckpointError(f"{directory / VOCAB_FILE} describes {saved}, but the config rebuilds {lm.layout}")
    if len(tok) > lm.layout.text_size:
        raise CheckpointError(f"{directory / TOKENIZER_DIR} has {len(tok)} ids; the LM reserves {lm.layout.text_size}")
    return lm.to(device).eval(), tok


def _read_layout(path: Path, root: Path) -> VocabLayout:
    try:
        return VocabLayout.from_dict(read_json(path, root))
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}; {RESTORE}") from None


def read_transformers_config(path: Path, root: Path, model_type: str | None = None) -> PretrainedConfig:
    """A transformers config saved as JSON, built as transformers' own class: one naming custom
    code (``auto_map``) is refused, and ``model_type``, if given, must be the file's.

    Raises:
        CheckpointError: missing, not JSON, custom code, another model type, or not a config.
    """
    if not os.path.lexists(path):
        raise CheckpointError(f"{path} is missing; {RESTORE}")
    fields = read_json(path, root)
    if "auto_map" in fields:
        raise CheckpointError(
            f"{path} has auto_map (model classes defined by Python code), which lavit never runs; "
            "use a model type built into transformers"
        )
    kind = fields.pop("model_type", None)
    if not isinstance(kind, str) or (model_type is not None and kind != model_type):
        want = repr(model_type) if model_type else "a transformers model type"
        raise CheckpointError(f"{path}: 'model_type' must be {want}, got {kind!r}; {RESTORE}")
    try:
        return AutoConfig.for_model(kind, **fields)
    except (ValueError, TypeError, KeyError) as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise CheckpointError(f"{path} is not a transformers config ({first[:200]}); {RESTORE}") from None


def _read_hf_config(directory: Path, cfg: LMConfig, layout: VocabLayout, root: Path) -> PretrainedConfig | None:
    """The saved Hugging Face architecture (None: the LM is built from config.yaml's fields).

    ``cfg.pretrained_path`` is never read here: a saved LM carries its architecture."""
    path = directory / HF_CONFIG_FILE
    if not os.path.lexists(path):
        if cfg.pretrained_path:
            raise CheckpointError(
                f"{path} is missing: this LM started from pretrained_path={cfg.pretrained_path!r} "
                f"({directory / CONFIG_FILE}), which loading never reads; restore {HF_CONFIG_FILE} or "
                "re-save the LM with save_lm, which writes it"
            )
        return None
    hf_config = read_transformers_config(path, root)
    mine = dataclasses.asdict(cfg)
    mine["num_kv_heads"] = cfg.num_kv_heads or cfg.num_heads
    for key, theirs in hf_architecture(hf_config).items():
        if mine[key] != theirs:
            raise CheckpointError(
                f"{directory / CONFIG_FILE}: {key}={mine[key]!r} disagrees with {HF_CONFIG_FILE} ({theirs!r}), "
                f"the architecture the weights were saved with; set {key}: {theirs} in config.yaml or re-save the LM"
            )
    hf_config.vocab_size = layout.text_size  # UnifiedLM adds the specials and codes again
    return hf_config
