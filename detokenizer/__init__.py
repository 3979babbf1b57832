"""Detokenizers: render discrete visual codes back to pixels (diffusion and next-scale VAR).

(Part of the ``lavit`` distribution; not the unrelated PyPI package of the same name.)
"""

LAVIT_COMPONENT = "detokenizer"
