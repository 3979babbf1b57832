"""The shared code cache: reused when nothing changed, rebuilt when the tokenizer's config (not
only its weights) changes what it encodes."""

import dataclasses

import torch

from lavit.config import ShapesWorldConfig
from lavit.data.shapes_dataset import ShapesWorld
from lavit.train.codes_cache import cached_codes
from tokenizer import load_tokenizer


def with_selector(tok, **changes):
    tok.cfg = dataclasses.replace(tok.cfg, selector=dataclasses.replace(tok.cfg.selector, **changes))
    return tok


def test_cache_follows_the_tokenizers_keep_share(tmp_path, tokenizer_dir):
    world = ShapesWorld(ShapesWorldConfig(resolution=32, train_size=64), "train")
    path = tmp_path / "codes.safetensors"
    tok = with_selector(load_tokenizer(tokenizer_dir), inference="topk", target_keep=0.5)
    n = tok.cfg.encoder.num_patches
    half = cached_codes(tok, tokenizer_dir, world, 8, path)
    assert [c.numel() for c in half] == [n // 2] * 8
    mtime = path.stat().st_mtime_ns
    again = cached_codes(tok, tokenizer_dir, world, 8, path)
    assert path.stat().st_mtime_ns == mtime and all(torch.equal(a, b) for a, b in zip(half, again, strict=True))
    more = cached_codes(with_selector(tok, target_keep=0.75), tokenizer_dir, world, 8, path)
    assert [c.numel() for c in more] == [round(0.75 * n)] * 8 and path.stat().st_mtime_ns != mtime
