"""Configs of the zero-shot evaluation scripts (``eval/<task>.py --config ... [a.b=c ...]``).

One :class:`EvalConfig` per run: which task, which model, which data set (format + local paths)
and how to decode. Prompts and decoding settings left at ``None`` take the pipeline's own,
which default to LaVIT's (DESIGN.md section 5): captions with 2 beams and up to 36 new tokens,
VQA as "Question: {} Answer:" with 5 beams and up to 10.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from detokenizer.diffusion.config import DiffusionSamplingConfig
from detokenizer.var.config import VARSamplingConfig
from lavit.config import ConfigError, ShapesWorldConfig, TextDecodingConfig, check

TASKS = ("caption", "vqa", "text2image", "reconstruct")
DECODER_SAMPLING = {"diffusion": DiffusionSamplingConfig, "var": VARSamplingConfig}

# Which data formats each task reads (lavit/evaluation/sets.py builds them).
FORMATS = {
    "caption": ("shapes", "coco_karpathy", "flickr30k", "nocaps", "coco"),
    "vqa": ("shapes", "vqav2", "okvqa", "vizwiz", "gqa"),
    "text2image": ("shapes", "coco_prompts"),
    "reconstruct": ("shapes", "image_folder"),
}


@dataclass
class EvalDataConfig:
    """The evaluation set: a format and its local files.

    ``annotations`` is the annotation file of every format (VQAv2 / OK-VQA: the answers file,
    with ``questions`` the questions file); ``image_root`` the folder its images live in.
    ShapesWorld needs no files: its held-out scenes are rendered from ``shapes``.
    """

    format: str = "shapes"
    split: str = "val"  # ShapesWorld split, or the Karpathy split ("test") for coco_karpathy/flickr30k
    annotations: str | None = None
    questions: str | None = None
    image_root: str | None = None
    limit: int | None = None  # evaluate the first N items only
    shapes: ShapesWorldConfig = field(default_factory=ShapesWorldConfig)

    def __post_init__(self) -> None:
        check(self.limit is None or self.limit >= 1, "data.limit", self.limit, "use a positive count or null")


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
        """``sampling`` (the pipeline's settings for ``decoder``) with ``decoder_sampling`` applied."""
        known = {f.name for f in dataclasses.fields(sampling)}
        unknown = sorted(set(self.decoder_sampling) - known)
        if unknown:
            raise ConfigError(
                f"decoder_sampling.{unknown[0]}: the {self.decoder} decoder has no such sampling setting; "
                f"use one of {', '.join(sorted(known))}"
            )
        try:
            return dataclasses.replace(sampling, **self.decoder_sampling)
        except (ConfigError, TypeError) as e:  # the sampling config's own validation
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
        check(self.decoder in DECODER_SAMPLING, "decoder", self.decoder, "use diffusion or var")
        check(self.candidates is None or self.candidates >= 1, "candidates", self.candidates, "use null, 1 or more")
        self.sampling_overrides(DECODER_SAMPLING[self.decoder]())  # unknown or bad settings fail here
        check(
            self.model is not None or self.tokenizer is not None,
            "model",
            self.model,
            "give a pipeline directory (model=DIR) or the stage folders (tokenizer=DIR lm=DIR ...)",
        )
