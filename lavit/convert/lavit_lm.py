"""LaVIT-7B-v2's language model (``language_model/``) -> our :class:`~lavit.model.UnifiedLM`.

Read from the published folder:

    language_model/config.json                 Llama-2-7B's config, vocab_size 48,386
    language_model/*.safetensors, or pytorch_model*.bin    its weights (Llama's names)
    language_model/visual_weight.bin           what understanding adds: ``vit_proj`` (1408 -> 4096)
                                               and a second merger, ``causal_encoder.*``
    language_model/tokenizer.model + tokenizer_config.json    the sentencepiece tokenizer

The Llama's tensors load as they are (``hf.<name>``); its 48,386 embedding rows are LaVIT's
layout (text 0-31999, ``<img>`` 32000, ``</img>`` 32001, code c at 32002 + c), which is ours with
32,000 text ids and 16,384 codes, so nothing is resized. ``vit_proj`` becomes the LM's
``feature_proj``; the second merger goes to the tokenizer (``understanding_merger``, see
lavit.convert.lavit_tokenizer). The LM reads LaVIT's sequences: no BOS, continuous features for
an image to understand, codes for an image inside a generation prompt.

The tokenizer: LaVIT loads the slow ``LlamaTokenizer`` (sentencepiece). transformers 5 has only
fast tokenizers and converts ``tokenizer.model`` into one (this needs the ``sentencepiece`` and
``protobuf`` packages: ``pip install -e '.[convert]'``). The conversion is checked: every probe
text (LaVIT's prompts and more) must encode to the ids sentencepiece itself gives, which is what
the slow tokenizer returns for plain text; the converted tokenizer is saved as tokenizer.json, so
loading it later needs neither package. One difference is known and left: a text that *starts*
with white space gets one "▁" piece fewer than sentencepiece gives it (transformers' Llama
conversion); no prompt lavit builds starts with white space.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import AutoConfig, PretrainedConfig, PreTrainedTokenizerBase

from lavit.checkpoint import CheckpointError
from lavit.config import LMConfig, load_config
from lavit.convert.common import Source, apply_key_map, read_config_json, read_state_dict, rebuild_meta_buffers, rename
from lavit.model import UnifiedLM, hf_architecture
from lavit.vocab import LAVIT_LAYOUT, VocabLayout

PRESET = Path(__file__).resolve().parents[2] / "configs" / "lm" / "lavit-7b.yaml"
FOLDER = "language_model"
VISUAL_WEIGHT = "visual_weight.bin"
MERGER = "causal_encoder."
PROJECTION = ("vit_proj.weight", "vit_proj.bias")
# Older Llama checkpoints carry the rotary frequencies as a buffer; transformers recomputes them.
ROTARY = re.compile(r".*rotary_emb\.inv_freq$")
# Texts the converted tokenizer must encode as sentencepiece does: LaVIT's prompts and others.
PROBES = (
    "Question: What is the man holding? Answer:",
    "a photo of",
    "A cute corgi wearing sunglasses, sitting on a beach at sunset, 4k, highly detailed",
    "Question: How many cats are there? Short answer:",
    "two  spaces, a tab\tand a new\nline",
    "numbers 1234 and 3.14, symbols #@$%^&*()[]{}<>|~",
    "ünïcödé, 日本語, emoji 🙂",
)


def layout(num_codes: int) -> VocabLayout:
    """LaVIT's vocabulary layout with ``num_codes`` codes (16,384 published)."""
    return VocabLayout(text_size=LAVIT_LAYOUT.text_size, num_codes=num_codes)


def read_hf_config(src: Path, num_codes: int = LAVIT_LAYOUT.num_codes) -> PretrainedConfig:
    """``language_model/config.json`` as a transformers config (custom code refused); its
    vocabulary must be LaVIT's layout with the visual tokenizer's ``num_codes``.

    Raises:
        CheckpointError: missing, not JSON, custom code, not a Llama, or not LaVIT's vocabulary.
    """
    path = src / FOLDER / "config.json"
    fields = read_config_json(path, f"the LaVIT-7B-v2 folder, which holds {FOLDER}/config.json")
    if "auto_map" in fields:
        raise CheckpointError(f"{path} has auto_map (model classes defined by Python code), which lavit never runs")
    if fields.get("model_type") != "llama":
        raise CheckpointError(f"{path}: model_type {fields.get('model_type')!r}; LaVIT's language model is a llama")
    want = layout(num_codes).total
    if fields.get("vocab_size") != want:
        raise CheckpointError(
            f"{path}: vocab_size {fields.get('vocab_size')!r}, expected {want} (32,000 text ids, <img>, </img> "
            f"and the visual tokenizer's {num_codes} codes): this is not LaVIT-7B-v2's language model"
        )
    fields.pop("model_type")
    return AutoConfig.for_model("llama", **fields)


def lm_config(hf_config: PretrainedConfig, feature_dim: int, source: Path, num_codes: int) -> LMConfig:
    """Our LM config for LaVIT's Llama: the preset's fields with the folder's architecture;
    ``pretrained_path`` names ``source`` as provenance (never read again), which makes the saved
    LM carry its whole Hugging Face config (hf_config.json: norm epsilon, activation, ...)."""
    preset = load_config(PRESET, LMConfig)
    arch = hf_architecture(hf_config)
    if arch.get("num_kv_heads") == arch.get("num_heads"):
        arch["num_kv_heads"] = None
    return dataclasses.replace(
        preset,
        **arch,
        text_vocab_size=LAVIT_LAYOUT.text_size,
        num_codes=num_codes,
        understanding_input="continuous",
        feature_dim=feature_dim,
        add_bos=False,
        synthesis_input="discrete",
        pretrained_path=str(source),
    )


def weight_files(src: Path) -> list[Path]:
    """The Llama's weight files: safetensors if there are any, else the pickled shards (read as
    tensors only); ``visual_weight.bin`` is not one of them."""
    folder = src / FOLDER
    found = sorted(folder.glob("*.safetensors")) or sorted(
        p for p in folder.glob("pytorch_model*.bin") if p.name != VISUAL_WEIGHT
    )
    if not found:
        raise CheckpointError(
            f"{folder} holds no weights (*.safetensors or pytorch_model*.bin): give the LaVIT-7B-v2 folder"
        )
    return found


def read_llm_state(files: list[Path]) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for path in files:
        part = read_state_dict(path)
        twice = state.keys() & part.keys()
        if twice:
            raise CheckpointError(f"{path}: tensor '{sorted(twice)[0]}' is also in another shard")
        state.update(part)
    return state


def llm_key_map(lm_shapes: Mapping[str, torch.Size]) -> dict[str, Source]:
    """Llama's names -> ours (``hf.<name>``), for every tensor of our LM but the projection."""
    return {k.removeprefix("hf."): rename(k, tuple(s)) for k, s in lm_shapes.items() if k.startswith("hf.")}


def build_meta_lm(cfg: LMConfig, hf_config: PretrainedConfig) -> UnifiedLM:
    text = dataclasses.replace(hf_config)
    text.vocab_size = LAVIT_LAYOUT.text_size  # UnifiedLM adds the specials and codes
    with torch.device("meta"):
        return UnifiedLM(cfg, init_new_rows=False, hf_config=text)


def split_visual_weight(path: Path, merger_keys: Mapping[str, Source]) -> tuple[dict, dict]:
    """``visual_weight.bin`` -> (the second merger's tensors by LaVIT's names, ``vit_proj``).

    Raises:
        CheckpointError: a tensor other than the merger's and ``vit_proj`` (naming it), or one missing.
    """
    state = read_state_dict(path)
    proj = {k: state[k] for k in PROJECTION if k in state}
    if len(proj) != len(PROJECTION):
        raise CheckpointError(f"{path} has no tensor '{PROJECTION[0]}': it is not LaVIT's visual_weight.bin")
    merger = {k: v for k, v in state.items() if k not in PROJECTION}
    apply_key_map(merger, merger_keys, path, model="LaVIT's understanding merger")  # checks names and shapes
    return merger, proj


def convert_lm_state(
    llm: Mapping[str, torch.Tensor],
    llm_where: str,
    proj: Mapping[str, torch.Tensor],
    proj_where: str | Path,
    lm: UnifiedLM,
) -> dict[str, torch.Tensor]:
    """LaVIT's Llama state dict and ``vit_proj`` -> our LM's state dict (every tensor of it)."""
    shapes = {k: v.shape for k, v in lm.state_dict().items()}
    ignore = [k for k in llm if ROTARY.match(k)]
    out = apply_key_map(llm, llm_key_map(shapes), llm_where, ignore=ignore, model="LaVIT's Llama-2-7B")
    out.update(
        apply_key_map(
            proj,
            {f"vit_proj.{leaf}": rename(f"feature_proj.{leaf}", tuple(shapes[f"feature_proj.{leaf}"]))
             for leaf in ("weight", "bias")},
            proj_where,
            model="LaVIT's vit_proj",
        )
    )  # fmt: skip
    return out


def load_lavit_lm(
    src: Path,
    hf_config: PretrainedConfig,
    proj: Mapping[str, torch.Tensor],
    proj_where: Path,
    num_codes: int = LAVIT_LAYOUT.num_codes,
) -> UnifiedLM:
    """Our LM holding LaVIT's Llama and ``vit_proj``, in the weights' own dtype (no float32 copy
    of the 7B model is made), eval mode."""
    cfg = lm_config(hf_config, proj["vit_proj.weight"].shape[1], src / FOLDER, num_codes)
    lm = build_meta_lm(cfg, hf_config)
    files = weight_files(src)
    where = str(files[0]) if len(files) == 1 else f"{src / FOLDER} ({len(files)} shards)"
    state = convert_lm_state(read_llm_state(files), where, proj, proj_where, lm)
    lm.load_state_dict(state, strict=True, assign=True)
    rebuild_meta_buffers(lm)
    return lm.eval()


def text_tokenizer(src: Path) -> PreTrainedTokenizerBase:
    """LaVIT's text tokenizer as a fast tokenizer, checked against sentencepiece where the folder
    has ``tokenizer.model``.

    Raises:
        CheckpointError: no tokenizer, a missing package for the conversion, or a text the
            converted tokenizer encodes differently from sentencepiece (naming it).
    """
    from lavit.text_tokenizer import load_text_tokenizer

    folder = src / FOLDER
    model = folder / "tokenizer.model"
    if model.is_file() and not (folder / "tokenizer.json").is_file():
        try:
            import google.protobuf  # noqa: F401
            import sentencepiece  # noqa: F401
        except ImportError:
            raise CheckpointError(
                f"{model}: converting LaVIT's sentencepiece tokenizer needs the sentencepiece and protobuf "
                "packages: pip install -e '.[convert]'"
            ) from None
    tok = load_text_tokenizer(folder, root=src)
    if model.is_file():
        check_against_sentencepiece(tok, model)
    if len(tok) > LAVIT_LAYOUT.text_size:
        raise CheckpointError(f"{folder}: the tokenizer has {len(tok)} ids; LaVIT's LLM has 32,000 text ids")
    return tok


def check_against_sentencepiece(tok: PreTrainedTokenizerBase, model: Path) -> None:
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(model))
    for text in PROBES:
        theirs, ours = sp.encode(text), tok(text, add_special_tokens=False)["input_ids"]
        if theirs != ours:
            raise CheckpointError(
                f"{model}: the converted tokenizer encodes {text!r} as {ours[:12]}..., sentencepiece as "
                f"{theirs[:12]}...: the conversion is not faithful; report it with your transformers version"
            )
