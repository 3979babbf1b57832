"""Caption metrics (BLEU, METEOR, ROUGE-L, CIDEr) through pycocoevalcap, the COCO caption evaluation.

We call pycocoevalcap's own scorers, the code behind published COCO / Flickr30k / NoCaps numbers,
on captions tokenized as its ``eval.py`` does: Stanford's PTBTokenizer (Java) lower-cases and
splits, then the tokens in :data:`PTB_PUNCTUATIONS` are dropped. Scores are reported as
pycocoevalcap returns them, as fractions: CIDEr 1.346 is the "134.6" of papers, BLEU-4 0.403 is
"40.3". ``bleu4`` is the 4th value of ``Bleu(4)`` (``"closest"`` reference length), ``cider`` is
pycocoevalcap's CIDEr-D, whose document frequencies come from the references being scored, so it
depends on the whole set (on a single image it is always 0: every n-gram has idf log(1/1) = 0).

Java is needed by the PTB tokenizer and by METEOR. Without it, ``tokenizer="auto"`` warns, skips
METEOR and uses :func:`python_tokenize`, a regex imitation of PTBTokenizer: on ordinary captions it
gives the same tokens (tested); it differs on rare forms (``'90s``, ``yes!no``, ``#1``, unknown
abbreviations with a period), so fallback numbers are close to, not exactly, the official ones.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Sequence
from typing import Any

# Copied from pycocoevalcap 1.2 tokenizer/ptbtokenizer.py. Upper-case "-LRB-" etc. never match
# the lower-cased output ("-lrb-"), so brackets survive as tokens there; we keep that behaviour.
PTB_PUNCTUATIONS = (
    "''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";",
)  # fmt: skip

METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")
TOKENIZERS = ("auto", "ptb", "python")

# --- the Python fallback tokenizer --------------------------------------------------------------

_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
# Words PTBTokenizer splits in two, and abbreviations whose final period it keeps.
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co", "corp", "ltd", "prof", "mt"}
_CLITICS = "s|m|d|re|ve|ll"  # "'s", "'m", ... split off their word
_RULES = [
    (re.compile(r"\"|''|`"), " "),  # PTB turns these into `` / '' / ` tokens, which are then dropped
    (re.compile(r"[()\[\]{}]"), lambda m: f" {_BRACKETS[m.group()]} "),
    (re.compile(r"\.{2,}"), " ... "),
    (re.compile(r"-{2,}"), " -- "),
    (re.compile(r"[;$%+=]"), r" \g<0> "),
    (re.compile(r"(?<!\d)[,:]|[,:](?!\d)"), r" \g<0> "),  # "1,000" and "10:30" stay whole
    (re.compile(r"[?!]+(?=\s|$)"), r" \g<0> "),
    (re.compile(r"(?i)\b(" + "|".join(_SPLIT_WORDS) + r")\b"), lambda m: _SPLIT_WORDS[m.group().lower()]),
    (re.compile(r"(?i)(\w)(n't)\b"), r"\1 \2"),  # "can't" -> "ca n't", as PTB does
    (re.compile(rf"(?i)(\w)('(?:{_CLITICS}))\b"), r"\1 \2"),  # "dog's" -> "dog 's"
    (re.compile(rf"(?i)(^|\s)'(?=[a-z])(?!(?:{_CLITICS})\b)"), r"\1' "),  # opening quote: 'fake'
    (re.compile(r"(\S)'(?=\s|$)"), r"\1 '"),  # closing quote or plural possessive: dogs'
]


_DOTTED = re.compile(r"(?i)(?:[a-z]+\.)+[a-z]+")  # "u.s", "p.m", "ph.d" (the final period removed)


def _is_abbreviation(token: str) -> bool:
    stem = token[:-1]
    return bool(_DOTTED.fullmatch(stem)) or (len(stem) == 1 and stem.isalpha()) or stem.lower() in _ABBREVIATIONS


def python_tokenize(caption: str) -> str:
    """Tokenize one caption like pycocoevalcap's PTBTokenizer, without Java.

    Args:
        caption: a raw caption.

    Returns:
        Lower-cased tokens joined by single spaces, PTB punctuation tokens removed. A word-final
        period is split off (and so dropped) unless the word looks like an abbreviation ("u.s.",
        "p.m.", "mr.", a single letter), as PTB keeps those.
    """
    text = " ".join(caption.split())
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    tokens = []
    for token in text.split():
        if len(token) > 1 and token.endswith(".") and not token.endswith("..") and not _is_abbreviation(token):
            tokens += [token[:-1], "."]
        else:
            tokens.append(token)
    return " ".join(t for t in (t.lower() for t in tokens) if t not in PTB_PUNCTUATIONS)


# --- tokenization and scoring -------------------------------------------------------------------


def _require_pycocoevalcap() -> None:
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError as e:
        raise ImportError("caption metrics need pycocoevalcap: pip install -e '.[eval]' (or pycocoevalcap)") from e


def _ptb_tokenize(captions: dict[Any, list[str]]) -> dict[Any, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # PTBTokenizer writes one caption per line and zips the output lines back onto the ids, so a
    # stray line break (\r, \u2028, ...) would shift every later caption; str.split() removes them all.
    data = {key: [{"caption": " ".join(c.split())} for c in caps] for key, caps in captions.items()}
    out = PTBTokenizer().tokenize(data)
    if any(len(out.get(key, [])) != len(caps) for key, caps in captions.items()):
        raise RuntimeError("PTBTokenizer returned fewer lines than captions; is Java working (java -version)?")
    return out


def tokenize_captions(captions: dict[Any, list[str]], tokenizer: str = "ptb") -> dict[Any, list[str]]:
    """Tokenize captions as pycocoevalcap's scorers expect them.

    Args:
        captions: id -> raw captions.
        tokenizer: ``"ptb"`` (Stanford PTBTokenizer, needs Java) or ``"python"`` (:func:`python_tokenize`).

    Returns:
        id -> tokenized captions (space-joined tokens), in the same order.
    """
    if tokenizer == "ptb":
        return _ptb_tokenize(captions)
    if tokenizer == "python":
        return {key: [python_tokenize(c) for c in caps] for key, caps in captions.items()}
    raise ValueError(f"unknown caption tokenizer {tokenizer!r}; use ptb or python")


def _close_meteor(meteor: Any) -> str:
    """Stop METEOR's JVM now rather than at garbage collection; return the end of its stderr.

    ``Meteor.compute_score`` keeps its (non-reentrant) lock when it raises, and ``Meteor.__del__``
    acquires that lock, so after a failure garbage collection would hang: release it first. Closing
    twice is harmless, so the later ``__del__`` finds nothing left to do.
    """
    if meteor.lock.locked():
        meteor.lock.release()
    proc = meteor.meteor_p
    with meteor.lock:
        try:
            proc.stdin.close()
        except OSError:  # a JVM that died leaves unflushable bytes in the pipe: BrokenPipeError
            pass
        proc.kill()
        proc.wait()
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stdout.close()
        proc.stderr.close()
    return " | ".join(stderr.strip().splitlines()[-3:])


def _meteor_score(gts: dict[Any, list[str]], res: dict[Any, list[str]]) -> float | None:
    """METEOR through pycocoevalcap, or None (with a warning naming the reason) if it fails."""
    from pycocoevalcap.meteor.meteor import Meteor

    try:
        meteor = Meteor()
    except OSError as e:
        warnings.warn(f"METEOR skipped: could not start its Java process ({e})", stacklevel=3)
        return None
    try:
        return float(meteor.compute_score(gts, res)[0])
    except (OSError, ValueError) as e:  # a dead JVM: broken pipe, or an empty line where a score was due
        error = e
    finally:
        stderr = _close_meteor(meteor)
    warnings.warn(
        f"METEOR skipped: its Java process failed ({type(error).__name__}: {error}); java said: {stderr or 'nothing'}. "
        "It runs with -Xmx2G: check free memory and `java -version`.",
        stacklevel=3,
    )
    return None


def caption_scores(
    predictions: dict[str, str],
    references: dict[str, list[str]],
    metrics: Sequence[str] = ("bleu4", "meteor", "rouge_l", "cider"),
    tokenizer: str = "auto",
) -> dict[str, float]:
    """Corpus-level caption metrics, as the COCO caption evaluation computes them.

    Args:
        predictions: image id -> generated caption.
        references: image id -> reference captions; must have exactly the ids of ``predictions``.
        metrics: any of ``bleu1``..``bleu4``, ``meteor``, ``rouge_l``, ``cider``.
        tokenizer: ``"auto"`` (PTB if Java is on the PATH; else a warning, METEOR skipped and the
            Python fallback), ``"ptb"`` (Java required) or ``"python"`` (:func:`python_tokenize`).

    Returns:
        metric name -> score as a fraction (pycocoevalcap's convention; x100 for papers' numbers).
        METEOR is left out, with a warning, when Java is missing or its process fails.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown caption metric(s) {unknown}; use any of {', '.join(METRICS)}")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"unknown caption tokenizer {tokenizer!r}; use one of {', '.join(TOKENIZERS)}")
    if predictions.keys() != references.keys():
        no_ref = sorted(predictions.keys() - references.keys(), key=str)
        no_pred = sorted(references.keys() - predictions.keys(), key=str)
        raise ValueError(
            f"predictions and references have different ids: {len(no_ref)} prediction(s) without references "
            f"(e.g. {no_ref[:5]}), {len(no_pred)} reference(s) without a prediction (e.g. {no_pred[:5]}); "
            "score the same set of images on both sides"
        )
    if not predictions:
        raise ValueError("caption_scores got no predictions; there is nothing to score")
    empty = [key for key, refs in references.items() if not refs]
    if empty:
        raise ValueError(f"{len(empty)} image(s) have no reference captions, e.g. {empty[:5]}; fix the annotations")
    _require_pycocoevalcap()

    has_java = shutil.which("java") is not None
    if tokenizer == "ptb" and not has_java:
        raise RuntimeError(
            "tokenizer='ptb' needs Java (pycocoevalcap runs Stanford's PTBTokenizer), but 'java' is not on "
            "the PATH: install a Java runtime (e.g. apt-get install default-jre) or use tokenizer='python'"
        )
    metrics = list(metrics)
    if tokenizer == "auto":
        tokenizer = "ptb" if has_java else "python"
        if not has_java:
            warnings.warn(
                "Java is not on the PATH: METEOR is skipped and captions are tokenized by the Python "
                "fallback (close to, not exactly, pycocoevalcap's PTBTokenizer); install Java for official numbers",
                stacklevel=2,
            )
    if "meteor" in metrics and not has_java:
        metrics.remove("meteor")

    # Tokenize predictions and references in one call: one JVM start for PTB.
    tokens = tokenize_captions(
        {**{("ref", k): v for k, v in references.items()}, **{("pred", k): [p] for k, p in predictions.items()}},
        tokenizer,
    )
    gts = {k: tokens[("ref", k)] for k in predictions}
    res = {k: tokens[("pred", k)] for k in predictions}
    return _score_tokenized(gts, res, metrics)


def _score_tokenized(gts: dict[Any, list[str]], res: dict[Any, list[str]], metrics: list[str]) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float] = {}
    bleus = [m for m in metrics if m.startswith("bleu")]
    if bleus:
        values, _ = Bleu(4).compute_score(gts, res, verbose=0)
        scores.update({m: float(values[int(m[-1]) - 1]) for m in bleus})
    if "meteor" in metrics:
        meteor = _meteor_score(gts, res)
        if meteor is not None:
            scores["meteor"] = meteor
    if "rouge_l" in metrics:
        scores["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        scores["cider"] = float(Cider().compute_score(gts, res)[0])
    return {m: scores[m] for m in metrics if m in scores}
