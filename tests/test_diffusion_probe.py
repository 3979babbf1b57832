"""benchmarks/diffusion_probe.py turns any prediction type back into the x0 estimate it implies."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from detokenizer.diffusion.config import DiffusionConfig
from detokenizer.diffusion.sampling import noise_scheduler, training_target

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from diffusion_probe import x0_estimate  # noqa: E402


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_estimate_inverts_the_training_target(prediction_type):
    torch.manual_seed(0)
    sched = noise_scheduler(DiffusionConfig(prediction_type=prediction_type))
    x0, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.full((2,), 700)
    noisy = sched.add_noise(x0, noise, t)
    exact = training_target(sched, x0, noise, t)  # what a perfect denoiser outputs

    def perfect(*_):
        return exact

    perfect.cfg = SimpleNamespace(prediction_type=prediction_type)
    estimate = x0_estimate(perfect, noisy, t, sched.alphas_cumprod[700], None, None)
    torch.testing.assert_close(estimate, x0, atol=1e-4, rtol=1e-4)
