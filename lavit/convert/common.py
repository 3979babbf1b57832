"""What every converter shares: reading a published checkpoint without running its code, mapping
its tensor names onto ours with one-line errors, and writing the converted model folder.

    read_state_dict(path)                     .safetensors, or .pth/.pt/.bin as tensors only
    sha256_file(path)                         the digest convert.json records
    apply_key_map(state, key_map, path)       source tensors -> ours, every name and shape checked
    write_converted(out_dir, save, sources)   the model folder, written whole or not at all
    rebuild_meta_buffers(model)               after a meta-device build loaded with assign=True

A key map goes from the source's names to ours: each source tensor has an expected shape and a
function that turns it into one or more of our tensors (a rename, or a fused q/k/v split in
three). Every error a wrong file can cause is a one-line :class:`~lavit.checkpoint.CheckpointError`
naming the file and the first missing, unexpected or mis-shaped tensor.
"""

from __future__ import annotations

import json
import pickle
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from lavit.checkpoint import META_FILE, CheckpointError, one_line, short_value
from lavit.files import atomic_dir, sha256_file

CONVERT_FILE = "convert.json"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")


@dataclass(frozen=True)
class Source:
    """One source tensor of a key map: its expected shape and what it becomes in our model."""

    shape: tuple[int, ...]
    to_ours: Callable[[torch.Tensor], dict[str, torch.Tensor]]  # source tensor -> {our key: tensor}


def rename(ours: str, shape: tuple[int, ...]) -> Source:
    """A source tensor that is our ``ours`` under another name."""
    return Source(tuple(shape), lambda t: {ours: t})


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` state dict from a ``.safetensors`` file, or from a ``.pth`` /
    ``.pt`` / ``.bin`` / ``.ckpt`` file read with ``torch.load(weights_only=True)``: a pickle
    that would build anything but tensors and plain containers (run code) is refused.

    Raises:
        CheckpointError: the file is missing, unreadable, refused, or not a flat state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({one_line(e)})") from None
    elif path.suffix in PICKLE_SUFFIXES:
        state = _torch_load(path)
    else:
        raise CheckpointError(
            f"{path}: unknown checkpoint format {path.suffix!r}; give a .safetensors or a "
            f"{'/'.join(PICKLE_SUFFIXES)} state dict"
        )
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {short_value(key)} is a {type(value).__name__}, not a tensor: give the "
                "model's flat state dict (not a training checkpoint that nests it)"
            )
    return dict(state)


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message spans lines; its gist is e.g. "Unsupported global: GLOBAL os.system"
        found = re.search(r"Unsupported [\w ]+: (GLOBAL )?[\w.]+", str(e))
        why = found.group(0) if found else "objects other than tensors"
        raise CheckpointError(
            f"{path} is refused: unpickling it would run code or build more than tensors ({why}); "
            "take the weights from a trusted copy, or convert them to .safetensors where that code is trusted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({one_line(e)})") from None


def apply_key_map(
    state: Mapping[str, torch.Tensor],
    key_map: Mapping[str, Source],
    path: str | Path,
    ignore: Collection[str] = (),
    model: str = "this model",
) -> dict[str, torch.Tensor]:
    """Turn a source state dict into ours.

    Args:
        state: the source tensors, by their names.
        key_map: source name -> :class:`Source` (expected shape, conversion); every entry must
            be in ``state``.
        path: the file ``state`` came from, named in every error.
        ignore: source names dropped on purpose (e.g. training statistics we do not keep).
        model: what the file should hold, for the errors (e.g. "VAR's VQ-VAE").

    Returns:
        Our tensors, by our names.

    Raises:
        CheckpointError: naming the first missing, unexpected, non-float or mis-shaped tensor.
    """
    missing = [k for k in key_map if k not in state]
    if missing:
        example = next(iter(state), None)
        raise CheckpointError(
            f"{path} has no tensor '{missing[0]}' ({len(missing)} of the {len(key_map)} expected missing; "
            f"the file's first is {example!r}): it is not a checkpoint of {model}"
        )
    unexpected = [k for k in state if k not in key_map and k not in ignore]
    if unexpected:
        raise CheckpointError(
            f"{path} holds an unexpected tensor '{unexpected[0]}' ({len(unexpected)} in all): "
            f"it is not a checkpoint of {model}, or of another size or variant of it"
        )
    out: dict[str, torch.Tensor] = {}
    for key, src in key_map.items():
        tensor = state[key]
        if not tensor.is_floating_point():
            raise CheckpointError(f"{path}: tensor '{key}' is {tensor.dtype}, expected a floating-point tensor")
        if tuple(tensor.shape) != src.shape:
            raise CheckpointError(
                f"{path}: tensor '{key}' has shape {tuple(tensor.shape)}, expected {src.shape}: "
                f"a checkpoint of another size or variant of {model}"
            )
        out.update(src.to_ours(tensor))
    return out


def write_converted(
    out_dir: str | Path, save: Callable[[Path], object], sources: Sequence[str | Path], **info: Any
) -> Path:
    """Write a converted model folder atomically, with ``convert.json`` recording its sources.

    Args:
        out_dir: the folder to create, or a model or pipeline folder to replace; any other
            non-empty folder is refused (it would be replaced whole).
        save: writes the model into the folder it is given (e.g. ``save_vqvae(model, folder)``).
        sources: the files converted; their names and SHA-256 digests go into convert.json.
        info: further JSON values for convert.json (e.g. ``converter="var_vqvae"``).

    Returns:
        ``out_dir``. On any error nothing of it is left: it is filled as a temporary sibling
        and renamed into place at the end.
    """
    out_dir = Path(out_dir)
    ours = (out_dir / META_FILE).is_file() or (out_dir / "pipeline.yaml").is_file()
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not ours)):
        raise CheckpointError(
            f"{out_dir} exists and is not a model folder; it would be replaced whole: pick a new folder"
        )
    record = {
        **info,
        "sources": [{"file": Path(p).name, "sha256": sha256_file(p)} for p in sources],
    }
    with atomic_dir(out_dir) as tmp:
        save(tmp)
        (tmp / CONVERT_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return out_dir


def read_config_json(path: Path, what: str) -> dict:
    """A published folder's ``config.json`` as plain JSON (never as code).

    Raises:
        CheckpointError: missing (naming ``what`` to give), not JSON, or naming custom code.
    """
    if not path.is_file():
        raise CheckpointError(f"{path} not found: give {what}")
    try:
        fields = json.loads(path.read_text())
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{path} does not read as JSON ({one_line(e)})") from None
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path} holds a {type(fields).__name__}, not a config object")
    return fields


def rebuild_meta_buffers(model: torch.nn.Module) -> None:
    """Buffers that are no weights (Llama's rotary frequencies) were built on the meta device with
    the rest: rebuild each module holding one from its config, on the CPU, and take its buffers."""
    for name, module in model.named_modules():
        if not any(b.is_meta for b in module.buffers(recurse=False)):
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise CheckpointError(f"cannot rebuild the buffers of {name} ({type(module).__name__}) off the meta device")
        fresh = type(module)(config)
        for key, buffer in fresh.named_buffers(recurse=False):
            setattr(module, key, buffer)
