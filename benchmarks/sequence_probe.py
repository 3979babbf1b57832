"""What a sequence model can read from a tokenizer's tokens, printed as JSON.

A small transformer (3 blocks, 128 wide, 9 learned cell queries) reads a scene's token
sequence, in order, and names each cell of ShapesWorld's 3x3 grid: empty or one of the 30
(colour, kind) pairs. The score is the share of held-out (val) scenes whose (colour, kind)
multiset it gets right: the criterion a detokenizer's reconstruction is judged by
(:func:`lavit.data.shapes.parser.attributes_kept`). So it estimates how much of that target
the tokens allow, where ``benchmarks/code_probe.py``'s linear, order-free probe is a floor.

    python benchmarks/sequence_probe.py checkpoints/lavit-shapes-tiny/tokenizer              # codes
    python benchmarks/sequence_probe.py checkpoints/lavit-shapes-tiny/tokenizer --input features
    python benchmarks/sequence_probe.py --quick      # the shipped tokenizer, 16 + 8 scenes, 2 steps (tests)

``--input codes``: the codebook vectors of the codes (what the detokenizers read);
``--input features``: the continuous merger outputs before quantization (what the LM reads with
``understanding_input: continuous``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import torch
import torch.nn.functional as F
from bench_utils import SHIPPED_MODEL
from torch import nn

from lavit.config import ShapesWorldConfig
from lavit.data.shapes import COLOURS, KINDS, Scene
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.transforms import to_tensor
from tokenizer import DynamicVisualTokenizer, load_tokenizer

PAIRS = [(c, k) for c in COLOURS for k in KINDS]


def cell_labels(scene: Scene) -> torch.Tensor:
    """(9,) per grid cell, raster order: 0 = empty, else 1 + the index of its (colour, kind)."""
    y = torch.zeros(9, dtype=torch.long)
    for s in scene.shapes:
        y[s.row * 3 + s.col] = 1 + PAIRS.index((s.colour, s.kind))
    return y


def token_sequences(tok: DynamicVisualTokenizer, images: torch.Tensor, kind: str) -> list[torch.Tensor]:
    """B images -> B (N_i, W) sequences: code embeddings or continuous merger features."""
    if kind == "features":
        return tok.encode_features(images)
    emb, mask = tok.code_embeddings(tok.encode(images))
    return [e[m] for e, m in zip(emb, mask, strict=True)]


def pad(seqs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-aligned (B, L, W) and its (B, L) mask."""
    length = max(s.shape[0] for s in seqs)
    x = torch.zeros(len(seqs), length, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), length, dtype=torch.bool)
    for i, s in enumerate(seqs):
        x[i, : len(s)], mask[i, : len(s)] = s.float(), True
    return x, mask


class SequenceProbe(nn.Module):
    def __init__(self, in_dim: int, max_len: int, width: int = 128, depth: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(in_dim, width)
        self.pos = nn.Parameter(torch.randn(1, max_len, width) * 0.02)
        self.cells = nn.Parameter(torch.randn(1, 9, width) * 0.02)
        block = nn.TransformerEncoderLayer(width, 4, 4 * width, 0.1, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(block, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, 1 + len(PAIRS))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L, W), (B, L) -> (B, 9, 1 + pairs) logits per cell."""
        b, n = x.shape[:2]
        h = torch.cat([self.cells.expand(b, -1, -1), self.inp(x) + self.pos[:, :n]], 1)
        pad_mask = torch.cat([torch.zeros(b, 9, dtype=torch.bool), ~mask], 1)
        return self.head(self.blocks(h, src_key_padding_mask=pad_mask)[:, :9])


def multiset_accuracy(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Share of rows whose non-empty labels agree as multisets (cells may differ)."""
    return sum(_bag(p) == _bag(t) for p, t in zip(pred, truth, strict=True)) / len(truth)


def _bag(row: torch.Tensor) -> Counter:
    return Counter(int(v) for v in row if v > 0)


def fit_probe(
    train: tuple, val: tuple, steps: int, batch: int = 128, width: int = 128, depth: int = 3, seed: int = 0, log=None
) -> dict:
    """Train on ``train = (x, mask, y)``; per-cell and scene-multiset accuracy on ``val``."""
    torch.manual_seed(seed)
    x, mask, y = train
    probe = SequenceProbe(x.shape[2], max(x.shape[1], val[0].shape[1]), width, depth)
    opt = torch.optim.AdamW(probe.parameters(), 1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    for step in range(1, steps + 1):
        i = torch.randint(0, len(x), (batch,))
        loss = F.cross_entropy(probe(x[i], mask[i]).flatten(0, 1), y[i].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 500 == 0 or step == steps):
            log(step, loss.item())
    probe.eval()
    with torch.no_grad():
        pred = torch.cat(
            [probe(val[0][s : s + 500], val[1][s : s + 500]).argmax(-1) for s in range(0, len(val[0]), 500)]
        )
    return {
        "cell_accuracy": float((pred == val[2]).float().mean()),
        "scene_set_accuracy": multiset_accuracy(pred, val[2]),
    }


def scenes_and_tokens(tok: DynamicVisualTokenizer, split: str, n: int, kind: str) -> tuple:
    size = tok.cfg.encoder.image_size
    world = ShapesWorld(ShapesWorldConfig(resolution=size), split)
    seqs: list[torch.Tensor] = []
    for start in range(0, n, 250):
        idx = range(start, min(start + 250, n))
        with torch.no_grad():
            seqs += token_sequences(tok, torch.stack([to_tensor(world.image(i), size) for i in idx]), kind)
    x, mask = pad(seqs)
    return x, mask, torch.stack([cell_labels(world.scene(i)) for i in range(n)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "tokenizer_dir", nargs="?", default=str(SHIPPED_MODEL / "tokenizer"), help="default: the shipped one"
    )
    p.add_argument("--input", choices=("codes", "features"), default="codes")
    p.add_argument("--train-scenes", type=int, default=15000)
    p.add_argument("--val-scenes", type=int, default=1000)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--quick", action="store_true", help="16 train and 8 val scenes, 2 steps: the smoke test's setting")
    args = p.parse_args()
    if args.quick:
        args.train_scenes, args.val_scenes, args.steps = 16, 8, 2
    start = time.time()
    tok = load_tokenizer(args.tokenizer_dir).eval()
    train = scenes_and_tokens(tok, "train", args.train_scenes, args.input)
    val = scenes_and_tokens(tok, "val", args.val_scenes, args.input)

    def log(step: int, loss: float) -> None:
        print(json.dumps({"step": step, "loss": round(loss, 4), "seconds": round(time.time() - start)}), flush=True)

    scores = fit_probe(train, val, args.steps, log=log)
    print(
        json.dumps(
            {
                "benchmark": "sequence_probe",
                "tokenizer": args.tokenizer_dir,
                "input": args.input,
                "train_scenes": args.train_scenes,
                "val_scenes": args.val_scenes,
                "steps": args.steps,
                "tokens_per_image": float(train[1].sum(1).float().mean()),
                **{k: round(v, 4) for k, v in scores.items()},
                "seconds": round(time.time() - start),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
