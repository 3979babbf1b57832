"""Which samples each rank sees at each step: a pure function of (seed, step).

The global batch of optimizer step ``s`` is a slice of a per-epoch permutation. Rank ``r`` of
``W`` takes the r-th contiguous part and splits it into ``grad_accum`` micro-batches. Because
nothing depends on history, a resumed run sees exactly what an uninterrupted one would, and W
ranks with batch B/W see exactly the samples of one rank with batch B. With ``with_epoch`` an
index comes as ``(index, epoch)``, for datasets whose items depend on the epoch (a random crop
keyed by it: lavit/data/preprocess.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class StepBatchSampler(Sampler[list]):
    """Yields micro-batches of indices (or ``(index, epoch)`` pairs, ``with_epoch``) for steps
    ``start_step .. steps-1`` on one rank."""

    def __init__(
        self,
        dataset_len: int,
        global_batch: int,
        grad_accum: int,
        rank: int,
        world_size: int,
        seed: int,
        start_step: int,
        steps: int,
        with_epoch: bool = False,
    ) -> None:
        if global_batch % (world_size * grad_accum) != 0:
            raise ValueError(
                f"train.batch_size={global_batch} must be divisible by world size {world_size} x "
                f"train.grad_accum={grad_accum}"
            )
        if dataset_len < global_batch:
            raise ValueError(f"dataset of {dataset_len} samples is smaller than train.batch_size={global_batch}")
        self.n, self.global_batch, self.accum = dataset_len, global_batch, grad_accum
        self.rank, self.world, self.seed = rank, world_size, seed
        self.start_step, self.steps, self.with_epoch = start_step, steps, with_epoch
        self.per_epoch = dataset_len // global_batch  # steps per epoch (the remainder is dropped)
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def step_indices(self, step: int) -> list[list]:
        """The micro-batches of this rank at ``step``."""
        epoch, pos = divmod(step, self.per_epoch)
        batch = self._permutation(epoch)[pos * self.global_batch : (pos + 1) * self.global_batch]
        per_rank = self.global_batch // self.world
        mine = batch[self.rank * per_rank : (self.rank + 1) * per_rank]
        chunks = [chunk.tolist() for chunk in mine.chunk(self.accum)]
        return [[(i, epoch) for i in c] for c in chunks] if self.with_epoch else chunks

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step, self.steps):
            yield from self.step_indices(step)

    def __len__(self) -> int:
        return (self.steps - self.start_step) * self.accum
