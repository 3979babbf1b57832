"""LaVIT's dynamic visual tokenizer: image -> variable-length sequence of discrete codes.

(Part of the ``lavit`` distribution; not the unrelated PyPI package of the same name.)

    from tokenizer import DynamicVisualTokenizer, load_tokenizer
"""

LAVIT_COMPONENT = "tokenizer"

from tokenizer.io import load_tokenizer, save_tokenizer  # noqa: E402
from tokenizer.model import DynamicVisualTokenizer, TokenizerOutput  # noqa: E402

__all__ = ["DynamicVisualTokenizer", "TokenizerOutput", "load_tokenizer", "save_tokenizer"]
