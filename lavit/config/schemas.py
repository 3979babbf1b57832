"""The config dataclasses: one per component (ShapesWorld, data sources, tokenizer, LM,
sampling, trainer) and the run configs of the stages defined in ``lavit``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lavit.config.base import check, check_sampling, fills_once


@dataclass
class ShapesWorldConfig:
    """ShapesWorld scene generator (lavit/data/shapes/world.py)."""

    resolution: int = 64  # image side in pixels; any size >= 32 (the parser is checked at 64)
    seed: int = 0  # changes every scene of every split; splits stay disjoint for every seed
    min_shapes: int = 1
    max_shapes: int = 3
    duplicate_prob: float = 0.2  # chance a shape repeats an earlier one's colour and kind
    supersample: int = 4  # anti-aliasing: draw this many times larger, then area-average
    train_size: int = 100_000  # split lengths; scenes are generated on the fly
    val_size: int = 1_000
    test_size: int = 1_000

    def __post_init__(self) -> None:
        check(self.resolution >= 32, "resolution", self.resolution, "use 32 or more pixels")
        check(
            1 <= self.min_shapes <= self.max_shapes <= 4,
            "min_shapes/max_shapes",
            (self.min_shapes, self.max_shapes),
            "need 1 <= min_shapes <= max_shapes <= 4",
        )
        check(0.0 <= self.duplicate_prob <= 1.0, "duplicate_prob", self.duplicate_prob, "use a probability in [0, 1]")
        check(self.supersample >= 1, "supersample", self.supersample, "use 1 (no anti-aliasing) or more")
        for name in ("train_size", "val_size", "test_size"):
            check(getattr(self, name) >= 1, name, getattr(self, name), "use a positive length")

    def split_size(self, split: str) -> int:
        return {"train": self.train_size, "val": self.val_size, "test": self.test_size}[split]


# The data layer's sources (lavit/data/sources.py builds them). Defined here, beside
# ShapesWorldConfig, so that every stage's run config can hold a ``data: DataConfig``.
SOURCE_KINDS = ("shapes", "jsonl", "coco_captions", "vqav2", "image_folder", "webdataset", "refcoco")
SHAPES_SPLITS = ("test", "train", "val")  # lavit.data.shapes.SPLITS
REFCOCO_SPLITS = ("train", "val", "testA", "testB", "test")  # lavit.data.refcoco.SPLITS


@dataclass
class SourceConfig:
    """One data source. ``kind: auto`` infers the kind from ``path`` (see :func:`resolve_kind`)."""

    kind: str = "auto"  # one of SOURCE_KINDS, or auto
    path: str | None = None  # jsonl file / COCO or VQAv2 annotations JSON / image folder / shards / refcoco folder
    image_root: str | None = None  # folder the annotation's image paths are relative to
    questions: str | None = None  # vqav2: the questions JSON (path: the annotations, or none)
    split: str = "train"  # shapes: train/val/test; refcoco: train/val/testA/testB/test
    weight: float = 1.0  # share in a mixture, proportional; 0 leaves the source out
    limit: int | None = None  # map-style sources: only the first N items

    def __post_init__(self) -> None:
        check(self.kind in (*SOURCE_KINDS, "auto"), "kind", self.kind, f"use one of {', '.join(SOURCE_KINDS)} or auto")
        check(self.weight >= 0, "weight", self.weight, "mixture weights are >= 0 (0 leaves the source out)")
        check(self.limit is None or self.limit >= 1, "limit", self.limit, "use a positive item count, or null for all")
        splits = REFCOCO_SPLITS if self.kind == "refcoco" else SHAPES_SPLITS
        check(self.split in splits, "split", self.split, f"use one of {list(splits)} (kind {self.kind})")
        needs_root = self.kind == "refcoco"
        check(not needs_root or bool(self.image_root), "image_root", self.image_root, "refcoco needs the COCO images")
        needs_path = self.kind not in ("shapes", "vqav2")
        check(not needs_path or bool(self.path), "path", self.path, f"kind {self.kind} needs a path")
        check(
            self.kind != "vqav2" or bool(self.questions), "questions", self.questions, "vqav2 needs the questions JSON"
        )


@dataclass
class DataConfig:
    """Training and validation sources, and how streams are read. ``shapes`` is the one
    ShapesWorld every ``kind: shapes`` source draws its split from (``data.shapes.resolution=32``)."""

    train: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(kind="shapes", split="train")])
    val: list[SourceConfig] = field(default_factory=lambda: [SourceConfig(kind="shapes", split="val")])
    shuffle_buffer: int = 1000  # raw samples held per reader when shuffling shards
    max_bad_fraction: float = 0.01  # share of undecodable samples past which a run stops
    seed: int = 0
    shapes: ShapesWorldConfig = field(default_factory=ShapesWorldConfig)

    def __post_init__(self) -> None:
        check(len(self.train) > 0, "data.train", self.train, "name at least one source")
        check(self.shuffle_buffer >= 1, "data.shuffle_buffer", self.shuffle_buffer, "use 1 (no shuffle) or more")
        check(0 <= self.max_bad_fraction <= 1, "data.max_bad_fraction", self.max_bad_fraction, "use a share in [0, 1]")
        for name, sources in (("data.train", self.train), ("data.val", self.val)):
            weights = [s.weight for s in sources]
            check(not sources or sum(weights) > 0, f"{name}[*].weight", weights, "give one source a weight > 0")


@dataclass
class EncoderConfig:
    """The frozen (or trainable) timm ViT whose last-block features the tokenizer reads."""

    name: str = "vit_tiny_patch16_224"  # any timm ViT / EVA by name
    image_size: int = 64
    patch_size: int = 8
    # Architecture overrides passed to timm.create_model (None keeps the named model's value).
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None  # EVA-CLIP ViT-g: 4.3637 (6144 / 1408), not 4
    # timm's pooling; "token" gives EVA-CLIP's final norm on every token (`norm`, unused here as
    # features are read before it) instead of the pooled `fc_norm`. None keeps the model's.
    global_pool: str | None = None
    weights: str | None = None  # local .safetensors file; None = random initialisation
    frozen: bool = True
    mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])

    def __post_init__(self) -> None:
        check(
            self.image_size % self.patch_size == 0,
            "encoder.image_size",
            self.image_size,
            f"must be a multiple of encoder.patch_size={self.patch_size}",
        )
        check(
            len(self.mean) == 3 and len(self.std) == 3, "encoder.mean/std", (self.mean, self.std), "give 3 values each"
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class SelectorConfig:
    """LaVIT's token selector: keep/drop per patch from local + pooled-global features."""

    target_keep: float = 0.5  # the kept fraction the keep-ratio loss holds
    keep_loss_weight: float = 2.0
    tau: float = 1.0  # Gumbel-softmax temperature (training)
    gumbel_noise: bool = True  # False: deterministic straight-through threshold in training too
    # Inference rule: "threshold" (margin above a threshold calibrated on training images;
    # variable length), "topk" (the round(target_keep * N) best patches per image), both
    # deterministic, or "sample" (LaVIT: a hard Gumbel-softmax draw on every call).
    inference: str = "threshold"
    # > 0 adds a cross-entropy teaching the selector to keep the round(target_keep * N) patches
    # that differ most from the image's median colour (the content of a mostly-background image).
    saliency_weight: float = 0.0

    def __post_init__(self) -> None:
        check(0.0 < self.target_keep <= 1.0, "selector.target_keep", self.target_keep, "use a fraction in (0, 1]")
        check(
            self.inference in ("threshold", "topk", "sample"),
            "selector.inference",
            self.inference,
            "use threshold, topk or sample",
        )


@dataclass
class QuantizerConfig:
    """EMA codebook (vector_quantize_pytorch.VectorQuantize), cosine or L2 lookup."""

    codebook_size: int = 512
    codebook_dim: int = 32
    decay: float = 0.99  # EMA decay of the codebook
    kmeans_init: bool = True
    kmeans_iters: int = 10
    threshold_ema_dead_code: float = 2.0  # replace codes whose EMA usage falls below this
    commitment_weight: float = 0.25
    # Nearest code of the l2-normalised projection: "cosine" (to the normalised codes) or "l2"
    # (LaVIT: Euclidean distance to the raw codes; the same only when every code has unit norm).
    lookup: str = "cosine"

    def __post_init__(self) -> None:
        check(self.lookup in ("cosine", "l2"), "quantizer.lookup", self.lookup, "use cosine or l2")


@dataclass
class TokenizerConfig:
    """DynamicVisualTokenizer: encoder -> selector -> merger -> quantizer -> feature decoder."""

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    width: int = 192  # merger / decoder width (the encoder's features are projected to it)
    heads: int = 3
    merger_depth: int = 2  # LaVIT: 12
    # "null_key": masked attention with a learned null key in the cross-attention and a norm of
    # the context per block. "lavit": LaVIT's merger (no null key, one `ln_vision` norm of the
    # context, its epsilon-smoothed masked softmax; see tokenizer/merger.py).
    merger: str = "null_key"
    # Between the merger and the codebook: "linear" (to_code / from_code Linear layers) or
    # "lavit" (LaVIT's encode_task_layer Linear-Tanh-Linear; code embeddings are the raw
    # codebook vectors, codebook_dim wide).
    code_projection: str = "linear"
    # A second merger of the same kind whose outputs are the continuous features understanding
    # reads (encode_features), trained with the LLM, as LaVIT's language_model/visual_weight.bin;
    # False: encode_features returns the (only) merger's outputs.
    understanding_merger: bool = False
    decoder_depth: int = 2  # 0: no feature decoder (an encode-only tokenizer, e.g. converted LaVIT)
    mlp_ratio: float = 4.0
    pixel_loss_weight: float = 0.0  # > 0 adds a pixel reconstruction head (from-scratch option)
    # Pixel-loss weight map 1 + s * |pixel - the image's median colour|: on mostly-background
    # images plain MSE lets the codes ignore small objects; this makes them count.
    pixel_saliency: float = 0.0
    position_embedding: bool = False  # learned per-patch position added before the selector
    # > 0: the frozen read-out the encoder was pretrained through (tokenizer.encoder.PatchReadout,
    # `lavit train encoder` writes it as readout.safetensors) must read the same per-patch labels
    # from the rebuilt features as from the originals (KL). Cosine alone spends the codes on
    # whatever varies most in the features; this makes them keep what the features *say*.
    semantic_loss_weight: float = 0.0
    readout_weights: str | None = None  # local readout.safetensors (None: loaded with the tokenizer)
    readout_classes: list[int] = field(default_factory=list)  # classes of each read-out head
    attention_backend: str = "sdpa"  # or "xformers" (CUDA, optional extra)

    def __post_init__(self) -> None:
        check(self.width % self.heads == 0, "width", self.width, f"must be divisible by heads={self.heads}")
        check(
            self.semantic_loss_weight <= 0 or len(self.readout_classes) > 0,
            "readout_classes",
            self.readout_classes,
            "semantic_loss_weight > 0 needs the read-out's class counts (ShapesWorld's encoder: [7, 6, 3])",
        )
        check(
            self.attention_backend in ("sdpa", "xformers"),
            "attention_backend",
            self.attention_backend,
            "use 'sdpa' or 'xformers'",
        )
        check(self.merger in ("null_key", "lavit"), "merger", self.merger, "use null_key or lavit")
        check(
            self.code_projection in ("linear", "lavit"),
            "code_projection",
            self.code_projection,
            "use linear or lavit",
        )
        check(
            self.code_projection == "linear" or self.decoder_depth == 0,
            "decoder_depth",
            self.decoder_depth,
            "code_projection=lavit has no training decoder for its codebook_dim-wide codes: set decoder_depth=0",
        )


@dataclass
class LMConfig:
    """UnifiedLM (lavit/model.py): a Hugging Face causal LM whose vocabulary is extended by the
    visual tokenizer's codes (lavit/vocab.py)."""

    # A local HF model directory (config, safetensors weights, tokenizer) for real-scale use;
    # None builds a fresh model from the fields below (from-scratch presets).
    pretrained_path: str | None = None
    model_type: str = "llama"  # transformers model type of from-scratch presets
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 704
    max_position_embeddings: int = 256
    rope_theta: float = 10000.0
    tie_embeddings: bool = True
    text_vocab_size: int = 512  # T of the from-scratch BPE (ignored with pretrained_path)
    num_codes: int = 512  # K: must equal the visual tokenizer's codebook size
    num_locations: int = 0
    understanding_input: str = "discrete"  # or "continuous" (tokenizer features, as LaVIT)
    feature_dim: int = 128  # tokenizer width: input size of the continuous projection
    attn_implementation: str = "sdpa"
    # Whether sequences start with the text tokenizer's BOS. LaVIT's LLM reads none: its
    # sequences start at <img> (understanding) or the prompt (generation).
    add_bos: bool = True
    # How images inside a generation prompt (multimodal synthesis) are read: "understanding" (as
    # understanding_input says) or "discrete" (their codes, as LaVIT's multimodal synthesis
    # does even though its understanding reads continuous features).
    synthesis_input: str = "understanding"
    # VW-LMM's visual words (continuous input only; docs/design.md section 5): the weight of the
    # KL loss from the LM's prediction at each image position to the visual word (a distribution
    # over text ids) of the projected feature there, 0 = off (VW-LMM: 1); and whether the LM
    # reads pseudo image features (the text embeddings averaged under each visual word) instead.
    visual_words_weight: float = 0.0
    pseudo_image_features: bool = False

    def __post_init__(self) -> None:
        check(
            self.understanding_input in ("discrete", "continuous"),
            "understanding_input",
            self.understanding_input,
            "use 'discrete' or 'continuous'",
        )
        check(
            self.hidden_size % self.num_heads == 0,
            "hidden_size",
            self.hidden_size,
            f"must be divisible by num_heads={self.num_heads}",
        )
        weight = self.visual_words_weight
        check(math.isfinite(weight) and weight >= 0, "visual_words_weight", weight, "use 0 (off) or a positive weight")
        continuous = self.understanding_input == "continuous"
        for key, on in (("visual_words_weight", weight > 0), ("pseudo_image_features", self.pseudo_image_features)):
            check(not on or continuous, key, getattr(self, key), "visual words need lm.understanding_input=continuous")
        check(
            self.synthesis_input in ("understanding", "discrete"),
            "synthesis_input",
            self.synthesis_input,
            "use 'understanding' or 'discrete'",
        )

    @property
    def prompt_images_as_features(self) -> bool:
        """Whether images in a generation prompt enter as continuous features (else as codes)."""
        return self.understanding_input == "continuous" and self.synthesis_input == "understanding"


KV_CACHE_MODES = ("auto", "dynamic", "static", "graph")


@dataclass
class ImageSamplingConfig:
    """Image-token generation (lavit/generate.py). Defaults are LaVIT's."""

    guidance_scale: float = 4.0  # LaVIT's guidance_scale_for_llm; 1.0 disables CFG
    top_k: int = 50  # 0 disables
    top_p: float = 1.0  # 1.0 disables
    temperature: float = 1.0
    min_tokens: int = 20  # </img> is forbidden before this many codes (LaVIT: 20)
    max_tokens: int = 200  # LaVIT: 200
    # KV cache of the decode loop (lavit/decoding.py): "auto" = a static cache whose decode step
    # is captured as a CUDA graph on a GPU, the growing "dynamic" one elsewhere; or "dynamic",
    # "static" (preallocated, no graph), "graph".
    kv_cache: str = "auto"

    def __post_init__(self) -> None:
        check(
            1 <= self.min_tokens <= self.max_tokens,
            "min_tokens/max_tokens",
            (self.min_tokens, self.max_tokens),
            "need 1 <= min_tokens <= max_tokens",
        )
        check_sampling(self)
        check(self.kv_cache in KV_CACHE_MODES, "kv_cache", self.kv_cache, f"use one of {KV_CACHE_MODES}")


@dataclass
class TextDecodingConfig:
    """Text generation (captions, answers). LaVIT: captions with 2 beams and 36 new tokens,
    VQA with 5 beams and 10."""

    num_beams: int = 1  # 1 = greedy
    max_new_tokens: int = 36
    min_new_tokens: int = 0  # </s> is forbidden before this many new tokens (LaVIT: 8 captions, 2 VQA)
    length_penalty: float = 1.0  # beam score = sum log p / length ** length_penalty
    stop_strings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check(self.num_beams >= 1, "num_beams", self.num_beams, "use 1 (greedy) or more beams")
        check(self.max_new_tokens >= 1, "max_new_tokens", self.max_new_tokens, "use a positive count")
        check(
            0 <= self.min_new_tokens <= self.max_new_tokens,
            "min_new_tokens",
            self.min_new_tokens,
            f"use 0 to max_new_tokens ({self.max_new_tokens})",
        )
        check(math.isfinite(self.length_penalty), "length_penalty", self.length_penalty, "use a finite value")


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping


@dataclass
class TrainConfig:
    """The shared trainer (lavit/train/trainer.py); identical for every stage."""

    out_dir: str = "runs/default"
    steps: int = 1000
    batch_size: int = 32  # global batch per optimizer step, over all ranks and micro-steps
    grad_accum: int = 1  # micro-steps per optimizer step
    seed: int = 0
    precision: str = "auto"  # "auto" (bf16 autocast where supported), "bf16" or "fp32"
    parallel: str = "ddp"  # "ddp" or "fsdp" (FSDP2 fully_shard of the task's shard units)
    grad_checkpointing: bool = False
    num_workers: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0: only at the end
    ckpt_every: int = 200
    keep_checkpoints: int = 2
    # > 0 (e.g. 0.999): an exponential moving average of the parameters, decay ramped as
    # min(ema_decay, (1 + step) / (10 + step)); evaluations and the saved model use it (buffers,
    # such as a codebook's EMA, stay live). Checkpoints carry it, so a resumed run keeps it exactly.
    ema_decay: float = 0.0
    # > 0: a wall-clock budget for this invocation, checked at each logged step (log_every). At the
    # first one past it the run checkpoints, evaluates and saves model/ as at its end, with the LR
    # schedule still that of ``steps``; running the same command again resumes towards ``steps``.
    max_minutes: float = 0.0
    progress: bool = True  # tqdm bar on rank 0
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self) -> None:
        check(self.steps >= 1, "train.steps", self.steps, "use at least 1 step")
        check(
            self.batch_size >= 1 and self.grad_accum >= 1,
            "train.batch_size/grad_accum",
            (self.batch_size, self.grad_accum),
            "use positive values",
        )
        check(self.precision in ("auto", "bf16", "fp32"), "train.precision", self.precision, "use auto, bf16 or fp32")
        check(self.parallel in ("ddp", "fsdp"), "train.parallel", self.parallel, "use ddp or fsdp")
        check(0.0 <= self.ema_decay < 1.0, "train.ema_decay", self.ema_decay, "use 0 (off) or a decay in (0, 1)")
        check(self.max_minutes >= 0.0, "train.max_minutes", self.max_minutes, "use 0 (no limit) or a positive budget")
        for key in ("log_every", "ckpt_every"):
            value = getattr(self, key)
            check(value >= 1, f"train.{key}", value, "use a positive step count")
        check(self.eval_every >= 0, "train.eval_every", self.eval_every, "use 0 (only at the end) or a step count")
        check(self.num_workers >= 0, "train.num_workers", self.num_workers, "use 0 (load in the main process) or more")
        check(self.keep_checkpoints >= 0, "train.keep_checkpoints", self.keep_checkpoints, "use 0 (keep all) or more")


@dataclass
class TokenizerRunConfig:
    """``lavit train tokenizer``: model, data and trainer settings."""

    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vq_start_step: int = 200  # two phases (LaVIT): selector + merger without VQ, then VQ on
    eval_images: int = 500  # held-out (val) images for codebook usage / kept fraction / cosine
    calibration_images: int = 256  # train images for the target feature statistics


@dataclass
class EncoderRunConfig:
    """``lavit train encoder``: pretrain the tokenizer's ViT on ShapesWorld patch labels (the
    from-scratch stand-in for LaVIT's EVA-CLIP, whose job is to make features semantic)."""

    model: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_images: int = 500  # held-out (val) images for the per-patch label accuracy


CAPTION_PROMPT = "A short description of the image:"
VQA_PROMPT = "Question: {} Answer:"  # LaVIT's
GROUNDING_PROMPT = "Where is {}?"  # {}: a referring expression; answered by a box
REGION_PROMPT = "What is at {}?"  # {}: a box (four location tokens); answered by a phrase
GROUNDED_CAPTION_PROMPT = "A short description of the image, with boxes:"
LMTASKS = ("caption", "vqa", "t2i", "synthesis", "grounding", "region", "grounded_caption", "marked_vqa")


@dataclass
class LMMixtureConfig:
    """The LM's training mixture: one objective, tasks drawn per sample, per-task loss weights."""

    caption_prob: float = 0.3
    vqa_prob: float = 0.35
    t2i_prob: float = 0.35
    # Multimodal synthesis (off by default): a train scene is the answer to a prompt made of its
    # parts, image + text ("a red circle", the shape left out of the image) or image + image (its
    # shapes split between two images), in the form `pipe.synthesize` gives the LM.
    synthesis_prob: float = 0.0
    # Grounding (off by default; needs lm.num_locations > 0 and a source with regions:
    # ShapesWorld, RefCOCO, JSONL ``regions``): a referring expression -> its box, a box -> what
    # is there, and (ShapesWorld) a caption with a box after each shape it names.
    grounding_prob: float = 0.0
    region_prob: float = 0.0
    grounded_caption_prob: float = 0.0
    # Visual prompts (ViP-LLaVA; off by default): a question about a region that refers to it
    # only through a mark drawn on the image ("what colour is the shape in the red ellipse?").
    marked_vqa_prob: float = 0.0
    caption_weight: float = 1.0
    vqa_weight: float = 1.0
    t2i_weight: float = 1.0
    synthesis_weight: float = 1.0
    grounding_weight: float = 1.0
    region_weight: float = 1.0
    grounded_caption_weight: float = 1.0
    marked_vqa_weight: float = 1.0
    cfg_drop_prob: float = 0.1  # text-to-image samples whose prompt is dropped (CFG)
    caption_prompt: str = CAPTION_PROMPT
    vqa_prompt: str = VQA_PROMPT
    grounding_prompt: str = GROUNDING_PROMPT
    region_prompt: str = REGION_PROMPT
    grounded_caption_prompt: str = GROUNDED_CAPTION_PROMPT

    def __post_init__(self) -> None:
        probs = {f"mixture.{t}_prob": getattr(self, f"{t}_prob") for t in LMTASKS}
        for key, p in probs.items():
            check(p >= 0, key, p, "task probabilities are >= 0 (they are normalised to sum to 1)")
        check(sum(probs.values()) > 0, "mixture", probs, "give at least one task a probability > 0")
        for key in ("vqa_prompt", "grounding_prompt", "region_prompt"):
            value = getattr(self, key)
            check(fills_once(value), f"mixture.{key}", value, "put one {} where the question, phrase or box goes")

    def probs(self) -> list[float]:
        """The task probabilities in LMTASKS order."""
        return [getattr(self, f"{t}_prob") for t in LMTASKS]

    @property
    def needs_locations(self) -> bool:
        return self.grounding_prob + self.region_prob + self.grounded_caption_prob > 0


@dataclass
class LMRunConfig:
    """``lavit train lm``: the unified LM on codes from a frozen, trained visual tokenizer."""

    lm: LMConfig = field(default_factory=LMConfig)
    tokenizer_dir: str = "runs/tokenizer_tiny/model"  # a trained tokenizer (lavit train tokenizer)
    data: DataConfig = field(default_factory=DataConfig)  # train: what it learns on; val: evaluation
    train: TrainConfig = field(default_factory=TrainConfig)
    mixture: LMMixtureConfig = field(default_factory=LMMixtureConfig)
    num_scenes: int | None = 20_000  # items of each map-style train source (the first ones; null: all);
    # a stream source gives one epoch. Their codes are extracted once and cached
    codes_cache: str | None = None  # cache folder; default: <train.out_dir>/codes (lavit/train/codes_cache.py)
    # A saved LM (a `lavit train lm` run's model/, or a pipeline's lm/) whose weights start this
    # run, to train the shipped LM on (e.g. with another mixture). Its text tokenizer is copied
    # into the run; ``lm`` must describe the same model (its pretrained_path is provenance only).
    init_from: str | None = None
    eval_scenes: int = 200  # items of data.val evaluated (the first ones)
    caption_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(max_new_tokens=36))
    vqa_decoding: TextDecodingConfig = field(default_factory=lambda: TextDecodingConfig(max_new_tokens=10))

    def __post_init__(self) -> None:
        check(
            not self.mixture.needs_locations or self.lm.num_locations > 0,
            "lm.num_locations",
            self.lm.num_locations,
            "the grounding tasks write boxes as location tokens: set lm.num_locations (e.g. 32)",
        )


__all__ = [
    "CAPTION_PROMPT",
    "GROUNDED_CAPTION_PROMPT",
    "GROUNDING_PROMPT",
    "LMTASKS",
    "REGION_PROMPT",
    "DataConfig",
    "EncoderConfig",
    "EncoderRunConfig",
    "ImageSamplingConfig",
    "KV_CACHE_MODES",
    "LMConfig",
    "LMMixtureConfig",
    "LMRunConfig",
    "OptimConfig",
    "QuantizerConfig",
    "REFCOCO_SPLITS",
    "SHAPES_SPLITS",
    "SOURCE_KINDS",
    "SelectorConfig",
    "ShapesWorldConfig",
    "SourceConfig",
    "TextDecodingConfig",
    "TokenizerConfig",
    "TokenizerRunConfig",
    "TrainConfig",
    "VQA_PROMPT",
]
