"""Every shipped model preset builds from a fresh clone, and every benchmark runs its ``--quick``
setting and prints JSON.

A preset names no file a past run made (``runs/``, ``outputs/``): the training configs set those.
Presets too big for a test (LaVIT-7B-sized) are built on the ``meta`` device, the rest on the CPU.
Each benchmark runs as a subprocess from the repository root, as a user would run it; those that
read trained parts default to the shipped model, ``checkpoints/lavit-shapes-tiny``.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lavit.config import load_config

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs"
BENCHMARKS = ROOT / "benchmarks"
# LaVIT-sized presets (7B LM, 1.8B tokenizer) are built on the meta device: shapes, no memory.
ON_META = {
    "lm/lavit-7b.yaml",
    "tokenizer/lavit.yaml",
    "var/var_d16.yaml",
    "var/var_d20.yaml",
    "var/var_d24.yaml",
    "var/var_d30.yaml",
}
BIG = 200_000_000  # parameters: a preset above this belongs in ON_META


def _tokenizer(cfg):
    from tokenizer import DynamicVisualTokenizer

    return DynamicVisualTokenizer(cfg)


def _lm(cfg):
    from lavit.model import UnifiedLM

    return UnifiedLM(cfg)


def _diffusion(cfg):
    from detokenizer.diffusion import DiffusionDetokenizer

    return DiffusionDetokenizer(cfg)


def _vae(cfg):
    from detokenizer.diffusion.vae import build_vae

    return build_vae(cfg)


def _vqvae(cfg):
    from detokenizer.var.vqvae import MultiScaleVQVAE

    return MultiScaleVQVAE(cfg)


def _var(cfg):
    from detokenizer.var.config import VQVAEConfig
    from detokenizer.var.transformer import NextScaleTransformer

    # The VAR transformer's token grid is its VQ-VAE's: the tiny one, as in configs/train/var_tiny.yaml.
    return NextScaleTransformer(cfg, load_config(CONFIGS / "var" / "vqvae_tiny.yaml", VQVAEConfig))


def _var_published(cfg):
    from detokenizer.var.config import VQVAEConfig
    from detokenizer.var.transformer import NextScaleTransformer

    # VAR's published transformers read the published VQ-VAE's 10 scales and 4,096 codes.
    return NextScaleTransformer(cfg, load_config(CONFIGS / "var" / "vqvae_ch160v4096z32.yaml", VQVAEConfig))


# configs/<pattern>: (schema, builder), the schemas of tests/test_config.py's SCHEMAS.
PRESETS = {
    "tokenizer/*.yaml": ("lavit.config:TokenizerConfig", _tokenizer),
    "lm/*.yaml": ("lavit.config:LMConfig", _lm),
    "diffusion/*.yaml": ("detokenizer.diffusion.config:DiffusionConfig", _diffusion),
    "vae/*.yaml": ("detokenizer.diffusion.config:VAEConfig", _vae),
    "var/vqvae_*.yaml": ("detokenizer.var.config:VQVAEConfig", _vqvae),
    "var/tiny.yaml": ("detokenizer.var.config:VARConfig", _var),
    "var/var_d*.yaml": ("detokenizer.var.config:VARConfig", _var_published),
}
PRESET_FOLDERS = ("tokenizer", "lm", "diffusion", "var", "vae", "data")
CASES = [(p, schema, build) for pattern, (schema, build) in PRESETS.items() for p in sorted(CONFIGS.glob(pattern))]


def _strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_every_preset_is_covered():
    covered = {p for p, _, _ in CASES}
    models = {p for folder in PRESET_FOLDERS[:-1] for p in (CONFIGS / folder).glob("*.yaml")}
    assert models == covered, f"presets with no builder here: {sorted(str(p) for p in models - covered)}"


@pytest.mark.parametrize(
    "path", sorted(p for f in PRESET_FOLDERS for p in (CONFIGS / f).glob("*.yaml")), ids=lambda p: p.name
)
def test_presets_name_no_run_outputs(path):
    """A preset builds from a fresh clone: trained files belong in the training config."""
    found = [s for s in _strings(yaml.safe_load(path.read_text())) if s.startswith(("runs/", "outputs/"))]
    assert not found, f"{path} names {found}: set them null and name them in configs/train/* instead"


@pytest.mark.parametrize("path, schema, build", CASES, ids=[f"{p.parent.name}/{p.name}" for p, _, _ in CASES])
def test_every_preset_builds(path, schema, build):
    module, name = schema.split(":")
    cfg = load_config(path, getattr(importlib.import_module(module), name))
    big = f"{path.parent.name}/{path.name}" in ON_META
    with torch.device("meta" if big else "cpu"):
        model = build(cfg)
    params = sum(p.numel() for p in model.parameters())
    assert (params > BIG) == big, f"{path}: {params:,} parameters; presets over {BIG:,} are built on meta"
    if not big:  # built for real: initialisation ran too
        assert all(torch.isfinite(p).all() for p in model.parameters())


# benchmarks/<script> --quick: the smallest setting on the same code path. Seconds on the 2-core CPU
# machine while another job shared it (each pays ~5 s of imports); the fast tier keeps ~30 s of them.
QUICK = {
    "data.py": "5 s",
    "tokenizer_encode.py": "7 s",
    "train_step.py": "6-13 s",
    "diffusion.py": "10-13 s",
}
SLOW = {
    "generation.py": "13-18 s",
    "var.py": "9-53 s",
    "sequence_probe.py": "15 s, the shipped tokenizer",
    "code_probe.py": "16-25 s, the shipped tokenizer",
    "diffusion_probe.py": "21 s, the shipped diffusion decoder",
    "synthesis_check.py": "14-34 s, the shipped pipeline, both decoders",
    "var_scales.py": "19-67 s, the shipped pipeline",
}
SCRIPTS = [pytest.param(s, id=s) for s in QUICK] + [pytest.param(s, marks=pytest.mark.slow, id=s) for s in SLOW]


def test_every_benchmark_is_covered():
    scripts = {p.name for p in BENCHMARKS.glob("*.py")} - {"bench_utils.py"}
    assert scripts == set(QUICK) | set(SLOW)


def json_documents(text: str) -> list:
    """Every JSON document of ``text``, one after another (a benchmark may log lines before its report)."""
    decoder, docs, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)
    return docs


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_quick_prints_json(script):
    cmd = [sys.executable, str(BENCHMARKS / script), "--quick"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}"
    docs = json_documents(out.stdout)
    assert docs and isinstance(docs[-1], dict) and docs[-1], out.stdout[-2000:]
