"""Evaluation metrics: official VQA accuracy (VQAv2 / OK-VQA / VizWiz), GQA exact match, the COCO
caption metrics (BLEU, METEOR, ROUGE-L, CIDEr) computed by pycocoevalcap, FID (torchmetrics, local
Inception weights) and CLIP score (a local CLIP).

pycocoevalcap, torchmetrics and transformers (the ``.[eval]`` extra) are imported only when a
metric that needs them is computed.
"""

from lavit.metrics.caption import caption_scores, python_tokenize, tokenize_captions
from lavit.metrics.image import ClipScorer, clip_score, compute_fid, fid_metric
from lavit.metrics.vqa import exact_match, normalize_answer, vqa_accuracy, vqa_scores

__all__ = [
    "ClipScorer",
    "caption_scores",
    "clip_score",
    "compute_fid",
    "exact_match",
    "fid_metric",
    "normalize_answer",
    "python_tokenize",
    "tokenize_captions",
    "vqa_accuracy",
    "vqa_scores",
]
