"""lavit/data/digits.py: scikit-learn's handwritten digits as the data layer's JSONL."""

import json

from lavit.data.digits import WORDS, build
from lavit.data.sources import SourceConfig, build_source


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
