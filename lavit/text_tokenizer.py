"""Text tokenizers: the LLM's own (``AutoTokenizer`` from a local directory), or for the
from-scratch presets a small byte-level BPE trained on the training text with ``tokenizers``.

Either way the result is a ``transformers.PreTrainedTokenizerFast`` with bos/eos/pad tokens,
saved beside the model and loaded with :func:`load_text_tokenizer`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

SPECIALS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def train_bpe(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE of ``vocab_size`` ids (specials included) on ``texts``.

    Byte-level: any string encodes (no unknown characters), and decoding inverts encoding.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=SPECIALS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **SPECIALS)


def load_text_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """A tokenizer saved with ``save_pretrained`` (ours or a real LLM's), from a local folder."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"text tokenizer folder not found: {directory}")
    tok = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if tok.pad_token is None:  # e.g. Llama-2: pad with eos; padding positions carry no loss
        tok.pad_token = tok.eos_token
    return tok
