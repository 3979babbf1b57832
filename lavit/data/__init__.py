"""The data layer: sources chosen by name (``sources``), tar shards (``shards``), mixtures
(``mixture``), the readers, the one :class:`Sample` type and the safe image loader.

The names below are imported on first use (PEP 562), so ``import lavit.data.image_io`` stays
cheap and does not pull in torch's DataLoader machinery or webdataset.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Sample": "sample",
    "QA": "sample",
    "SourceConfig": "sources",
    "DataConfig": "sources",
    "build_source": "sources",
    "build_data": "sources",
    "expand_shorthand": "sources",
    "resolve_kind": "sources",
    "JsonlDataset": "readers",
    "ShardStream": "shards",
    "ShardError": "shards",
    "list_shards": "shards",
    "resume_positions": "shards",
    "MixtureDataset": "mixture",
    "MixtureStream": "mixture",
    "MapStream": "mixture",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lavit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lavit.data.{_EXPORTS[name]}"), name)
