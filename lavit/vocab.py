"""VocabLayout: where text, special, image-code and location ids live in the extended vocabulary.

One contiguous block per kind, so mapping is an addition and "image codes only" is a slice:

    [0, T)                      text tokens of the base tokenizer
    [T, T+S)                    specials: <img>, </img> (+ others as needed)
    [T+S, T+S+K)                K image codes            (code c -> id T+S+c)
    [T+S+K, T+S+K+Lq)           optional location tokens (bins of x/y, for grounding)

LaVIT's layout is this with T=32000, S=2, K=16384, Lq=0: <img>=32000, </img>=32001, codes
32002.., 48,386 in all. Ours is an object saved with the checkpoint, not numbers in the code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IMAGE_START, IMAGE_END = "<img>", "</img>"


@dataclass(frozen=True)
class VocabLayout:
    text_size: int  # T: the base tokenizer's vocabulary (ids [0, T))
    num_codes: int  # K: the visual tokenizer's codebook size
    specials: tuple[str, ...] = (IMAGE_START, IMAGE_END)
    num_locations: int = 0  # Lq: location bins (0 = none)

    def __post_init__(self) -> None:
        if self.text_size < 1 or self.num_codes < 1 or self.num_locations < 0:
            raise ValueError(
                f"invalid vocabulary sizes: text {self.text_size}, codes {self.num_codes}, "
                f"locations {self.num_locations}"
            )
        if len(set(self.specials)) != len(self.specials):
            raise ValueError(f"duplicate special tokens: {self.specials}")
        for required in (IMAGE_START, IMAGE_END):
            if required not in self.specials:
                raise ValueError(f"the layout needs the special token {required!r}; got {self.specials}")

    # --- block boundaries --------------------------------------------------------------------

    @property
    def special_start(self) -> int:
        return self.text_size

    @property
    def code_start(self) -> int:
        return self.text_size + len(self.specials)

    @property
    def code_end(self) -> int:
        return self.code_start + self.num_codes

    @property
    def location_start(self) -> int:
        return self.code_end

    @property
    def total(self) -> int:
        return self.code_end + self.num_locations

    def special_id(self, name: str) -> int:
        try:
            return self.special_start + self.specials.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not a special token of this layout ({self.specials})") from None

    @property
    def image_start_id(self) -> int:
        return self.special_id(IMAGE_START)

    @property
    def image_end_id(self) -> int:
        return self.special_id(IMAGE_END)

    # --- mapping -----------------------------------------------------------------------------

    def codes_to_ids(self, codes: torch.Tensor) -> torch.Tensor:
        """Image codes in [0, K) -> vocabulary ids; out-of-range codes raise."""
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.num_codes):
            raise ValueError(
                f"image codes must lie in [0, {self.num_codes}), got min {int(codes.min())} "
                f"max {int(codes.max())}: was the LM built for another tokenizer's codebook?"
            )
        return codes + self.code_start

    def ids_to_codes(self, ids: torch.Tensor) -> torch.Tensor:
        """Vocabulary ids of image codes -> codes in [0, K); other ids raise."""
        if ids.numel() and not bool(self.is_code(ids).all()):
            raise ValueError("ids_to_codes got ids outside the image-code block")
        return ids - self.code_start

    def is_code(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.code_start) & (ids < self.code_end)

    def is_text(self, ids: torch.Tensor) -> torch.Tensor:
        return ids < self.text_size

    def is_location(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids >= self.location_start) & (ids < self.total)

    def is_location_id(self, i: int) -> bool:
        return self.location_start <= i < self.total

    def image_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(V,) bool: the ids allowed while generating inside an image (codes and </img>)."""
        mask = torch.zeros(self.total, dtype=torch.bool, device=device)
        mask[self.code_start : self.code_end] = True
        mask[self.image_end_id] = True
        return mask

    def text_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(V,) bool: the ids allowed in generated text (text ids only)."""
        mask = torch.zeros(self.total, dtype=torch.bool, device=device)
        mask[: self.text_size] = True
        return mask

    def location_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """(V,) bool: the location ids (boxes; lavit/grounding.py)."""
        mask = torch.zeros(self.total, dtype=torch.bool, device=device)
        mask[self.location_start :] = True
        return mask

    # --- persistence -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "text_size": self.text_size,
            "num_codes": self.num_codes,
            "specials": list(self.specials),
            "num_locations": self.num_locations,
        }

    @classmethod
    def from_dict(cls, d: dict) -> VocabLayout:
        """Inverse of :meth:`to_dict` (a checkpoint's vocab.json).

        Raises:
            ValueError: a key is missing or has the wrong type (the message names it).
        """
        if not isinstance(d, dict):
            raise ValueError(f"a vocabulary layout is a JSON object, got {type(d).__name__}")
        sizes = {}
        for key, default in (("text_size", None), ("num_codes", None), ("num_locations", 0)):
            value = d.get(key, default)
            if value is None:
                raise ValueError(f"missing key '{key}' (an integer)")
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"'{key}' must be an integer, got {value!r}")
            sizes[key] = value
        specials = d.get("specials")
        if not isinstance(specials, list) or not all(isinstance(s, str) for s in specials):
            raise ValueError(f"'specials' must be a list of token strings, got {specials!r}")
        return cls(specials=tuple(specials), **sizes)


LAVIT_LAYOUT = VocabLayout(text_size=32000, num_codes=16384)
__all__ = ["VocabLayout", "LAVIT_LAYOUT", "IMAGE_START", "IMAGE_END"]
