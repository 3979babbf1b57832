"""Words for ShapesWorld scenes: captions, question/answer pairs, and reading text back.

Captions come from several templates (lists, relations, positions, counts). Every template is
produced by one small grammar, so :func:`parse_mentions` can read any caption or prompt back
into (count, size, colour, kind) mentions; that is how a generated caption is judged
("every shape's colour and kind named") and how a text-to-image prompt becomes a spec the
scene parser's output is compared with.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

from lavit.data.sample import QA
from lavit.data.shapes import COLOURS, KINDS, Scene, Shape, relation

NUMBER_WORDS = ("zero", "one", "two", "three", "four")
_REL_WORDS = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}


def _plural(kind: str) -> str:
    return kind + ("es" if kind.endswith("s") else "s")


def _noun(shape: Shape, with_size: bool, article: bool = True) -> str:
    words = ([shape.size] if with_size else []) + [shape.colour, shape.kind]
    phrase = " ".join(words)
    return f"a {phrase}" if article else phrase


def _where(shape: Shape) -> str:
    pos = shape.position
    if pos == "center":
        return "in the center"
    if pos in ("left", "right"):
        return f"on the {pos}"
    if pos in ("top", "bottom"):
        return f"at the {pos}"
    return f"in the {pos} corner"


def _groups(shapes: tuple[Shape, ...], with_size: bool) -> list[str]:
    """Noun phrases with identical shapes folded into counts: 'two red circles'."""
    counts = Counter((s.size if with_size else None, s.colour, s.kind) for s in shapes)
    out = []
    for (size, colour, kind), n in counts.items():
        words = ([size] if size else []) + [colour]
        out.append(f"a {' '.join(words)} {kind}" if n == 1 else f"{NUMBER_WORDS[n]} {' '.join(words)} {_plural(kind)}")
    return out


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(scene: Scene, rng: np.random.Generator, n: int = 3) -> list[str]:
    """``n`` distinct captions of a scene from different templates (deterministic given ``rng``)."""
    shapes = scene.shapes
    with_size = [bool(rng.random() < 0.5) for _ in range(4)]
    cands = [
        _join(_groups(shapes, with_size[0])) + ".",
        "there " + ("is " if len(shapes) == 1 else "are ") + _join(_groups(shapes, with_size[1])) + ".",
        _join([f"{_noun(s, with_size[2])} {_where(s)}" for s in shapes]) + ".",
    ]
    if len(shapes) >= 2:
        a, b = shapes[0], shapes[1]
        rel = f"{_noun(a, with_size[3])} {_REL_WORDS[relation(a, b)]} {_noun(b, with_size[3])}"
        rest = [f"{_noun(s, with_size[3])} {_where(s)}" for s in shapes[2:]]
        cands.append(_join([rel] + rest) + ".")
    order = rng.permutation(len(cands))
    return [cands[i] for i in order[: min(n, len(cands))]]


def stated_layout(scene: Scene) -> tuple[tuple[int, str, int] | None, dict[int, tuple[int, int]]]:
    """What :func:`prompt` says of ``scene``'s layout: ``(0, relation, 1)`` for the first two
    shapes when there are two or more (else None), and the (row, col) cell of every shape it
    places by name (the lone shape; the third). Nothing else: a prompt for three shapes does not
    say where the third sits relative to the first two, beyond their stated cells."""
    shapes = scene.shapes
    if len(shapes) == 1:
        return None, {0: (shapes[0].row, shapes[0].col)}
    return (0, relation(shapes[0], shapes[1]), 1), {i: (s.row, s.col) for i, s in enumerate(shapes) if i >= 2}


def prompt(scene: Scene, rng: np.random.Generator) -> str:
    """A text-to-image prompt naming every shape (colour, kind, size) and the layout that
    :func:`stated_layout` gives: the first two shapes by their relation, any other by its cell."""
    shapes = scene.shapes
    stated, cells = stated_layout(scene)
    parts = []
    if stated is not None:
        a, rel, b = stated
        parts.append(f"{_noun(shapes[a], True)} {_REL_WORDS[rel]} {_noun(shapes[b], True)}")
    parts += [f"{_noun(shapes[i], True)} {_where(shapes[i])}" for i in cells]
    return _join(parts) + "."


def questions(scene: Scene, rng: np.random.Generator) -> list[QA]:
    """Question/answer pairs about colour, kind, count, position, size and yes/no facts.

    Answers are lowercase words; counts are digits, as in VQAv2's ground truth.
    """
    shapes = scene.shapes
    by_kind = Counter(s.kind for s in shapes)
    by_colour = Counter(s.colour for s in shapes)
    by_pair = Counter((s.colour, s.kind) for s in shapes)
    qa = [QA("how many shapes are there?", [str(len(shapes))])]
    for s in shapes:
        if by_kind[s.kind] == 1:
            qa.append(QA(f"what colour is the {s.kind}?", [s.colour]))
        if by_colour[s.colour] == 1:
            qa.append(QA(f"what shape is the {s.colour} object?", [s.kind]))
        if by_pair[(s.colour, s.kind)] == 1:
            qa.append(QA(f"where is the {s.colour} {s.kind}?", [s.position]))
            qa.append(QA(f"is the {s.colour} {s.kind} large or small?", [s.size]))
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    qa.append(QA(f"how many {colour} shapes are there?", [str(by_colour[colour])]))
    # Existence, balanced: one present pair, one drawn at random (usually absent).
    s = shapes[int(rng.integers(len(shapes)))]
    qa.append(QA(f"is there a {s.colour} {s.kind}?", ["yes"]))
    c, k = list(COLOURS)[int(rng.integers(len(COLOURS)))], KINDS[int(rng.integers(len(KINDS)))]
    qa.append(QA(f"is there a {c} {k}?", ["yes" if by_pair[(c, k)] else "no"]))
    unique = [s for s in shapes if by_pair[(s.colour, s.kind)] == 1]
    if len(unique) >= 2:
        i, j = rng.choice(len(unique), size=2, replace=False)
        a, b = unique[int(i)], unique[int(j)]
        asked = list(_REL_WORDS)[int(rng.integers(4))]
        qa.append(
            QA(
                f"is the {a.colour} {a.kind} {_REL_WORDS[asked]} the {b.colour} {b.kind}?",
                ["yes" if _holds(a, b, asked) else "no"],
            )
        )
    return qa


def _holds(a: Shape, b: Shape, rel: str) -> bool:
    return {"left of": a.col < b.col, "right of": a.col > b.col, "above": a.row < b.row, "below": a.row > b.row}[rel]


# --------------------------------------------------------------------------------------------
# Reading text back
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """A shape phrase found in text: 'two large red circles' -> (2, 'large', 'red', 'circle')."""

    count: int
    size: str | None
    colour: str
    kind: str


_NUM = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3, "four": 4}
_MENTION_RE = re.compile(
    r"\b(?:(a|an|one|two|three|four)\s+)?(?:(small|large)\s+)?("
    + "|".join(COLOURS)
    + r")\s+("
    + "|".join(KINDS)
    + r")(es|s)?\b"
)
_RELATION_RE = re.compile(
    r"(?:(small|large)\s+)?("
    + "|".join(COLOURS)
    + r")\s+("
    + "|".join(KINDS)
    + r")\s+(to the left of|to the right of|above|below)"
    r"\s+(?:a|an|the)\s+(?:(?:small|large)\s+)?(" + "|".join(COLOURS) + r")\s+(" + "|".join(KINDS) + r")\b"
)


def parse_mentions(text: str) -> list[Mention]:
    """Every (count, size, colour, kind) shape phrase in ``text``, in order."""
    out = []
    for m in _MENTION_RE.finditer(text.lower()):
        num, size, colour, kind, plural = m.groups()
        count = _NUM[num] if num else (2 if plural else 1)
        out.append(Mention(count, size, colour, kind))
    return out


def mentioned_pairs(text: str) -> Counter:
    """Multiset of (colour, kind) named in ``text``, counts included."""
    c: Counter = Counter()
    for m in parse_mentions(text):
        c[(m.colour, m.kind)] += m.count
    return c


def caption_names_scene(scene: Scene, caption: str) -> bool:
    """The caption attribute check: ``caption`` names every shape's colour and kind, with the
    right counts, and no other shape."""
    return mentioned_pairs(caption) == Counter((s.colour, s.kind) for s in scene.shapes)


def parse_relations(text: str) -> list[tuple[tuple[str, str], str, tuple[str, str]]]:
    """Stated relations: [((colour, kind), 'left of'|'right of'|'above'|'below', (colour, kind))]."""
    out = []
    for m in _RELATION_RE.finditer(text.lower()):
        _, c1, k1, rel, c2, k2 = m.groups()
        out.append(((c1, k1), rel.replace("to the ", ""), (c2, k2)))
    return out


# --------------------------------------------------------------------------------------------
# Referring to one shape (grounding)
# --------------------------------------------------------------------------------------------


def referring_phrases(scene: Scene, index: int) -> list[str]:
    """The phrases that single out shape ``index`` of ``scene``, shortest first: "the red
    circle" when no other shape is a red circle, "the small red circle" when its size tells it
    apart, and always "the red circle in the top left corner" (shapes sit in distinct cells)."""
    s = scene.shapes[index]
    pairs = Counter((t.colour, t.kind) for t in scene.shapes)
    triples = Counter((t.size, t.colour, t.kind) for t in scene.shapes)
    out = []
    if pairs[(s.colour, s.kind)] == 1:
        out.append(f"the {s.colour} {s.kind}")
    if triples[(s.size, s.colour, s.kind)] == 1:
        out.append(f"the {s.size} {s.colour} {s.kind}")
    return out + [f"the {s.colour} {s.kind} {_where(s)}"]


def region_description(shape: Shape) -> str:
    """What a region is, as referring-expression generation answers: "a small red circle"."""
    return _noun(shape, True)


def attribute_question(shape: Shape, attribute: str) -> str:
    """A question about one attribute of ``shape`` that refers to it in words, by its cell and
    its other attributes (never the one asked): "what colour is the circle in the top left
    corner?" (a shape's cell singles it out)."""
    where = _where(shape)
    if attribute == "colour":
        return f"what colour is the {shape.kind} {where}?"
    if attribute == "kind":
        return f"what shape is the {shape.colour} object {where}?"
    assert attribute == "size", attribute
    return f"is the {shape.colour} {shape.kind} {where} large or small?"
