"""Token sequences and loss weights for every task, with no magic numbers (ids from VocabLayout).

    understanding:  <s> <img> c1..cN </img> prompt answer </s>   loss on answer and </s>
    generation:     <s> prompt <img> c1..cN </img>               loss on the codes and </img>
    unconditional:  <s> <img> c1..cN </img>                      (prompt dropped, for CFG)
    interleaved:    segments of text and images, concatenated    loss on the chosen segments

The leading <s> is dropped for an LM trained without it (``add_bos=False``, LaVIT's LLM).
A batch of sequences is right-padded for training (:func:`collate`) and left-padded for
generation (:func:`left_pad`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from lavit.grounding import Box, Segment, box_to_ids
from lavit.vocab import VocabLayout

Text = str | Sequence[Segment]  # plain text, or text with boxes in it (lavit/grounding.py)


@dataclass
class TokenSeq:
    """One sequence: ``weights[t]`` is the loss weight of predicting ``ids[t]`` from ``ids[:t]``;
    ``image_spans`` are the [start, end) positions of *input* image codes (the ones that may be
    replaced by continuous features); generated images are not listed."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    image_spans: list[tuple[int, int]] = field(default_factory=list)

    def add(self, ids: list[int], weight: float = 0.0) -> TokenSeq:
        self.ids += ids
        self.weights += [weight] * len(ids)
        return self

    def __len__(self) -> int:
        return len(self.ids)


class SequenceBuilder:
    """Builds task sequences from text, codes and a vocabulary layout.

    Args:
        text_tokenizer: the LM's text tokenizer (bos/eos set).
        layout: the extended vocabulary.
        max_length: sequences longer than this raise (never silently truncated).
        add_bos: start every sequence with the tokenizer's BOS (``lm.add_bos``; LaVIT's LLM
            reads none).
    """

    def __init__(
        self, text_tokenizer: PreTrainedTokenizerBase, layout: VocabLayout, max_length: int, add_bos: bool = True
    ) -> None:
        self.tok, self.layout, self.max_length, self.add_bos = text_tokenizer, layout, max_length, add_bos
        if text_tokenizer.bos_token_id is None or text_tokenizer.eos_token_id is None:
            raise ValueError("the text tokenizer needs bos and eos tokens")
        if len(text_tokenizer) > layout.text_size:
            raise ValueError(
                f"text tokenizer has {len(text_tokenizer)} ids but the LM's layout reserves "
                f"{layout.text_size}: the checkpoint and tokenizer do not belong together"
            )
        self.bos, self.eos = text_tokenizer.bos_token_id, text_tokenizer.eos_token_id

    # --- pieces ------------------------------------------------------------------------------

    def _start(self) -> TokenSeq:
        return TokenSeq().add([self.bos] if self.add_bos else [])

    def text(self, s: str) -> list[int]:
        return self.tok(s, add_special_tokens=False)["input_ids"]

    def segments(self, text: Text) -> list[int]:
        """Text, or text with boxes in it: each string tokenised on its own, each box its four
        location ids (so a box never merges with the words beside it)."""
        if isinstance(text, str):
            return self.text(text)
        ids: list[int] = []
        for part in text:
            ids += box_to_ids(part, self.layout) if isinstance(part, Box) else self.text(part)
        return ids

    def image(self, codes: torch.Tensor, wrap: bool = True) -> list[int]:
        """Codes -> [<img>] ids [</img>]."""
        ids = self.layout.codes_to_ids(codes.cpu().long()).tolist()
        return [self.layout.image_start_id, *ids, self.layout.image_end_id] if wrap else ids

    def _finish(self, seq: TokenSeq) -> TokenSeq:
        if len(seq) > self.max_length:
            raise ValueError(
                f"sequence of {len(seq)} tokens exceeds the LM context of {self.max_length}; "
                "shorten the prompt or raise lm.max_position_embeddings"
            )
        return seq

    def _add_image(self, seq: TokenSeq, codes: torch.Tensor, weight: float) -> None:
        """<img> codes </img>; an image with no loss is an input image (recorded in image_spans)."""
        start = len(seq) + 1
        seq.add([self.layout.image_start_id], 0.0)
        seq.add(self.image(codes, wrap=False), weight)
        if weight == 0.0:
            seq.image_spans.append((start, len(seq)))
        seq.add([self.layout.image_end_id], weight)

    # --- tasks -------------------------------------------------------------------------------

    def understanding(self, codes: torch.Tensor, prompt: Text, answer: Text, weight: float = 1.0) -> TokenSeq:
        """<s> <img> codes </img> prompt answer </s>, loss on the answer and </s>. Prompt and
        answer may hold boxes (grounding: a phrase -> its box, a box -> its phrase)."""
        seq = self._start()
        self._add_image(seq, codes, 0.0)
        seq.add(self.segments(prompt))
        seq.add(self.segments(answer) + [self.eos], weight)
        return self._finish(seq)

    def generation(
        self, prompt: str | list[str | torch.Tensor] | None, codes: torch.Tensor, weight: float = 1.0
    ) -> TokenSeq:
        """<s> prompt <img> codes </img>, loss on codes and </img>: :meth:`generation_prompt`
        continued by its answer. ``prompt=None`` drops the condition (classifier-free guidance
        training); a list is a multimodal prompt (multimodal synthesis), its images unwrapped."""
        seq = self.generation_prompt(prompt)
        seq.add(self.image(codes, wrap=False), weight)
        return self._finish(seq.add([self.layout.image_end_id], weight))

    def interleaved(self, segments: list[str | torch.Tensor], loss_on: str = "last", weight: float = 1.0) -> TokenSeq:
        """Text and image-code segments in order. ``loss_on``: 'last' (the final segment only),
        'all', or 'none'. Images are wrapped in <img> ... </img>."""
        seq = self._start()
        for i, seg in enumerate(segments):
            w = weight if loss_on == "all" or (loss_on == "last" and i == len(segments) - 1) else 0.0
            if isinstance(seg, torch.Tensor):
                self._add_image(seq, seg, w)
            else:
                seq.add(self.text(seg), w)
        return self._finish(seq)

    # --- generation prompts ------------------------------------------------------------------

    def understanding_prompt(self, codes: torch.Tensor, prompt: Text) -> TokenSeq:
        seq = self._start()
        self._add_image(seq, codes, 0.0)
        return self._finish(seq.add(self.segments(prompt)))

    def generation_prompt(self, prompt: str | list[str | torch.Tensor] | None) -> TokenSeq:
        """<s> prompt <img>; a list is a multimodal prompt (image codes unwrapped, as LaVIT);
        None is the unconditional context (the lone <img>)."""
        seq = self._start()
        parts = [] if prompt is None else [prompt] if isinstance(prompt, str) else prompt
        for part in parts:
            if isinstance(part, torch.Tensor):
                start = len(seq)
                seq.add(self.image(part, wrap=False))
                seq.image_spans.append((start, len(seq)))
            else:
                if not part.strip():
                    raise ValueError("empty text in a generation prompt")
                seq.add(self.text(part))
        return self._finish(seq.add([self.layout.image_start_id]))


def collate(seqs: list[TokenSeq], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad for training: input_ids, attention_mask, loss_weights (B, L), and
    image_mask (B, L) marking input-image code positions."""
    length = max(len(s) for s in seqs)
    b = len(seqs)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    mask = torch.zeros(b, length, dtype=torch.long)
    weights = torch.zeros(b, length)
    image = torch.zeros(b, length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s.ids)
        mask[i, : len(s)] = 1
        weights[i, : len(s)] = torch.tensor(s.weights)
        for start, end in s.image_spans:
            image[i, start:end] = True
    return {"input_ids": ids, "attention_mask": mask, "loss_weights": weights, "image_mask": image}


def left_pad(seqs: list[TokenSeq], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad prompts for generation: (input_ids (B, L), attention_mask (B, L))."""
    length = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), length), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), length, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, length - len(s) :] = torch.tensor(s.ids)
        mask[i, length - len(s) :] = 1
    return ids, mask
