"""Config schemas of the next-scale VAR decoder (YAML files in configs/var/ mirror them)."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from lavit.config import DataConfig, TrainConfig, check, check_norm_groups, check_sampling


@dataclass
class VQVAEConfig:
    """Multi-scale residual VQ-VAE: diffusers Encoder/Decoder around our quantizer.

    The latent side is ``resolution / 2**(len(block_out_channels) - 1)``; the scale schedule must
    rise strictly from 1 or more to exactly that side (VAR at 256 px / 16x16 latents:
    1,2,3,4,5,6,8,10,13,16).
    """

    resolution: int = 64
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    norm_num_groups: int = 16
    mid_attention: bool = False
    # Single-head self-attention after each res block of the lowest-resolution level, in the
    # encoder and the decoder (VAR's VQ-VAE: encoder.down.4.attn, decoder.up.4.attn).
    lowest_level_attention: bool = False
    latent_channels: int = 32  # Cvae: the codebook vectors' width (VAR: 32)
    quant_conv_kernel: int = 1  # of quant_conv / post_quant_conv around the quantizer (VAR: 3)
    codebook_size: int = 512  # VAR: 4096
    scales: list[int] = field(default_factory=lambda: [1, 2, 3, 4, 6, 8, 11, 16])
    num_phi: int = 4  # phi convs shared across scales by nearest tick (VAR: 4)
    phi_ratio: float = 0.5  # h -> (1 - r) h + r conv(h) (VAR's quant_resi)
    commitment_weight: float = 0.25  # VAR's beta
    dead_code_threshold: float = 0.05  # EMA uses per step below this -> code restarted from the batch
    usage_decay: float = 0.99
    # VAR's using_znorm: the nearest code by cosine (residual and codes l2-normalised for the
    # lookup; the raw code is what f_hat adds). Coarse residuals are large, fine ones small: by
    # L2 the codes crowd where the many fine tokens are and the coarse scales share a few.
    znorm: bool = False

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.block_out_channels) - 1)

    def __post_init__(self) -> None:
        down = 2 ** (len(self.block_out_channels) - 1)
        check(
            self.resolution % down == 0,
            "resolution",
            self.resolution,
            f"must be a multiple of {down} (the encoder halves it {len(self.block_out_channels) - 1} times)",
        )
        side = self.resolution // down
        check(
            len(self.scales) > 0
            and self.scales[0] >= 1
            and all(a < b for a, b in itertools.pairwise(self.scales))
            and self.scales[-1] == side,
            "scales",
            self.scales,
            f"must rise strictly from >= 1 and end at the latent side {side} "
            f"(resolution {self.resolution} / {down}), e.g. {sorted({1, max(1, side // 4), max(1, side // 2), side})}",
        )
        check_norm_groups(self.norm_num_groups, self.block_out_channels)
        check(self.num_phi >= 1, "num_phi", self.num_phi, "use 1 or more")
        check(
            self.quant_conv_kernel >= 1 and self.quant_conv_kernel % 2 == 1,
            "quant_conv_kernel",
            self.quant_conv_kernel,
            "use an odd kernel size (1, or 3 as in VAR) so the latent keeps its side",
        )
        check(0.0 <= self.phi_ratio <= 1.0, "phi_ratio", self.phi_ratio, "must lie in [0, 1]")


@dataclass
class VQVAERunConfig:
    """``lavit train var-vqvae``: the multi-scale VQ-VAE on ShapesWorld images."""

    model: VQVAEConfig = field(default_factory=VQVAEConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_images: int = 200  # held-out (val) images: PSNR, per-scale code usage, scenes kept


@dataclass
class VARConfig:
    """The next-scale transformer over a multi-scale VQ-VAE's token maps.

    The defaults are our LaVIT-conditioned transformer; configs/var/var_d*.yaml set the options
    that make it VAR's class-conditional one (FoundationVision/VAR, converted by
    lavit/convert/var_transformer.py).
    """

    width: int = 256
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    # What conditions it: "codes", a sequence (a tokenizer's code embeddings) whose masked mean
    # starts the sequence and modulates every block and which every block cross-attends to; or
    # "class", VAR's class label: its embedding starts the sequence (plus a learned pos_start)
    # and modulates every block, no cross-attention. Class num_classes is the null class (the
    # dropped condition, and guidance's unconditional half).
    condition: str = "codes"
    num_classes: int = 1000  # condition=class: class_emb holds num_classes + 1 rows
    # VAR's attention: q and k l2-normalised per head, their dot product scaled by a learned
    # per-head temperature (exp of a log scale, from 4, capped at 100) instead of 1/sqrt(head dim).
    attn_l2_norm: bool = False
    qkv_bias: str = "qkv"  # "qv": VAR's fused qkv without bias, plus a q and a v bias (none on k)
    norm_eps: float = 1e-5  # every LayerNorm's (VAR: 1e-6)
    gelu: str = "exact"  # the MLP's GELU: "exact" or "tanh" (VAR's approximation)
    # One AdaLN projection for all blocks plus a learned (6, width) offset per block (VAR's
    # shared_aln, used by its d36 only) instead of one projection per block.
    shared_adaln: bool = False
    # Width of the condition sequence it cross-attends to: the tokenizer's code embeddings
    # (LaVIT codes), or an LLM's hidden states (VARGPT).
    cond_dim: int = 128
    cond_drop_prob: float = 0.1  # condition replaced by the learned null one (for CFG)
    attention_backend: str = "sdpa"
    # A layout reader (0 = none): ``layout_queries`` learned queries, a square grid, read the
    # condition sequence as the diffusion decoder's conditioner does; the grid, area-pooled to
    # each scale's side, is projected (zero-initialised) onto that scale's input tokens, so
    # where things lie need not be found through cross-attention alone. Its sizes match the
    # diffusion conditioner's so that one can start it (``layout_init_from``).
    layout_queries: int = 0
    layout_width: int = 128
    layout_depth: int = 2
    layout_heads: int = 4
    max_codes: int = 64  # the longest condition sequence the layout reader takes
    # A convolutional head on the last scale, or the last ``last_head_scales`` (0 = none, else its
    # width): from a 3x3 view of that scale's hidden states, its input (the f_hat of the earlier
    # scales) and the layout grid (with a layout reader), it adds residual logits there, zero-initialised, so a trained
    # transformer grows one and starts where it was; on conditional rows only, so guidance
    # amplifies it. The last scale holds most of a small shape's detail, and the transformer
    # predicts its tokens each on its own.
    last_head: int = 0
    last_head_blocks: int = 2
    last_head_scales: int = 1  # the head (one, shared) refines this many of the last scales

    def __post_init__(self) -> None:
        check(self.width % self.heads == 0, "width", self.width, f"must be divisible by heads={self.heads}")
        check(
            self.condition in ("codes", "class"),
            "condition",
            self.condition,
            "use 'codes' (a code sequence, cross-attended) or 'class' (a class label, VAR's)",
        )
        check(self.num_classes >= 1, "num_classes", self.num_classes, "use 1 or more (VAR: 1000)")
        check(self.qkv_bias in ("qkv", "qv"), "qkv_bias", self.qkv_bias, "use 'qkv' or 'qv' (VAR's: no k bias)")
        check(self.gelu in ("exact", "tanh"), "gelu", self.gelu, "use 'exact' or 'tanh' (VAR's)")
        check(self.norm_eps > 0, "norm_eps", self.norm_eps, "use a small positive value, e.g. 1e-5 (VAR: 1e-6)")
        check(
            self.condition == "codes" or self.layout_queries == 0,
            "layout_queries",
            self.layout_queries,
            "the layout reader reads a code sequence: set 0 with condition=class",
        )
        check(
            self.layout_queries >= 0 and math.isqrt(self.layout_queries) ** 2 == self.layout_queries,
            "layout_queries",
            self.layout_queries,
            "must be 0 (no layout reader) or a square, e.g. 256 for a 16x16 grid",
        )
        if self.layout_queries:
            check(
                self.layout_width % self.layout_heads == 0,
                "layout_width",
                self.layout_width,
                f"must be divisible by layout_heads={self.layout_heads}",
            )
        check(0 <= self.cond_drop_prob < 1, "cond_drop_prob", self.cond_drop_prob, "use a value in [0, 1)")
        check(
            self.last_head >= 0 and self.last_head % 8 == 0,
            "last_head",
            self.last_head,
            "must be 0 (no head) or a multiple of 8 (its group norms have 8 groups), e.g. 64",
        )
        check(self.last_head_blocks >= 1, "last_head_blocks", self.last_head_blocks, "use 1 or more")
        check(self.last_head_scales >= 1, "last_head_scales", self.last_head_scales, "use 1 or more")


@dataclass
class VARSamplingConfig:
    """VAR's defaults: guidance ramped linearly over scales, top-k 900 then top-p 0.96 (at 4,096 codes)."""

    guidance_scale: float = 3.0
    top_k: int = 0  # 0 = off
    top_p: float = 0.96
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_sampling(self)


@dataclass
class VARDecoderConfig:
    """The VAR decoder as one unit: the frozen VQ-VAE and the transformer over its tokens."""

    vqvae: VQVAEConfig = field(default_factory=VQVAEConfig)
    transformer: VARConfig = field(default_factory=VARConfig)


@dataclass
class VARRunConfig:
    """``lavit train var``: the next-scale transformer on a trained VQ-VAE's token maps,
    conditioned on a frozen tokenizer's code embeddings."""

    model: VARConfig = field(default_factory=VARConfig)
    vqvae_dir: str = "runs/var_vqvae_tiny/model"  # or a VAR decoder's folder (its VQ-VAE)
    tokenizer_dir: str = "runs/tokenizer_tiny/model"
    # A trained VAR decoder folder (a `lavit train var` run's model/, or a pipeline's var/) whose
    # transformer starts this run (to train the shipped decoder on). Its tokens are its
    # VQ-VAE's, so vqvae_dir must hold the same VQ-VAE (the folder itself will do).
    init_from: str | None = None
    # A diffusion detokenizer folder (a `lavit train diffusion` run's model/, or a pipeline's
    # diffusion/) trained on the same tokenizer's codes, whose conditioner starts the layout
    # reader: it has already learned where each code's content lies. Needs model.layout_* equal
    # to its conditioner's sizes.
    layout_init_from: str | None = None
    # Parameter-name prefixes of the transformer to train, the rest frozen (empty: all of it),
    # e.g. [last_head.] to train a head grown on a trained decoder (init_from).
    trainable: list[str] = field(default_factory=list)
    data: DataConfig = field(default_factory=DataConfig)  # train: what it learns on; val: evaluation
    train: TrainConfig = field(default_factory=TrainConfig)
    num_scenes: int | None = 20_000  # items of each map-style train source (the first ones; null: all);
    # a stream source gives one epoch. Their codes are extracted once and cached
    codes_cache: str | None = None  # cache folder; default: <train.out_dir>/codes (lavit/train/codes_cache.py)
    eval_scenes: int = 200
    sampling: VARSamplingConfig = field(default_factory=VARSamplingConfig)
