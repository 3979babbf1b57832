"""benchmarks/sequence_probe.py: cell labels, the multiset score, and a probe that reads tokens
naming the scene but not tokens that do not."""

import sys
from pathlib import Path

import torch

from lavit.data.shapes import Scene, Shape

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from sequence_probe import PAIRS, cell_labels, fit_probe, multiset_accuracy  # noqa: E402


def test_cell_labels_and_multiset_score():
    scene = Scene(
        shapes=(Shape("red", "circle", "small", 0, 2, 0.8, 0.2), Shape("blue", "cross", "large", 2, 1, 0.5, 0.8)),
        background=0.5,
    )
    y = cell_labels(scene)
    assert y.tolist() == [0, 0, 1 + PAIRS.index(("red", "circle")), 0, 0, 0, 0, 1 + PAIRS.index(("blue", "cross")), 0]
    moved = torch.roll(y, 1)  # same shapes in other cells: still the same multiset
    wrong = y.clone()
    wrong[2] = 1 + PAIRS.index(("red", "square"))
    assert multiset_accuracy(torch.stack([moved, wrong]), torch.stack([y, y])) == 0.5


def test_probe_reads_tokens_that_name_the_scene_and_not_noise():
    torch.manual_seed(0)
    n, length = 1200, 9
    y = torch.randint(0, 1 + len(PAIRS), (n, 9)) * (torch.rand(n, 9) < 0.3)
    named = torch.nn.functional.one_hot(y, 1 + len(PAIRS)).float()  # token i names cell i
    noise = torch.randn(n, length, 1 + len(PAIRS))
    mask = torch.ones(n, length, dtype=torch.bool)
    split = 1000

    def score(x):
        return fit_probe((x[:split], mask[:split], y[:split]), (x[split:], mask[split:], y[split:]), 400, 64, 64, 1)

    good, bad = score(named), score(noise)
    assert good["cell_accuracy"] > 0.95 and good["scene_set_accuracy"] > 0.7
    assert bad["scene_set_accuracy"] < 0.2
