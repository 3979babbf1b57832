"""Loading configs: YAML files and ``a.b=c`` overrides against a dataclass schema (OmegaConf in
struct mode), ``include:`` of presets, saved configs without interpolations, and diffs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from lavit.config.base import ConfigError

T = TypeVar("T")


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
    for key in base:  # a free-form dict field (dict[str, Any]) takes any key; __post_init__ judges them
        if OmegaConf.get_type(base, key) is dict:
            OmegaConf.set_struct(base[key], False)
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
        sources += _includes(loaded, path, (path.resolve(),))
        sources.append((str(path), loaded))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. resolution=32)")
        try:
            parsed = OmegaConf.from_dotlist([item])
        except Exception:  # yaml's ParserError / ScannerError, over several lines that do not name it
            # The shell strips quotes: prompt="Q: {} A:" arrives as prompt=Q: {} A:, which YAML
            # reads as a mapping and rejects.
            raise ConfigError(
                f"override {item!r}: the value is not valid YAML (a ': ' or braces in it?); quote it for YAML "
                "inside the shell's quotes, e.g. 'prompt=\"Question: {} Answer:\"'"
            ) from None
        sources.append((f"override {item!r}", parsed))

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


def _includes(loaded: DictConfig, path: Path, chain: tuple[Path, ...]) -> list[tuple[str, DictConfig]]:
    """Pop the file's ``include:`` mapping (sub-key -> YAML path relative to the file) and return
    the included files as sources placed under their sub-keys, merged before the file itself.
    ``chain`` holds the files that led here, so that a cycle is an error, not a recursion."""
    if "include" not in loaded:
        return []
    includes = loaded.pop("include")
    if not isinstance(includes, DictConfig):
        raise ConfigError(f"{path}: 'include' must map a sub-key to a YAML file, e.g. include: {{model: ../m.yaml}}")
    out = []
    for key, rel in includes.items():
        inc = (path.parent / str(rel)).resolve()
        if not inc.is_file():
            raise ConfigError(f"{path}: include.{key} -> {inc} not found")
        if inc in chain:
            raise ConfigError(
                f"{path}: include.{key} -> {inc} includes itself (through {' -> '.join(p.name for p in chain)}); "
                "remove the cycle"
            )
        try:
            conf = OmegaConf.load(inc)
        except Exception as e:
            raise ConfigError(f"cannot parse {inc} (included by {path}): {e}") from e
        if not isinstance(conf, DictConfig):
            raise ConfigError(f"{inc} (included by {path}) must hold a mapping of keys, got a list")
        out += [(w, OmegaConf.create({str(key): c})) for w, c in _includes(conf, inc, (*chain, inc))]
        out.append((f"{inc} (included by {path} as '{key}')", OmegaConf.create({str(key): conf})))
    return out


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
    """Parse YAML text (e.g. a checkpoint's config.yaml) against a schema.

    A saved config holds plain values: an interpolation (``${oc.env:HOME}``, ``${a.b}``) would
    make the model depend on the machine that loads it, and be written back resolved by the next
    save, so it is an error naming the key.

    A schema's ``RETIRED`` (a class attribute: removed option -> the value every model now has)
    lets a config saved before an option was removed load: the key is dropped when it holds that
    value, and any other value is an error naming it (the model needs the code that was removed).
    """
    base = OmegaConf.structured(schema)
    OmegaConf.set_struct(base, True)
    try:
        loaded = OmegaConf.create(text)
    except Exception as e:  # yaml.YAMLError and friends
        raise ConfigError(f"cannot parse {where}: {str(e).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{where} must hold a mapping of keys for {schema.__name__}, got {type(loaded).__name__}")
    interpolated = _interpolations(loaded)
    if interpolated:
        raise ConfigError(
            f"{where}: '{interpolated[0]}' is an interpolation ({_raw(loaded, interpolated[0])}); "
            "a saved config holds plain values: write the value itself"
        )
    for key, kept in getattr(schema, "RETIRED", {}).items():
        if key in loaded:
            if loaded[key] != kept:
                raise ConfigError(
                    f"{where}: {key}={loaded[key]!r} was removed from {schema.__name__} (it measured no gain; "
                    f"docs/experiments.md); only {key}={kept!r} loads: use a release that still has it"
                )
            del loaded[key]
    try:
        merged = OmegaConf.merge(base, loaded)
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, where, schema)) from None
    return to_object(merged, schema)


def _interpolations(node: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values are ``${...}`` interpolations (unresolved)."""
    out: list[str] = []
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else enumerate(node)
    for key, _ in items:
        full = f"{prefix}{key}"
        if OmegaConf.is_interpolation(node, key):
            out.append(full)
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)):
            out += _interpolations(child, f"{full}.")
    return out


def _raw(node: DictConfig, dotted: str) -> str:
    for key in dotted.split(".")[:-1]:
        node = node._get_node(int(key) if isinstance(node, ListConfig) else key)
    last = dotted.split(".")[-1]
    return str(node._get_node(int(last) if isinstance(node, ListConfig) else last)._value())


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
