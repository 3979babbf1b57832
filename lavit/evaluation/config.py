"""Configs of the zero-shot evaluation scripts (``eval/<task>.py --config ... [a.b=c ...]``).

One :class:`EvalConfig` per run: which task, which model, which data set (format + local paths)
and how to decode. Prompts and decoding settings left at ``None`` take the pipeline's own,
which default to LaVIT's (docs/design.md §5): captions with 2 beams and up to 36 new tokens,
VQA as "Question: {} Answer:" with 5 beams and up to 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from detokenizer.diffusion.config import DiffusionSamplingConfig
from detokenizer.var.config import VARSamplingConfig
from lavit.config import (
    GUIDANCE_FIX,
    REFCOCO_SPLITS,
    ConfigError,
    ShapesWorldConfig,
    TextDecodingConfig,
    check,
    fills_once,
)
from lavit.data.benchmark_readers import KARPATHY_SPLITS
from lavit.data.shapes import SPLITS as SHAPES_SPLITS
from lavit.metrics.caption import METRICS as CAPTION_METRICS

TASKS = ("caption", "vqa", "text2image", "reconstruct", "grounding", "visual_prompts")
DECODER_SAMPLING = {"diffusion": DiffusionSamplingConfig, "var": VARSamplingConfig}

# Which data formats each task reads (lavit/evaluation/sets.py builds them).
FORMATS = {
    "caption": ("shapes", "coco_karpathy", "flickr30k", "nocaps", "coco", "jsonl"),
    "vqa": ("shapes", "vqav2", "okvqa", "vizwiz", "gqa", "jsonl"),
    "text2image": ("shapes", "coco_prompts"),
    "reconstruct": ("shapes", "image_folder"),
    "grounding": ("shapes", "refcoco"),
    "visual_prompts": ("shapes",),
}


@dataclass
class EvalDataConfig:
    """The evaluation set: a format and its local files.

    ``annotations`` is the annotation file of every format (VQAv2 / OK-VQA: the answers file,
    with ``questions`` the questions file); ``image_root`` the folder its images live in.
    ShapesWorld needs no files: its held-out scenes are rendered from ``shapes``.
    """

    format: str = "shapes"
    split: str = "val"  # ShapesWorld split, the Karpathy split ("test") for coco_karpathy/flickr30k, or RefCOCO's
    annotations: str | None = None
    questions: str | None = None
    image_root: str | None = None
    limit: int | None = None  # evaluate the first N items only
    shapes: ShapesWorldConfig = field(default_factory=ShapesWorldConfig)

    def __post_init__(self) -> None:
        check(self.limit is None or self.limit >= 1, "data.limit", self.limit, "use a positive count or null")
        # The split picks the items of these formats; the other formats read every entry of their files.
        splits = {
            "shapes": tuple(SHAPES_SPLITS),
            "coco_karpathy": KARPATHY_SPLITS,
            "flickr30k": KARPATHY_SPLITS,
            "refcoco": REFCOCO_SPLITS,
        }
        if self.format in splits:
            check(
                self.split in splits[self.format],
                "data.split",
                self.split,
                f"data.format={self.format} has the splits {', '.join(splits[self.format])}",
            )


@dataclass
class EvalMetricsConfig:
    """Local files the image metrics need; a metric whose file is not given is skipped."""

    fid_weights: str | None = None  # torch-fidelity's pt_inception-2015-12-05-6726825d.pth
    clip_model: str | None = None  # a local CLIP directory (CLIPModel + processor)
    caption_tokenizer: str = "auto"  # "auto" (PTB when Java exists), "ptb" or "python"
    caption_metrics: list[str] = field(default_factory=lambda: ["bleu4", "meteor", "rouge_l", "cider"])

    def __post_init__(self) -> None:
        check(
            self.caption_tokenizer in ("auto", "ptb", "python"),
            "metrics.caption_tokenizer",
            self.caption_tokenizer,
            "use auto, ptb or python",
        )
        unknown = [m for m in self.caption_metrics if m not in CAPTION_METRICS]
        check(
            bool(self.caption_metrics) and not unknown,
            "metrics.caption_metrics",
            unknown or self.caption_metrics,
            f"use a list of {', '.join(CAPTION_METRICS)}",
        )


@dataclass
class EvalConfig:
    """One evaluation run. The model is a pipeline directory (``model``) or stage folders.

    Predictions go to ``<out_dir>/predictions/rank<r>.jsonl`` as they are made (a rerun skips
    what is there); rank 0 writes ``report.json`` and ``report.md``.
    """

    task: str = "caption"
    out_dir: str = "outputs/eval"
    model: str | None = None
    tokenizer: str | None = None
    lm: str | None = None
    diffusion: str | None = None
    var: str | None = None
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    metrics: EvalMetricsConfig = field(default_factory=EvalMetricsConfig)
    batch_size: int = 16
    seed: int = 0  # item i is generated with seed + i, whatever the number of processes
    prompt: str | None = None  # caption prompt / VQA template with {}; None: the pipeline's
    decoding: TextDecodingConfig | None = None  # None: the pipeline's (LaVIT's) for the task
    decoder: str = "diffusion"  # text2image / reconstruct: "diffusion" or "var"
    guidance_scale_for_llm: float | None = None  # None: the pipeline's (LaVIT: 4.0)
    candidates: int | None = None  # text2image: best of N by the LM's caption score; None: the pipeline's
    # text2image / reconstruct: the decoder's sampling settings that differ from the pipeline's,
    # e.g. decoder_sampling.guidance_scale=3 decoder_sampling.steps=50 (diffusion) or
    # decoder_sampling.top_k=900 (var); the fields of DiffusionSamplingConfig / VARSamplingConfig.
    decoder_sampling: dict[str, Any] = field(default_factory=dict)
    save_images: bool = True  # text2image / reconstruct: keep every image as a PNG

    def sampling_overrides(self, sampling: DiffusionSamplingConfig | VARSamplingConfig):
        """``sampling`` (the pipeline's settings for ``decoder``) with ``decoder_sampling`` applied,
        each value converted to its field's type (``steps=2.5`` or ``guidance_scale=abc`` fail)."""
        known = sorted(OmegaConf.structured(sampling).keys())
        unknown = sorted(set(self.decoder_sampling) - set(known))
        if unknown:
            raise ConfigError(
                f"decoder_sampling.{unknown[0]}: the {self.decoder} decoder has no such sampling setting; "
                f"use one of {', '.join(known)}"
            )
        try:
            merged = OmegaConf.merge(OmegaConf.structured(sampling), self.decoder_sampling)
            return OmegaConf.to_object(merged)  # the sampling config's own validation runs here
        except OmegaConfBaseException as e:  # a value of the wrong type, named by its key
            key = getattr(e, "key", None) or "?"
            value = self.decoder_sampling.get(key)
            reason = str(getattr(e, "msg", e)).splitlines()[0]
            raise ConfigError(f"invalid value {value!r} for 'decoder_sampling.{key}': {reason}") from None
        except ConfigError as e:
            raise ConfigError(f"decoder_sampling: {e}") from None

    def __post_init__(self) -> None:
        check(self.task in TASKS, "task", self.task, f"use one of {', '.join(TASKS)}")
        check(
            self.data.format in FORMATS[self.task],
            "data.format",
            self.data.format,
            f"the {self.task} task reads {', '.join(FORMATS[self.task])}",
        )
        check(self.batch_size >= 1, "batch_size", self.batch_size, "use a positive batch size")
        # Item i is seeded seed + i, which a torch generator takes up to 2**64 - 1.
        check(0 <= self.seed < 2**63, "seed", self.seed, "use a seed in [0, 2**63) (item i is generated with seed + i)")
        check(self.decoder in DECODER_SAMPLING, "decoder", self.decoder, "use diffusion or var")
        check(self.candidates is None or self.candidates >= 1, "candidates", self.candidates, "use null, 1 or more")
        g = self.guidance_scale_for_llm
        check(g is None or math.isfinite(g), "guidance_scale_for_llm", g, GUIDANCE_FIX)
        if self.task == "vqa" and self.prompt is not None:
            fix = 'a VQA template holds {} once, where the question goes, e.g. "Question: {} Answer:"'
            check(fills_once(self.prompt), "prompt", self.prompt, fix)
        self.sampling_overrides(DECODER_SAMPLING[self.decoder]())  # unknown or bad settings fail here
        self._check_model()
        self._check_metrics()

    def _check_model(self) -> None:
        stages = {k: getattr(self, k) for k in ("tokenizer", "lm", "diffusion", "var") if getattr(self, k) is not None}
        check(
            self.model is not None or self.tokenizer is not None,
            "model",
            self.model,
            "give a pipeline directory (model=DIR) or the stage folders (tokenizer=DIR lm=DIR ...)",
        )
        check(
            self.model is None or not stages,
            "model",
            self.model,
            f"give a pipeline directory or stage folders, not both (also given: {', '.join(stages)})",
        )
        if self.model is not None:
            return  # a pipeline directory's stages are checked when it loads
        if self.task != "reconstruct":
            check(self.lm is not None, "lm", self.lm, f"the {self.task} task needs the LM: set lm=DIR")
        if self.task in ("text2image", "reconstruct"):
            check(
                stages.get(self.decoder) is not None,
                self.decoder,
                None,
                f"decoder={self.decoder} needs its stage folder: set {self.decoder}=DIR (or choose the other decoder)",
            )

    def _check_metrics(self) -> None:
        """FID and CLIP score read the saved images: refused now rather than after the last batch."""
        reads = {"text2image": ("fid_weights", "clip_model"), "reconstruct": ("fid_weights",)}.get(self.task, ())
        wanted = [k for k in reads if getattr(self.metrics, k) is not None]
        check(
            self.save_images or not wanted,
            "save_images",
            self.save_images,
            f"metrics.{wanted[0] if wanted else ''} reads the generated images: set save_images=true",
        )
        if self.task == "text2image" and self.data.format == "coco_prompts" and self.metrics.fid_weights is not None:
            # Without the real images FID would be skipped in silence.
            check(
                self.data.image_root is not None,
                "data.image_root",
                None,
                "metrics.fid_weights compares with the real COCO images: set data.image_root to their folder",
            )
