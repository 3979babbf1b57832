"""VQA metrics: hand-computed official values, the official quirks, and a cross-check against a
direct transcription of the official evaluation loop (GT-Vision-Lab/VQA vqaEval.py)."""

from __future__ import annotations

import random
import re

import pytest

from lavit.metrics.vqa import (
    ARTICLES,
    COMMA_STRIP,
    CONTRACTIONS,
    MANUAL_MAP,
    PERIOD_STRIP,
    PUNCTUATION,
    exact_match,
    normalize_answer,
    vqa_accuracy,
    vqa_scores,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes.", "yes"),  # period not followed by a digit goes, then lower-case
        ("two", "2"),
        ("none", "0"),  # official: "none" is a number word
        ("a dog", "dog"),
        ("The red car", "red car"),
        ("dont", "don't"),
        ("don't", "don't"),  # the apostrophe is not in the punctuation list
        ("Im", "im"),  # the key "Im" never fires: the text is lower-cased first
        ("black/white", "black white"),  # '/' touching no space -> a space
        ("black / white", "black white"),  # '/' touching a space -> deleted; split/join drops the double space
        ("1,000", "1000"),  # a digit,digit anywhere -> every punctuation mark is deleted
        ("3.5", "3.5"),  # period followed by a digit stays
        ("u.s.a.", "usa"),
        ("yes!", "yes"),
        ("  Two\tdogs\n", "2 dogs"),
        ("." * 40, "." * 8),  # re.UNICODE lands in sub's count: at most 32 periods go
    ],
)
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


RED2_BLUE8 = ["red"] * 2 + ["blue"] * 8

# (prediction, answers, hand-computed official accuracy)
CASES = [
    # 10 identical answers, each subset of 9 has 9 matches -> min(1, 9/3) = 1
    ("yes.", ["yes"] * 10, 1.0),
    ("two", ["2"] * 10, 1.0),
    ("a dog", ["dog"] * 10, 1.0),
    ("dont", ["don't"] * 10, 1.0),
    # m = 2 of 10: leaving out a "red" leaves 1 match (1/3), a "blue" leaves 2 (2/3):
    # (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10
    ("red", RED2_BLUE8, 0.6),
    ("Blue", RED2_BLUE8, 1.0),  # m = 8: every subset has >= 7 matches
    ("green", RED2_BLUE8, 0.0),
    # exactly 3 matches: leaving out a match leaves 2 (2/3), a non-match leaves 3 (1):
    # (3 * 2/3 + 7 * 1) / 10 = (2 + 7) / 10 = 0.9
    ("red", ["red"] * 3 + ["blue"] * 7, 0.9),
    ("red", ["red"] * 4 + ["blue"] * 6, 1.0),  # (4 * 1 + 6 * 1) / 10
    ("red", ["red"] + ["blue"] * 9, 0.3),  # (1 * 0 + 9 * 1/3) / 10
    # references are punctuation-processed only when annotators disagree: "yes." stays "yes." ...
    ("yes.", ["yes."] * 10, 0.0),
    # ... but with one dissenter they become "yes": m = 9 -> (9 * 1 + 1 * 1) / 10
    ("yes.", ["yes."] * 9 + ["no"], 1.0),
    ("yes", ["Yes"] * 10, 0.0),  # references are never lower-cased
    # two answers (not a VQAv2 case): m = 2 -> 2 * min(1, 1/3) / 2
    ("red", ["red", "red"], 1 / 3),
    # a single answer: our documented exact match after normalising both sides
    ("Two.", ["2"], 1.0),
    ("3", ["2"], 0.0),
    ("The Dog", ["a dog"], 1.0),
]


@pytest.mark.parametrize(("prediction", "answers", "expected"), CASES)
def test_vqa_accuracy_hand_computed(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected, abs=1e-12)


# --- a direct transcription of the official code (dict-based), to cross-check -------------------


def _official_process_punctuation(inText):
    outText = inText
    for p in PUNCTUATION:
        if (p + " " in inText or " " + p in inText) or (re.search(COMMA_STRIP, inText) is not None):
            outText = outText.replace(p, "")
        else:
            outText = outText.replace(p, " ")
    return PERIOD_STRIP.sub("", outText, re.UNICODE)  # sic: the flag is the count


def _official_process_digit_article(inText):
    manualMap = dict(MANUAL_MAP)
    outText = []
    for word in inText.lower().split():
        word = manualMap.setdefault(word, word)
        if word not in ARTICLES:
            outText.append(word)
    for wordId, word in enumerate(outText):
        if word in CONTRACTIONS:
            outText[wordId] = CONTRACTIONS[word]
    return " ".join(outText)


def _official_accuracy(prediction, answers):
    # The annotation format: answer dicts whose unique answer_id makes `item != gtAnsDatum` leave out one.
    gts = {"answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}
    resAns = prediction.replace("\n", " ").replace("\t", " ").strip()
    resAns = _official_process_digit_article(_official_process_punctuation(resAns))
    gtAcc = []
    gtAnswers = [ans["answer"] for ans in gts["answers"]]
    if len(set(gtAnswers)) > 1:
        for ansDic in gts["answers"]:
            ansDic["answer"] = _official_process_punctuation(ansDic["answer"])
    for gtAnsDatum in gts["answers"]:
        otherGTAns = [item for item in gts["answers"] if item != gtAnsDatum]
        matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
        gtAcc.append(min(1, float(len(matchingAns)) / 3))
    return float(sum(gtAcc)) / len(gtAcc)


def test_matches_official_loop():
    multi = [(p, a) for p, a, _ in CASES if len(a) > 1]
    rng = random.Random(0)
    vocab = ["yes", "Yes.", "no", "2", "two", "a dog", "dog", "dont", "don't", "black/white", "1,000", "1000", "red!"]
    for _ in range(300):
        answers = [rng.choice(vocab) for _ in range(rng.choice([2, 3, 5, 10]))]
        multi.append((rng.choice(vocab), answers))
    for prediction, answers in multi:
        assert vqa_accuracy(prediction, answers) == pytest.approx(_official_accuracy(prediction, answers), abs=1e-12)


# --- GQA exact match and the corpus-level scores --------------------------------------------------


@pytest.mark.parametrize(
    ("prediction", "answer", "expected"),
    [("Yes.", "yes", 1.0), (" Left ", "left", 1.0), ("a dog", "dog", 0.0), ("two", "2", 0.0), ("no", "yes", 0.0)],
)
def test_exact_match(prediction, answer, expected):
    assert exact_match(prediction, answer) == expected


def test_vqa_scores():
    refs = {"q1": ["yes"] * 10, "q2": RED2_BLUE8, "q3": ["left"]}
    out = vqa_scores({"q1": "Yes", "q2": "red"}, refs)
    assert out == {"accuracy": pytest.approx(100 * (1.0 + 0.6) / 2), "count": 2}
    assert vqa_scores({"q3": "Left.", "q1": "no"}, refs, metric="exact_match") == {"accuracy": 50.0, "count": 2}


def test_vqa_scores_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"no reference answers, e\.g\. \['q9'\]"):
        vqa_scores({"q1": "yes", "q9": "no"}, {"q1": ["yes"]})
    with pytest.raises(ValueError, match="unknown VQA metric 'bleu'"):
        vqa_scores({"q1": "yes"}, {"q1": ["yes"]}, metric="bleu")
    with pytest.raises(ValueError, match="empty reference list"):
        vqa_scores({"q1": "yes"}, {"q1": []})
    with pytest.raises(ValueError, match="at least one reference"):
        vqa_accuracy("yes", [])


def test_accepted_answers_score_a_right_answer_fully_where_the_official_formula_gives_a_sixth():
    from lavit.metrics.vqa import accepted_accuracy, answer_accuracy

    accepted = ["three", "3"]  # a JSONL line's accepted answers, not two annotators'
    assert vqa_accuracy("three", accepted) == pytest.approx(1 / 6)  # why JSONL is not scored officially
    assert accepted_accuracy("Three.", accepted) == accepted_accuracy("3", accepted) == 1.0
    assert accepted_accuracy("eight", accepted) == 0.0
    assert answer_accuracy("three", accepted) == 1.0
    annotators = ["yes"] * 2 + ["no"] * 8  # VQAv2-style: ten annotators, the official formula
    assert answer_accuracy("yes", annotators) == vqa_accuracy("yes", annotators) == pytest.approx(0.6)
    assert vqa_scores({"q": "3"}, {"q": accepted}, metric="accepted")["accuracy"] == 100.0
    with pytest.raises(ValueError, match="at least one reference"):
        answer_accuracy("yes", [])
