"""Typed configuration: one dataclass per component, YAML files that mirror them.

Every YAML in ``configs/`` is loaded against a dataclass schema with OmegaConf in struct mode,
so an unknown key or a value of the wrong type fails at load time with the key's dotted name
and the file. Command-line overrides use the same path syntax: ``a.b=c``. A run recipe names its
model preset instead of copying it: ``include: {model: ../tokenizer/tiny.yaml}`` merges that
file under ``model`` first, then the recipe's own keys (which may override it).

    cfg = load_config("configs/data/shapes64.yaml", ShapesWorldConfig, ["resolution=32"])

A component receives only its own sub-config (a ``ShapesWorldConfig``, never the run config).
Derived values are computed in code, not stored in YAML. Validation that needs more than a type
(ranges, cross-field rules) lives in each dataclass's ``__post_init__`` and raises
:class:`ConfigError` naming the key.
"""

from lavit.config.base import GUIDANCE_FIX, ConfigError, check, check_norm_groups, check_sampling, fills_once
from lavit.config.loading import config_diff, from_yaml, load_config, to_object, to_yaml
from lavit.config.schemas import *  # noqa: F403  (every dataclass: lavit.config.TrainConfig, ...)
from lavit.config.schemas import __all__ as _schemas

__all__ = [
    "GUIDANCE_FIX",
    "ConfigError",
    "check",
    "check_norm_groups",
    "check_sampling",
    "fills_once",
    "config_diff",
    "from_yaml",
    "load_config",
    "to_object",
    "to_yaml",
    *_schemas,
]
