"""The training noise schedule of the diffusion detokenizer, in one place: the model reads its
alpha-bar (EDM preconditioning), the trainer adds noise with it and every sampler is built from
its config (:mod:`detokenizer.diffusion.sampling`)."""

from __future__ import annotations

from diffusers import DDPMScheduler

from detokenizer.diffusion.config import DiffusionConfig


def noise_scheduler(cfg: DiffusionConfig) -> DDPMScheduler:
    """The training schedule; samplers are built from its config."""
    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=cfg.space == "pixel",  # pixels live in [-1, 1]; latents do not
        clip_sample_range=1.0,
    )
