"""Judges that read what a ShapesWorld image or code sequence shows against the scene it came
from: the parser's verdict on reconstructed images (:func:`judge_scenes`) and the linear probe
of what a tokenizer's codes say about the scene (:func:`code_probe`). Training stages reach them
through :mod:`lavit.data.annotations`; the evaluation scripts' ShapesWorld scores are in
:mod:`lavit.evaluation.tasks`."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lavit.data.shapes.parser import attributes_kept, parse_scene, scene_recovered
from lavit.data.shapes.world import COLOURS, KINDS, Scene
from lavit.data.transforms import to_pil


def judge_scenes(scenes: list[Scene], images: torch.Tensor) -> tuple[int, int]:
    """(kept, recovered): how many ``images`` (B, 3, H, W) in [0, 1] the ShapesWorld parser
    reads back with every shape's colour and kind (kept), and as the whole scene (recovered)."""
    kept = recovered = 0
    for scene, image in zip(scenes, images, strict=True):
        parsed = parse_scene(to_pil(image))
        kept += attributes_kept(scene, parsed)
        recovered += scene_recovered(scene, parsed)
    return kept, recovered


def code_probe(codes: list[torch.Tensor], scenes: list[Scene], codebook_size: int, train_share: float = 0.5) -> dict:
    """What codes say about the scene: a linear multi-label probe on the bag of codes (code
    counts) predicts which colours, and which (colour, kind) pairs, a scene holds. Fitted on the
    first ``train_share`` of the scenes; the score is the share of the rest whose whole set is
    right. Order-free, so a lower bound on what a sequence model (the LM) can read."""
    colours, pairs = list(COLOURS), [(c, k) for c in COLOURS for k in KINDS]
    y_col, y_pair = torch.zeros(len(scenes), len(colours)), torch.zeros(len(scenes), len(pairs))
    for i, scene in enumerate(scenes):
        for s in scene.shapes:
            y_col[i, colours.index(s.colour)] = 1
            y_pair[i, pairs.index((s.colour, s.kind))] = 1
    bags = torch.stack([torch.bincount(c.cpu(), minlength=codebook_size).float() for c in codes])
    n_train = int(train_share * len(scenes))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return {
            "probe_colour_set_acc": _set_accuracy(bags, y_col, n_train),
            "probe_colour_kind_set_acc": _set_accuracy(bags, y_pair, n_train),
        }


@torch.enable_grad()
def _set_accuracy(x: torch.Tensor, y: torch.Tensor, n_train: int, steps: int = 500) -> float:
    """Fit a linear multi-label probe on the first ``n_train`` rows (full-batch Adam, a fixed
    number of steps whatever ``n_train``); exact-set accuracy on the rest."""
    probe = torch.nn.Linear(x.shape[1], y.shape[1])
    opt = torch.optim.Adam(probe.parameters(), 3e-2, weight_decay=1e-4)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(probe(x[:n_train]), y[:n_train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(((probe(x[n_train:]) > 0) == (y[n_train:] > 0)).all(1).float().mean())
