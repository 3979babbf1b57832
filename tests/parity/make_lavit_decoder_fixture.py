"""Make the parity fixture of LaVIT's high-res pixel decoder (tests/test_lavit_decoder_convert.py
reads it).

    python tests/parity/make_lavit_decoder_fixture.py --lavit-repo /path/to/LaVIT \\
        --out tests/parity/lavit_decoder.safetensors

``--lavit-repo`` is a checkout of github.com/jy0205/LaVIT; its code is imported from there and
none of it is copied here. The script builds LaVIT's own ``HighresVQDecoder`` (the conditioner)
at a small size with random weights, a tiny SDXL-shaped diffusers UNet (``text_time``
micro-conditioning) and VAE, and runs LaVIT's own sampling loop
(``LaVITDetokenizer.reconstruct_from_token``, whose guided DDIM loop is the one of its
``generate_image``) for 3 DDIM steps from a fixed noise on fixed codes. One safetensors file:

    sd.<LaVIT name>     the conditioner's state dict in the published key layout (float32)
    codebook            (64, 8) the tokenizer's raw codebook (quantize.embedding.weight)
    codes.<i>           int64 code sequences (16 and 9 codes: one full, one padded)
    unet.<name>         the tiny UNet's weights (float16; the reference ran them as float32)
    vae.<name>          the tiny VAE's weights (float16, likewise)
    ref.cond            (2, 16, 40) conditioning (LaVIT's prompt_embeds)
    ref.pooled          (2, 24) pooled vector (its pooled_prompt_embeds, SDXL's text_embeds)
    ref.noise           (2, 4, 4, 6) the initial latents
    ref.latents.<k>     the latents after DDIM step k (0, 1, 2)
    ref.decoded         (2, 3, 32, 48) the VAE's output x (LaVIT shows (x / 2 + 0.5).clamp(0, 1))

with JSON metadata: the small conditioner's options, the UNet, VAE and scheduler configs, the
sampling settings and the (name, shape) list of the published conditioner (LaVIT's
``build_tokenizer_decoder``'s ``HighresVQDecoder(depth=12)``, built on the meta device).

LaVIT's ``HighresVQDecoder`` fixes the task layer's output (1408), the two projections (768,
1280) and the pool's output (1280) whatever its width. The small model replaces those four
modules, after construction, by ones of the same classes (``nn.Linear``, LaVIT's
``AttentionPool2d``) at 48, 16 + 24 and 24: its ``forward`` runs unchanged. Zero-initialised
tensors (positions, queries) are drawn at random and every other tensor perturbed, so that a
wrongly mapped one shows. Image files of the checkout are not needed (its ``models/__init__``
is not run: the ``models`` package is opened without it).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from safetensors.torch import save_file
from torch import nn

SEED = 0
NOISE_SEED = 1
CODEBOOK = (64, 8)  # codes, code_dim
SMALL = {  # LaVIT's HighresVQDecoder arguments: (56 / 14)^2 = 16 queries
    "img_size": 56,
    "patch_size": 14,
    "in_chans": 8,
    "embed_dim": 32,
    "depth": 2,
    "num_heads": 4,
}
FEATURE_DIM, COND_DIMS, POOLED_DIM = 48, (16, 24), 24  # replaced: 1408, (768, 1280), 1280
OURS = {  # the same model as our LaVITConditionerConfig
    "codebook_size": CODEBOOK[0],
    "code_dim": CODEBOOK[1],
    "width": 32,
    "depth": 2,
    "heads": 4,
    "mlp_ratio": 4.3637,
    "num_queries": 16,
    "feature_dim": FEATURE_DIM,
    "cond_dims": list(COND_DIMS),
    "pooled_dim": POOLED_DIM,
    "norm_eps": 1e-5,
}
UNET = {  # SDXL's UNet topology (text_time, linear projections, 2 transformer layers deep), tiny
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
    "layers_per_block": 1,
    "transformer_layers_per_block": [1, 2],
    "attention_head_dim": [2, 4],
    "use_linear_projection": True,
    "norm_num_groups": 4,
    "cross_attention_dim": sum(COND_DIMS),
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": POOLED_DIM + 6 * 8,
}
VAE = {  # 4 levels: LaVIT's latents are height // 8
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [4, 4, 4, 4],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 2,
    "sample_size": 32,
    "scaling_factor": 0.13025,
}
SCHEDULER = {  # SDXL's noise schedule as a DDIM config
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "prediction_type": "epsilon",
}
HEIGHT, WIDTH, STEPS, GUIDANCE = 32, 48, 3, 5.0
CODE_LENGTHS = (16, 9)


def import_reference(repo: Path):
    """LaVIT's modules, imported from the checkout without running ``models/__init__``."""
    root = repo / "LaVIT"
    sys.path.insert(0, str(root))
    package = types.ModuleType("models")
    package.__path__ = [str(root / "models")]
    sys.modules["models"] = package
    from models import image_detokenize, modeling_decoder

    return modeling_decoder, image_detokenize


def perturb(module: nn.Module, generator: torch.Generator) -> None:
    """Every tensor moved off its initial value (zeros and ones included)."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))


def small_reference(modeling_decoder, generator: torch.Generator) -> nn.Module:
    torch.manual_seed(SEED)
    ref = modeling_decoder.HighresVQDecoder(**SMALL)
    width = SMALL["embed_dim"]
    ref.decoder_out_dim = FEATURE_DIM
    ref.decode_task_layer[2] = nn.Linear(width, FEATURE_DIM)
    ref.unet_proj_1 = nn.Linear(FEATURE_DIM, COND_DIMS[0])
    ref.unet_proj_2 = nn.Linear(FEATURE_DIM, COND_DIMS[1])
    ref.unet_attnpool = modeling_decoder.AttentionPool2d(ref.num_patches, FEATURE_DIM, SMALL["num_heads"], POOLED_DIM)
    with torch.no_grad():
        ref.pos_embed.normal_(0, 0.5, generator=generator)
        ref.query_embed.normal_(0, 0.5, generator=generator)
    perturb(ref, generator)
    return ref.eval()


def half_rounded(module: nn.Module) -> nn.Module:
    """Weights rounded to float16 (so the fixture stores them in half the bytes), kept float32."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module.eval()


class RecordingDDIM(DDIMScheduler):
    """LaVIT's scheduler, keeping the latents after each step."""

    def step(self, *args, **kwargs):
        out = super().step(*args, **kwargs)
        self.recorded.append(out.prev_sample.clone())
        return out


class RecordingVAE:
    """The VAE as LaVIT's loop reads it (config, dtype, decode), keeping the decoded pixels."""

    def __init__(self, vae: AutoencoderKL) -> None:
        self.vae, self.config, self.dtype, self.decoded = vae, vae.config, vae.dtype, None

    def decode(self, z: torch.Tensor):
        out = self.vae.decode(z)
        self.decoded = out.sample.clone()
        return out


class CodeTokenizer:
    """Stands in for LaVIT's visual tokenizer: ``tokenize_image`` returns the fixed codes'
    codebook vectors (num_tokens, d) and counts, as its ``used_for_llm=False`` branch does."""

    def __init__(self, codebook: torch.Tensor, codes: list[torch.Tensor]) -> None:
        self.vectors = torch.nn.functional.embedding(torch.cat(codes), codebook)
        self.counts = torch.tensor([len(c) for c in codes])

    def tokenize_image(self, x: torch.Tensor, used_for_llm: bool = False):
        assert not used_for_llm
        return self.vectors, self.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lavit-repo", required=True, type=Path, help="checkout of github.com/jy0205/LaVIT")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    modeling_decoder, image_detokenize = import_reference(args.lavit_repo)
    generator = torch.Generator().manual_seed(SEED)

    ref = small_reference(modeling_decoder, generator)
    codebook = torch.randn(CODEBOOK, generator=generator)
    codes = [torch.randint(0, CODEBOOK[0], (n,), generator=generator) for n in CODE_LENGTHS]
    tokenizer = CodeTokenizer(codebook, codes)
    with torch.no_grad():
        cond, pooled = ref(tokenizer.vectors, tokenizer.counts)

    torch.manual_seed(SEED)
    unet = half_rounded(UNet2DConditionModel(**UNET))
    vae = half_rounded(AutoencoderKL(**VAE))

    # LaVIT's detokenizer object without its __init__ (which downloads and loads 7B weights).
    pipe = image_detokenize.LaVITDetokenizer.__new__(image_detokenize.LaVITDetokenizer)
    nn.Module.__init__(pipe)
    pipe.tokenizer_decoder, pipe.unet = ref, unet
    pipe.visual_tokenizer = tokenizer
    pipe.vae = RecordingVAE(vae)
    pipe.scheduler = RecordingDDIM.from_config(SCHEDULER)
    pipe.scheduler.recorded = []
    image = torch.zeros(len(codes), 3, 32, 32)  # read only by the stand-in tokenizer
    torch.manual_seed(NOISE_SEED)
    pipe.reconstruct_from_token(image, width=WIDTH, height=HEIGHT, num_inference_steps=STEPS, guidance_scale=GUIDANCE)
    torch.manual_seed(NOISE_SEED)  # the loop's first random draw is its initial latents
    noise = torch.randn(len(codes), UNET["in_channels"], HEIGHT // 8, WIDTH // 8)
    assert len(pipe.scheduler.recorded) == STEPS

    with torch.device("meta"):
        published = modeling_decoder.HighresVQDecoder(depth=12)  # build_tokenizer_decoder's highres model
    published_keys = [[k, list(v.shape)] for k, v in published.state_dict().items()]

    tensors = {f"sd.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    tensors["codebook"] = codebook
    tensors.update({f"codes.{i}": c for i, c in enumerate(codes)})
    tensors.update({f"unet.{k}": v.half() for k, v in unet.state_dict().items()})
    tensors.update({f"vae.{k}": v.half() for k, v in vae.state_dict().items()})
    tensors.update(
        {"ref.cond": cond, "ref.pooled": pooled, "ref.noise": noise, "ref.decoded": pipe.vae.decoded.contiguous()}
    )
    tensors.update({f"ref.latents.{k}": x for k, x in enumerate(pipe.scheduler.recorded)})
    metadata = {
        "conditioner": json.dumps(OURS),
        "unet_config": json.dumps(UNET),
        "vae_config": json.dumps(VAE),
        "scheduler_config": json.dumps(SCHEDULER),
        "sampling": json.dumps({"height": HEIGHT, "width": WIDTH, "steps": STEPS, "guidance_scale": GUIDANCE}),
        "published_keys": json.dumps(published_keys),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=metadata)
    size = args.out.stat().st_size
    print(f"wrote {args.out} ({size / 1024:.0f} kB); published conditioner: {len(published_keys)} tensors")


if __name__ == "__main__":
    main()
