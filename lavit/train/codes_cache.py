"""Codes of a run's data from a frozen tokenizer, extracted once to sharded safetensors.

Every stage trained on a frozen tokenizer's codes (the LM, the detokenizers) reads its data
through :func:`codes_dataset`: each source of ``data.train`` (or ``data.val``) is encoded once,
in the order the data layer gives it (a map-style source: its first ``limit`` items; a stream:
one epoch), and read back as a **map-style** dataset of :class:`CodeRecord` (codes + the
sample's text fields), so the trainer's StepBatchSampler and its exact resume serve every
source. Several sources are mixed by weight (:class:`CodesMixture`, the data layer's
MixtureDataset over the cached records).

One folder per source (``<root>/<split>-<i>/``): ``index.json`` (written last, so a killed
extraction is never taken for a complete one) and ``shard-00000.safetensors``... of
``SHARD_ITEMS`` items each, read lazily (memory-mapped), so a large set never has to fit in
memory. A folder is reused when its fingerprint matches: a sha256 of the tokenizer's weights
file and config (a retrained tokenizer, or the same one set to keep a different share of patches,
never silently reuses stale codes) and of the source (its config, the files it names, the
ShapesWorld it draws from, the stream's seed).

Images: a map-style source's are read again from the source when a stage needs them (ShapesWorld
renders them); a stream cannot be read by index, so its images are stored in the shards (PNG, at
the ``image_size`` the stage asks for).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from lavit.config import ConfigError, DataConfig, SourceConfig
from lavit.data.mixture import MixtureDataset
from lavit.data.preprocess import preprocess
from lavit.data.sample import QA, Sample
from lavit.data.shards import ShardStream, list_shards
from lavit.data.sources import build_source, resolve_kind
from lavit.data.transforms import to_pil
from lavit.files import sha256_file
from tokenizer import DynamicVisualTokenizer

SHARD_ITEMS = 4096  # records per shard file
FORMAT = 1  # bumped when the folder layout changes (old folders are then re-extracted)


@dataclass
class CodeRecord:
    """One cached sample: its tokenizer codes and its text fields.

    Attributes:
        codes: (N,) long, the tokenizer's codes of the image.
        image_id: the sample's id.
        captions, qa: the sample's reference captions and question/answer groups.
        meta: JSON-able extras; ShapesWorld: ``scene`` (read through :mod:`lavit.data.annotations`), ``prompt``, ``index``.
    """

    codes: torch.Tensor
    image_id: str
    captions: list[str] = field(default_factory=list)
    qa: list[QA] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def pack_codes(codes: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Variable-length code sequences as two tensors: ``flat`` (all of them concatenated) and
    ``lengths``; :func:`unpack_codes` undoes it."""
    return {"flat": torch.cat(codes), "lengths": torch.tensor([c.numel() for c in codes])}


def unpack_codes(flat: torch.Tensor, lengths: torch.Tensor | list[int]) -> list[torch.Tensor]:
    """The sequences of :func:`pack_codes` (``lengths`` as its tensor or as a list of ints)."""
    return list(torch.split(flat, lengths.tolist() if isinstance(lengths, torch.Tensor) else list(lengths)))


# --- fingerprints ---------------------------------------------------------------------------------


def _files_named(cfg: SourceConfig, kind: str) -> list[str]:
    """The files a source reads its list of samples from (their size and mtime key the cache)."""
    if kind == "webdataset":
        return list_shards(str(cfg.path))
    names = [getattr(cfg, k) for k in ("path", "questions") if getattr(cfg, k)]
    return [n for n in names if os.path.isfile(n)]


def source_fingerprint(cfg: SourceConfig, data: DataConfig, image_size: int | None) -> dict[str, Any]:
    """What a source's codes depend on besides the tokenizer (JSON-able)."""
    kind = resolve_kind(cfg)
    key: dict[str, Any] = {"source": dataclasses.asdict(cfg), "kind": kind}
    if kind == "shapes":
        key["shapes"] = dataclasses.asdict(data.shapes)
    else:
        stats = [os.stat(p) for p in _files_named(cfg, kind)]
        key["files"] = [[p, s.st_size, s.st_mtime_ns] for p, s in zip(_files_named(cfg, kind), stats, strict=True)]
    if kind == "webdataset":  # the epoch's order, and its stored images
        key.update(seed=data.seed, shuffle_buffer=data.shuffle_buffer, image_size=image_size)
    return key


def fingerprint(tokenizer: DynamicVisualTokenizer, tokenizer_dir: str | Path, source: dict[str, Any]) -> str:
    """sha256 of the tokenizer's weights file and config plus a :func:`source_fingerprint`."""
    h = hashlib.sha256(sha256_file(Path(tokenizer_dir) / "tokenizer.safetensors").encode())
    h.update(repr(dataclasses.asdict(tokenizer.cfg)).encode())
    h.update(json.dumps(source, sort_keys=True, default=str).encode())
    h.update(str(FORMAT).encode())
    return h.hexdigest()


# --- extraction -----------------------------------------------------------------------------------


def _text_of(sample: Sample) -> bytes:
    qa = [[q.question, q.answers, q.question_id] for q in sample.qa]
    record = {"image_id": sample.image_id, "captions": sample.captions, "qa": qa, "meta": sample.meta}
    return json.dumps(record, default=str).encode()


def _bytes_tensor(blobs: list[bytes]) -> tuple[torch.Tensor, torch.Tensor]:
    flat = np.frombuffer(b"".join(blobs), dtype=np.uint8).copy()
    return torch.from_numpy(flat), torch.tensor([len(b) for b in blobs], dtype=torch.int64)


def _png(image: Image.Image, size: int) -> bytes:
    buf = io.BytesIO()
    to_pil(preprocess(image, size, "centre")).save(buf, format="PNG")
    return buf.getvalue()


def _samples(source: Any, n: int | None) -> Iterator[Sample]:
    if isinstance(source, ShardStream):
        yield from source.epoch_samples(0)
    else:
        for i in range(n if n is not None else len(source)):
            yield source[i]


@torch.no_grad()
def extract(
    tokenizer: DynamicVisualTokenizer,
    samples: Iterator[Sample],
    directory: Path,
    key: str,
    *,
    image_size: int | None = None,
    batch_size: int = 256,
    shard_items: int = SHARD_ITEMS,
) -> int:
    """Encode ``samples`` into ``directory`` (replaced whole once complete); returns the count.

    Args:
        image_size: also store each image as a PNG at this side (for a stream's images).
    """
    size = tokenizer.cfg.encoder.image_size
    device = next(tokenizer.parameters()).device
    tmp = directory.with_name(f".{directory.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards: list[dict[str, Any]] = []
    codes: list[torch.Tensor] = []
    texts: list[bytes] = []
    pngs: list[bytes] = []

    def flush(k: int) -> None:  # the first k buffered records -> one shard file
        tensors = {
            "codes": torch.cat(codes[:k]).to(torch.int32),  # codebooks stay far below 2**31
            "codes_lengths": torch.tensor([c.numel() for c in codes[:k]]),
        }
        tensors["text"], tensors["text_lengths"] = _bytes_tensor(texts[:k])
        if image_size is not None:
            tensors["png"], tensors["png_lengths"] = _bytes_tensor(pngs[:k])
        name = f"shard-{len(shards):05d}.safetensors"
        save_file(tensors, str(tmp / name))
        shards.append({"file": name, "count": k})
        del codes[:k], texts[:k], pngs[:k]

    batch: list[Sample] = []
    for sample in itertools.chain(samples, [None]):  # None: the end, encode the last batch
        if sample is not None:
            batch.append(sample)
        if batch and (sample is None or len(batch) == batch_size):
            images = torch.stack([preprocess(s.image, size, "centre") for s in batch]).to(device)
            codes += [c.cpu() for c in tokenizer.encode(images)]
            texts += [_text_of(s) for s in batch]
            if image_size is not None:
                pngs += [_png(s.image, image_size) for s in batch]
            batch = []
            while len(codes) >= shard_items:
                flush(shard_items)
    if codes:
        flush(len(codes))
    count = sum(s["count"] for s in shards)
    (tmp / "index.json").write_text(json.dumps({"fingerprint": key, "count": count, "shards": shards}))
    shutil.rmtree(directory, ignore_errors=True)  # a stale cache of another tokenizer or source
    tmp.replace(directory)
    return count


def _read_index(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / "index.json").read_text())
    except (OSError, ValueError):
        return None


# --- reading --------------------------------------------------------------------------------------


class CodesDataset(Dataset):
    """Map-style records of one extracted source: ``ds[i]`` is a :class:`CodeRecord`.

    Args:
        directory: the source's cache folder (``index.json`` + shards).
        count: records to expose (the first ``count``; a cache may hold more).
        source: the map-style source the codes came from (its images are read from it), or None
            when the images are in the shards (a stream).
    """

    def __init__(self, directory: Path, count: int, source: Any | None) -> None:
        index = _read_index(directory)
        assert index is not None and index["count"] >= count, directory
        self.directory, self.count, self.source = directory, count, source
        self.files = [s["file"] for s in index["shards"]]
        self.ends = np.cumsum([s["count"] for s in index["shards"]]).tolist()
        self._handles: dict[int, Any] = {}
        self._starts: dict[tuple[int, str], np.ndarray] = {}

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers open their own handles
        return {**self.__dict__, "_handles": {}}

    def __len__(self) -> int:
        return self.count

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < self.count:
            raise IndexError(f"index {i} out of range for {self.count} cached records in {self.directory}")
        k = int(np.searchsorted(self.ends, i, side="right"))
        return k, i - (self.ends[k - 1] if k else 0)

    def _slice(self, k: int, name: str, j: int) -> torch.Tensor:
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.directory / self.files[k]), framework="pt")
        f = self._handles[k]
        if (k, name) not in self._starts:
            self._starts[k, name] = np.concatenate([[0], np.cumsum(f.get_tensor(f"{name}_lengths").numpy())])
        starts = self._starts[k, name]
        return f.get_slice(name)[int(starts[j]) : int(starts[j + 1])]

    def codes(self, i: int) -> torch.Tensor:
        """(N,) long: the codes of record ``i`` (no text decoded)."""
        k, j = self._locate(i)
        return self._slice(k, "codes", j).long()

    def __getitem__(self, i: int) -> CodeRecord:
        k, j = self._locate(i)
        text = json.loads(bytes(self._slice(k, "text", j).numpy()))
        qa = [QA(q, list(a), qid) for q, a, qid in text["qa"]]
        return CodeRecord(self._slice(k, "codes", j).long(), text["image_id"], text["captions"], qa, text["meta"])

    def image(self, i: int) -> Image.Image:
        """The RGB image of record ``i``: read again from a map-style source (ShapesWorld renders
        it), or a stream's stored PNG."""
        if self.source is None:
            k, j = self._locate(i)
            return Image.open(io.BytesIO(bytes(self._slice(k, "png", j).numpy()))).convert("RGB")
        if hasattr(self.source, "image"):  # a source with an image-only read (ShapesWorld: no words drawn)
            return self.source.image(i)
        return self.source[i].image

    def all_codes(self) -> Iterator[torch.Tensor]:
        """Every record's codes flattened, one tensor per shard (for code statistics)."""
        for k, end in enumerate(self.ends):
            start = self.ends[k - 1] if k else 0
            if start >= self.count:
                return
            with safe_open(str(self.directory / self.files[k]), framework="pt") as f:
                lengths = f.get_tensor("codes_lengths")[: min(end, self.count) - start]
                yield f.get_slice("codes")[: int(lengths.sum())].long()


class CodesMixture(MixtureDataset):
    """Cached sources mixed by weight (the data layer's :class:`MixtureDataset` rule), with the
    per-record access of :class:`CodesDataset`."""

    def codes(self, i: int) -> torch.Tensor:
        k, j = self.locate(i)
        return self.datasets[k].codes(j)

    def image(self, i: int) -> Image.Image:
        k, j = self.locate(i)
        return self.datasets[k].image(j)

    def all_codes(self) -> Iterator[torch.Tensor]:
        for d in self.datasets:
            yield from d.all_codes()


def codes_dataset(
    tokenizer: DynamicVisualTokenizer,
    tokenizer_dir: str | Path,
    data: DataConfig,
    split: str,
    root: str | Path,
    *,
    limit: int | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    shard_items: int = SHARD_ITEMS,
) -> CodesDataset | CodesMixture:
    """The codes of ``data.<split>``, extracted once into ``root`` and read back map-style.

    Args:
        tokenizer, tokenizer_dir: the frozen tokenizer and the folder its weights came from.
        data: the run's data config; split: ``"train"`` or ``"val"``.
        root: the cache folder (one sub-folder per source).
        limit: at most this many items of each map-style source (its first ones); a stream
            source gives one epoch.
        image_size: side at which a stream's images are stored (for stages that need images).
        batch_size, shard_items: images per tokenizer call; records per shard file.

    Returns:
        A :class:`CodesDataset` (one source) or a :class:`CodesMixture` (several, by weight).

    Raises:
        ConfigError: a source is badly configured (from the data layer), or gives no sample.
    """
    sources = getattr(data, split)
    if not sources:
        raise ConfigError(f"data.{split}: no sources; name at least one")
    reading = {
        "seed": data.seed,
        "shuffle_buffer": data.shuffle_buffer,
        "max_bad_fraction": data.max_bad_fraction,
        "shapes": data.shapes,
    }
    out = []
    for i, cfg in enumerate(sources):
        where = f"data.{split}[{i}]"
        source = build_source(cfg, where=where, **reading)
        stream = isinstance(source, ShardStream)
        n = None if stream else min(limit or len(source), len(source))
        key = fingerprint(tokenizer, tokenizer_dir, source_fingerprint(cfg, data, image_size if stream else None))
        directory = Path(root) / f"{split}-{i}"
        index = _read_index(directory)
        if index is None or index["fingerprint"] != key or (n is not None and index["count"] < n):
            count = extract(
                tokenizer,
                _samples(source, n),
                directory,
                key,
                image_size=image_size if stream else None,
                batch_size=batch_size,
                shard_items=shard_items,
            )
        else:
            count = index["count"]
        if count == 0:
            raise ConfigError(f"{where}: gave no decodable sample; check the source")
        out.append(CodesDataset(directory, count if n is None else n, None if stream else source))
    if len(out) == 1:
        return out[0]
    return CodesMixture(out, [c.weight for c in sources], seed=data.seed)
