"""LaVIT's pixel decoder (LaVIT-7B-v2, ``HighresVQDecoder`` + ``highres_pixel_decoding/``):
codes -> conditioner -> an SDXL-shaped diffusers UNet, VAE and DDIM scheduler.

    codes (B x variable, <= 256) --raw codebook--> (B, L, 32), mask
      --in_proj + position--> context (B, L, C)
      learned queries (B, 256, C) --blocks {self-attn, cross-attn to the context, MLP}--> norm
      --task layer (Linear-Tanh-Linear)--> features (B, 256, F)
        --[proj_768 | proj_1280]--> conditioning (B, 256, 2048)   SDXL's encoder_hidden_states
        --attention pool over [mean; features]--> pooled (B, 1280) SDXL's text_embeds
    UNet(x_t, t, conditioning, text_embeds=pooled, time_ids=(H, W, 0, 0, H, W)), DDIM with
    classifier-free guidance against zeros (conditioning and pooled both), then the VAE.

Unlike :class:`~detokenizer.diffusion.model.DiffusionDetokenizer` (trained here, a learned null
condition), this decoder is converted from LaVIT's weights (``lavit.convert.lavit_decoder``)
and its UNet, VAE and scheduler stay diffusers folders, loaded as published.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from torch import nn

from detokenizer.diffusion.config import DiffusionSamplingConfig, LaVITConditionerConfig, LaVITPixelDecoderConfig
from detokenizer.diffusion.model import bucket_size
from detokenizer.diffusion.sampling import Generators, initial_noise
from lavit.checkpoint import CheckpointError, load_model_dir, model_subdir, save_model_dir
from lavit.layers import MLP, Attention, attention

SUBFOLDERS = ("unet", "vae", "scheduler")  # diffusers folders beside the converted conditioner
TIME_IDS = 6  # SDXL's micro-conditioning: (original H, W, crop top, left, target H, W)


# ------------------------------------------------------------------------------------------------
# The conditioner
# ------------------------------------------------------------------------------------------------


class QueryReaderBlock(nn.Module):
    """Pre-norm block: self-attention among the queries, cross-attention to the code context
    (un-normalised, unlike :class:`lavit.layers.CrossBlock`), MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, eps: float) -> None:
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
        self.norm2, self.cross_attn = nn.LayerNorm(dim, eps=eps), Attention(dim, heads)
        self.norm3, self.mlp = nn.LayerNorm(dim, eps=eps), MLP(dim, mlp_ratio)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """x: (B, Q, C); context: (B, L, C); context_mask: bool (B, 1, 1, L) -> (B, Q, C)."""
        x = x + self.self_attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), context, mask=context_mask)
        return x + self.mlp(self.norm3(x))


class AttentionPool(nn.Module):
    """CLIP's attention pool over a sequence: the mean token, prepended and with a learned
    position per index, queries every token; its output is projected to ``out_dim``."""

    def __init__(self, length: int, dim: int, heads: int, out_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.pos = nn.Parameter(torch.randn(length + 1, dim) / dim**0.5)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, N, D) -> (B, out_dim)."""
        b, _, d = x.shape
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1) + self.pos.to(x.dtype)  # (B, N+1, D)
        hs = d // self.heads
        q = self.q(x[:, :1]).view(b, 1, self.heads, hs).transpose(1, 2)  # only the mean token's output is kept
        k = self.k(x).view(b, -1, self.heads, hs).transpose(1, 2)  # (B, H, N+1, hs)
        v = self.v(x).view(b, -1, self.heads, hs).transpose(1, 2)
        return self.out(attention(q, k, v).reshape(b, d))


class LaVITConditioner(nn.Module):
    """LaVIT's high-resolution conditioner (see the module docstring), with the tokenizer's raw
    codebook as a buffer so that it reads code indices."""

    def __init__(self, cfg: LaVITConditionerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, n = cfg.width, cfg.num_queries
        self.register_buffer("codebook", torch.zeros(cfg.codebook_size, cfg.code_dim))
        self.in_proj = nn.Linear(cfg.code_dim, c)
        self.pos = nn.Parameter(torch.randn(n, c) * 0.02)  # one per code index
        self.queries = nn.Parameter(torch.randn(n, c) * 0.02)
        self.blocks = nn.ModuleList(
            QueryReaderBlock(c, cfg.heads, cfg.mlp_ratio, cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(c, eps=cfg.norm_eps)
        self.task = nn.Sequential(nn.Linear(c, c), nn.Tanh(), nn.Linear(c, cfg.feature_dim))
        self.cond_proj = nn.ModuleList(nn.Linear(cfg.feature_dim, d) for d in cfg.cond_dims)
        self.pool = AttentionPool(n, cfg.feature_dim, cfg.heads, cfg.pooled_dim)

    def embed(self, codes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Code sequences -> their raw codebook vectors, zero-padded: ((B, L, code_dim), (B, L) bool).

        Raises:
            ValueError: an empty sequence, one longer than ``num_queries`` or a code outside the codebook.
        """
        n, size = self.cfg.num_queries, self.cfg.codebook_size
        for i, seq in enumerate(codes):
            if seq.ndim != 1 or not 1 <= seq.numel() <= n:
                raise ValueError(f"code sequence {i} has shape {tuple(seq.shape)}: give 1 to {n} codes as a 1-D tensor")
            if seq.min() < 0 or seq.max() >= size:
                raise ValueError(
                    f"code sequence {i} holds codes in [{int(seq.min())}, {int(seq.max())}], outside this "
                    f"codebook's [0, {size}): give code indices (an LM's image tokens minus its code offset)"
                )
        length = max(seq.numel() for seq in codes)
        idx = torch.zeros(len(codes), length, dtype=torch.long, device=self.codebook.device)
        mask = torch.zeros(len(codes), length, dtype=torch.bool, device=self.codebook.device)
        for i, seq in enumerate(codes):
            idx[i, : seq.numel()], mask[i, : seq.numel()] = seq, True
        return self.codebook[idx] * mask[..., None], mask

    def forward(self, vectors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """vectors: (B, L, code_dim) codebook vectors, mask: (B, L) bool ->
        (conditioning (B, num_queries, sum(cond_dims)), pooled (B, pooled_dim))."""
        b, length, _ = vectors.shape
        ctx = self.in_proj(vectors) + self.pos[:length]  # (B, L, C); padding is masked out below
        x = self.queries.expand(b, -1, -1)  # (B, Q, C)
        ctx_mask = mask[:, None, None, :]  # (B, 1, 1, L)
        for block in self.blocks:
            x = block(x, ctx, ctx_mask)
        features = self.task(self.norm(x))  # (B, Q, F)
        cond = torch.cat([proj(features) for proj in self.cond_proj], dim=-1)  # (B, Q, sum(cond_dims))
        return cond, self.pool(features)


# ------------------------------------------------------------------------------------------------
# Conditioner + UNet + VAE + scheduler
# ------------------------------------------------------------------------------------------------


def check_unet(config, cfg: LaVITConditionerConfig, where: str | Path) -> None:
    """Raise a one-line CheckpointError when a UNet config cannot take this conditioner's
    conditioning, pooled vector and SDXL time ids."""
    cross = config["cross_attention_dim"]
    widths = set(cross) if isinstance(cross, list | tuple) else {cross}
    problems = []
    if widths != {sum(cfg.cond_dims)}:
        problems.append(f"cross_attention_dim {cross}, not the conditioning's {sum(cfg.cond_dims)}")
    if config.get("addition_embed_type") != "text_time":
        problems.append(f"addition_embed_type {config.get('addition_embed_type')!r}, not 'text_time' (SDXL's)")
    else:
        wanted = cfg.pooled_dim + TIME_IDS * config["addition_time_embed_dim"]
        if config.get("projection_class_embeddings_input_dim") != wanted:
            problems.append(
                f"projection_class_embeddings_input_dim {config.get('projection_class_embeddings_input_dim')}, "
                f"not pooled_dim + 6 x addition_time_embed_dim = {wanted}"
            )
    if problems:
        raise CheckpointError(f"{where}: the UNet does not fit this conditioner: {problems[0]}")


class LaVITPixelDecoder(nn.Module):
    """Conditioner + SDXL-shaped UNet + VAE; the DDIM scheduler's config rides along.

    Args:
        cfg: the decoder config.
        conditioner: LaVIT's conditioner (its weights converted).
        unet, vae: diffusers models; ``scheduler``: a DDIM scheduler (its config is used).
    """

    def __init__(
        self,
        cfg: LaVITPixelDecoderConfig,
        conditioner: LaVITConditioner,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler: DDIMScheduler,
    ) -> None:
        super().__init__()
        check_unet(unet.config, cfg.conditioner, "unet")
        self.cfg, self.conditioner, self.unet, self.vae = cfg, conditioner, unet, vae
        self.scheduler_config = scheduler.config
        self.space_factor = 2 ** (len(vae.config.block_out_channels) - 1)  # 8 for SDXL's VAE
        self.multiple = self.space_factor * 2 ** (len(unet.config.block_out_channels) - 1)

    @property
    def resolution(self) -> int:
        """The side of its first (square) bucket: what reconstruction renders (LaVIT: 1024)."""
        return self.cfg.buckets[0][0]

    def size_for(self, ratio: str | float | None = None, size: tuple[int, int] | None = None) -> tuple[int, int]:
        """(height, width): an explicit ``size`` (positive multiples of :attr:`multiple`), else
        LaVIT's bucket nearest the aspect ratio ``width:height`` (default 1:1)."""
        return bucket_size(self.cfg.buckets, self.multiple, ratio, size)

    @torch.no_grad()
    def condition(self, codes: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Code sequences -> (conditioning (B, Q, D), pooled (B, P)) in the model's dtype."""
        vectors, mask = self.conditioner.embed([c.to(self.conditioner.codebook.device) for c in codes])
        return self.conditioner(vectors.to(self.dtype), mask)

    @property
    def dtype(self) -> torch.dtype:
        return self.conditioner.in_proj.weight.dtype

    def set_dtype(self, dtype: torch.dtype) -> LaVITPixelDecoder:
        """Run the conditioner and the UNet in ``dtype`` (LaVIT: bfloat16 on a GPU); the VAE stays
        float32, as in LaVIT (SDXL's VAE overflows in float16), and so do the latents."""
        self.conditioner.to(dtype)
        self.unet.to(dtype)
        return self

    @torch.no_grad()
    def denoise_steps(
        self,
        latents: torch.Tensor,
        cond: torch.Tensor,
        pooled: torch.Tensor,
        sampling: DiffusionSamplingConfig,
        size: tuple[int, int],
    ) -> Iterator[torch.Tensor]:
        """The guided DDIM loop from initial latents, yielding the latents after each step.

        Args:
            latents: (B, C, h, w) initial noise (already times ``init_noise_sigma``: 1 for DDIM).
            cond: (B, Q, D) conditioning; pooled: (B, P) pooled vectors.
            sampling: steps and guidance (scheduler: ddim); guidance 1 runs the conditional branch alone.
            size: the (height, width) in pixels that the time ids state.
        """
        b = latents.shape[0]
        sched = DDIMScheduler.from_config(self.scheduler_config)
        sched.set_timesteps(sampling.steps, device=latents.device)
        h, w = size
        # SDXL's micro-conditioning: original size (H, W), crop corner (0, 0), target size (H, W).
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=cond.dtype, device=cond.device).expand(b, -1)
        guided = sampling.guidance_scale != 1.0
        if guided:  # [uncond; cond]; LaVIT's unconditional input is zeros, pooled vector included
            cond = torch.cat([torch.zeros_like(cond), cond])
            pooled = torch.cat([torch.zeros_like(pooled), pooled])
            time_ids = torch.cat([time_ids, time_ids])
        added = {"text_embeds": pooled, "time_ids": time_ids}
        for t in sched.timesteps:
            inp = sched.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
            inp = inp.to(self.unet.dtype)
            pred = self.unet(inp, t, encoder_hidden_states=cond, added_cond_kwargs=added).sample.to(latents.dtype)
            if guided:
                uncond, c = pred.chunk(2)
                pred = uncond + sampling.guidance_scale * (c - uncond)
            latents = sched.step(pred, t, latents).prev_sample
            yield latents

    @torch.no_grad()
    def to_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1]. Keep the VAE in float32, as LaVIT
        does: SDXL's VAE overflows in float16."""
        x = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (x.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def decode(
        self,
        codes: list[torch.Tensor],
        sampling: DiffusionSamplingConfig | None = None,
        *,
        size: tuple[int, int] | None = None,
        generator: Generators = None,
    ) -> torch.Tensor:
        """Code sequences (any lengths up to ``num_queries``) -> (B, 3, H, W) images in [0, 1].

        Args:
            codes: 1-D tensors of code indices.
            sampling: steps, guidance and ratio (default: ``cfg.generation``, LaVIT's 25 steps at
                guidance 7; ``cfg.reconstruction`` is its 50 at 5).
            size: (height, width), overriding ``sampling.ratio``'s bucket.
            generator: one generator, or one per image.
        """
        sampling = self.cfg.generation if sampling is None else sampling
        if sampling.scheduler != "ddim":
            raise ValueError(f"scheduler {sampling.scheduler!r}: LaVIT's pixel decoder samples with ddim")
        h, w = self.size_for(sampling.ratio, size)
        cond, pooled = self.condition(codes)
        shape = (cond.shape[0], self.unet.config.in_channels, h // self.space_factor, w // self.space_factor)
        noise = initial_noise(shape, generator, cond.device, torch.float32)  # DDIM's init_noise_sigma is 1
        *_, latents = self.denoise_steps(noise, cond, pooled, sampling, (h, w))
        return self.to_pixels(latents)


# ------------------------------------------------------------------------------------------------
# Save / load: config.yaml + conditioner.safetensors, and the unet/, vae/, scheduler/ folders
# ------------------------------------------------------------------------------------------------


def save_lavit_pixel_decoder(model: LaVITPixelDecoder, directory: str | Path) -> Path:
    """Write the model folder (replaced whole): the conditioner as a lavit model directory, the
    UNet and VAE as diffusers folders with safetensors weights, the scheduler's config."""
    directory = save_model_dir(directory, model.cfg, {"conditioner": model.conditioner})
    model.unet.save_pretrained(directory / "unet", safe_serialization=True)
    model.vae.save_pretrained(directory / "vae", safe_serialization=True)
    DDIMScheduler.from_config(model.scheduler_config).save_pretrained(directory / "scheduler")
    return directory


def load_diffusers_folder(cls, path: Path, root: Path):
    """A diffusers model or scheduler from a local folder inside ``root``; model weights from
    safetensors only (a ``.bin`` is refused, never unpickled)."""
    path = model_subdir(path, root)
    try:
        if cls is DDIMScheduler:
            return DDIMScheduler.from_pretrained(path, local_files_only=True)
        return cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as e:
        first = next((ln for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        raise CheckpointError(
            f"{path} does not load as a {cls.__name__} folder with safetensors weights ({first[:200]}); "
            "convert the published folder with lavit.convert.lavit_decoder"
        ) from None


def load_lavit_pixel_decoder(
    directory: str | Path, device: str = "cpu", root: str | Path | None = None
) -> LaVITPixelDecoder:
    """Rebuild from a folder written by :func:`save_lavit_pixel_decoder` or the converter: the
    conditioner loaded strictly, then unet/, vae/ and scheduler/. Eval mode. ``root``: the folder
    every file read must resolve inside (default: ``directory``)."""
    directory = Path(directory)
    root = directory if root is None else Path(root)
    cfg, modules = load_model_dir(
        directory,
        LaVITPixelDecoderConfig,
        lambda cfg: {"conditioner": LaVITConditioner(cfg.conditioner)},
        root=root,
    )
    unet = load_diffusers_folder(UNet2DConditionModel, directory / "unet", root)
    vae = load_diffusers_folder(AutoencoderKL, directory / "vae", root)
    scheduler = load_diffusers_folder(DDIMScheduler, directory / "scheduler", root)
    check_unet(unet.config, cfg.conditioner, directory / "unet")
    return LaVITPixelDecoder(cfg, modules["conditioner"], unet, vae, scheduler).to(device).eval()
