"""Tar shards in the img2dataset layout, streamed so that a killed run resumes exactly.

Layout (what img2dataset writes, and LAION, CC3M and CC12M are kept in): a tar holds each sample
as consecutive files sharing a key, ``KEY.jpg|jpeg|png|webp`` plus ``KEY.txt`` (the caption)
and/or ``KEY.json`` (``caption``/``text``, ``question``/``answers``; other keys go to ``meta``).
The ``webdataset`` library reads the tars and groups their files into samples.

The sequence. A *reader slot* is one DataLoader worker of one rank: s = rank * W + role, with
S = world_size * W slots. A slot's stream is a pure function of (seed, s, S, the shard list) and
cycles epochs forever, so that no worker ever runs dry (a DataLoader over an exhausted worker
would stop round-robin order, and DDP ranks with unequal shard sizes would hang):

    epoch e: shards permuted by (seed, e); slot s reads perm[s :: S] in that order
             raw samples -> shuffle buffer seeded by (seed, e, s) -> decode -> Sample

The buffer holds undecoded bytes; images are decoded after the shuffle through
:func:`lavit.data.image_io.load_image_bytes` (the rules of :func:`lavit.data.image_io.load_image`).

Bad samples. A sample whose image is missing or undecodable is counted per shard (``counts``),
reported on stderr as one ``warning:`` line (its shard, key and reason, and the reader's running
count), and its place in the sequence is taken by the next good sample of the same slot, which thus
appears twice (``meta["replaces"]`` lists what it stands in for). One output per raw sample is
what lets a resume skip samples without decoding them. Once a reader has decoded
``MIN_SAMPLES_FOR_BAD_CHECK`` samples and the bad share passes ``max_bad_fraction``, it raises
:class:`ShardError` naming the worst shards. (:meth:`ShardStream.epoch_samples`, which has no
resume, drops bad samples instead.)

Exact resume with DataLoader workers. A DataLoader with W workers takes batch i from worker
i % W (``in_order=True``, the default). After k batches, a fresh loader starts again at worker 0,
so its worker w plays role (w + k) % W and skips the samples that role already yielded:
:func:`resume_positions`. The trainer builds ``stream.resumed(step * grad_accum, micro_batch)``
and a DataLoader with the same ``batch_size``, ``num_workers``, ranks, seed and shards as before.
"""

from __future__ import annotations

import abc
import copy
import dataclasses
import json
import os
import re
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from braceexpand import braceexpand
from torch.utils.data import IterableDataset, get_worker_info
from webdataset.tariterators import base_plus_ext, group_by_keys, tar_file_iterator

from lavit.config import ConfigError
from lavit.data.image_io import DEFAULT_MAX_PIXELS, ImageLoadError, load_image_bytes
from lavit.data.sample import QA, Sample

T = TypeVar("T")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # first one present is the sample's image
TEXT_KEYS = ("caption", "text", "question", "answers", "question_id")  # json keys kept out of meta
MIN_SAMPLES_FOR_BAD_CHECK = 100
_SHARD_ORDER, _BUFFER = 0x5A4D, 0xB0F  # separate RNG streams: shard order, shuffle buffer
# webdataset's tar_file_iterator drops these names (its skip_meta default and __name__ files).
_META_NAME = re.compile(r"__[^/]*__($|/)")


class ShardError(ValueError):
    """A shard cannot be read, or too many of its samples are bad; the message names the shards."""


class BadSample(ValueError):
    """One sample of a shard is unusable (no image, malformed json); counted, then replaced."""


@dataclass
class ShardCounts:
    """Samples of one shard this reader decoded, how many were bad, and the first reason."""

    seen: int = 0
    bad: int = 0
    example: str = ""


# ------------------------------------------------------------------------------ shard lists


def list_shards(path: str) -> list[str]:
    """The shard files a source names, checked to exist and to be tar archives.

    Args:
        path: one ``.tar``, a brace pattern (``data/{00000..00009}.tar``) or a folder whose
            ``.tar`` files (not recursive) are the shards.

    Returns:
        The shard paths, in pattern order (folder: sorted by name).

    Raises:
        ConfigError: no shard, missing shards (the first few named, with the count), or a file
            that is not a tar archive.
    """
    if "{" in path:
        shards = list(braceexpand(path))
    elif os.path.isdir(path):
        shards = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".tar"))
        if not shards:
            raise ConfigError(
                f"{path}: folder holds no .tar shards. Point the source at the shards' folder or pattern."
            )
    else:
        shards = [path]
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(shards)} shards of {path} do not exist (e.g. {', '.join(missing[:3])}). "
            "Check the path or brace pattern."
        )
    for shard in shards:
        if not tarfile.is_tarfile(shard):
            raise ConfigError(
                f"{shard}: not a tar archive. Shards are .tar files in the img2dataset layout "
                "(KEY.jpg + KEY.txt/KEY.json); re-create it or remove it from the source."
            )
    return shards


def count_samples(shard: str) -> int:
    """Samples in a shard, read from the tar headers alone (an uncompressed tar is seeked over).

    Grouping matches webdataset's: regular files, ``__meta__`` names dropped, consecutive files
    with the same key (the name up to its first dot) form one sample.
    """
    n, last = 0, None
    try:
        with tarfile.open(shard, "r:*") as tar:
            for info in tar:
                if not info.isreg() or _META_NAME.match(info.name):
                    continue
                prefix, _ = base_plus_ext(info.name)
                if prefix is not None and prefix != last:
                    n, last = n + 1, prefix
    except (tarfile.TarError, OSError) as e:
        raise ShardError(f"{shard}: cannot read the tar headers ({e}). Re-create the shard or remove it.") from e
    return n


def _read_shard(shard: str) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard: ``{"__key__", "__url__", ext: bytes, ...}``, files undecoded."""
    try:
        with open(shard, "rb") as f:
            files = ({**item, "__url__": shard} for item in tar_file_iterator(f))
            yield from group_by_keys(files)
    except (tarfile.TarError, OSError, ValueError) as e:  # truncated tar, duplicate names in a sample
        raise ShardError(f"{shard}: cannot read the shard ({type(e).__name__}: {e}). Re-create it or remove it.") from e


def _shuffle(items: Iterator[T], size: int, rng: np.random.Generator) -> Iterator[T]:
    """A shuffle buffer: once ``size`` items are held, each new one swaps out a random held one.
    Draws depend only on the item count, so skipping items replays the same buffer exactly."""
    buf: list[T] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        buf[j], item = item, buf[j]
        yield item
    yield from (buf[i] for i in rng.permutation(len(buf)))


# ------------------------------------------------------------------------------ decoding


def sample_from_raw(raw: dict[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> Sample:
    """Turn one grouped tar sample into a :class:`Sample`.

    Args:
        raw: webdataset's grouping: ``__key__``, ``__url__`` (the shard) and one bytes value per
            file extension.
        max_pixels: passed to :func:`lavit.data.image_io.load_image_bytes`.

    Returns:
        ``Sample(image, image_id=KEY, captions, qa, meta={"key", "shard", other json keys})``.

    Raises:
        BadSample: no image file, or a json that is not an object.
        ImageLoadError: the image cannot be decoded.
    """
    key, shard = raw["__key__"], raw["__url__"]
    ext = next((e for e in IMAGE_EXTENSIONS if e in raw), None)
    if ext is None:
        files = sorted(k for k in raw if not k.startswith("__"))
        raise BadSample(f"{shard}: sample {key!r} has no image ({'/'.join(IMAGE_EXTENSIONS)}); it holds {files}")
    info: dict[str, Any] = {}
    if "json" in raw:
        try:
            info = json.loads(raw["json"])
        except (ValueError, UnicodeDecodeError) as e:
            raise BadSample(f"{shard}: {key}.json is not valid JSON ({e})") from e
        if not isinstance(info, dict):
            raise BadSample(f"{shard}: {key}.json must hold an object, got {type(info).__name__}")
    image = load_image_bytes(raw[ext], f"{shard}:{key}.{ext}", max_pixels=max_pixels)

    captions = [raw["txt"].decode("utf-8", errors="replace").strip()] if "txt" in raw else []
    for field in ("caption", "text"):  # img2dataset's json repeats the txt caption: keep it once
        value = info.get(field)
        for text in [value] if isinstance(value, str) else value if isinstance(value, list) else []:
            if isinstance(text, str) and text.strip() not in captions:
                captions.append(text.strip())
    qa = []
    if isinstance(info.get("question"), str):
        answers = info.get("answers", [])
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list):
            raise BadSample(f"{shard}: {key}.json 'answers' must be a string or a list")
        answers = [str(a) for a in answers]
        qid = info.get("question_id")
        qa.append(QA(info["question"], answers, None if qid is None else str(qid)))
    meta = {"key": key, "shard": shard} | {k: v for k, v in info.items() if k not in TEXT_KEYS}
    return Sample(image=image, image_id=key, captions=captions, qa=qa, meta=meta)


# ------------------------------------------------------------------------------ resume


def resume_positions(
    step: int, batch_size_per_rank: int, num_workers: int, grad_accum: int = 1
) -> list[tuple[int, int]]:
    """Where each DataLoader worker of a resumed run starts.

    A DataLoader takes batch i from worker i % W. After ``k = step * grad_accum`` micro-batches,
    role r has yielded ``ceil((k - r) / W)`` of them; the fresh loader's worker w plays role
    (w + k) % W, whose batch is the next one due.

    Args:
        step: optimizer steps completed.
        batch_size_per_rank: samples per optimizer step on one rank (``train.batch_size / world``).
        num_workers: the DataLoader's ``num_workers`` (0: the main process, one reader).
        grad_accum: micro-batches per optimizer step.

    Returns:
        For each worker id: ``(role, samples that role already yielded)``.
    """
    assert batch_size_per_rank % grad_accum == 0, (batch_size_per_rank, grad_accum)
    return _positions(step * grad_accum, batch_size_per_rank // grad_accum, num_workers)


def _positions(batches_done: int, batch_size: int, num_workers: int) -> list[tuple[int, int]]:
    w = max(1, num_workers)
    roles = [(wid + batches_done) % w for wid in range(w)]
    return [(r, max(0, (batches_done - r + w - 1) // w) * batch_size) for r in roles]


def worker_start(batches_done: int, batch_size: int) -> tuple[int, int, int]:
    """``(role, num_workers, position)`` of the calling DataLoader worker (or main process)."""
    info = get_worker_info()
    wid, w = (0, 1) if info is None else (info.id, info.num_workers)
    role, position = _positions(batches_done, batch_size, w)[wid]
    return role, w, position


# ------------------------------------------------------------------------------ the stream


class ResumableStream(IterableDataset, abc.ABC):
    """An endless stream that a DataLoader can pick up after ``batches_done`` batches: subclasses
    give :meth:`iter_from` (one reader's sequence from a position); :meth:`resumed` and
    ``__iter__`` turn the DataLoader's worker into that reader and position."""

    _start: tuple[int, int] = (0, 1)  # (batches the DataLoader already delivered, its batch size)

    def resumed(self, batches_done: int, batch_size: int):
        """A copy whose DataLoader (``batch_size``, any ``num_workers``) continues after
        ``batches_done`` batches of this rank (``step * grad_accum``) exactly as the uninterrupted
        run would."""
        new = copy.copy(self)
        new._start = (batches_done, batch_size)
        new._reset()
        return new

    def __iter__(self) -> Iterator[Any]:
        role, num_workers, position = worker_start(*self._start)
        self._reset()
        return self.iter_from(role, num_workers, position)

    def _reset(self) -> None:
        """Clear per-pass state (a fresh pass, or a worker's copy, counts afresh)."""

    @abc.abstractmethod
    def iter_from(self, worker: int, num_workers: int, position: int) -> Iterator[Any]:
        """The endless sequence of reader ``worker`` of ``num_workers`` (on this rank) from ``position``."""


class ShardStream(ResumableStream):
    """An endless, resumable stream of :class:`Sample` over tar shards, split across ranks and
    DataLoader workers without duplication (see the module docstring for the sequence).

    Args:
        shards: the shard paths (:func:`list_shards`).
        seed: seeds the shard order and the shuffle buffers.
        rank, world_size: this process among the data-parallel ranks.
        shuffle_buffer: raw samples held per reader for shuffling (1: no shuffle).
        max_bad_fraction: bad share past which a reader stops (after MIN_SAMPLES_FOR_BAD_CHECK).
        max_pixels: passed to :func:`lavit.data.image_io.load_image_bytes`.
    """

    def __init__(
        self,
        shards: Sequence[str],
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 1000,
        max_bad_fraction: float = 0.01,
        max_pixels: int = DEFAULT_MAX_PIXELS,
    ) -> None:
        if not shards:
            raise ConfigError("a webdataset source needs at least one shard")
        assert 0 <= rank < world_size, (rank, world_size)
        if shuffle_buffer < 1 or not 0.0 <= max_bad_fraction <= 1.0:
            raise ConfigError(
                f"shuffle_buffer={shuffle_buffer} must be >= 1, max_bad_fraction={max_bad_fraction} in [0, 1]"
            )
        self.shards = list(shards)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.shuffle_buffer, self.max_bad_fraction, self.max_pixels = shuffle_buffer, max_bad_fraction, max_pixels
        self.counts: dict[str, ShardCounts] = {}  # per shard, in the process that iterates
        self._sizes: dict[str, int] = {}

    def _reset(self) -> None:
        self.counts = {}

    def slot_shards(self, epoch: int, worker: int, num_workers: int) -> list[str]:
        """The shards reader ``worker`` of ``num_workers`` on this rank reads in ``epoch``, in order."""
        slot, num_slots = self._slot(worker, num_workers)
        order = np.random.default_rng([self.seed, epoch, _SHARD_ORDER]).permutation(len(self.shards))
        return [self.shards[i] for i in order[slot::num_slots]]

    def epoch_size(self, epoch: int, worker: int, num_workers: int) -> int:
        """Raw samples (bad ones included) that reader reads in ``epoch``, from tar headers."""
        for shard in (shards := self.slot_shards(epoch, worker, num_workers)):
            if shard not in self._sizes:
                self._sizes[shard] = count_samples(shard)
        return sum(self._sizes[s] for s in shards)

    def iter_from(self, worker: int, num_workers: int, position: int) -> Iterator[Sample]:
        """The endless sequence of one reader from ``position`` on; the first ``position``
        samples are skipped without decoding (whole epochs from the tar headers alone).

        Args:
            worker, num_workers: the reader's role among the DataLoader workers of this rank.
            position: samples this reader already yielded (see :func:`resume_positions`).
        """
        epoch = 0
        while position > 0:  # a fresh start reads no headers: counting costs a seek per file
            size = self.epoch_size(epoch, worker, num_workers)
            if position < size:
                break
            if size == 0:
                shards = self.slot_shards(epoch, worker, num_workers)
                raise ShardError(f"the shards {shards[:3]} of reader {worker} hold no samples; remove empty shards")
            position, epoch = position - size, epoch + 1
        owed: list[str] = []  # why each bad sample failed, until the next good one stands in
        while True:
            read = good = 0
            for t, raw in enumerate(self._raw_epoch(epoch, worker, num_workers)):
                read += 1
                if t < position:
                    continue  # consumed before the resume: bytes read, never decoded
                sample, reason = self._decode(raw)
                if sample is None:
                    owed.append(reason)
                    continue
                good += 1
                for reason in owed:
                    yield dataclasses.replace(sample, meta={**sample.meta, "replaces": reason})
                owed = []
                yield sample
            if good == 0 and position == 0:  # a whole epoch without one usable sample
                shards = self.slot_shards(epoch, worker, num_workers)
                what = f"could be decoded (e.g. {owed[0]})" if read else "exists (the shards are empty)"
                raise ShardError(f"no sample of reader {worker}'s shards {shards[:3]} {what}")
            position, epoch = 0, epoch + 1

    def epoch_samples(self, epoch: int, worker: int = 0, num_workers: int = 1) -> Iterator[Sample]:
        """One reader's samples of one epoch, finite, bad samples dropped (counted): for
        evaluation and for checking that an epoch covers every sample once."""
        for raw in self._raw_epoch(epoch, worker, num_workers):
            sample, _ = self._decode(raw)
            if sample is not None:
                yield sample

    def one_epoch(self, epoch: int) -> ShardEpoch:
        """An IterableDataset of ``epoch`` alone (each DataLoader worker yields its reader's part)."""
        return ShardEpoch(self, epoch)

    def _slot(self, worker: int, num_workers: int) -> tuple[int, int]:
        num_slots = self.world_size * num_workers
        if len(self.shards) < num_slots:
            raise ShardError(
                f"{len(self.shards)} shards cannot feed {num_slots} readers (world size {self.world_size} x "
                f"{num_workers} DataLoader workers): every reader needs a shard of its own. Use fewer workers "
                "(train.num_workers) or split the data into more shards."
            )
        return self.rank * num_workers + worker, num_slots

    def _raw_epoch(self, epoch: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        slot, _ = self._slot(worker, num_workers)
        rng = np.random.default_rng([self.seed, epoch, slot, _BUFFER])
        raw = (s for shard in self.slot_shards(epoch, worker, num_workers) for s in _read_shard(shard))
        return _shuffle(raw, self.shuffle_buffer, rng)

    def _decode(self, raw: dict[str, Any]) -> tuple[Sample | None, str]:
        """The sample, or None and why (counted against its shard; may raise past the limit)."""
        counts = self.counts.setdefault(raw["__url__"], ShardCounts())
        counts.seen += 1
        try:
            sample, reason = sample_from_raw(raw, self.max_pixels), ""
        except (BadSample, ImageLoadError) as e:
            sample, reason = None, str(e)
            counts.bad += 1
            counts.example = counts.example or reason
            bad, seen = (sum(getattr(c, k) for c in self.counts.values()) for k in ("bad", "seen"))
            print(f"warning: skipped {reason} ({bad} of {seen} samples bad in this reader)", file=sys.stderr)
        self._check_bad_share()
        return sample, reason

    def _check_bad_share(self) -> None:
        seen = sum(c.seen for c in self.counts.values())
        bad = sum(c.bad for c in self.counts.values())
        if seen < MIN_SAMPLES_FOR_BAD_CHECK or bad <= self.max_bad_fraction * seen:
            return
        worst = sorted(self.counts.items(), key=lambda kv: -kv[1].bad)[:3]
        named = "; ".join(f"{s} ({c.bad} of {c.seen}, e.g. {c.example})" for s, c in worst if c.bad)
        raise ShardError(
            f"{bad} of {seen} samples ({bad / seen:.1%}) could not be used, over max_bad_fraction="
            f"{self.max_bad_fraction}; worst shards: {named}. Fix or remove them, or raise data.max_bad_fraction."
        )


class ShardEpoch(IterableDataset):
    """One epoch of a :class:`ShardStream` (finite); built by :meth:`ShardStream.one_epoch`."""

    def __init__(self, stream: ShardStream, epoch: int) -> None:
        self.stream, self.epoch = stream, epoch

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        wid, w = (0, 1) if info is None else (info.id, info.num_workers)
        return self.stream.epoch_samples(self.epoch, wid, w)
