"""Model directories and training state on disk: safetensors only, written atomically, loaded strictly.

A model directory holds everything needed to rebuild and load a model:

    my-model/
      meta.json               schema name, component names, format version
      config.yaml             the config dataclass (the model is rebuilt from it)
      <component>.safetensors one file per component (tokenizer, lm, diffusion, ...)
      <extra files>           e.g. the text tokenizer's tokenizer.json

It is written into a temporary sibling and renamed into place, so a crash never leaves a
half-written model where a good one was. Loading rebuilds each component from the saved config
and loads its tensors with ``strict=True``; a missing, unexpected or mis-shaped tensor, a config
that disagrees with the caller's, or a pickle file fails with a message naming it.

Training state (optimizer, scheduler, RNG, data position) goes through :func:`save_tree` /
:func:`load_tree`: nested dicts/lists with tensors, in one safetensors file whose metadata holds
the structure as JSON. No pickle anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from lavit.config import config_diff, from_yaml, to_yaml
from lavit.files import atomic_dir, atomic_write

T = TypeVar("T")
FORMAT_VERSION = 1
META_FILE, CONFIG_FILE, WEIGHTS_SUFFIX = "meta.json", "config.yaml", ".safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded as asked; the message names the file and the fix."""


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


def read_config(directory: str | Path, schema: type[T]) -> T:
    """The config saved in a model directory, checked against ``schema``."""
    directory = _check_model_dir(directory)
    meta = json.loads((directory / META_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / META_FILE}: format_version {meta.get('format_version')} is not "
            f"{FORMAT_VERSION}; re-save the model with this version of lavit"
        )
    if meta.get("schema") != schema.__name__:
        raise CheckpointError(
            f"{directory} holds a {meta.get('schema')} model, not a {schema.__name__}; "
            "pass the directory of the right model"
        )
    return from_yaml((directory / CONFIG_FILE).read_text(), schema, where=str(directory / CONFIG_FILE))


def load_model_dir(
    directory: str | Path,
    schema: type[T],
    build: Callable[[T], Mapping[str, nn.Module]],
    expect_config: T | None = None,
) -> tuple[T, dict[str, nn.Module]]:
    """Rebuild a model from its directory and load its weights strictly.

    Args:
        directory: a folder written by :func:`save_model_dir`.
        schema: the config dataclass expected in it.
        build: config -> name -> freshly built module (on the device/dtype wanted).
        expect_config: if given, the saved config must equal it; differences are listed.

    Returns:
        (config, modules) with every module's tensors loaded.
    """
    directory = Path(directory)
    cfg = read_config(directory, schema)
    if expect_config is not None:
        diff = config_diff(cfg, expect_config)
        if diff:
            raise CheckpointError(
                f"config in {directory / CONFIG_FILE} differs from the expected one at: "
                + "; ".join(diff)
                + ". Load with the checkpoint's own config or retrain."
            )
    modules = dict(build(cfg))
    saved = set(json.loads((directory / META_FILE).read_text())["components"])
    if saved != set(modules):
        raise CheckpointError(f"{directory} holds components {sorted(saved)} but the model builds {sorted(modules)}")
    for name, module in modules.items():
        load_weights(module, directory / f"{name}{WEIGHTS_SUFFIX}")
    return cfg, modules


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


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load a safetensors file into ``module`` strictly, naming every missing, unexpected or
    mis-shaped tensor."""
    path = Path(path)
    _refuse_pickle(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        saved = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}); re-save it with lavit") from None
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
    try:
        load_model(module, str(path), strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: {e}") from None


def _check_model_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"model directory not found: {directory}")
    if not (directory / META_FILE).is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
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
    "atomic_write",
    "save_model_dir",
    "load_model_dir",
    "read_config",
    "load_weights",
    "save_tree",
    "load_tree",
]
