"""Weighted mixtures of data sources.

:class:`MixtureDataset` mixes map-style datasets: item i -> (source, index) is a pure function of
(seed, i), so the trainer's ``StepBatchSampler`` (and its bit-exact resume) works unchanged.
Each source gets an exact quota of the mixture's items, proportional to its weight (largest
remainder), rather than a per-item coin flip: the shares never drift, and the randomness of
order comes from a keyed permutation of the items (and the trainer's sampler on top).

:class:`MixtureStream` mixes iterable sources (a :class:`ShardStream`, or map-style datasets
read as endless streams by :class:`MapStream`): each item of a reader draws its source with
probability proportional to the weights, from an RNG keyed by (seed, reader slot, item), so a
resume recomputes how many items each source had given and skips exactly those.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from lavit.config import ConfigError
from lavit.data.sample import Sample
from lavit.data.shards import ResumableStream, ShardError

_M64 = (1 << 64) - 1
_MIX_ORDER, _DRAWS = 0x313, 0xD5A  # separate keys: the mixture's item order, the stream's draws
_DRAW_CHUNK = 4096  # stream draws are made (and replayed on resume) this many at a time


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a cheap, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def permute(i: int, n: int, key: Sequence[int]) -> int:
    """A keyed pseudorandom bijection of ``[0, n)``, O(1) time and memory.

    A 4-round Feistel network on the smallest even bit width covering ``n``, cycle-walked back
    into range (the domain is under 4n, so a few rounds at most on average). Used instead of a
    stored ``randperm`` so that sources of any size cost nothing to permute.

    Args:
        i: the position, ``0 <= i < n``.
        n: the size of the range.
        key: integers selecting the permutation (seed, source, pass...).

    Returns:
        The image of ``i``.
    """
    assert 0 <= i < n, (i, n)
    h = 0
    for part in key:
        h = _mix64(h ^ (part & _M64))
    round_keys = [_mix64(h + r) for r in range(4)]
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    x = i
    while True:
        left, right = x >> half, x & mask
        for k in round_keys:
            left, right = right, left ^ (_mix64(right ^ k) & mask)
        x = (left << half) | right
        if x < n:
            return x


def normalise_weights(weights: Sequence[float], names: Sequence[str] | None = None) -> np.ndarray:
    """Weights -> probabilities, checked: each finite and >= 0, not all 0.

    Args:
        weights: one per source.
        names: how errors name each source (default ``source[i]``).

    Returns:
        float64 probabilities summing to 1.

    Raises:
        ConfigError: naming the offending source and weight.
    """
    names = names or [f"source[{i}]" for i in range(len(weights))]
    for name, w in zip(names, weights, strict=True):
        if not (math.isfinite(w) and w >= 0):
            raise ConfigError(f"invalid value {w!r} for '{name}.weight': mixture weights are finite and >= 0")
    total = float(sum(weights))
    if total <= 0:
        raise ConfigError(f"every mixture weight is 0 ({list(weights)}): give at least one source a weight > 0")
    return np.asarray(weights, dtype=np.float64) / total


def _quotas(length: int, probs: np.ndarray) -> list[int]:
    """Split ``length`` items by ``probs`` (largest remainder; ties to the earlier source)."""
    exact = probs * length
    quotas = np.floor(exact).astype(int)
    order = sorted(range(len(probs)), key=lambda k: (-(exact[k] - quotas[k]), k))
    for k in order[: length - int(quotas.sum())]:
        quotas[k] += 1
    return quotas.tolist()


class MixtureDataset(Dataset[Sample]):
    """Map-style datasets mixed by weight; ``ds[i]`` is a pure function of (seed, i).

    Item i is first moved by a keyed permutation of ``[0, len)`` (so that consecutive items mix
    the sources), then falls in source k's quota; occurrence j of source k reads
    ``permute(j mod n_k, n_k, (seed, k, j // n_k))``: successive passes over a source come in
    fresh orders, and a subsampled source contributes a spread subset rather than its head.

    Length: by default the sources with weight > 0 together (``sum n_k``), one "epoch" of the
    mixture; a heavy small source then repeats and a light large one is subsampled, the same
    subset every epoch. To spread a whole run over fresh passes of each source, pass
    ``length = train.steps * train.batch_size``.

    Args:
        datasets: the sources (each ``len`` > 0).
        weights: one per source, >= 0, not all 0; shares of the mixture are proportional.
        seed: keys the permutations.
        length: items in the mixture (see above).
    """

    def __init__(
        self, datasets: Sequence[Dataset], weights: Sequence[float], *, seed: int = 0, length: int | None = None
    ) -> None:
        if len(datasets) != len(weights):
            raise ConfigError(f"{len(datasets)} sources but {len(weights)} weights: give one weight per source")
        self.datasets, self.seed = list(datasets), seed
        self.probs = normalise_weights(weights)
        self.sizes = [len(d) for d in self.datasets]  # type: ignore[arg-type]
        for k, n in enumerate(self.sizes):
            if n == 0 and self.probs[k] > 0:
                raise ConfigError(f"mixture source[{k}] is empty; remove it or give it weight 0")
        self.length = (
            length if length is not None else sum(n for n, p in zip(self.sizes, self.probs, strict=True) if p > 0)
        )
        if self.length < 1:
            raise ConfigError(f"mixture length {self.length} must be >= 1")
        quotas = _quotas(self.length, self.probs)
        self.ends = np.cumsum(quotas).tolist()  # source k owns items [ends[k-1], ends[k]) after the permutation

    def __len__(self) -> int:
        return self.length

    def locate(self, i: int) -> tuple[int, int]:
        """``(source, index in that source)`` of mixture item ``i``; nothing is loaded."""
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for a mixture of {self.length} items")
        j = permute(i, self.length, (self.seed, _MIX_ORDER))
        k = bisect.bisect_right(self.ends, j)
        occurrence = j - (self.ends[k - 1] if k else 0)
        n = self.sizes[k]
        return k, permute(occurrence % n, n, (self.seed, k, occurrence // n))

    def __getitem__(self, i: int) -> Any:
        k, index = self.locate(i)
        return self.datasets[k][index]


class MapStream(ResumableStream):
    """A map-style dataset read as an endless, resumable stream split across readers.

    Epoch e visits ``permute(., n, (seed, e))``; reader slot s of S takes positions s, s+S, ...
    Skipping to a position is arithmetic (nothing is loaded).

    Args:
        dataset: the map-style source.
        seed, rank, world_size: as for :class:`lavit.data.shards.ShardStream`.
    """

    def __init__(self, dataset: Dataset, *, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        self.dataset, self.seed, self.rank, self.world_size = dataset, seed, rank, world_size

    def iter_from(self, worker: int, num_workers: int, position: int) -> Iterator[Any]:
        """The endless sequence of one reader from ``position`` on."""
        n, num_slots = len(self.dataset), self.world_size * num_workers  # type: ignore[arg-type]
        slot = self.rank * num_workers + worker
        if n < num_slots:
            raise ShardError(
                f"a source of {n} items cannot feed {num_slots} readers (world size {self.world_size} x "
                f"{num_workers} workers); use fewer workers or a larger source"
            )
        per_epoch = len(range(slot, n, num_slots))
        epoch, offset = divmod(position, per_epoch)
        while True:
            for j in range(offset, per_epoch):
                yield self.dataset[permute(slot + j * num_slots, n, (self.seed, epoch))]
            epoch, offset = epoch + 1, 0


class MixtureStream(ResumableStream):
    """Iterable sources mixed by weight, per item, resumably.

    Item t of reader slot s draws its source from ``rng(seed, s, t // 4096)``; on resume at
    position p the draws of items < p are replayed (vectorised, no data loaded) to give each
    source its own skip count.

    Args:
        sources: :class:`ShardStream` s, :class:`MapStream` s, or map-style datasets (wrapped in
            a MapStream with this seed, rank and world size).
        weights: one per source, >= 0, not all 0.
        seed: keys the draws.
        rank, world_size: this process among the data-parallel ranks (must match the streams').
    """

    def __init__(
        self, sources: Sequence[Any], weights: Sequence[float], *, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if len(sources) != len(weights):
            raise ConfigError(f"{len(sources)} sources but {len(weights)} weights: give one weight per source")
        self.probs = normalise_weights(weights)
        self.sources = [
            s if hasattr(s, "iter_from") else MapStream(s, seed=seed + k, rank=rank, world_size=world_size)
            for k, s in enumerate(sources)
        ]
        for k, s in enumerate(self.sources):
            assert (s.rank, s.world_size) == (rank, world_size), f"source {k} was built for another rank"
        self.seed, self.rank, self.world_size = seed, rank, world_size

    def _draws(self, slot: int, chunk: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, slot, chunk, _DRAWS])
        return rng.choice(len(self.probs), size=_DRAW_CHUNK, p=self.probs)

    def consumed(self, slot: int, position: int) -> list[int]:
        """Items each source gave reader ``slot`` in its first ``position`` items."""
        counts = np.zeros(len(self.probs), dtype=np.int64)
        full, rest = divmod(position, _DRAW_CHUNK)
        for chunk in range(full):
            counts += np.bincount(self._draws(slot, chunk), minlength=len(self.probs))
        if rest:
            counts += np.bincount(self._draws(slot, full)[:rest], minlength=len(self.probs))
        return counts.tolist()

    def iter_from(self, worker: int, num_workers: int, position: int) -> Iterator[Any]:
        """The endless mixed sequence of one reader from ``position`` on."""
        slot = self.rank * num_workers + worker
        skips = self.consumed(slot, position)
        # Opened on first use: a weight-0 source is never read.
        iters: list[Iterator[Any] | None] = [None] * len(self.sources)
        t = position
        while True:
            draws = self._draws(slot, t // _DRAW_CHUNK)
            for k in draws[t % _DRAW_CHUNK :].tolist():
                if iters[k] is None:
                    iters[k] = self.sources[k].iter_from(worker, num_workers, skips[k])
                yield next(iters[k])  # type: ignore[arg-type]
                t += 1
