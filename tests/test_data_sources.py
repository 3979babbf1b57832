"""Tests for the data layer's core: sources by name, tar shards, mixtures, exact resume.

Fixtures are written into ``tmp_path``: 8x8 images whose colour encodes their index, JSONL
files, tar shards in the img2dataset layout (``KEY.png`` + ``KEY.txt`` / ``KEY.json``).
DataLoaders run real worker processes (CPU), over shards of a few samples each.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_image
from PIL import Image
from torch.utils.data import DataLoader

from lavit.config import ConfigError, ShapesWorldConfig, load_config
from lavit.data.image_io import ImageLoadError
from lavit.data.mixture import MapStream, MixtureDataset, MixtureStream, permute
from lavit.data.readers import AnnotationError
from lavit.data.sample import Sample
from lavit.data.shards import ShardError, ShardStream, count_samples, list_shards, resume_positions
from lavit.data.sources import DataConfig, SourceConfig, build_data, build_source, expand_shorthand, resolve_kind

# ------------------------------------------------------------------------------ fixtures


def _colour(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, (i * 53 + 100) % 256)


def _png(i: int, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), _colour(i)).save(buf, format=fmt)
    return buf.getvalue()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _shard(path: Path, start: int, n: int) -> Path:
    """Samples start..start+n-1 in the img2dataset layout: KEY.png, KEY.txt, KEY.json."""
    members = []
    for i in range(start, start + n):
        key = f"{i:06d}"
        info = {"caption": f"caption {i}", "url": f"http://x/{i}.png", "width": 8}
        members += [
            (f"{key}.png", _png(i)),
            (f"{key}.txt", f"caption {i}".encode()),
            (f"{key}.json", json.dumps(info).encode()),
        ]
    return _write_tar(path, members)


def _shards(folder: Path, sizes: list[int]) -> list[str]:
    paths, start = [], 0
    for s, n in enumerate(sizes):
        paths.append(str(_shard(folder / f"{s:05d}.tar", start, n)))
        start += n
    return paths


def _ids(batch: list[Sample]) -> list[tuple[str, str, bytes]]:
    """What identifies a sample across processes: its shard, key and decoded pixels."""
    return [(Path(s.meta.get("shard", "")).name, s.image_id, s.image.tobytes()) for s in batch]


def _loader(ds: Any, workers: int, batch: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=_ids)


def _take(loader: DataLoader, n: int) -> list[list[tuple[str, str, bytes]]]:
    out, it = [], iter(loader)
    for _ in range(n):
        out.append(next(it))
    del it  # shuts the workers down
    return out


def _one_line_error(excinfo: pytest.ExceptionInfo, *names: str) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    for name in names:
        assert name in msg, f"{name!r} not in: {msg}"
    return msg


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """One small fixture per source kind."""
    for i in range(3):
        write_image(tmp_path / "img" / f"{i}.png", _colour(i))
    (tmp_path / "cap.jsonl").write_text(
        '{"image": "img/0.png", "text": "zero", "source": "web"}\n\n{"image": "img/1.png", "text": ["one", "1"]}\n'
    )
    (tmp_path / "vqa.jsonl").write_text(
        '{"image": "img/2.png", "question": "what colour?", "answers": ["teal", "green"], "question_id": 9}\n'
    )
    (tmp_path / "coco.json").write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": "0.png"}],
                "annotations": [{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}],
            }
        )
    )
    shards = _shards(tmp_path / "shards", [3, 2])
    return {"root": tmp_path, "shard0": Path(shards[0])}


# ------------------------------------------------------------------------------ every kind


def test_every_kind_yields_samples(files: dict[str, Path]) -> None:
    root = files["root"]
    shapes = build_source(SourceConfig(kind="shapes", split="val", limit=2), shapes=ShapesWorldConfig(resolution=32))
    assert len(shapes) == 2 and shapes[0].image.size == (32, 32) and shapes[0].captions and shapes[0].qa

    cap = build_source(SourceConfig(kind="jsonl", path=str(root / "cap.jsonl")))
    assert [(s.image_id, s.captions) for s in cap] == [("img/0.png", ["zero"]), ("img/1.png", ["one", "1"])]
    assert cap[0].meta == {"source": "web"} and cap[0].image.getpixel((4, 4)) == _colour(0)

    (vqa,) = build_source(SourceConfig(kind="jsonl", path=str(root / "vqa.jsonl")))
    assert (vqa.qa[0].question, vqa.qa[0].answers, vqa.qa[0].question_id, vqa.captions) == (
        "what colour?",
        ["teal", "green"],
        "9",
        [],
    )

    (coco,) = build_source(
        SourceConfig(kind="coco_captions", path=str(root / "coco.json"), image_root=str(root / "img"))
    )
    assert (coco.image_id, coco.captions) == ("1", ["a", "b"])

    folder = build_source(SourceConfig(kind="image_folder", path=str(root / "img")))
    assert [s.image_id for s in folder] == ["0.png", "1.png", "2.png"] and folder[2].captions == []

    stream = build_source(SourceConfig(kind="webdataset", path=str(root / "shards")), shuffle_buffer=1)
    got = list(stream.epoch_samples(0))
    assert sorted(s.image_id for s in got) == [f"{i:06d}" for i in range(5)]
    s = next(x for x in got if x.image_id == "000003")
    assert s.captions == ["caption 3"] and s.image.getpixel((4, 4)) == _colour(3)
    assert s.meta["url"] == "http://x/3.png" and s.meta["width"] == 8 and s.meta["shard"].endswith("00001.tar")


def test_vqav2_source(tmp_path: Path) -> None:
    write_image(tmp_path / "COCO_val2014_000000000005.jpg", _colour(5))
    (tmp_path / "q.json").write_text(
        json.dumps(
            {"data_subtype": "val2014", "questions": [{"image_id": 5, "question": "how many?", "question_id": 50}]}
        )
    )
    (tmp_path / "a.json").write_text(
        json.dumps({"annotations": [{"question_id": 50, "image_id": 5, "answers": [{"answer": "2"}] * 10}]})
    )
    (sample,) = build_source(
        SourceConfig(kind="vqav2", questions=str(tmp_path / "q.json"), path=str(tmp_path / "a.json"))
    )
    assert (sample.image_id, sample.qa[0].question, sample.qa[0].answers) == ("5", "how many?", ["2"] * 10)


def test_auto_kind_inference(files: dict[str, Path]) -> None:
    root = files["root"]
    cases = {
        "shapes": "shapes",
        str(root / "cap.jsonl"): "jsonl",
        str(files["shard0"]): "webdataset",
        str(root / "shards" / "{00000..00001}.tar"): "webdataset",
        str(root / "shards"): "webdataset",
        str(root / "img"): "image_folder",
    }
    for path, kind in cases.items():
        assert resolve_kind(SourceConfig(path=path)) == kind, path
    assert len(build_source(SourceConfig(path=str(root / "img")))) == 3
    brace = build_source(SourceConfig(path=str(root / "shards" / "{00000..00001}.tar")))
    assert isinstance(brace, ShardStream) and len(brace.shards) == 2


def test_data_config_loads_through_omegaconf_and_shorthand(files: dict[str, Path]) -> None:
    from dataclasses import dataclass, field

    @dataclass
    class Run:
        data: DataConfig = field(default_factory=DataConfig)

    cfg = load_config(None, Run, ["data.train=[{kind: jsonl, path: x.jsonl, weight: 2}, {kind: shapes}]"])
    assert [(s.kind, s.path, s.weight) for s in cfg.data.train] == [("jsonl", "x.jsonl", 2.0), ("shapes", None, 1.0)]
    assert cfg.data.val[0].kind == "shapes" and cfg.data.val[0].split == "val"
    path = str(files["root"] / "cap.jsonl")
    cfg = load_config(None, Run, expand_shorthand([f"data.train={path}", "data.val=shapes", "data.seed=3"]))
    assert (cfg.data.train[0].kind, cfg.data.train[0].path, cfg.data.val[0].path) == ("auto", path, "shapes")
    assert len(build_data(cfg.data)) == 2
    with pytest.raises(ConfigError) as e:
        load_config(None, Run, ["data.train=[{kind: parquet, path: x}]"])
    _one_line_error(e, "kind", "parquet")


# ------------------------------------------------------------------------------ shards


def test_shard_json_text_and_questions(tmp_path: Path) -> None:
    info = {"question": "colour?", "answers": ["red", "crimson"], "question_id": 4, "text": ["a", "b"], "sha": "x"}
    shard = _write_tar(tmp_path / "q.tar", [("k1.webp", _png(1, "WEBP")), ("k1.json", json.dumps(info).encode())])
    (s,) = ShardStream([str(shard)]).epoch_samples(0)
    assert (s.captions, s.qa[0].question, s.qa[0].answers, s.qa[0].question_id) == (
        ["a", "b"],
        "colour?",
        ["red", "crimson"],
        "4",
    )
    assert s.meta == {"key": "k1", "shard": str(shard), "sha": "x"} and s.image.mode == "RGB"


def test_count_samples_matches_the_stream(tmp_path: Path) -> None:
    import webdataset as wds

    path = tmp_path / "w.tar"
    with wds.TarWriter(str(path)) as sink:  # webdataset's own writer, with a __meta__ file
        for i in range(7):
            sink.write({"__key__": f"s{i}", "png": _png(i), "txt": f"t{i}"})
    _write_tar(tmp_path / "m.tar", [("__index__", b"x"), ("a.png", _png(0)), ("a.txt", b"a"), ("dir/b.png", _png(1))])
    for shard in (path, tmp_path / "m.tar"):
        assert count_samples(str(shard)) == len(list(ShardStream([str(shard)]).epoch_samples(0)))


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(tmp_path: Path) -> None:
    shards = _shards(tmp_path, [5, 3, 4, 6, 2, 5, 4, 3])  # 32 samples, uneven shards
    everything = sorted(f"{i:06d}" for i in range(32))
    orders = []
    for epoch in (0, 1):
        seen: list[str] = []
        for rank in (0, 1):
            stream = ShardStream(shards, seed=7, rank=rank, world_size=2, shuffle_buffer=4)
            for batch in DataLoader(stream.one_epoch(epoch), batch_size=2, num_workers=2, collate_fn=_ids):
                seen += [key for _, key, _ in batch]
        assert sorted(seen) == everything, f"epoch {epoch}: duplicates or gaps"
        orders.append(seen)
    assert orders[0] != orders[1]  # a new shard order and new buffers each epoch


def test_endless_stream_is_the_epochs_in_turn(tmp_path: Path) -> None:
    stream = ShardStream(_shards(tmp_path, [3, 4, 2, 5]), seed=1, shuffle_buffer=3)
    epochs = [[s.image_id for s in stream.epoch_samples(e, worker=1, num_workers=2)] for e in range(3)]
    it = stream.iter_from(1, 2, 0)
    endless = [next(it).image_id for _ in range(sum(map(len, epochs)))]
    assert endless == epochs[0] + epochs[1] + epochs[2]
    assert stream.epoch_size(2, 1, 2) == len(epochs[2])


def test_resume_positions_round_robin() -> None:
    # 5 batches of 4 taken from 2 workers: roles 0,1,0,1,0 -> role 0 gave 3, role 1 gave 2.
    assert resume_positions(5, 4, 2) == [(1, 8), (0, 12)]
    assert resume_positions(0, 4, 3) == [(0, 0), (1, 0), (2, 0)]
    assert resume_positions(3, 8, 0, grad_accum=2) == [(0, 24)]


@pytest.mark.parametrize("k", [1, 5, 12])
def test_resume_with_workers_continues_the_uninterrupted_run(tmp_path: Path, k: int) -> None:
    # 2 workers x 3 per batch; slots read ~12 samples per epoch, so k=12 resumes in epoch 2.
    stream = ShardStream(_shards(tmp_path, [5, 7, 6, 6]), seed=3, shuffle_buffer=5)
    full = _take(_loader(stream, workers=2, batch=3), k + 4)
    resumed = _take(_loader(stream.resumed(k, 3), workers=2, batch=3), 4)
    assert resumed == full[k:]


def test_resume_in_the_main_process_and_with_bad_samples(tmp_path: Path) -> None:
    shards = _shards(tmp_path, [6, 6])
    bad = _write_tar(tmp_path / "bad.tar", [("b0.png", b"not a png"), ("b0.txt", b"x"), ("b1.txt", b"no image")])
    stream = ShardStream([*shards, str(bad)], shuffle_buffer=4, max_bad_fraction=1.0)
    full = _take(_loader(stream, workers=0, batch=2), 20)
    for k in (3, 7, 13):
        assert _take(_loader(stream.resumed(k, 2), workers=0, batch=2), 3) == full[k : k + 3]


def test_mixture_stream_resumes_with_workers(tmp_path: Path) -> None:
    shards = ShardStream(_shards(tmp_path, [4, 4, 4, 4]), seed=2, shuffle_buffer=3)
    images = [Sample(Image.new("RGB", (8, 8), _colour(100 + i)), f"map{i}") for i in range(10)]
    mix = MixtureStream([shards, images], [2.0, 1.0], seed=2)
    full = _take(_loader(mix, workers=2, batch=2), 9)
    assert {key[:3] for batch in full for _, key, _ in batch} == {"000", "map"}
    assert _take(_loader(mix.resumed(5, 2), workers=2, batch=2), 4) == full[5:]


def test_bad_samples_are_skipped_counted_and_replaced(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    members = [(f"{i}.png", _png(i)) for i in range(6)]
    members[2] = ("2.png", b"\x89PNG truncated")
    members += [("9.txt", b"a caption without its image")]
    bad = str(_write_tar(tmp_path / "bad.tar", members))
    good = str(_shard(tmp_path / "good.tar", 100, 4))
    stream = ShardStream([bad, good], shuffle_buffer=1, max_bad_fraction=0.5)
    kept = list(stream.epoch_samples(0))
    good_ids = {"0", "1", "3", "4", "5", "000100", "000101", "000102", "000103"}
    assert len(kept) == 9 and {s.image_id for s in kept} == good_ids
    assert (stream.counts[bad].seen, stream.counts[bad].bad, stream.counts[good].bad) == (7, 2, 0)
    assert "2.png" in stream.counts[bad].example
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning: skipped")]
    assert len(warnings) == 2 and "2.png" in warnings[0] and bad in warnings[0]  # one line each, shard named
    assert warnings[0].endswith("(1 of 7 samples bad in this reader)") and "sample '9' has no image" in warnings[1]

    endless = ShardStream([bad, good], shuffle_buffer=1, max_bad_fraction=0.5)
    it = endless.iter_from(0, 1, 0)
    first = [next(it) for _ in range(11)]  # one output per raw sample: bad ones stand-in
    replaced = [s for s in first if "replaces" in s.meta]
    assert len(replaced) == 2 and all(s.image_id in good_ids for s in replaced)


def test_too_many_bad_samples_stop_the_run_naming_the_shard(tmp_path: Path) -> None:
    members = [(f"{i:03d}.png", _png(i) if i % 10 else b"garbage") for i in range(120)]
    bad = str(_write_tar(tmp_path / "mostly_fine.tar", members))
    stream = ShardStream([bad, str(_shard(tmp_path / "ok.tar", 0, 2))], shuffle_buffer=1, max_bad_fraction=0.05)
    with pytest.raises(ShardError) as e:
        list(stream.epoch_samples(0))
    _one_line_error(e, "mostly_fine.tar", "max_bad_fraction=0.05", "of 100 samples")
    # Through a DataLoader worker: the endless stream stands in for bad samples, then stops.
    assert "mostly_fine.tar" in _loader_error(DataLoader(stream, batch_size=4, num_workers=1, collate_fn=_ids))


def _loader_error(loader: DataLoader, batches: int = 40) -> str:
    """The ShardError message a DataLoader raises within ``batches``. The traceback is dropped
    so the iterator dies now by refcount: shut down later by the garbage collector, its
    workers take the DataLoader's 5 s status timeout to stop."""
    it = iter(loader)
    try:
        for _ in range(batches):
            next(it)
    except ShardError as e:
        e.__traceback__ = None
        return str(e)
    finally:
        del it
    raise AssertionError(f"no ShardError within {batches} batches")


def test_photo_like_images_through_jsonl_and_shards(tmp_path: Path) -> None:
    """JPEGs as cameras write them (EXIF rotation, CMYK, progressive, greyscale) and a 16-bit PNG."""
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 48 * 32).reshape(32, 48)
    photo = Image.fromarray(np.stack([smooth, smooth[::-1], rng.random((32, 48)) * 255], -1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    variants = {
        "exif.jpg": {"format": "JPEG", "exif": exif.tobytes()},
        "cmyk.jpg": {"format": "JPEG", "mode": "CMYK"},
        "progressive.jpg": {"format": "JPEG", "progressive": True, "quality": 80},
        "grey.jpg": {"format": "JPEG", "mode": "L"},
        "deep.png": {"format": "PNG", "mode": "I;16"},
    }
    lines, members = [], []
    for name, opts in variants.items():
        opts = dict(opts)
        mode = opts.pop("mode", "RGB")
        img = photo.convert("L").convert("I;16") if mode == "I;16" else photo.convert(mode)
        buf = io.BytesIO()
        img.save(buf, **opts)
        (tmp_path / name).write_bytes(buf.getvalue())
        lines.append(json.dumps({"image": name, "text": name}))
        key, ext = name.split(".")
        members += [(f"{key}.{ext}", buf.getvalue()), (f"{key}.txt", name.encode())]
    (tmp_path / "photos.jsonl").write_text("\n".join(lines))
    from_jsonl = {s.captions[0]: s.image for s in build_source(SourceConfig(path=str(tmp_path / "photos.jsonl")))}
    shard = _write_tar(tmp_path / "photos.tar", members)
    from_shard = {s.captions[0]: s.image for s in build_source(SourceConfig(path=str(shard))).epoch_samples(0)}
    assert from_jsonl.keys() == from_shard.keys() == variants.keys()
    for name, image in from_jsonl.items():
        assert image.mode == "RGB" and from_shard[name].tobytes() == image.tobytes(), name
        assert image.size == ((32, 48) if name == "exif.jpg" else (48, 32)), name


def test_real_photographs(tmp_path: Path) -> None:
    """scikit-learn's two bundled photographs (a dev dependency) through a JSONL and a shard."""
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    lines, members = [], []
    for i, arr in enumerate(photos):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=90)
        (tmp_path / f"{i}.jpg").write_bytes(buf.getvalue())
        lines.append(json.dumps({"image": f"{i}.jpg", "text": f"photo {i}"}))
        members += [(f"{i}.jpg", buf.getvalue()), (f"{i}.txt", f"photo {i}".encode())]
    (tmp_path / "p.jsonl").write_text("\n".join(lines))
    via_jsonl = list(build_source(SourceConfig(path=str(tmp_path / "p.jsonl"))))
    via_shard = sorted(
        ShardStream([str(_write_tar(tmp_path / "p.tar", members))]).epoch_samples(0), key=lambda s: s.image_id
    )
    for a, b, arr in zip(via_jsonl, via_shard, photos, strict=True):
        assert a.image.size == (arr.shape[1], arr.shape[0]) and a.image.tobytes() == b.image.tobytes()


# ------------------------------------------------------------------------------ mixtures


def test_permute_is_a_bijection() -> None:
    for n in (1, 2, 7, 64, 1000):
        assert sorted(permute(i, n, (3, n)) for i in range(n)) == list(range(n))
    assert [permute(i, 1000, (1,)) for i in range(10)] != [permute(i, 1000, (2,)) for i in range(10)]


def test_mixture_dataset_draws_in_proportion() -> None:
    sources = [list(range(300)), [f"b{i}" for i in range(50)], [f"c{i}" for i in range(5000)]]
    weights = [1.0, 2.0, 5.0]
    mix = MixtureDataset(sources, weights, seed=4, length=10_000)
    picks = [mix.locate(i) for i in range(10_000)]
    shares = np.bincount([k for k, _ in picks], minlength=3) / 10_000
    assert np.abs(shares - np.array(weights) / 8).max() <= 0.02
    window = np.bincount([k for k, _ in picks[:1000]], minlength=3) / 1000  # consecutive items mix too
    assert np.abs(window - np.array(weights) / 8).max() <= 0.05
    assert {i for k, i in picks if k == 1} == set(range(50))  # a repeated source is walked whole
    assert picks == [MixtureDataset(sources, weights, seed=4, length=10_000).locate(i) for i in range(10_000)]
    assert mix[0] == sources[picks[0][0]][picks[0][1]]
    assert len(MixtureDataset(sources, [1.0, 0.0, 1.0])) == 5300  # default length: weighted sources' total


def test_mixture_stream_draws_in_proportion() -> None:
    sources = [MapStream(list(range(100)), seed=k) for k in range(3)]
    mix = MixtureStream(sources, [3.0, 1.0, 0.0], seed=5)
    it = mix.iter_from(0, 1, 0)
    drawn = [next(it) for _ in range(10_000)]
    counts = mix.consumed(0, 10_000)
    assert counts[2] == 0 and abs(counts[0] / 10_000 - 0.75) <= 0.02
    tail = mix.iter_from(0, 1, 6_000)
    assert [next(tail) for _ in range(100)] == drawn[6_000:6_100]


def test_mixture_of_map_sources_is_map_style(files: dict[str, Path]) -> None:
    root = files["root"]
    cfgs = [SourceConfig(path=str(root / "cap.jsonl"), weight=1), SourceConfig(kind="shapes", limit=4, weight=1)]
    mix = build_data(DataConfig(train=cfgs))
    assert isinstance(mix, MixtureDataset) and len(mix) == 6 and all(isinstance(mix[i], Sample) for i in range(6))
    cfgs.append(SourceConfig(path=str(root / "shards")))
    assert isinstance(build_data(DataConfig(train=cfgs)), MixtureStream)


# ------------------------------------------------------------------------------ bad input


def _zero_weights() -> DataConfig:
    """A config whose weights were zeroed after validation (as code may build one)."""
    cfg = DataConfig(train=[SourceConfig(kind="shapes"), SourceConfig(kind="shapes")])
    for source in cfg.train:
        source.weight = 0.0
    return cfg


def _jsonl(tmp: Path, text: str | bytes) -> SourceConfig:
    path = tmp / "d.jsonl"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return SourceConfig(path=str(path))


def _notar(tmp: Path) -> str:
    (tmp / "fake.tar").write_text("plain text, not a tar archive")
    return str(tmp / "fake.tar")


def _empty_folder(tmp: Path) -> str:
    (tmp / "empty").mkdir()
    return str(tmp / "empty")


# (id, call(tmp_path, root of the `files` fixture), error type, what the one-line message names)
BAD_INPUTS = [
    (
        "path_missing",
        lambda tmp, root: build_source(SourceConfig(kind="jsonl", path=str(tmp / "nope.jsonl")), where="data.train[0]"),
        ConfigError,
        ("nope.jsonl", "data.train[0].path", "does not exist"),
    ),
    (
        "jsonl_line_without_image",
        lambda tmp, root: build_source(_jsonl(tmp, '{"image": "img/0.png", "text": "a"}\n{"text": "b"}\n')),
        AnnotationError,
        ("d.jsonl, line 2", "'image'"),
    ),
    (
        "jsonl_line_without_text_or_question",
        lambda tmp, root: build_source(_jsonl(tmp, '{"image": "img/0.png", "caption": "b"}\n')),
        AnnotationError,
        ("d.jsonl, line 1", "'text'", "'question'"),
    ),
    (
        "jsonl_images_missing",
        lambda tmp, root: build_source(
            _jsonl(tmp, "\n".join(json.dumps({"image": f"gone{i}.png", "text": "x"}) for i in range(5)))
        ),
        AnnotationError,
        ("5 of 5 images do not exist", "gone0.png (line 1)", "gone2.png (line 3)", "image_root"),
    ),
    (
        "jsonl_not_utf8",
        lambda tmp, root: build_source(_jsonl(tmp, b'{"image": "caf\xe9.png", "text": "x"}')),
        AnnotationError,
        ("d.jsonl", "UTF-8"),
    ),
    (
        "jsonl_path_is_a_folder",
        lambda tmp, root: build_source(SourceConfig(kind="jsonl", path=str(root / "img"))),
        ConfigError,
        ("img", "not a file"),
    ),
    (
        "shard_not_a_tar",
        lambda tmp, root: build_source(SourceConfig(path=_notar(tmp))),
        ConfigError,
        ("fake.tar", "not a tar"),
    ),
    (
        "shards_missing_from_pattern",
        lambda tmp, root: build_source(SourceConfig(path=str(root / "shards" / "{00000..00003}.tar"))),
        ConfigError,
        ("2 of 4 shards", "00002.tar"),
    ),
    ("unknown_kind", lambda tmp, root: SourceConfig(kind="csv", path="x.csv"), ConfigError, ("'kind'", "csv")),
    (
        "auto_kind_of_a_json",
        lambda tmp, root: resolve_kind(SourceConfig(path=str(root / "coco.json"))),
        ConfigError,
        ("coco.json", "coco_captions or vqav2"),
    ),
    ("empty_jsonl", lambda tmp, root: build_source(_jsonl(tmp, "\n\n")), ConfigError, ("d.jsonl", "no samples")),
    (
        "empty_shard_folder",
        lambda tmp, root: build_source(SourceConfig(kind="webdataset", path=_empty_folder(tmp))),
        ConfigError,
        ("empty", "no .tar shards"),
    ),
    (
        "empty_image_folder",
        lambda tmp, root: build_source(SourceConfig(kind="image_folder", path=_empty_folder(tmp))),
        ConfigError,
        ("empty", "no image files"),
    ),
    (
        "fewer_shards_than_readers",
        lambda tmp, root: next(iter(ShardStream([str(root / "shards" / "00000.tar")], world_size=2))),
        ShardError,
        ("1 shards cannot feed 2 readers", "more shards"),
    ),
    ("negative_weight", lambda tmp, root: SourceConfig(kind="shapes", weight=-1.0), ConfigError, ("'weight'", "-1.0")),
    (
        "all_weights_zero",
        lambda tmp, root: build_data(_zero_weights()),
        ConfigError,
        ("every mixture weight is 0",),
    ),
    (
        "all_weights_zero_in_config",
        lambda tmp, root: DataConfig(train=[SourceConfig(kind="shapes", weight=0.0)]),
        ConfigError,
        ("data.train[*].weight",),
    ),
]


@pytest.mark.parametrize(("call", "error", "names"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_culprit(
    call: Any, error: type[Exception], names: tuple[str, ...], tmp_path: Path, files: dict[str, Path]
) -> None:
    with pytest.raises(error) as e:
        call(tmp_path, files["root"])
    _one_line_error(e, *names)


def test_bad_image_bytes_name_the_shard_and_key(tmp_path: Path) -> None:
    from lavit.data.image_io import load_image_bytes

    with pytest.raises(ImageLoadError) as e:
        load_image_bytes(b"nope", "s.tar:k.jpg")
    _one_line_error(e, "s.tar:k.jpg")
    assert list_shards(str(_shard(tmp_path / "one.tar", 0, 1))) == [str(tmp_path / "one.tar")]
