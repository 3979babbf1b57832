"""VQA accuracy as the official VQAv2 evaluation computes it, plus GQA's exact match.

Source: GT-Vision-Lab/VQA, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py`` (master, the Python 3
version; salesforce/LAVIS ``lavis/common/vqa_tools/vqa_eval.py`` is the same code). The tables
(contractions, number words, articles, punctuation) and the two regexes are copied from it, and
:func:`vqa_accuracy` reproduces its per-question loop, quirks included, so our numbers are comparable
with published VQAv2 / OK-VQA / VizWiz results:

* the prediction is always normalised (punctuation, then digits / articles / contractions);
* the ground-truth answers are only punctuation-processed, and only when the annotators disagree
  (``len(set(answers)) > 1``); they are never lower-cased (the annotation files already are);
* ``periodStrip`` is ``(?!<=\\d)(\\.)(?!\\d)``: the ``(?!<=`` is a mistyped look-behind that checks
  nothing, so every period not followed by a digit goes ("yes." -> "yes", "3.5" stays), and
  ``re.UNICODE`` is passed as ``sub``'s positional *count*, so at most 32 periods are removed;
* a punctuation mark is deleted when it touches a space (or when the text holds a ``digit,digit``)
  and replaced by a space otherwise ("black/white" -> "black white", "1,000" -> "1000");
* "none" maps to "0", like the number words; the capitalised contraction keys ("Im", "Ive") never
  fire because the text is lower-cased first.

The accuracy of one question is the mean, over the leave-one-out subsets of its reference
answers, of ``min(1, matches / 3)``: with 10 answers, 3 matching answers give
``(3 * 2/3 + 7 * 1) / 10 = 0.9`` and 4 or more give 1.0.
"""

from __future__ import annotations

import re

# fmt: off
CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
MANUAL_MAP = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
ARTICLES = ("a", "an", "the")
PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
PUNCTUATION = (
    ";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!",
)
# fmt: on

# The official code calls ``periodStrip.sub("", text, re.UNICODE)``: the flag lands in ``count``.
_PERIOD_STRIP_COUNT = int(re.UNICODE)  # 32

METRICS = ("vqa", "exact_match", "accepted")
VQA_ANNOTATORS = 10  # answers per question in VQAv2, OK-VQA and VizWiz: one per annotator


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``: drop or space out punctuation, then strip periods.

    The conditions test the *input* text, not the partly processed one, as the official code does.
    """
    out = text
    has_digit_comma = COMMA_STRIP.search(text) is not None
    for p in PUNCTUATION:
        if (p + " " in text or " " + p in text) or has_digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, number words to digits, drop articles, add
    the apostrophe to contractions, and re-join on single spaces."""
    words = [MANUAL_MAP.get(w, w) for w in text.lower().split()]
    words = [w for w in words if w not in ARTICLES]
    return " ".join(CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(answer: str) -> str:
    """Normalise an answer the way the official evaluation normalises a *prediction*.

    Args:
        answer: a free-form answer string.

    Returns:
        The answer with newlines / tabs as spaces, stripped, punctuation-processed, lower-cased,
        number words as digits, articles removed and contractions given their apostrophe.
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """Official VQA accuracy of one prediction against its reference answers (VQAv2, OK-VQA, VizWiz).

    Args:
        prediction: the model's answer, raw; it is normalised with :func:`normalize_answer`.
        answers: the reference answers as stored in the annotations (10 for VQAv2), duplicates kept.

    Returns:
        A fraction in [0, 1]: the mean over the leave-one-out subsets of ``min(1, matches / 3)``.
        With a single answer the official formula is always 0 (no answer is left to match), so we
        define it instead as an exact match after :func:`normalize_answer` of both sides (ShapesWorld).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs at least one reference answer; got an empty list")
    pred = normalize_answer(prediction)
    if len(answers) == 1:
        return float(pred == normalize_answer(answers[0]))
    if len(set(answers)) > 1:  # official quirk: references are only touched when annotators disagree
        answers = [process_punctuation(a) for a in answers]
    # Leaving out a matching answer leaves m - 1 matches, leaving out another leaves m.
    n, m = len(answers), sum(a == pred for a in answers)
    return (m * min(1.0, (m - 1) / 3) + (n - m) * min(1.0, m / 3)) / n


def accepted_accuracy(prediction: str, answers: list[str]) -> float:
    """1.0 when the prediction equals one of ``answers``, the accepted answers (a JSONL VQA line's
    ``{"answers": ["three", "3"]}``), after :func:`normalize_answer` of both sides, else 0.0.

    The official formula assumes one answer per annotator: with two accepted answers a right
    prediction matches one of them and scores 1/6 there, which is why a source without
    annotator answers is scored this way."""
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(a) for a in answers))


def answer_accuracy(prediction: str, answers: list[str]) -> float:
    """:func:`vqa_accuracy` where the references are annotators' answers (``VQA_ANNOTATORS`` or
    more of them), else :func:`accepted_accuracy`: the score of a question of any source."""
    if not answers:
        raise ValueError("answer_accuracy needs at least one reference answer; got an empty list")
    if len(answers) >= VQA_ANNOTATORS:
        return vqa_accuracy(prediction, answers)
    return accepted_accuracy(prediction, answers)


def _light_normalize(text: str) -> str:
    text = text.strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def exact_match(prediction: str, answer: str) -> float:
    """GQA accuracy of one prediction: 1.0 if it equals the answer, else 0.0.

    GQA's evaluation compares lower-cased, stripped strings; we also drop one trailing period
    ("Yes." matches "yes"), since generative models add one. Nothing else is normalised.

    Args:
        prediction: the model's answer.
        answer: the reference answer.

    Returns:
        1.0 or 0.0.
    """
    return float(_light_normalize(prediction) == _light_normalize(answer))


def vqa_scores(predictions: dict[str, str], references: dict[str, list[str]], metric: str = "vqa") -> dict[str, float]:
    """Mean accuracy of a set of predictions.

    Args:
        predictions: question id -> predicted answer. Only these questions are scored; references
            without a prediction are ignored (so a subset can be scored).
        references: question id -> reference answers.
        metric: ``"vqa"`` (:func:`vqa_accuracy`; VQAv2, OK-VQA, VizWiz, ShapesWorld),
            ``"exact_match"`` (:func:`exact_match` against any of the references; GQA has one) or
            ``"accepted"`` (:func:`accepted_accuracy`; JSONL lines list accepted answers).

    Returns:
        ``{"accuracy": mean * 100, "count": number of questions}``; a percentage like the official
        tool's "overall" (which also rounds it to 2 decimals; we do not round).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown VQA metric {metric!r}; use one of {', '.join(METRICS)}")
    if not predictions:
        raise ValueError("vqa_scores got no predictions; there is nothing to score")
    missing = [qid for qid in predictions if qid not in references]
    if missing:
        raise ValueError(
            f"{len(missing)} prediction id(s) have no reference answers, e.g. {missing[:5]}; "
            "check that predictions and annotations come from the same split (and the same id type)"
        )
    empty = [qid for qid in predictions if not references[qid]]
    if empty:
        raise ValueError(
            f"{len(empty)} question(s) have an empty reference list, e.g. {empty[:5]}; fix the annotations"
        )
    if metric == "vqa":
        scores = [vqa_accuracy(pred, references[qid]) for qid, pred in predictions.items()]
    elif metric == "accepted":
        scores = [accepted_accuracy(pred, references[qid]) for qid, pred in predictions.items()]
    else:
        scores = [max(exact_match(pred, ref) for ref in references[qid]) for qid, pred in predictions.items()]
    return {"accuracy": 100.0 * sum(scores) / len(scores), "count": len(scores)}
