"""Noise schedules and the sampling loop of the diffusion detokenizer.

Training noises with a DDPM schedule; sampling uses any diffusers scheduler built from the same
config (DDIM by default; Euler, DPM-Solver++, DDPM). Classifier-free guidance runs the
unconditional and conditional branches as one batch [uncond; cond]:
``pred = u + g * (c - u)``; ``g = 1`` runs the conditional branch alone.
"""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)

from detokenizer.diffusion.config import DiffusionConfig, DiffusionSamplingConfig
from detokenizer.diffusion.model import DiffusionDetokenizer
from detokenizer.diffusion.schedule import noise_scheduler
from tokenizer import DynamicVisualTokenizer

Generators = torch.Generator | list[torch.Generator] | None

_SAMPLERS = {
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "dpm": DPMSolverMultistepScheduler,
}


def training_target(sched: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to output for ``x_t = add_noise(x0, noise, t)``: the noise, the
    velocity ``sqrt(a) noise - sqrt(1-a) x0`` or x0 itself, per ``prediction_type``."""
    kind = sched.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return sched.get_velocity(x0, noise, t)
    assert kind == "sample", kind
    return x0


def sampling_scheduler(name: str, cfg: DiffusionConfig):
    """A diffusers scheduler by name (ddim, ddpm, euler, dpm) sharing the training schedule."""
    if name not in _SAMPLERS:
        raise ValueError(f"unknown scheduler {name!r}: use one of {', '.join(_SAMPLERS)}")
    return _SAMPLERS[name].from_config(noise_scheduler(cfg).config)


def initial_noise(
    shape: tuple[int, ...], generator: Generators, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Gaussian noise; with one generator per row, each row is what it would be alone."""
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        return torch.cat([torch.randn((1, *shape[1:]), generator=g, device=device, dtype=dtype) for g in generator])
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


@torch.no_grad()
def denoise(
    model: DiffusionDetokenizer,
    cond: torch.Tensor,
    sampling: DiffusionSamplingConfig,
    size: tuple[int, int],
    generator: Generators = None,
) -> torch.Tensor:
    """Run the sampler from noise to images.

    Args:
        model: the detokenizer (eval mode).
        cond: (B, Q, D) conditioning sequences.
        sampling: scheduler, steps and guidance.
        size: (height, width) in pixels (from :meth:`DiffusionDetokenizer.size_for`).
        generator: one generator, or one per image (then each image equals itself sampled
            alone under the deterministic schedulers: ddim, euler, dpm).

    Returns:
        (B, 3, height, width) images in [0, 1].
    """
    b, device = cond.shape[0], cond.device
    h, w = model.size_for(size=size)
    sched = sampling_scheduler(sampling.scheduler, model.cfg)
    sched.set_timesteps(sampling.steps, device=device)
    shape = (b, model.channels, h // model.space_factor, w // model.space_factor)
    x = initial_noise(shape, generator, device, cond.dtype) * sched.init_noise_sigma
    guided = sampling.guidance_scale != 1.0
    if guided:
        cond = torch.cat([model.null_condition(b).to(cond.dtype), cond])
    step_generator = generator[0] if isinstance(generator, list) else generator
    for t in sched.timesteps:
        inp = sched.scale_model_input(torch.cat([x, x]) if guided else x, t)
        pred = model.predict(inp, t, cond)
        if guided:
            uncond, c = pred.chunk(2)
            pred = uncond + sampling.guidance_scale * (c - uncond)
        x = sched.step(pred, t, x, generator=step_generator).prev_sample
    return model.from_space(x)


@torch.no_grad()
def decode_codes(
    model: DiffusionDetokenizer,
    tokenizer: DynamicVisualTokenizer,
    codes: list[torch.Tensor],
    sampling: DiffusionSamplingConfig,
    *,
    size: tuple[int, int] | None = None,
    generator: Generators = None,
) -> torch.Tensor:
    """Code sequences (any lengths, one batch) -> (B, 3, H, W) images in [0, 1].

    ``size`` (height, width) overrides ``sampling.ratio``; empty or out-of-range code sequences
    raise (through :meth:`DynamicVisualTokenizer.pad_codes`).
    """
    emb, mask = condition_inputs(model.cfg, tokenizer, codes)
    patches = patch_inputs(model.cfg, tokenizer, codes)
    param = next(model.parameters())
    if patches is not None:
        patches = patches.to(param.device, param.dtype)
    cond = model.condition(emb.to(param.device, param.dtype), mask.to(param.device), patches=patches)
    return denoise(model, cond, sampling, model.size_for(sampling.ratio, size), generator)


@torch.no_grad()
def condition_inputs(
    cfg: DiffusionConfig, tokenizer: DynamicVisualTokenizer, codes: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the conditioner reads for a batch of code sequences: the codes' embeddings
    ((B, L, W), (B, L) mask). Raises for codes the tokenizer cannot take."""
    tokenizer.check_reader(cfg.code_dim, "diffusion detokenizer", "diffusion")
    return tokenizer.code_embeddings(codes)


@torch.no_grad()
def patch_inputs(
    cfg: DiffusionConfig, tokenizer: DynamicVisualTokenizer, codes: list[torch.Tensor]
) -> torch.Tensor | None:
    """The tokenizer's rebuilt per-patch features (B, N, Ce) for a detokenizer with
    ``cfg.patch_features``, else None."""
    if not cfg.patch_features:
        return None
    if tokenizer.encoder.dim != cfg.patch_features:
        raise ValueError(
            f"the diffusion detokenizer reads {cfg.patch_features}-wide patch features but this tokenizer "
            f"rebuilds {tokenizer.encoder.dim}-wide ones: load the detokenizer trained on this tokenizer"
        )
    return tokenizer.decode_features(codes)
