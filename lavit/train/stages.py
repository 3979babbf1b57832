"""The trainable stages by name, for ``lavit train STAGE`` and for recipes (recipe.py).

    schema, task_cls = load_stage("tokenizer")
    cfg = load_config("configs/train/tokenizer_tiny.yaml", schema)
    fit(task_cls(cfg), cfg.train)

Each entry names its run-config schema and task class as ``module:attribute`` strings, so a
stage's dependencies (diffusers, the VAR decoder, ...) are imported only when it is trained.
"""

from __future__ import annotations

import importlib

from lavit.config import ConfigError

# stage -> (run-config schema, task class), in the order a full recipe trains them.
STAGES = {
    "encoder": ("lavit.config:EncoderRunConfig", "lavit.train.tasks.encoder:EncoderTask"),
    "tokenizer": ("lavit.config:TokenizerRunConfig", "lavit.train.tasks.tokenizer:TokenizerTask"),
    "lm": ("lavit.config:LMRunConfig", "lavit.train.tasks.lm:LMTask"),
    "vae": ("detokenizer.diffusion.config:VAERunConfig", "lavit.train.tasks.vae:VAETask"),
    "diffusion": ("detokenizer.diffusion.config:DiffusionRunConfig", "lavit.train.tasks.diffusion:DiffusionTask"),
    "var-vqvae": ("detokenizer.var.config:VQVAERunConfig", "lavit.train.tasks.var_vqvae:VQVAETask"),
    "var": ("detokenizer.var.config:VARRunConfig", "lavit.train.tasks.var:VARTask"),
    "vargpt": ("lavit.vargpt.config:VARGPTRunConfig", "lavit.train.tasks.vargpt:VARGPTTask"),
}


def load_stage(name: str) -> tuple[type, type]:
    """Import one stage's ``(run-config schema, task class)``.

    Raises:
        ConfigError: ``name`` is not a key of :data:`STAGES`.
    """
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}: use one of {', '.join(STAGES)}")
    return tuple(_import(path) for path in STAGES[name])


def _import(path: str):
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)
