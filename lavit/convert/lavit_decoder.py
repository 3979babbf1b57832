"""LaVIT-7B-v2's pixel decoder -> our :class:`~detokenizer.diffusion.lavit_decoder.LaVITPixelDecoder`.

    python -m lavit.convert.lavit_decoder LaVIT-7B-v2/ runs/lavit_pixel_decoder

reads, from the published model folder (or the files named one by one):

    visual_tokenizer/highres_tokenizer_decoder.bin   the conditioner (``HighresVQDecoder``)
    visual_tokenizer/tokenizer_encoder.bin           only its ``quantize.embedding.weight``, the raw codebook
    highres_pixel_decoding/{unet,vae,scheduler}/     SDXL-shaped diffusers folders

Pickles are read as tensors only (``torch.load(weights_only=True)``): one that would run code
is refused. The UNet's and VAE's weights are copied as safetensors (a ``.bin`` rewritten as
one), each checked against its config's names and shapes first. The conditioner's names:

    in_proj, norm                         -> same names
    pos_embed, query_embed (1, N, C)      -> pos, queries (N, C)
    blocks.{i}.norm0 / norm1 / norm2      -> blocks.{i}.norm1 / norm2 / norm3
    blocks.{i}.self_attn.qkv              -> self_attn.q (rows [0, C)) + self_attn.kv (rows [C, 3C))
    blocks.{i}.self_attn.proj             -> self_attn.out
    blocks.{i}.cross_attn.query           -> cross_attn.q
    blocks.{i}.cross_attn.key + value     -> cross_attn.kv (key rows, then value rows)
    blocks.{i}.cross_attn.proj            -> cross_attn.out
    blocks.{i}.mlp.fc1 / fc2              -> same names
    decode_task_layer.{0,2}               -> task.{0,2}
    unet_proj_{k+1}                       -> cond_proj.{k}
    unet_attnpool.positional_embedding    -> pool.pos
    unet_attnpool.{q,k,v,c}_proj          -> pool.{q,k,v,out}
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from detokenizer.diffusion.config import LaVITConditionerConfig, LaVITPixelDecoderConfig
from detokenizer.diffusion.lavit_decoder import LaVITConditioner, check_unet
from lavit.checkpoint import CheckpointError, save_model_dir
from lavit.convert.common import Source, apply_key_map, read_config_json, read_state_dict, rename, write_converted

DECODER_FILE = "visual_tokenizer/highres_tokenizer_decoder.bin"
CODEBOOK_FILE = "visual_tokenizer/tokenizer_encoder.bin"
CODEBOOK_KEY = "quantize.embedding.weight"
PIXEL_DIR = "highres_pixel_decoding"
WEIGHTS = "diffusion_pytorch_model"  # diffusers' weights file name
MODEL = "LaVIT's high-res pixel decoder (HighresVQDecoder)"


# ------------------------------------------------------------------------------------------------
# The conditioner's key map
# ------------------------------------------------------------------------------------------------


def lavit_key_map(cfg: LaVITConditionerConfig) -> dict[str, Source]:
    """LaVIT's tensor names for a conditioner of ``cfg``, each with its expected shape and the
    tensors of ours it becomes (the cross-attention's key and value as ``#k`` / ``#v`` halves
    of ``kv``, joined by :func:`convert_state_dict`)."""
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in LaVITConditioner(cfg).state_dict().items()}
    c, n = cfg.width, cfg.num_queries
    key_map: dict[str, Source] = {}

    def linear(src: str, our: str) -> None:
        for leaf in ("weight", "bias"):
            key_map[f"{src}.{leaf}"] = rename(f"{our}.{leaf}", ours[f"{our}.{leaf}"])

    def halves(src: str, our: str, tag: str) -> None:  # one half of our fused kv
        key_map[f"{src}.weight"] = Source((c, c), lambda t, our=our: {f"{our}.weight#{tag}": t})
        key_map[f"{src}.bias"] = Source((c,), lambda t, our=our: {f"{our}.bias#{tag}": t})

    linear("in_proj", "in_proj")
    key_map["pos_embed"] = Source((1, n, c), lambda t: {"pos": t[0]})
    key_map["query_embed"] = Source((1, n, c), lambda t: {"queries": t[0]})
    for i in range(cfg.depth):
        src, our = f"blocks.{i}", f"blocks.{i}"
        for k in range(3):
            linear(f"{src}.norm{k}", f"{our}.norm{k + 1}")
        # qkv rows: [0, C) q, [C, 2C) k, [2C, 3C) v; our kv is k rows then v rows.
        key_map[f"{src}.self_attn.qkv.weight"] = Source(
            (3 * c, c), lambda t, our=our: {f"{our}.self_attn.q.weight": t[:c], f"{our}.self_attn.kv.weight": t[c:]}
        )
        key_map[f"{src}.self_attn.qkv.bias"] = Source(
            (3 * c,), lambda t, our=our: {f"{our}.self_attn.q.bias": t[:c], f"{our}.self_attn.kv.bias": t[c:]}
        )
        linear(f"{src}.self_attn.proj", f"{our}.self_attn.out")
        linear(f"{src}.cross_attn.query", f"{our}.cross_attn.q")
        halves(f"{src}.cross_attn.key", f"{our}.cross_attn.kv", "k")
        halves(f"{src}.cross_attn.value", f"{our}.cross_attn.kv", "v")
        linear(f"{src}.cross_attn.proj", f"{our}.cross_attn.out")
        linear(f"{src}.mlp.fc1", f"{our}.mlp.fc1")
        linear(f"{src}.mlp.fc2", f"{our}.mlp.fc2")
    linear("norm", "norm")
    linear("decode_task_layer.0", "task.0")
    linear("decode_task_layer.2", "task.2")
    for k in range(len(cfg.cond_dims)):
        linear(f"unet_proj_{k + 1}", f"cond_proj.{k}")
    key_map["unet_attnpool.positional_embedding"] = rename("pool.pos", ours["pool.pos"])
    for src, our in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("c_proj", "out")):
        linear(f"unet_attnpool.{src}", f"pool.{our}")
    return key_map


def convert_state_dict(
    state: Mapping[str, torch.Tensor], codebook: torch.Tensor, cfg: LaVITConditionerConfig, path: str | Path
) -> dict[str, torch.Tensor]:
    """LaVIT's conditioner state dict (+ the tokenizer's raw codebook) -> ours, ready for a
    strict load.

    Raises:
        CheckpointError: naming ``path`` and the first missing, unexpected or mis-shaped tensor.
    """
    out = apply_key_map(state, lavit_key_map(cfg), path, model=MODEL)
    for name in [k for k in out if k.endswith("#k")]:
        base = name.removesuffix("#k")
        out[base] = torch.cat([out.pop(name), out.pop(f"{base}#v")])
    out["codebook"] = codebook
    return out


def read_codebook(path: str | Path, cfg: LaVITConditionerConfig) -> torch.Tensor:
    """The raw codebook (codebook_size, code_dim) from LaVIT's tokenizer checkpoint (or a file
    holding only ``quantize.embedding.weight``)."""
    state = read_state_dict(path)
    if CODEBOOK_KEY not in state:
        raise CheckpointError(f"{path} has no tensor '{CODEBOOK_KEY}': it is not LaVIT's visual tokenizer checkpoint")
    book = state[CODEBOOK_KEY]
    if tuple(book.shape) != (cfg.codebook_size, cfg.code_dim) or not book.is_floating_point():
        raise CheckpointError(
            f"{path}: tensor '{CODEBOOK_KEY}' is {book.dtype} {tuple(book.shape)}, expected a float "
            f"({cfg.codebook_size}, {cfg.code_dim}) codebook"
        )
    return book


def load_lavit_conditioner(
    decoder_path: str | Path, codebook_path: str | Path, cfg: LaVITConditionerConfig
) -> LaVITConditioner:
    """LaVIT's conditioner checkpoint and codebook as our module, loaded strictly, eval mode."""
    state = convert_state_dict(read_state_dict(decoder_path), read_codebook(codebook_path, cfg), cfg, decoder_path)
    model = LaVITConditioner(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# The diffusers folders
# ------------------------------------------------------------------------------------------------


def read_config(path: Path) -> dict:
    return read_config_json(path, f"LaVIT's {PIXEL_DIR} folder (unet/, vae/, scheduler/)")


def weight_shapes(files: Sequence[Path]) -> dict[str, tuple[int, ...]]:
    """Names and shapes in safetensors files, from their headers (nothing loaded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})  # noqa: SIM118
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    return shapes


def check_weights(cls, config: dict, files: Sequence[Path], where: Path) -> None:
    """Every tensor of a ``cls`` built from ``config`` (on the meta device) is in ``files``
    with its shape, and nothing else is."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in cls.from_config(config).state_dict().items()}
    except (TypeError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"{where / 'config.json'} does not build a {cls.__name__} ({e})") from None
    found = weight_shapes(files)
    name = files[0].name if len(files) == 1 else f"{where}/*.safetensors"
    missing = [k for k in expected if k not in found]
    if missing:
        raise CheckpointError(f"{where / name} has no tensor '{missing[0]}' ({len(missing)} missing) for its config")
    extra = [k for k in found if k not in expected]
    if extra:
        raise CheckpointError(f"{where / name} holds an unexpected tensor '{extra[0]}' ({len(extra)} in all)")
    wrong = [k for k in expected if found[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise CheckpointError(f"{where / name}: tensor '{k}' has shape {found[k]}, its config says {expected[k]}")


def safetensors_weights(src: Path, tmp: Path) -> list[Path]:
    """A diffusers model folder's weights as safetensors files: the folder's own (one file or
    an index's shards), or its ``.bin`` read as tensors only and rewritten into ``tmp``."""
    single, index = src / f"{WEIGHTS}.safetensors", src / f"{WEIGHTS}.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        shards = sorted(set(read_config(index).get("weight_map", {}).values()))
        if not shards:
            raise CheckpointError(f"{index} has no weight_map")
        return [src / s for s in shards]
    pickle = src / f"{WEIGHTS}.bin"
    if pickle.is_file():
        state = read_state_dict(pickle)  # refuses a pickle that would run code, in one line
        tmp.mkdir(parents=True, exist_ok=True)
        out = tmp / f"{WEIGHTS}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(out))
        return [out]
    raise CheckpointError(f"{src} has no {WEIGHTS}.safetensors (or .bin): give a diffusers model folder")


def bring_model_folder(cls, src: Path, dst: Path, staging: Path, cfg: LaVITConditionerConfig) -> None:
    """Check a diffusers model folder and copy it to ``dst`` with safetensors weights."""
    config = read_config(src / "config.json")
    if config.get("_class_name", cls.__name__) != cls.__name__:
        raise CheckpointError(f"{src / 'config.json'}: _class_name {config['_class_name']!r} is not {cls.__name__}")
    if cls is UNet2DConditionModel:
        check_unet(config, cfg, src / "config.json")
    files = safetensors_weights(src, staging)
    check_weights(cls, config, files, src)
    dst.mkdir(parents=True)
    shutil.copyfile(src / "config.json", dst / "config.json")
    for f in files:
        shutil.copyfile(f, dst / f.name)
    if len(files) > 1:
        shutil.copyfile(src / f"{WEIGHTS}.safetensors.index.json", dst / f"{WEIGHTS}.safetensors.index.json")


def source_files(src: Path) -> list[Path]:
    """The files of a diffusers model folder that a conversion reads (recorded in convert.json)."""
    single, index = src / f"{WEIGHTS}.safetensors", src / f"{WEIGHTS}.safetensors.index.json"
    if single.is_file():
        return [src / "config.json", single]
    if index.is_file():
        return [src / "config.json", index] + [
            src / s for s in sorted(set(read_config(index).get("weight_map", {}).values()))
        ]
    return [src / "config.json", src / f"{WEIGHTS}.bin"]


def convert_lavit_decoder(
    decoder_path: str | Path,
    codebook_path: str | Path,
    pixel_dir: str | Path,
    out_dir: str | Path,
    cfg: LaVITPixelDecoderConfig | None = None,
) -> Path:
    """Convert LaVIT's pixel decoder into our model folder (config.yaml, conditioner.safetensors,
    unet/, vae/, scheduler/, convert.json), which
    :func:`~detokenizer.diffusion.lavit_decoder.load_lavit_pixel_decoder` reads.

    Args:
        decoder_path: ``visual_tokenizer/highres_tokenizer_decoder.bin`` (or a .safetensors).
        codebook_path: the tokenizer checkpoint holding ``quantize.embedding.weight``.
        pixel_dir: ``highres_pixel_decoding/`` with unet/, vae/ and scheduler/.
        out_dir: the model folder to write (written whole or not at all).
        cfg: the architecture (default: LaVIT-7B-v2's published one).

    Returns:
        ``out_dir``.
    """
    cfg = LaVITPixelDecoderConfig() if cfg is None else cfg
    pixel_dir = Path(pixel_dir)
    conditioner = load_lavit_conditioner(decoder_path, codebook_path, cfg.conditioner)
    scheduler_config = read_config(pixel_dir / "scheduler" / "scheduler_config.json")
    try:
        DDIMScheduler.from_config(scheduler_config)
    except (TypeError, ValueError) as e:
        raise CheckpointError(
            f"{pixel_dir}/scheduler/scheduler_config.json does not build a DDIMScheduler ({e})"
        ) from None
    models = (("unet", UNet2DConditionModel), ("vae", AutoencoderKL))
    for name, cls in models:  # cheap checks first: a wrong folder fails before any copying
        config = read_config(pixel_dir / name / "config.json")
        if cls is UNet2DConditionModel:
            check_unet(config, cfg.conditioner, pixel_dir / name / "config.json")
    sources = [Path(decoder_path), Path(codebook_path)] + [
        f for name, _ in models for f in source_files(pixel_dir / name)
    ]
    missing = next((f for f in sources if not f.is_file()), None)
    if missing is not None:
        raise CheckpointError(f"{missing} not found: give LaVIT's {PIXEL_DIR} folder (unet/, vae/, scheduler/)")

    def save(folder: Path) -> None:
        save_model_dir(folder, cfg, {"conditioner": conditioner})
        for name, cls in models:
            staging = folder / f".{name}.staging"  # a rewritten .bin, removed once copied
            bring_model_folder(cls, pixel_dir / name, folder / name, staging, cfg.conditioner)
            shutil.rmtree(staging, ignore_errors=True)
        (folder / "scheduler").mkdir()
        shutil.copyfile(
            pixel_dir / "scheduler" / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json"
        )

    return write_converted(
        out_dir,
        save,
        sources,
        converter="lavit.convert.lavit_decoder",
        reference="jy0205/LaVIT LaVIT/models/modeling_decoder.py HighresVQDecoder + image_detokenize.py",
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Convert LaVIT-7B-v2's high-res pixel decoder into a lavit model folder"
    )
    parser.add_argument("model_dir", help="the downloaded LaVIT-7B-v2 folder (rain1011/LaVIT-7B-v2)")
    parser.add_argument("out_dir", help="the model folder to write")
    args = parser.parse_args(argv)
    root = Path(args.model_dir)
    out = convert_lavit_decoder(root / DECODER_FILE, root / CODEBOOK_FILE, root / PIXEL_DIR, args.out_dir)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
