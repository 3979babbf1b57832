"""What every config module shares: the error a user can fix, and the checks that raise it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


class ConfigError(ValueError):
    """A user-fixable configuration problem; the message names the key and the file."""


GUIDANCE_FIX = "use a finite guidance scale (1.0 disables classifier-free guidance)"


def check(ok: bool, key: str, value: Any, fix: str) -> None:
    """Raise a ConfigError naming ``key`` and ``value`` and saying how to fix it, unless ``ok``."""
    if not ok:
        raise ConfigError(f"invalid value {value!r} for '{key}': {fix}")


def check_norm_groups(groups: int, channels: Sequence[int], key: str = "norm_num_groups") -> None:
    """GroupNorm's group count must divide every block width (diffusers' UNets and VAEs)."""
    check(
        groups >= 1 and all(c % groups == 0 for c in channels),
        key,
        groups,
        f"must divide every entry of block_out_channels {list(channels)}",
    )


def fills_once(template: str) -> bool:
    """Whether ``template.format(question)`` puts the question in exactly once: one ``{}``, and
    no other field (``{0}``, ``{q}``, an unmatched brace); ``{{}}`` is a literal "{}"."""
    mark = "\0question\0"
    try:
        filled = template.format(mark)
    except (IndexError, KeyError, ValueError):
        return False
    return filled.count(mark) == 1


def check_sampling(cfg: Any) -> None:
    """The checks every sampling config shares: a finite ``guidance_scale``, ``top_k`` >= 0,
    ``top_p`` in (0, 1], a positive ``temperature``."""
    check(math.isfinite(cfg.guidance_scale), "guidance_scale", cfg.guidance_scale, GUIDANCE_FIX)
    check(cfg.top_k >= 0, "top_k", cfg.top_k, "use 0 (off) or a positive count")
    check(0 < cfg.top_p <= 1, "top_p", cfg.top_p, "use a value in (0, 1]")
    check(cfg.temperature > 0, "temperature", cfg.temperature, "use a positive temperature")
