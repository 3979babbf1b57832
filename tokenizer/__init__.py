"""LaVIT's dynamic visual tokenizer: image -> variable-length sequence of discrete codes.

(Part of the ``lavit`` distribution; not the unrelated PyPI package of the same name.)
"""

LAVIT_COMPONENT = "tokenizer"
