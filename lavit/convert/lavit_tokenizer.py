"""LaVIT-7B-v2's visual tokenizer (rain1011/LaVIT-7B-v2, ``visual_tokenizer/``) -> our
:class:`~tokenizer.model.DynamicVisualTokenizer`.

    python -m lavit.convert.lavit_tokenizer /path/to/LaVIT-7B-v2 runs/lavit_tokenizer

LaVIT's ``build_dynamic_tokenizer`` reads two files of the folder: the EVA-CLIP ViT-g/14
(``visual_tokenizer/eva_vitg_psz14.bin``, names without a prefix), then the tokenizer
(``visual_tokenizer/tokenizer_encoder.bin``), loaded second and non-strictly: should the latter
hold ``encoder.*`` tensors too, they win, as in LaVIT. The names map as

    <EVA name> (eva_vitg_psz14.bin)              -> encoder.vit.<same name> (timm's Eva)
    token_predictor.in_conv.{0,1}                -> selector.in_proj.{0,1}
    token_predictor.out_conv.{0,2,4}             -> selector.head.{0,2,4} (LaVIT's LogSoftmax on top
                                                    changes neither the argmax nor a Gumbel draw)
    causal_encoder.blocks.{i}.norm{0,1,2}        -> merger.blocks.{i}.norm{0,1,2}
    causal_encoder.blocks.{i}.token_causal_attn  -> merger.blocks.{i}.self_attn (qkv, proj)
    causal_encoder.blocks.{i}.token_cross_attn   -> merger.blocks.{i}.cross_attn (query, key, value, proj)
    causal_encoder.blocks.{i}.mlp.fc{1,2}        -> merger.blocks.{i}.mlp.fc{1,2}
    causal_encoder.ln_vision / norm              -> merger.context_norm / merger.norm
    encode_task_layer.{0,2}                      -> to_code.{0,2}
    quantize.embedding.weight (K, d)             -> quantizer._codebook.embed (1, K, d)

Dropped on purpose: EVA-CLIP's ``head`` (its projection into CLIP's joint space; the tokenizer
reads the last block) and ``vit_proj`` (understanding's projection to the LLM, trained with the
second merger of ``language_model/visual_weight.bin``, which this converter does not read).
The architecture options LaVIT needs (LaVIT merger, Linear-Tanh-Linear projection, L2 lookup on
the raw codebook, EVA's MLP ratio, sampled keep mask) are the preset ``configs/tokenizer/lavit.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from lavit.checkpoint import CheckpointError
from lavit.config import ConfigError, TokenizerConfig, load_config
from lavit.convert.common import Source, apply_key_map, read_state_dict, rename, write_converted
from tokenizer.io import save_tokenizer
from tokenizer.model import DynamicVisualTokenizer

PRESET = Path(__file__).resolve().parents[2] / "configs" / "tokenizer" / "lavit.yaml"
EVA_FILE = "visual_tokenizer/eva_vitg_psz14.bin"
TOKENIZER_FILE = "visual_tokenizer/tokenizer_encoder.bin"
EVA_IGNORED = ("head.weight", "head.bias")  # EVA-CLIP's projection into CLIP's joint space
TOKENIZER_IGNORED = ("vit_proj.weight", "vit_proj.bias")  # understanding's projection to the LLM
ENCODER = "encoder."  # the prefix of the EVA tensors inside tokenizer_encoder.bin
CODEBOOK = "quantize.embedding.weight"
# A codebook row further than this from unit norm makes the L2 and cosine lookups differ.
UNIT_NORM_TOL = 1e-3


def published_config() -> TokenizerConfig:
    """The config of LaVIT-7B-v2's visual tokenizer."""
    return load_config(PRESET, TokenizerConfig)


# ------------------------------------------------------------------------------------------------
# The key maps
# ------------------------------------------------------------------------------------------------


def _our_shapes(cfg: TokenizerConfig) -> dict[str, torch.Size]:
    if cfg.merger != "lavit" or cfg.code_projection != "lavit":
        raise ConfigError(
            f"LaVIT's tokenizer needs merger=lavit and code_projection=lavit, got merger={cfg.merger!r}, "
            f"code_projection={cfg.code_projection!r}: start from configs/tokenizer/lavit.yaml"
        )
    with torch.device("meta"):
        return {k: v.shape for k, v in DynamicVisualTokenizer(cfg).state_dict().items()}  # names and shapes only


def eva_key_map(cfg: TokenizerConfig) -> dict[str, Source]:
    """EVA-CLIP's tensor names (as in ``eva_vitg_psz14.bin``) for ``cfg``'s encoder: timm's Eva
    holds them under the same names."""
    prefix = "encoder.vit."
    return {k.removeprefix(prefix): rename(k, s) for k, s in _our_shapes(cfg).items() if k.startswith(prefix)}


def _linear(key_map: dict[str, Source], ours: Mapping[str, torch.Size], src: str, our: str) -> None:
    """A Linear or a LayerNorm: weight and bias."""
    for leaf in ("weight", "bias"):
        key_map[f"{src}.{leaf}"] = rename(f"{our}.{leaf}", ours[f"{our}.{leaf}"])


def merger_key_map(cfg: TokenizerConfig, ours: Mapping[str, torch.Size], our: str = "merger") -> dict[str, Source]:
    """LaVIT's ``causal_encoder.*`` names -> our merger ``our`` (``merger``, or
    ``understanding_merger`` for the second one, in ``language_model/visual_weight.bin``)."""
    key_map: dict[str, Source] = {}
    for i in range(cfg.merger_depth):
        src, dst = f"causal_encoder.blocks.{i}", f"{our}.blocks.{i}"
        for norm in ("norm0", "norm1", "norm2"):
            _linear(key_map, ours, f"{src}.{norm}", f"{dst}.{norm}")
        for sub in ("qkv", "proj"):
            _linear(key_map, ours, f"{src}.token_causal_attn.{sub}", f"{dst}.self_attn.{sub}")
        for sub in ("query", "key", "value", "proj"):
            _linear(key_map, ours, f"{src}.token_cross_attn.{sub}", f"{dst}.cross_attn.{sub}")
        for sub in ("fc1", "fc2"):
            _linear(key_map, ours, f"{src}.mlp.{sub}", f"{dst}.mlp.{sub}")
    _linear(key_map, ours, "causal_encoder.ln_vision", f"{our}.context_norm")
    _linear(key_map, ours, "causal_encoder.norm", f"{our}.norm")
    return key_map


def understanding_key_map(cfg: TokenizerConfig) -> dict[str, Source]:
    """The second merger's names (``language_model/visual_weight.bin`` less ``vit_proj``)."""
    return merger_key_map(cfg, _our_shapes(dataclasses.replace(cfg, understanding_merger=True)), "understanding_merger")


def tokenizer_key_map(cfg: TokenizerConfig) -> dict[str, Source]:
    """``tokenizer_encoder.bin``'s tensor names (without ``encoder.*``) for ``cfg``."""
    ours = _our_shapes(cfg)
    key_map: dict[str, Source] = {}
    for i in (0, 1):
        _linear(key_map, ours, f"token_predictor.in_conv.{i}", f"selector.in_proj.{i}")
    for i in (0, 2, 4):
        _linear(key_map, ours, f"token_predictor.out_conv.{i}", f"selector.head.{i}")
    key_map.update(merger_key_map(cfg, ours))
    for i in (0, 2):
        _linear(key_map, ours, f"encode_task_layer.{i}", f"to_code.{i}")
    q = cfg.quantizer
    key_map[CODEBOOK] = Source(
        (q.codebook_size, q.codebook_dim),
        # The EMA codebook's running sums start consistent with it: embed_avg / cluster_size = embed.
        lambda t: {"quantizer._codebook.embed": t[None].clone(), "quantizer._codebook.embed_avg": t[None].clone()},
    )
    return key_map


def check_codebook(codebook: torch.Tensor, cfg: TokenizerConfig, path: str | Path) -> tuple[float, float]:
    """Refuse a codebook the lookup would misuse; returns its (min, max) row norm.

    Raises:
        CheckpointError: non-finite or zero rows, or a cosine lookup (``quantizer.lookup``) over
            codes that are not unit vectors (LaVIT's lookup is L2 on the raw codes).
    """
    if not torch.isfinite(codebook).all():
        raise CheckpointError(f"{path}: tensor '{CODEBOOK}' holds NaN or infinite values")
    norms = codebook.float().norm(dim=1)
    lo, hi = float(norms.min()), float(norms.max())
    if lo == 0:
        raise CheckpointError(f"{path}: tensor '{CODEBOOK}' has an all-zero code {int(norms.argmin())}")
    if cfg.quantizer.lookup == "cosine" and max(abs(lo - 1), abs(hi - 1)) > UNIT_NORM_TOL:
        raise CheckpointError(
            f"{path}: the codes of '{CODEBOOK}' have norms {lo:.4f}..{hi:.4f}, not 1: a cosine lookup would "
            "pick other codes than LaVIT's L2 lookup; set quantizer.lookup=l2"
        )
    return lo, hi


def convert_state_dicts(
    eva: Mapping[str, torch.Tensor],
    eva_path: str | Path,
    tok: Mapping[str, torch.Tensor],
    tok_path: str | Path,
    cfg: TokenizerConfig,
    understanding: Mapping[str, torch.Tensor] | None = None,
    understanding_path: str | Path = "",
) -> dict[str, torch.Tensor]:
    """LaVIT's two state dicts -> ours for ``cfg`` (every one of our tensors, for a strict load).

    ``tok`` may hold the encoder too (``encoder.*``); then ``eva`` is not read, as LaVIT's second,
    non-strict load overwrites it. ``understanding``: the second merger's tensors (LaVIT's names,
    from ``understanding_path``) for a ``cfg`` with ``understanding_merger``.

    Raises:
        CheckpointError: naming the file and the first missing, unexpected or mis-shaped tensor.
    """
    tok_enc = {k.removeprefix(ENCODER): v for k, v in tok.items() if k.startswith(ENCODER)}
    if tok_enc:
        eva, eva_path = tok_enc, f"{tok_path} (its {ENCODER}* tensors)"
    rest = {k: v for k, v in tok.items() if not k.startswith(ENCODER)}
    out = apply_key_map(eva, eva_key_map(cfg), eva_path, ignore=EVA_IGNORED, model="EVA-CLIP ViT-g/14 (LaVIT)")
    out.update(
        apply_key_map(rest, tokenizer_key_map(cfg), tok_path, ignore=TOKENIZER_IGNORED, model="LaVIT's tokenizer")
    )
    check_codebook(rest[CODEBOOK], cfg, tok_path)
    if cfg.understanding_merger:
        if understanding is None:
            raise ValueError("cfg.understanding_merger is set: give the second merger's tensors")
        model = "LaVIT's understanding merger"
        out.update(apply_key_map(understanding, understanding_key_map(cfg), understanding_path, model=model))
    # What LaVIT has no counterpart of: a ready codebook, and our neutral training statistics.
    out["quantizer._codebook.initted"] = torch.tensor(True)
    out["quantizer._codebook.cluster_size"] = torch.ones(1, cfg.quantizer.codebook_size)
    out["feat_mean"] = torch.zeros(out["encoder.vit.pos_embed"].shape[-1])
    out["feat_std"] = torch.ones(out["encoder.vit.pos_embed"].shape[-1])
    out["keep_threshold"] = torch.zeros(())  # 0: "sample" draws keep ~ Bernoulli(p(keep)), as LaVIT
    return out


def source_files(src: str | Path) -> tuple[Path, Path]:
    """(eva_vitg_psz14.bin, tokenizer_encoder.bin) of the published folder ``src``.

    Raises:
        CheckpointError: either is missing.
    """
    src = Path(src)
    paths = (src / EVA_FILE, src / TOKENIZER_FILE)
    for p in paths:
        if not p.is_file():
            raise CheckpointError(
                f"{p} not found: give the LaVIT-7B-v2 folder (rain1011/LaVIT-7B-v2) holding {EVA_FILE} "
                f"and {TOKENIZER_FILE}"
            )
    return paths


def load_lavit_tokenizer(
    src: str | Path,
    cfg: TokenizerConfig | None = None,
    understanding: tuple[Mapping[str, torch.Tensor], Path] | None = None,
) -> DynamicVisualTokenizer:
    """LaVIT's visual tokenizer from its published folder as our model, loaded strictly, in eval mode.

    Args:
        src: the LaVIT-7B-v2 folder (with ``visual_tokenizer/``).
        cfg: its architecture (default: the published one, :func:`published_config`).
        understanding: (the second merger's tensors, the file they came from), to add it as the
            ``understanding_merger`` (lavit.convert.lavit_lm reads them from visual_weight.bin).
    """
    cfg = published_config() if cfg is None else cfg
    if understanding is not None:
        cfg = dataclasses.replace(cfg, understanding_merger=True)
    eva_path, tok_path = source_files(src)
    tok_state = read_state_dict(tok_path)
    # The EVA file is read only when the tokenizer file does not carry the encoder itself.
    eva_state = {} if any(k.startswith(ENCODER) for k in tok_state) else read_state_dict(eva_path)
    state = convert_state_dicts(eva_state, eva_path, tok_state, tok_path, cfg, *(understanding or (None, "")))
    model = DynamicVisualTokenizer(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def convert_lavit_tokenizer(src: str | Path, out_dir: str | Path, cfg: TokenizerConfig | None = None) -> Path:
    """Convert LaVIT's visual tokenizer into our model folder (config.yaml, tokenizer.safetensors,
    convert.json with the sources' SHA-256 and the codebook's norms), which
    :func:`~tokenizer.io.load_tokenizer` reads.

    Args:
        src: the LaVIT-7B-v2 folder (with ``visual_tokenizer/``).
        out_dir: the model folder to write (written whole or not at all).
        cfg: its architecture (default: the published one).

    Returns:
        ``out_dir``.
    """
    model = load_lavit_tokenizer(src, cfg)
    norms = model.quantizer.codebook.norm(dim=-1)
    return write_converted(
        out_dir,
        lambda folder: save_tokenizer(model, folder),
        list(source_files(src)),
        converter="lavit.convert.lavit_tokenizer",
        reference="jy0205/LaVIT LaVIT/models/modeling_visual_tokenzier.py DynamicVisualTokenizer",
        codebook_norm_range=[float(norms.min()), float(norms.max())],
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert LaVIT-7B-v2's visual tokenizer into a lavit model folder")
    parser.add_argument("src", help="the LaVIT-7B-v2 folder (holding visual_tokenizer/)")
    parser.add_argument("out_dir", help="the model folder to write")
    parser.add_argument("--config", default=str(PRESET), help="TokenizerConfig YAML of its architecture")
    args = parser.parse_args(argv)
    out = convert_lavit_tokenizer(args.src, args.out_dir, load_config(args.config, TokenizerConfig))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
