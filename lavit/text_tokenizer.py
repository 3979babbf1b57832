"""Text tokenizers: the LLM's own (``AutoTokenizer`` from a local directory), or for the
from-scratch presets a small byte-level BPE trained on the training text with ``tokenizers``.

Either way the result is a ``transformers.PreTrainedTokenizerFast`` with bos/eos/pad tokens,
saved beside the model and loaded with :func:`load_text_tokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lavit.checkpoint import RESTORE, CheckpointError, model_file, model_subdir, read_json

# The files in which a Hugging Face folder can name classes defined by its own Python code.
CODE_CONFIGS = ("tokenizer_config.json", "config.json")
SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_bpe(texts: Iterable[str], vocab_size: int, extra_specials: Sequence[str] = ()) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` ids (specials included) on ``texts``.

    Byte-level: any string encodes (no unknown characters), and decoding inverts encoding.
    ``extra_specials`` (e.g. VARGPT's ``<image>``) take the ids right after the four specials
    (pad, bos, eos, unk: ids 0-3), in order, and are never split.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[*SPECIALS.values(), *extra_specials],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    extra = {"additional_special_tokens": list(extra_specials)} if extra_specials else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIALS, **extra)


def load_text_tokenizer(directory: str | Path, root: str | Path | None = None) -> PreTrainedTokenizerBase:
    """A tokenizer saved with ``save_pretrained`` (ours or a real LLM's), from a local folder.

    Never runs code from the folder: a tokenizer that names its own Python classes (``auto_map``
    in tokenizer_config.json or config.json) is refused, and transformers is told not to trust
    remote code (left unset, it asks on stdin, and one "y" would run the folder's ``.py`` files).

    Args:
        directory: the tokenizer folder (e.g. an LM directory's text_tokenizer/).
        root: the folder its files must resolve inside (default: ``directory``).

    Raises:
        CheckpointError: the folder is missing, holds a non-regular file or a symlink out of
            ``root``, asks for custom code, or does not load; the message names the file.
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)
    if not directory.exists() and not directory.is_symlink():
        raise CheckpointError(f"text tokenizer folder not found: {directory}; {RESTORE}")
    model_subdir(directory, root)
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir():  # transformers reads the files at the top level only
            model_file(entry, root)
    for name in CODE_CONFIGS:
        if (directory / name).exists() and "auto_map" in read_json(directory / name, root):
            raise CheckpointError(
                f"{directory / name} has auto_map (a tokenizer class defined by Python code in the folder), "
                "which lavit never runs; use a tokenizer built into transformers (e.g. save it as a "
                "PreTrainedTokenizerFast with tokenizer.json)"
            )
    try:
        tok = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers, tokenizers (Rust) and json raise many kinds
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise CheckpointError(f"{directory} is not a loadable tokenizer ({first[:300]}); {RESTORE}") from None
    if tok.pad_token is None:  # e.g. Llama-2: pad with eos; padding positions carry no loss
        tok.pad_token = tok.eos_token
    return tok
