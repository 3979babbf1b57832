"""The VARGPT-style model: a causal LLM that reads images through a vision tower and draws them
scale by scale through a VAR head (lavit/vargpt/model.py), beside the LaVIT-style one."""

from lavit.vargpt.config import VARGPTConfig, VARGPTSamplingConfig
from lavit.vargpt.model import VARGPT, VARGPTOutput

__all__ = ["VARGPT", "VARGPTConfig", "VARGPTOutput", "VARGPTSamplingConfig"]
