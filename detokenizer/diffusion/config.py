"""Config schemas of the diffusion detokenizer (YAML files in configs/diffusion/ mirror them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from lavit.config import GUIDANCE_FIX, DataConfig, TrainConfig, check, check_norm_groups
from lavit.data.shapes import check_shape_description

SCHEDULERS = ("ddim", "ddpm", "euler", "dpm")


def check_focus(weight: float, shapes: list[str]) -> None:
    """Validate a ``focus_weight`` / ``focus_shapes`` pair (VAE and diffusion losses)."""
    check(weight >= 0, "focus_weight", weight, "use 0 (off) or a positive weight")
    check(
        weight == 0 or bool(shapes),
        "focus_shapes",
        shapes,
        "name the shapes focus_weight weighs, e.g. ['small cross'], or set focus_weight=0",
    )
    for description in shapes:
        problem = check_shape_description(description)
        check(problem is None, "focus_shapes", shapes, problem or "")


@dataclass
class ConditionerConfig:
    """Code embeddings -> learned queries -> a fixed-length conditioning sequence (LaVIT: 256)."""

    width: int = 128
    depth: int = 2
    heads: int = 4
    num_queries: int = 16
    cond_dim: int = 128  # the UNet's cross_attention_dim


@dataclass
class UNetConfig:
    """The ``diffusers.UNet2DConditionModel`` arguments we expose."""

    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    down_block_types: list[str] = field(
        default_factory=lambda: ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"]
    )
    up_block_types: list[str] = field(default_factory=lambda: ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"])
    layers_per_block: int = 1
    attention_heads: int = 4
    norm_num_groups: int = 8

    def __post_init__(self) -> None:
        n = len(self.block_out_channels)
        check(
            len(self.down_block_types) == n and len(self.up_block_types) == n,
            "unet.down_block_types/up_block_types",
            (self.down_block_types, self.up_block_types),
            f"give one down and one up block type per entry of block_out_channels ({n})",
        )
        check_norm_groups(self.norm_num_groups, self.block_out_channels, "unet.norm_num_groups")


PREDICTION_TARGETS = ("epsilon", "v_prediction", "sample")  # what the UNet predicts


@dataclass
class DiffusionConfig:
    """The detokenizer: conditioner + UNet, in pixel space or an AutoencoderKL's latent space."""

    # Options removed after they measured no gain (docs/experiments.md): a saved config.yaml may
    # still name them, at the one value every model now has (see lavit.config.from_yaml).
    RETIRED: ClassVar[dict[str, object]] = {"condition": "codes", "sigma_data": 0.0}

    code_dim: int = 128  # the tokenizer's code-embedding width (tokenizer.cfg.width)
    max_codes: int = 64  # the longest code sequence (the tokenizer's patch count)
    resolution: int = 64  # output side of the square bucket, in pixels
    space: str = "pixel"  # "pixel" or "latent"
    patch_size: int = 1  # pixel space: denoise patch_size^2 pixel patches stacked on channels
    vae_path: str | None = None  # local diffusers AutoencoderKL folder (space: latent)
    conditioner: ConditionerConfig = field(default_factory=ConditionerConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    prediction_type: str = "epsilon"  # "epsilon", "v_prediction" or "sample" (the clean image x0)
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    # > 0: the conditioning sequence (num_queries = a square grid, one query per cell) is also laid
    # out on that grid, projected to this many channels and resized onto the denoiser's input,
    # beside which it is stacked: the layout reaches the UNet directly, not only via attention.
    spatial_channels: int = 0
    # > 0: the conditioner also reads the tokenizer's rebuilt per-patch features (its feature
    # decoder on the codes: one vector of this width, the encoder's, per patch, in place), laid out
    # on the patch grid, resized to the query grid and added to the conditioning sequence through
    # an MLP whose output layer starts at zero, so a trained codes-only decoder grows it and starts
    # exactly where it was. The codes say what each kept patch holds; these say where, patch by
    # patch. Needs a square num_queries.
    patch_features: int = 0

    def __post_init__(self) -> None:
        grid = math.isqrt(self.conditioner.num_queries)
        check(
            self.patch_features == 0 or (self.patch_features > 0 and grid * grid == self.conditioner.num_queries),
            "patch_features",
            self.patch_features,
            "use 0 (off) or the tokenizer encoder's width; the features are added to a square grid of queries, "
            f"so also set conditioner.num_queries to a square (it is {self.conditioner.num_queries})",
        )
        check(
            self.spatial_channels == 0 or grid * grid == self.conditioner.num_queries,
            "spatial_channels",
            self.spatial_channels,
            f"a spatial map needs conditioner.num_queries to be a square (it is {self.conditioner.num_queries}); "
            "use e.g. 64 (8x8) or set spatial_channels=0",
        )
        check(self.space in ("pixel", "latent"), "space", self.space, "use pixel or latent")
        check(
            self.patch_size >= 1 and (self.space == "pixel" or self.patch_size == 1),
            "patch_size",
            self.patch_size,
            "use a positive patch size, and 1 in latent space (the VAE sets the scale there)",
        )
        check(
            self.space == "pixel" or bool(self.vae_path),
            "vae_path",
            self.vae_path,
            "latent space needs vae_path: a local folder with a diffusers AutoencoderKL (config.json + weights)",
        )
        check(
            self.prediction_type in PREDICTION_TARGETS,
            "prediction_type",
            self.prediction_type,
            f"use one of {', '.join(PREDICTION_TARGETS)}",
        )


@dataclass
class DiffusionSamplingConfig:
    """Sampling defaults. LaVIT decodes with guidance 7.0 and 25-50 steps."""

    scheduler: str = "ddim"  # ddim, ddpm, euler or dpm (DPM-Solver++ multistep)
    steps: int = 25
    guidance_scale: float = 3.0  # 1.0 disables classifier-free guidance
    ratio: str = "1:1"  # width:height, snapped to the nearest bucket

    def __post_init__(self) -> None:
        check(self.scheduler in SCHEDULERS, "scheduler", self.scheduler, f"use one of {', '.join(SCHEDULERS)}")
        check(self.steps >= 1, "steps", self.steps, "use at least 1 step")
        check(math.isfinite(self.guidance_scale), "guidance_scale", self.guidance_scale, GUIDANCE_FIX)


# LaVIT's aspect-ratio buckets at 1024 px, (height, width): its inference.py's ratio_dict, in the
# order 1:1, 4:3, 3:2, 16:9, 2:3, 3:4 (width:height). LaVIT has no 9:16.
LAVIT_PIXEL_BUCKETS = [[1024, 1024], [896, 1152], [832, 1216], [768, 1344], [1216, 832], [1152, 896]]


@dataclass
class LaVITConditionerConfig:
    """LaVIT's high-resolution conditioner (``HighresVQDecoder``): codes -> (num_queries,
    sum(cond_dims)) conditioning for an SDXL-shaped UNet plus a ``pooled_dim`` vector (its
    ``text_embeds``). Defaults: LaVIT-7B-v2's published size (2,048-wide conditioning, 1280-d pool)."""

    codebook_size: int = 16384
    code_dim: int = 32  # the tokenizer's raw codebook vectors, read as they are
    width: int = 1408
    depth: int = 12
    heads: int = 16  # the blocks' and the attention pool's
    mlp_ratio: float = 4.3637  # int(1408 * 4.3637) = 6144
    num_queries: int = 256  # learned queries; also the most codes read (one position each)
    feature_dim: int = 1408  # decode_task_layer's output, read by the projections and the pool
    cond_dims: list[int] = field(default_factory=lambda: [768, 1280])  # concatenated: SDXL's two text encoders
    pooled_dim: int = 1280
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        check(self.width % self.heads == 0, "heads", self.heads, f"must divide width={self.width}")
        check(self.feature_dim % self.heads == 0, "heads", self.heads, f"must divide feature_dim={self.feature_dim}")
        check(bool(self.cond_dims), "cond_dims", self.cond_dims, "give at least one projection width")


@dataclass
class LaVITPixelDecoderConfig:
    """LaVIT's pixel decoder: the conditioner's weights, converted; the UNet, VAE and DDIM
    scheduler are diffusers folders beside them. LaVIT's defaults: text-to-image generation
    25 DDIM steps at guidance 7, reconstruction of an encoded image 50 steps at guidance 5."""

    conditioner: LaVITConditionerConfig = field(default_factory=LaVITConditionerConfig)
    generation: DiffusionSamplingConfig = field(
        default_factory=lambda: DiffusionSamplingConfig(scheduler="ddim", steps=25, guidance_scale=7.0)
    )
    reconstruction: DiffusionSamplingConfig = field(
        default_factory=lambda: DiffusionSamplingConfig(scheduler="ddim", steps=50, guidance_scale=5.0)
    )
    buckets: list[list[int]] = field(default_factory=lambda: [list(hw) for hw in LAVIT_PIXEL_BUCKETS])

    def __post_init__(self) -> None:
        for name in ("generation", "reconstruction"):
            sampling = getattr(self, name)
            check(sampling.scheduler == "ddim", f"{name}.scheduler", sampling.scheduler, "LaVIT samples with ddim")
        check(
            bool(self.buckets) and all(len(hw) == 2 and min(hw) > 0 for hw in self.buckets),
            "buckets",
            self.buckets,
            "give (height, width) pairs of positive sizes, e.g. [[1024, 1024], [896, 1152]]",
        )


@dataclass
class DiffusionRunConfig:
    """``lavit train diffusion``: the detokenizer on codes from a frozen, trained tokenizer."""

    model: DiffusionConfig = field(default_factory=DiffusionConfig)
    tokenizer_dir: str = "runs/tokenizer_tiny/model"
    data: DataConfig = field(default_factory=DataConfig)  # train: what it learns on; val: evaluation
    train: TrainConfig = field(default_factory=TrainConfig)
    num_scenes: int | None = 20_000  # items of each map-style train source (the first ones; null: all);
    # a stream source gives one epoch. Their codes are extracted once and cached
    codes_cache: str | None = None  # cache folder; default: <train.out_dir>/codes (lavit/train/codes_cache.py)
    cond_drop_prob: float = 0.1  # condition dropped for classifier-free guidance
    eval_scenes: int = 200
    sampling: DiffusionSamplingConfig = field(default_factory=DiffusionSamplingConfig)
    # A trained detokenizer directory whose conditioner and UNet start this run (fine-tuning, e.g.
    # onto the latents of a VAE trained further). Its frozen VAE is not taken: model.vae_path's is.
    init_from: str | None = None

    def __post_init__(self) -> None:
        check(0 <= self.cond_drop_prob < 1, "cond_drop_prob", self.cond_drop_prob, "use a value in [0, 1)")


@dataclass
class VAEConfig:
    """A small ``diffusers.AutoencoderKL`` for latent-space diffusion, trained from scratch
    (``lavit train vae``) where no pretrained one fits (ShapesWorld). The latent side is
    ``resolution / 2 ** (len(block_out_channels) - 1)``."""

    resolution: int = 64
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    norm_num_groups: int = 16
    latent_channels: int = 4
    mid_attention: bool = False
    kl_weight: float = 1e-6  # Stable Diffusion's VAE weight on the KL term (pixel loss ~ 1)
    # Pixel loss weight 1 + edge_weight * (the target's gradient L1 norm, scaled to [0, 1]; see
    # vae.edge_weights): flat background counts 1, outlines up to 1 + edge_weight. 0 = a plain
    # mean. On this CPU, 20 for 1,000 steps resumed from the 7,000-step VAE: 38.5 -> 40.4 dB,
    # scenes kept 81.5 -> 82% (each of the 36 scenes it still loses has a small cross read back
    # as a diamond).
    edge_weight: float = 0.0
    # Extra pixel-loss weight inside the boxes (grown by 2 px) of the ShapesWorld shapes that fit
    # focus_shapes (size and/or kind words: "small cross", "cross", "small"): weights become
    # (edge weights) x (1 + focus_weight * box mask). What a blurry decoder loses is a rare,
    # small detail the mean loss barely sees: with ["small cross"] and 10, 1,000 decoder-only
    # steps from the 8,000-step VAE took scenes kept 82 -> 100% (see configs/train/vae_tiny_decoder.yaml).
    focus_weight: float = 0.0
    focus_shapes: list[str] = field(default_factory=list)
    # Decode a sample of the posterior (a VAE proper) or its mean (an autoencoder whose means
    # carry the KL penalty). At init the posterior's std is 1 against means of ~0.1, so sampled
    # training first decodes noise and learns slowly at this budget.
    sample_posterior: bool = True

    def __post_init__(self) -> None:
        check_norm_groups(self.norm_num_groups, self.block_out_channels)
        down = 2 ** (len(self.block_out_channels) - 1)
        check(
            self.resolution % down == 0,
            "resolution",
            self.resolution,
            f"must be a multiple of the VAE's downsampling factor {down} (2 ** (levels - 1))",
        )
        check(self.kl_weight >= 0, "kl_weight", self.kl_weight, "use 0 or a small positive weight such as 1e-6")
        check(self.edge_weight >= 0, "edge_weight", self.edge_weight, "use 0 (a plain mean) or a positive weight")
        check_focus(self.focus_weight, self.focus_shapes)


@dataclass
class VAERunConfig:
    """``lavit train vae``: the AutoencoderKL of ``space: latent`` on ShapesWorld images."""

    model: VAEConfig = field(default_factory=VAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_images: int = 200  # held-out (val) images: PSNR and scenes kept by the parser
    calibration_images: int = 512  # train images whose latent spread sets scaling_factor
    # A trained AutoencoderKL folder (same architecture as model) to start from.
    init_from: str | None = None
    # Train the decoder only (with init_from): the encoder, and so every latent, stays as it was,
    # so a diffusion detokenizer trained in init_from's latent space can take the new decoder
    # as it is (as Stable Diffusion's sd-vae-ft-mse was a decoder-only fine-tune of its VAE).
    # scaling_factor is kept from init_from, not recalibrated.
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        check(
            not self.freeze_encoder or bool(self.init_from),
            "freeze_encoder",
            self.freeze_encoder,
            "a frozen encoder must be a trained one: set init_from to a VAE folder, or freeze_encoder=false",
        )
