"""Caption metrics: equal to pycocoevalcap's scorers called directly, ordered sensibly, the Python
tokenizer equal to PTB on ordinary captions, METEOR's JVM closed, and the errors / fallbacks."""

from __future__ import annotations

import os
import shutil
import threading
from types import SimpleNamespace

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from lavit.metrics.caption import _close_meteor, caption_scores, python_tokenize

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="needs Java (PTBTokenizer / METEOR)")

REFS = {
    "1": ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean."],
    "2": ["Two dogs are playing in the grass.", "Two brown dogs play on a green lawn."],
    "3": ["A plate of food with broccoli and rice.", "A white plate topped with rice and broccoli."],
    "4": ["A red double decker bus on a city street.", "A bus drives down the street past buildings."],
}
GOOD = {k: v[0] for k, v in REFS.items()}
WRONG = {
    "1": "A cat sleeping on a couch.",
    "2": "A plate of pasta on a table.",
    "3": "Two men playing tennis.",
    "4": "A bird flying over the sea.",
}
PARTIAL = {
    "1": "A man on a surfboard riding a wave.",
    "2": "Two dogs playing on the grass.",
    "3": "A plate with rice and some vegetables.",
    "4": "A red bus driving down a street.",
}

# Raw caption -> PTBTokenizer's output with PTB_PUNCTUATIONS dropped (checked against Java below).
TOKENIZED = {
    "A man riding a wave on top of a surfboard.": "a man riding a wave on top of a surfboard",
    "Two dogs don't play; they're sleeping!": "two dogs do n't play they 're sleeping",
    "The dog's toy (red) is on the U.S. flag...": "the dog 's toy -lrb- red -rrb- is on the u.s. flag",
    'A black-and-white photo of 3.5 cats, 1,000 birds & "quoted" text.': (
        "a black-and-white photo of 3.5 cats 1,000 birds & quoted text"
    ),
    "It's 5 o'clock -- time for tea?": "it 's 5 o'clock time for tea",
    "Mr. Smith's car is at 10:30 p.m. today": "mr. smith 's car is at 10:30 p.m. today",
    "A dog. A cat sits.": "a dog a cat sits",
    "He said 'hi' to the dogs' owner": "he said hi to the dogs owner",
    "It costs $5.99, I cannot pay 50%.": "it costs $ 5.99 i can not pay 50 %",
    'A man standing near a truck with a sign that reads "STOP".': (
        "a man standing near a truck with a sign that reads stop"
    ),
    "a cat's paw can't won't isn't": "a cat 's paw ca n't wo n't is n't",
    "Hello world!!  A T-shirt.": "hello world !! a t-shirt",
}


def test_python_tokenize_table():
    for raw, expected in TOKENIZED.items():
        assert python_tokenize(raw) == expected, raw


@needs_java
def test_python_tokenize_matches_ptb():
    ptb = PTBTokenizer().tokenize({i: [{"caption": raw}] for i, raw in enumerate(TOKENIZED)})
    assert [ptb[i][0] for i in range(len(TOKENIZED))] == list(TOKENIZED.values())


@pytest.mark.parametrize("tokenizer", ["python", pytest.param("ptb", marks=needs_java)])
def test_scores_equal_pycocoevalcap_called_directly(tokenizer):
    out = caption_scores(PARTIAL, REFS, metrics=("bleu4", "rouge_l", "cider"), tokenizer=tokenizer)
    if tokenizer == "ptb":
        gts = PTBTokenizer().tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
        res = PTBTokenizer().tokenize({k: [{"caption": c}] for k, c in PARTIAL.items()})
    else:
        gts = {k: [python_tokenize(c) for c in v] for k, v in REFS.items()}
        res = {k: [python_tokenize(c)] for k, c in PARTIAL.items()}
    assert out["bleu4"] == pytest.approx(Bleu(4).compute_score(gts, res, verbose=0)[0][3], abs=1e-12)
    assert out["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-12)
    assert out["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-12)
    assert 0 < out["bleu4"] < 1 and 0 < out["cider"]


def test_perfect_beats_partial_beats_wrong():
    metrics = ("bleu1", "bleu4", "rouge_l", "cider")
    good, partial, wrong = (caption_scores(p, REFS, metrics, tokenizer="python") for p in (GOOD, PARTIAL, WRONG))
    assert list(good) == list(metrics)
    for m in metrics:
        assert good[m] > partial[m] > wrong[m], m


def _java_children() -> list[int]:
    """Child processes of this test process whose command is java (read from /proc)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()  # "pid (comm) state ppid ..."
        except OSError:  # the process ended meanwhile
            continue
        comm, rest = stat.split(" ", 1)[1].rsplit(")", 1)
        if comm == "(java" and int(rest.split()[1]) == os.getpid():
            pids.append(int(entry))
    return pids


@needs_java
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc to find the METEOR process")
def test_meteor_runs_and_its_jvm_is_closed():
    out = caption_scores(GOOD, REFS)  # auto -> PTB + METEOR
    assert list(out) == ["bleu4", "meteor", "rouge_l", "cider"]
    assert out["meteor"] > 0.95  # identical captions: only METEOR's fragmentation penalty remains
    assert _java_children() == []


@needs_java
def test_meteor_failure_warns_and_is_left_out(monkeypatch):
    monkeypatch.setattr("pycocoevalcap.meteor.meteor.METEOR_JAR", "missing-meteor.jar")  # the JVM exits at once
    with pytest.warns(UserWarning, match=r"METEOR skipped: its Java process failed.*missing-meteor\.jar"):
        out = caption_scores(GOOD, REFS, metrics=("meteor", "cider"), tokenizer="python")
    assert list(out) == ["cider"]


def test_without_java(monkeypatch):
    monkeypatch.setattr("lavit.metrics.caption.shutil.which", lambda name: None)
    with pytest.warns(UserWarning, match="Java is not on the PATH: METEOR is skipped"):
        out = caption_scores(PARTIAL, REFS, tokenizer="auto")
    assert out == caption_scores(PARTIAL, REFS, metrics=("bleu4", "rouge_l", "cider"), tokenizer="python")
    with pytest.raises(RuntimeError, match="tokenizer='ptb' needs Java.*tokenizer='python'"):
        caption_scores(PARTIAL, REFS, tokenizer="ptb")


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"different ids: 1 prediction\(s\) without references \(e\.g\. \['9'\]\)"):
        caption_scores({**GOOD, "9": "a dog"}, REFS, tokenizer="python")
    with pytest.raises(ValueError, match=r"1 reference\(s\) without a prediction \(e\.g\. \['4'\]\)"):
        caption_scores({k: GOOD[k] for k in ("1", "2", "3")}, REFS, tokenizer="python")
    with pytest.raises(ValueError, match=r"unknown caption metric\(s\) \['spice'\]"):
        caption_scores(GOOD, REFS, metrics=("cider", "spice"), tokenizer="python")
    with pytest.raises(ValueError, match="unknown caption tokenizer 'nltk'"):
        caption_scores(GOOD, REFS, tokenizer="nltk")


def test_closing_a_dead_meteor_jvm_does_not_raise():
    """A JVM that died with bytes still buffered for its stdin makes close() raise BrokenPipeError
    (seen once in CI); closing must go on, so the failure is reported as a warning."""

    class DeadStdin:
        def close(self):
            raise BrokenPipeError(32, "Broken pipe")

    class Stream:
        def __init__(self, data=b""):
            self.data = data

        def read(self):
            return self.data

        def close(self):
            pass

    proc = SimpleNamespace(
        stdin=DeadStdin(),
        stdout=Stream(),
        stderr=Stream(b"Error: Unable to access jarfile x.jar\n"),
        kill=lambda: None,
        wait=lambda: 0,
    )
    meteor = SimpleNamespace(lock=threading.Lock(), meteor_p=proc)
    meteor.lock.acquire()  # compute_score leaves it held when it raises
    assert _close_meteor(meteor) == "Error: Unable to access jarfile x.jar"
    assert not meteor.lock.locked()
