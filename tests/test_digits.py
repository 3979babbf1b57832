"""lavit/data/digits.py: scikit-learn's handwritten digits as the data layer's JSONL."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lavit.data.digits import QUESTION, WORDS, build
from lavit.data.image_io import load_image
from lavit.data.sources import SourceConfig, build_source
from lavit.evaluation.digits import DigitJudge, labelled_images, named_digits, report


def test_digits_build_a_stratified_split_the_data_layer_reads(tmp_path):
    counts = build(tmp_path, size=32, seed=0)
    assert sum(counts.values()) == 1797 and counts["train"] > 4 * counts["val"] > 0 and counts["test"] > 0
    images = {}
    for split in counts:
        lines = [json.loads(ln) for ln in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        caps = [ln for ln in lines if "text" in ln]
        assert len(caps) == counts[split] and {ln["label"] for ln in caps} == set(range(10))  # every label
        images[split] = {ln["image"] for ln in caps}
    assert not (images["train"] & images["val"]) and not (images["val"] & images["test"])  # disjoint
    ds = build_source(SourceConfig(path=str(tmp_path / "val.jsonl")))
    sample = ds[0]
    assert sample.image.size == (32, 32) and sample.image.mode == "RGB"
    label = json.loads((tmp_path / "val.jsonl").read_text().splitlines()[0])["label"]
    assert WORDS[label] in sample.captions[0]
    asked = [ds[i] for i in range(len(ds)) if ds.qa(i)]
    assert asked and asked[0].qa[0].answers[0] in WORDS
    # ink is dark on white: the corners of a digit scan are background
    assert sample.image.getpixel((0, 0))[0] > 200


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    build(folder, size=32, seed=0)
    return folder


def test_the_judge_fit_on_train_reads_real_test_digits(digits):
    train, test = labelled_images(digits, "train"), labelled_images(digits, "test")
    judge = DigitJudge([load_image(p) for p, _ in train], [y for _, y in train])
    read = judge([load_image(p) for p, _ in test])
    accuracy = sum(r == y for r, (_, y) in zip(read, test, strict=True)) / len(test)
    assert accuracy > 0.95, accuracy  # an RBF SVM on 8x8 digits is ~98-99%; the report prints the figure


def test_named_digits_reads_words_and_numerals_and_nothing_else():
    assert named_digits("A handwritten Seven.") == {7}
    assert named_digits("the digit 4, written by hand.") == {4}
    assert named_digits("a one or a 2") == {1, 2}
    assert named_digits("someone wrote it; 12 strokes") == set()  # words inside words and 12 are not digits


class _Oracle:
    """A stand-in pipeline that knows each image's label (by its pixels) and draws real digits:
    the report must score it 100% everywhere the judge is right, and its caption 10% when it
    always says 'three'."""

    def __init__(self, digits: Path, always: int | None = None) -> None:
        lines = labelled_images(digits, "test") + labelled_images(digits, "train")
        self.by_pixels = {load_image(p).tobytes(): (y, p) for p, y in lines}
        self.examples = {}
        for p, y in labelled_images(digits, "train"):
            self.examples.setdefault(y, load_image(p))
        self.always = always
        self.decoders = {"var": SimpleNamespace(resolution=32)}

    def _label(self, image) -> int:
        return self.by_pixels[image.tobytes()][0] if self.always is None else self.always

    def caption(self, images):
        return [f"a handwritten {WORDS[self._label(im)]}." for im in images]

    def answer(self, images, questions):
        assert set(questions) == {QUESTION}
        return [str(self._label(im)) for im in images]

    def reconstruct(self, images, decoder, seed):
        return list(images)

    def generate_image(self, prompts, decoder, seed):
        return [self.examples[named_digits(p).pop()] for p in prompts]


def test_the_report_scores_an_oracle_fully_and_a_constant_captioner_by_chance(digits):
    perfect = report(_Oracle(digits), digits, limit=None, per_label=2, batch_size=32, seed=0)
    assert perfect["test_images"] == 270
    assert perfect["caption"]["accuracy"] == perfect["vqa"]["accuracy"] == 100.0
    assert perfect["reconstruct_var"]["psnr"] >= 99  # identical images (PSNR capped at 1e-12 MSE)
    assert perfect["reconstruct_var"]["label_kept"] == perfect["judge"]["accuracy"]
    assert perfect["text2image_var"]["prompts"] == 20 and perfect["text2image_var"]["label_accuracy"] == 100.0
    constant = report(_Oracle(digits, always=3), digits, limit=None, per_label=1, batch_size=64, seed=0)
    labels = [y for _, y in labelled_images(digits, "test")]
    assert constant["caption"]["accuracy"] == round(100 * labels.count(3) / len(labels), 2)
