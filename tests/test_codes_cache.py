"""The shared code cache: reused when nothing changed, rebuilt when the tokenizer's config (not
only its weights) changes what it encodes; sharded, read back lazily as records."""

import dataclasses
import json

import torch

from lavit.config import DataConfig, ShapesWorldConfig, SourceConfig
from lavit.data.shapes import Scene
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.transforms import to_tensor
from lavit.train.codes_cache import codes_dataset
from tokenizer import load_tokenizer


def with_selector(tok, **changes):
    tok.cfg = dataclasses.replace(tok.cfg, selector=dataclasses.replace(tok.cfg.selector, **changes))
    return tok


def shapes_data(**world) -> DataConfig:
    return DataConfig(shapes=ShapesWorldConfig(resolution=32, train_size=64, **world))


def test_cache_follows_the_tokenizers_keep_share(tmp_path, tokenizer_dir):
    tok = with_selector(load_tokenizer(tokenizer_dir), inference="topk", target_keep=0.5)
    n = tok.cfg.encoder.num_patches
    index = tmp_path / "train-0" / "index.json"
    half = codes_dataset(tok, tokenizer_dir, shapes_data(), "train", tmp_path, limit=8)
    assert [half.codes(i).numel() for i in range(8)] == [n // 2] * 8
    mtime = index.stat().st_mtime_ns
    again = codes_dataset(tok, tokenizer_dir, shapes_data(), "train", tmp_path, limit=8)
    assert index.stat().st_mtime_ns == mtime and all(torch.equal(half.codes(i), again.codes(i)) for i in range(8))
    fewer = codes_dataset(tok, tokenizer_dir, shapes_data(), "train", tmp_path, limit=4)  # a prefix: reused
    assert len(fewer) == 4 and index.stat().st_mtime_ns == mtime
    more = codes_dataset(with_selector(tok, target_keep=0.75), tokenizer_dir, shapes_data(), "train", tmp_path, limit=8)
    assert [more.codes(i).numel() for i in range(8)] == [round(0.75 * n)] * 8 and index.stat().st_mtime_ns != mtime


def test_shapes_records_are_the_scenes_in_order_and_sharded(tmp_path, tokenizer_dir):
    """Record i is scene i of the train split (codes of its image, its words and scene), written
    in shards of ``shard_items`` and read back lazily; a changed ShapesWorld re-extracts."""
    tok = load_tokenizer(tokenizer_dir)
    ds = codes_dataset(tok, tokenizer_dir, shapes_data(), "train", tmp_path, limit=10, shard_items=4, batch_size=3)
    index = json.loads((tmp_path / "train-0" / "index.json").read_text())
    assert [s["count"] for s in index["shards"]] == [4, 4, 2] and len(ds) == 10
    world = ShapesWorld(shapes_data().shapes, "train")
    direct = tok.encode(torch.stack([to_tensor(world.image(i), tok.cfg.encoder.image_size) for i in range(10)]))
    for i in (0, 5, 9):
        record, (captions, qa, prompt) = ds[i], world.words(i)
        assert torch.equal(record.codes, direct[i]) and torch.equal(ds.codes(i), direct[i])
        assert record.captions == captions and record.qa == qa and record.meta["prompt"] == prompt
        assert (
            Scene.from_dict(record.meta["scene"]) == world.scene(i)
            and ds.image(i).tobytes() == world.image(i).tobytes()
        )
    assert sum(c.numel() for c in ds.all_codes()) == sum(c.numel() for c in direct)
    mtime = (tmp_path / "train-0" / "index.json").stat().st_mtime_ns
    codes_dataset(tok, tokenizer_dir, shapes_data(seed=1), "train", tmp_path, limit=10)
    assert (tmp_path / "train-0" / "index.json").stat().st_mtime_ns != mtime


def test_val_split_and_a_mixture_of_sources(tmp_path, tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    data = dataclasses.replace(
        shapes_data(),
        train=[SourceConfig(kind="shapes", split="train", limit=6), SourceConfig(kind="shapes", split="val", weight=2)],
    )
    mix = codes_dataset(tok, tokenizer_dir, data, "train", tmp_path, limit=6)
    assert len(mix) == 12 and {(tmp_path / f"train-{i}" / "index.json").is_file() for i in (0, 1)} == {True}
    kinds = {mix[i].image_id.split("-")[1] for i in range(len(mix))}
    assert kinds == {"train", "val"}
    val = codes_dataset(tok, tokenizer_dir, shapes_data(), "val", tmp_path, limit=3)
    assert [val[i].image_id for i in range(3)] == ["shapes-val-0", "shapes-val-1", "shapes-val-2"]
