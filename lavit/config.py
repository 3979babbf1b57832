"""Typed configuration: one dataclass per component, YAML files that mirror them.

Every YAML in ``configs/`` is loaded against a dataclass schema with OmegaConf in struct mode,
so an unknown key or a value of the wrong type fails at load time with the key's dotted name
and the file. Command-line overrides use the same path syntax: ``a.b=c``.

    cfg = load_config("configs/data/shapes64.yaml", ShapesWorldConfig, ["resolution=32"])

A component receives only its own sub-config (a ``ShapesWorldConfig``, never the run config).
Derived values are computed in code, not stored in YAML. Validation that needs more than a type
(ranges, cross-field rules) lives in each dataclass's ``__post_init__`` and raises
:class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-fixable configuration problem; the message names the key and the file."""


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------


@dataclass
class ShapesWorldConfig:
    """ShapesWorld scene generator (lavit/data/shapes.py)."""

    resolution: int = 64  # image side in pixels; any size >= 32 (the parser is checked at 64)
    seed: int = 0  # changes every scene of every split; splits stay disjoint for every seed
    min_shapes: int = 1
    max_shapes: int = 3
    duplicate_prob: float = 0.2  # chance a shape repeats an earlier one's colour and kind
    supersample: int = 4  # anti-aliasing: draw this many times larger, then area-average
    train_size: int = 100_000  # split lengths; scenes are generated on the fly
    val_size: int = 1_000
    test_size: int = 1_000

    def __post_init__(self) -> None:
        _check(self.resolution >= 32, "resolution", self.resolution, "use 32 or more pixels")
        _check(
            1 <= self.min_shapes <= self.max_shapes <= 4,
            "min_shapes/max_shapes",
            (self.min_shapes, self.max_shapes),
            "need 1 <= min_shapes <= max_shapes <= 4",
        )
        _check(0.0 <= self.duplicate_prob <= 1.0, "duplicate_prob", self.duplicate_prob, "use a probability in [0, 1]")
        _check(self.supersample >= 1, "supersample", self.supersample, "use 1 (no anti-aliasing) or more")
        for name in ("train_size", "val_size", "test_size"):
            _check(getattr(self, name) >= 1, name, getattr(self, name), "use a positive length")

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


def _check(ok: bool, key: str, value: Any, fix: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value {value!r} for '{key}': {fix}")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, schema: type[T], overrides: Sequence[str] = ()) -> T:
    """Load a YAML file against a dataclass schema and apply ``a.b=c`` overrides.

    Args:
        path: the YAML file, or None for the schema's defaults.
        schema: the dataclass the file mirrors.
        overrides: dotted ``key=value`` strings (values parsed as YAML: ``3``, ``true``, ``[1,2]``).

    Returns:
        An instance of ``schema`` (a real dataclass: ``__post_init__`` validation has run).

    Raises:
        ConfigError: missing file, YAML syntax error, unknown key, wrong type or invalid value;
            the message names the key and where it came from.
    """
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    sources: list[tuple[str, DictConfig]] = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = OmegaConf.load(path)
        except Exception as e:  # yaml.YAMLError and friends: report the file, keep the detail
            raise ConfigError(f"cannot parse {path}: {e}") from e
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{path} must hold a mapping of keys for {schema.__name__}, got a list")
        sources.append((str(path), loaded))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. resolution=32)")
        sources.append((f"override {item!r}", OmegaConf.from_dotlist([item])))

    merged = base
    for where, conf in sources:
        try:
            merged = OmegaConf.merge(merged, conf)
        except OmegaConfBaseException as e:
            raise ConfigError(_describe(e, where, schema)) from None
    try:
        return to_object(merged, schema)
    except ConfigError as e:
        origin = ", ".join(where for where, _ in sources) or "defaults"
        raise ConfigError(f"{e} (from {origin})") from None


def to_object(conf: DictConfig, schema: type[T]) -> T:
    """Turn a merged OmegaConf node into the dataclass, running its validation."""
    try:
        obj = OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, "config", schema)) from None
    assert isinstance(obj, schema)
    return obj


def to_yaml(cfg: Any) -> str:
    """Serialise a config dataclass (or a dict of them) to YAML text."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg) if dataclasses.is_dataclass(cfg) else OmegaConf.create(cfg))


def from_yaml(text: str, schema: type[T], *, where: str = "<yaml>") -> T:
    """Parse YAML text (e.g. a checkpoint's config.yaml) against a schema."""
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    try:
        merged = OmegaConf.merge(base, OmegaConf.create(text))
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, where, schema)) from None
    return to_object(merged, schema)


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dataclasses of the same schema."""
    da = dataclasses.asdict(a) if dataclasses.is_dataclass(a) else a
    db = dataclasses.asdict(b) if dataclasses.is_dataclass(b) else b
    out: list[str] = []
    for key in sorted(set(da) | set(db)):
        va, vb = da.get(key), db.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: {va!r} != {vb!r}")
    return out


def _describe(e: OmegaConfBaseException, where: str, schema: type) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(e).splitlines()[0]
    if isinstance(e, ConfigKeyError):
        hint = "" if "Did you mean" in msg else " Check the spelling against the schema."
        return f"unknown key '{key}' in {where} (schema {schema.__name__}): {msg}{hint}"
    return f"bad value for '{key}' in {where} (schema {schema.__name__}): {msg}"
