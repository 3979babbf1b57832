"""What a training stage must provide to the shared trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import Dataset


class Task(Protocol):
    """A stage: builds its model and data, turns a batch into a loss, evaluates, saves.

    The trainer owns everything else (devices, distribution, precision, optimizer, schedule,
    checkpoints, logging), so a new stage is only this object.
    """

    name: str
    # Module types the trainer may wrap for activation checkpointing / FSDP2 sharding.
    block_types: tuple[type[nn.Module], ...]
    # The stage's run config (a TokenizerRunConfig, LMRunConfig, ...): the trainer saves it with
    # each checkpoint and refuses to resume one saved with settings that change the result.
    cfg: Any

    def build_model(self) -> nn.Module:
        """A fresh model on the CPU (the trainer moves and wraps it)."""

    def train_dataset(self) -> Dataset:
        """A map-style dataset (indexed by the trainer's ``StepBatchSampler``) or an endless
        :class:`lavit.data.shards.ResumableStream` (resumed after the batches already taken);
        items go through :meth:`collate`."""

    def collate(self, items: list[Any]) -> Any:
        """Items -> one micro-batch (tensors on the CPU)."""

    def training_step(self, model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(wrapped) model + batch -> (scalar loss, detached scalar logs)."""

    def evaluate(self, model: nn.Module, step: int) -> dict[str, float]:
        """Held-out metrics on the unwrapped model (rank 0 under DDP)."""

    def save(self, model: nn.Module, directory: Path) -> None:
        """Write the trained model as a model directory (config + safetensors)."""
