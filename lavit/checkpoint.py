"""Model directories and training state on disk: safetensors only, written atomically, loaded strictly.

A model directory holds everything needed to rebuild and load a model:

    my-model/
      meta.json               schema name, component names, format version
      config.yaml             the config dataclass (the model is rebuilt from it)
      <component>.safetensors one file per component (tokenizer, lm, diffusion, ...)
      <extra files>           e.g. the text tokenizer's tokenizer.json

It is written into a temporary sibling and renamed into place, so a crash never leaves a
half-written model where a good one was. Loading rebuilds each component from the saved config
and loads its tensors with ``strict=True``; a missing, unexpected, mis-shaped, wrongly typed
(integer where the model has float) or non-finite tensor, a config that disagrees with the
caller's, or a pickle file fails with a one-line :class:`CheckpointError` naming it.

What loading reads, it reads from inside the folder asked for (the *root*: the model directory,
or for a pipeline the pipeline folder): every file is checked with ``stat`` before it is opened
(a directory, FIFO or device in place of a file is an error, never a blocked read), and a file
or folder whose resolved path leaves the root (a symlink out of it) is refused. Symlinks that
stay inside the root are followed. Paths a saved config names (an LM's ``pretrained_path``, a
tokenizer's ``encoder.weights``) are provenance or refused, never read: the folder is the model.

Training state (optimizer, scheduler, RNG, data position) goes through :func:`save_tree` /
:func:`load_tree`: nested dicts/lists with tensors, in one safetensors file whose metadata holds
the structure as JSON. No pickle anywhere.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from lavit.config import ConfigError, config_diff, from_yaml, to_yaml
from lavit.files import atomic_dir, atomic_write

T = TypeVar("T")
FORMAT_VERSION = 1
META_FILE, CONFIG_FILE, WEIGHTS_SUFFIX = "meta.json", "config.yaml", ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


# The fix for a damaged model folder, at the end of the errors that name the damaged file.
RESTORE = "restore the model folder from its source or re-save it with lavit"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message (one line) names the file and the fix."""


# --------------------------------------------------------------------------------------------
# Model directories
# --------------------------------------------------------------------------------------------


def save_model_dir(
    directory: str | Path,
    config: Any,
    components: Mapping[str, nn.Module],
    extra_files: Mapping[str, str | bytes] | None = None,
) -> Path:
    """Write a model directory atomically.

    Args:
        directory: target folder (replaced whole if it exists).
        config: the config dataclass the components are rebuilt from.
        components: name -> module; each becomes ``<name>.safetensors`` (tied weights kept once).
        extra_files: name -> text or bytes written beside them (e.g. a tokenizer.json).

    Returns:
        The directory path.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        meta = {"format_version": FORMAT_VERSION, "schema": type(config).__name__, "components": sorted(components)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / CONFIG_FILE).write_text(to_yaml(config))
        for name, module in components.items():
            save_model(module, str(tmp / f"{name}{WEIGHTS_SUFFIX}"))
        for name, content in (extra_files or {}).items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(tmp / name, mode) as f:
                f.write(content)
    return directory


def read_config(directory: str | Path, schema: type[T], root: str | Path | None = None) -> T:
    """The config saved in a model directory, checked against ``schema``.

    Args:
        directory: a folder written by :func:`save_model_dir`.
        schema: the config dataclass expected in it.
        root: the folder every file read must resolve inside (default: ``directory``).
    """
    return _read_dir(directory, schema, root)[1]


def load_model_dir(
    directory: str | Path,
    schema: type[T],
    build: Callable[[T], Mapping[str, nn.Module]],
    expect_config: T | None = None,
    root: str | Path | None = None,
) -> tuple[T, dict[str, nn.Module]]:
    """Rebuild a model from its directory and load its weights strictly.

    Args:
        directory: a folder written by :func:`save_model_dir`.
        schema: the config dataclass expected in it.
        build: config -> name -> freshly built module (on the device/dtype wanted).
        expect_config: if given, the saved config must equal it; differences are listed.
        root: the folder every file read must resolve inside (default: ``directory``; a
            pipeline passes its own folder, so a stage may not link out of it).

    Returns:
        (config, modules) with every module's tensors loaded.
    """
    directory = Path(directory)
    root = directory if root is None else Path(root)
    meta, cfg = _read_dir(directory, schema, root)
    if expect_config is not None:
        diff = config_diff(cfg, expect_config)
        if diff:
            raise CheckpointError(
                f"config in {directory / CONFIG_FILE} differs from the expected one at: "
                + "; ".join(diff)
                + ". Load with the checkpoint's own config or retrain."
            )
    # Every weights file is there and readable before anything is built.
    paths = {name: _weights_file(directory / f"{name}{WEIGHTS_SUFFIX}", root) for name in meta["components"]}
    modules = dict(_build(build, cfg, directory))
    if set(paths) != set(modules):
        raise CheckpointError(
            f"{directory} holds components {sorted(paths)} but the model builds {sorted(modules)} "
            f"({directory / META_FILE}: components); point at the directory of the right model"
        )
    for name, module in modules.items():
        load_weights(module, paths[name], root)
    return cfg, modules


def _read_dir(directory: str | Path, schema: type[T], root: str | Path | None) -> tuple[dict, T]:
    """(meta.json, config) of a model directory, both checked."""
    directory = Path(directory)
    root = directory if root is None else Path(root)
    directory = _check_model_dir(directory, root)
    meta = read_meta(directory, root)
    if meta["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / META_FILE}: format_version {meta['format_version']} is not "
            f"{FORMAT_VERSION}; re-save the model with this version of lavit"
        )
    if meta["schema"] != schema.__name__:
        raise CheckpointError(
            f"{directory} holds a {meta['schema']} model, not a {schema.__name__} ({directory / META_FILE}: "
            "schema); pass the directory of the right model"
        )
    return meta, read_config_file(directory / CONFIG_FILE, schema, root)


def read_meta(directory: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """A model directory's meta.json, its keys checked: ``format_version`` (int), ``schema``
    (str), ``components`` (a non-empty list of names)."""
    path = Path(directory) / META_FILE
    meta = read_json(path, root)
    kinds = {"format_version": int, "schema": str, "components": list}
    for key, kind in kinds.items():
        if key not in meta:
            raise CheckpointError(f"{path} has no '{key}'; {RESTORE}")
        if not isinstance(meta[key], kind) or isinstance(meta[key], bool):
            raise CheckpointError(f"{path}: '{key}' must be a {kind.__name__}, got {short_value(meta[key])}; {RESTORE}")
    names = meta["components"]
    if not names or not all(isinstance(n, str) and n and "/" not in n and not n.startswith(".") for n in names):
        raise CheckpointError(f"{path}: 'components' must list component names, got {short_value(names)}; {RESTORE}")
    return meta


def read_config_file(path: str | Path, schema: type[T], root: str | Path | None = None) -> T:
    """A saved YAML config (config.yaml, pipeline.yaml) checked against ``schema``; every error
    names the file. Errors in the values are :class:`~lavit.config.ConfigError` (they name the
    key), a file that cannot be read is a :class:`CheckpointError`."""
    path = model_file(path, root)
    text = _read_text(path)
    where = str(path)
    try:
        return from_yaml(text, schema, where=where)
    except ConfigError as e:
        if where in str(e):
            raise
        raise ConfigError(f"{where}: {one_line(e)}") from None
    except Exception as e:  # a validation that fails on a value it did not expect (0 heads: ZeroDivisionError)
        raise CheckpointError(f"{where}: {type(e).__name__}: {one_line(e)}; correct the value or {RESTORE}") from None


def read_json(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """A JSON object from a model folder (meta.json, vocab.json, hf_config.json, ...), or a
    one-line CheckpointError naming the file."""
    path = model_file(path, root)
    text = _read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e.msg} at line {e.lineno}); {RESTORE}") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(value).__name__}; {RESTORE}")
    return value


def model_file(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` if it is a regular file that resolves inside ``root``; else a one-line
    CheckpointError naming it.

    Checked with ``stat`` before anything opens it: a FIFO or device in place of a file would
    block the read or never end it, and a symlink out of the folder would load a file the model
    folder does not hold."""
    path = Path(path)
    _check_inside(path, root)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        broken = " (a broken symlink)" if path.is_symlink() else ""
        raise CheckpointError(f"{path} not found{broken}; {RESTORE}") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror}); {RESTORE}") from None
    if stat.S_ISDIR(mode):
        raise CheckpointError(f"{path} is a directory, not a file; {RESTORE}")
    if not stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is not a regular file (a {_file_kind(mode)}); {RESTORE}")
    return path


def model_subdir(path: str | Path, root: str | Path | None = None) -> Path:
    """``path`` if it is a directory that resolves inside ``root``; else a one-line CheckpointError."""
    path = Path(path)
    _check_inside(path, root)
    if not path.exists():
        broken = " (a broken symlink)" if path.is_symlink() else ""
        raise CheckpointError(f"model directory not found: {path}{broken}")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; point at a model folder written by lavit")
    return path


def _check_inside(path: Path, root: str | Path | None) -> None:
    """Refuse ``path`` when its resolved location leaves ``root`` (a symlink out of the folder)."""
    if root is None:
        return
    resolved, top = path.resolve(), Path(root).resolve()
    if not resolved.is_relative_to(top):
        raise CheckpointError(
            f"{path} resolves to {resolved}, outside the model folder {top}; a model folder must hold its "
            "own files: copy the target in place of the symlink"
        )


def _file_kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device")):
        if test(mode):
            return name
    return "block device" if stat.S_ISBLK(mode) else "special file"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not UTF-8 text (a binary file?); {RESTORE}") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e.strerror}); {RESTORE}") from None


def _build(build: Callable[[T], Mapping[str, nn.Module]], cfg: T, directory: Path) -> Mapping[str, nn.Module]:
    """``build(cfg)``; a saved config the model cannot be built from is an error naming the file."""
    try:
        return build(cfg)
    except (CheckpointError, ConfigError):
        raise
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError, ZeroDivisionError, AssertionError) as e:
        raise CheckpointError(
            f"{directory / CONFIG_FILE}: the model does not build from this config ({type(e).__name__}: "
            f"{one_line(e)}); correct the value or {RESTORE}"
        ) from None


def one_line(e: BaseException) -> str:
    """The first non-empty line of an exception's text (at most 300 characters), for one-line errors."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def short_value(value: Any) -> str:
    """``repr(value)``, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def cast_weights(directory: str | Path, dtype: str) -> int:
    """Rewrite every ``*.safetensors`` under ``directory`` with floating tensors in ``dtype``
    (to ship a model in half the space); loading casts them back to the model's dtype.

    Returns:
        The bytes the weight files take afterwards.

    Raises:
        CheckpointError: a tensor does not fit ``dtype`` (it would become inf).
    """
    if dtype not in STORAGE_DTYPES:
        raise CheckpointError(f"unknown weights dtype {dtype!r}: use one of {', '.join(STORAGE_DTYPES)}")
    to, total = STORAGE_DTYPES[dtype], 0
    for path in sorted(Path(directory).rglob(f"*{WEIGHTS_SUFFIX}")):
        tensors = load_file(str(path))
        cast = {k: v.to(to) if v.is_floating_point() else v for k, v in tensors.items()}
        bad = [k for k, v in cast.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise CheckpointError(f"{path}: {bad[:3]} do not fit in {dtype}; keep float32")
        atomic_write(path, lambda tmp, cast=cast: save_file(cast, str(tmp)))
        total += path.stat().st_size
    return total


def state_mismatch(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], grown: tuple[str, ...] = ()
) -> list[str]:
    """The tensor names of two state dicts that do not line up: in one only, or in both with
    different shapes (each group sorted). Empty when one loads into the other strictly, or, with
    ``grown`` name prefixes, when ``b`` differs only by modules under them that ``a`` lacks (a
    model that grew new parts, which start where they leave it unchanged, from a trained one)."""
    only_b = {k for k in set(b) - set(a) if not k.startswith(grown)}  # startswith(()) is False
    return sorted((set(a) - set(b)) | only_b) + sorted(k for k in a.keys() & b.keys() if a[k].shape != b[k].shape)


def load_weights(module: nn.Module, path: str | Path, root: str | Path | None = None) -> None:
    """Load a safetensors file into ``module`` strictly, naming every missing, unexpected,
    mis-shaped or wrongly typed tensor, and any floating tensor holding NaN or inf (weights like
    that load, then every output is NaN: a caption comes back empty).

    Args:
        module: the freshly built model.
        path: its ``.safetensors`` file.
        root: the folder ``path`` must resolve inside (default: no such check).
    """
    path = _weights_file(Path(path), root)
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(
            f"{path} is not a readable safetensors file ({_unreadable(path, e)}); {RESTORE}"
        ) from None
    expected = module.state_dict()
    shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in saved.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if shapes:
        raise CheckpointError(
            f"{path}: tensor shapes differ from the model built from its config: " + "; ".join(shapes)
        )
    # A float tensor stored in another float width is cast on load (cast_weights ships float16);
    # an integer or bool tensor in a float's place (or the reverse) is a different tensor.
    kinds = [
        f"{k}: file {v.dtype} vs model {expected[k].dtype}"
        for k, v in saved.items()
        if k in expected and _dtype_kind(v.dtype) != _dtype_kind(expected[k].dtype)
    ]
    if kinds:
        raise CheckpointError(
            f"{path}: tensor types differ from the model's (" + "; ".join(kinds[:3]) + f"); {RESTORE}"
        )
    # Tied weights are one tensor under several names; the file holds one of them.
    aliases: dict[int, set[str]] = {}
    for name, tensor in expected.items():
        if tensor.numel():
            aliases.setdefault(tensor.data_ptr(), set()).add(name)
    missing = sorted(
        k for k, t in expected.items() if k not in saved and not (t.numel() and aliases[t.data_ptr()] & saved.keys())
    )
    unexpected = sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{path} does not match the model: missing {missing}, unexpected {unexpected}")
    bad = [k for k, v in saved.items() if v.is_floating_point() and not _all_finite(v)]
    if bad:
        count = int((~torch.isfinite(saved[bad[0]])).sum())
        raise CheckpointError(
            f"{path}: tensor {bad[0]} holds NaN or inf ({count} of {saved[bad[0]].numel()} values"
            + (f"; also {', '.join(bad[1:4])}" if len(bad) > 1 else "")
            + f"): the weights are corrupt; {RESTORE} (or retrain from a checkpoint before the loss diverged)"
        )
    try:
        load_model(module, str(path), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: {one_line(e)}") from None


def _all_finite(x: torch.Tensor) -> bool:
    # A sum is finite when every value is (NaN and inf propagate); only a sum that overflows needs
    # the exact, slower elementwise test.
    return bool(torch.isfinite(x.sum(dtype=torch.promote_types(x.dtype, torch.float32)))) or bool(
        torch.isfinite(x).all()
    )


def _dtype_kind(dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return "bool"
    if dtype.is_complex:
        return "complex"
    return "float" if dtype.is_floating_point else "int"


def _weights_file(path: Path, root: str | Path | None) -> Path:
    """``path`` checked as a weights file: not a pickle, there, regular, inside ``root``."""
    _refuse_pickle(path)
    if not os.path.lexists(path):
        pickles = _pickles(path.parent)
        if pickles:
            raise CheckpointError(
                f"{path} not found; {path.parent} holds pickle files {pickles} instead, which are refused "
                "(loading them can run arbitrary code): convert the weights to safetensors and save with lavit"
            )
    return model_file(path, root)


def _unreadable(path: Path, e: BaseException) -> str:
    """Why ``path`` did not load as safetensors, recognising a pickle given a .safetensors name."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or (len(head) > 2 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2]):
        return "it is a pickle / torch.save file, which is refused: loading one can run arbitrary code"
    return one_line(e)


def _pickles(directory: Path) -> list[str]:
    if not directory.is_dir():
        return []
    return sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)


def _check_model_dir(directory: str | Path, root: str | Path | None = None) -> Path:
    directory = model_subdir(directory, root)
    if not os.path.lexists(directory / META_FILE):
        pickles = _pickles(directory)
        if pickles:
            raise CheckpointError(
                f"{directory} holds pickle files {pickles}; pickle checkpoints are refused (loading "
                "them can run arbitrary code). Convert the weights to safetensors and save with lavit."
            )
        raise CheckpointError(
            f"{directory} is not a lavit model directory (no {META_FILE}); "
            "point at a folder written by save_pretrained / save_model_dir"
        )
    return directory


def _refuse_pickle(path: Path) -> None:
    if path.suffix in PICKLE_SUFFIXES:
        raise CheckpointError(
            f"{path}: pickle files are refused (loading them can run arbitrary code); "
            "convert the weights to .safetensors first"
        )


# --------------------------------------------------------------------------------------------
# Training state: nested structures with tensors
# --------------------------------------------------------------------------------------------


def save_tree(path: str | Path, tree: Any) -> Path:
    """Save nested dicts/lists/tuples of tensors and JSON scalars to one safetensors file.

    Tensors are stored as tensors; the structure (and every non-tensor leaf: ints, floats,
    strings, None, bools) is JSON in the file's metadata. Written atomically.
    """
    tensors: dict[str, torch.Tensor] = {}

    def enc(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            name = f"t{len(tensors)}"
            tensors[name] = x.detach().cpu().contiguous().clone()
            return {"__tensor__": name}
        if isinstance(x, dict):
            return {"__dict__": [[k, enc(v)] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return {"__tuple__" if isinstance(x, tuple) else "__list__": [enc(v) for v in x]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        raise TypeError(f"save_tree cannot store a {type(x).__name__}; convert it to tensors or JSON values")

    meta = {"tree": json.dumps(enc(tree)), "format_version": str(FORMAT_VERSION)}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_tree(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Inverse of :func:`save_tree`."""
    path = Path(path)
    _refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"state file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    if "tree" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a lavit state file (no 'tree' metadata)")

    def dec(x: Any) -> Any:
        if isinstance(x, dict):
            if "__tensor__" in x:
                return tensors[x["__tensor__"]]
            if "__dict__" in x:
                return {k: dec(v) for k, v in x["__dict__"]}
            if "__tuple__" in x:
                return tuple(dec(v) for v in x["__tuple__"])
            return [dec(v) for v in x["__list__"]]
        return x

    return dec(json.loads(meta["tree"]))


__all__ = [
    "CheckpointError",
    "model_file",
    "model_subdir",
    "read_json",
    "read_meta",
    "read_config_file",
    "atomic_write",
    "save_model_dir",
    "load_model_dir",
    "read_config",
    "load_weights",
    "save_tree",
    "load_tree",
]
