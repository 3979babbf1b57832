"""The zero-shot tasks: what each predicts per item and how its predictions are scored
(grounding and visual prompts: lavit/evaluation/grounding.py).

Every score is a percentage except PSNR (dB), FID and the counts. An item whose image cannot be
read gets ``{"key", "error"}`` instead of a prediction: the runner keeps it out of the
predictions (a rerun tries it again), and the report counts it under ``missing`` beside the
``scored`` items the metrics cover; the run goes on.

- caption: BLEU-4, METEOR (with Java), ROUGE-L, CIDEr (lavit/metrics/caption.py); ShapesWorld
  adds attribute accuracy (every shape's colour and kind named, counts included).
- vqa: the official VQAv2 accuracy (also OK-VQA, VizWiz, ShapesWorld) or GQA exact match.
- text2image: ShapesWorld scene accuracy (the image shows what its prompt says: every shape's
  colour, kind, size and count, the stated relation and the stated cells, judged by the parser),
  attribute accuracy (colours, kinds and counts only) and layout accuracy (the judge
  used until 2026-11-24: every pair of shapes as in the prompt's source scene); FID and CLIP
  score when their local weights are given. ``candidates`` > 1 scores the best of N per prompt (LaVITPipeline.generate).
- reconstruct: PSNR against the input at the decoder's resolution; ShapesWorld scenes kept
  (colours and kinds) and recovered (everything); FID when its weights are given.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from lavit.data.image_io import ImageLoadError, load_image
from lavit.data.shapes import text as shapes_text
from lavit.data.shapes.parser import (
    attributes_kept,
    layout_matches,
    parse_scene,
    prompt_satisfied,
    scene_recovered,
)
from lavit.data.transforms import to_tensor
from lavit.evaluation.config import EvalConfig
from lavit.evaluation.sets import Item, build_items
from lavit.metrics.caption import caption_scores
from lavit.metrics.vqa import vqa_scores

IMAGES = "images"


class _Task:
    """Items plus the pieces every task shares (keys, batch image loading, shared metrics)."""

    def __init__(self, cfg: EvalConfig, items: list[Item] | None = None) -> None:
        self.cfg = cfg
        self.items = build_items(cfg.task, cfg.data) if items is None else items
        self.by_key = {it.key: it for it in self.items}
        self.out = Path(cfg.out_dir)
        self._check_metric_files()

    def _check_metric_files(self) -> None:
        """The image metrics' local files, checked before the first prediction, not after the last."""
        from lavit.metrics.image import check_clip_dir, check_fid_weights

        m = self.cfg.metrics
        if self.cfg.task in ("text2image", "reconstruct") and m.fid_weights is not None:
            check_fid_weights(m.fid_weights)
        if self.cfg.task == "text2image" and m.clip_model is not None:
            check_clip_dir(m.clip_model)

    def keys(self) -> list[str]:
        return [it.key for it in self.items]

    def _load(self, indices: list[int]) -> tuple[list[int], list[Image.Image], list[dict]]:
        """(indices whose image loaded, their images, ``{"key", "error"}`` for the others)."""
        ok, images, errors = [], [], []
        for i in indices:
            try:
                images.append(self.items[i].image())
                ok.append(i)
            except ImageLoadError as e:
                errors.append({"key": self.items[i].key, "error": " ".join(str(e).split())})
        return ok, images, errors

    def _sampling(self, pipe, reconstruction: bool = False):
        """The pipeline's sampling settings for the decoder, with the config's overrides."""
        return self.cfg.sampling_overrides(pipe.cfg.sampling_for(self.cfg.decoder, reconstruction))

    def _image_path(self, key: str) -> Path:
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", key)
        if name != key:  # "a/b" and "a_b" must not share a file
            name += "-" + hashlib.sha256(key.encode()).hexdigest()[:8]
        return Path(IMAGES) / (name + ".png")

    def _save(self, key: str, image: Image.Image) -> str | None:
        if not self.cfg.save_images:
            return None
        rel = self._image_path(key)
        (self.out / rel).parent.mkdir(parents=True, exist_ok=True)
        image.save(self.out / rel)
        return str(rel)

    def _fid(self, pairs: list[tuple[Image.Image, Image.Image]]) -> dict[str, float]:
        """FID between real and generated images (skipped without local Inception weights)."""
        if self.cfg.metrics.fid_weights is None or not pairs:
            return {}
        from lavit.metrics.image import compute_fid, fid_metric

        side = pairs[0][1].size[0]

        def batches(which: int, n: int = 64):
            for s in range(0, len(pairs), n):
                yield torch.stack([to_tensor(p[which], side) for p in pairs[s : s + n]])

        metric = fid_metric(self.cfg.metrics.fid_weights).to("cuda" if torch.cuda.is_available() else "cpu")
        return {"fid": compute_fid(batches(0), batches(1), metric)}


def _percent(hits: int, n: int) -> float:
    return 100.0 * hits / n if n else float("nan")


class CaptionTask(_Task):
    def predict(self, pipe, indices: list[int], seed: int) -> list[dict]:
        ok, images, records = self._load(indices)
        if images:
            caps = pipe.caption(images, prompt=self.cfg.prompt, decoding=self.cfg.decoding)
            records += [{"key": self.items[i].key, "caption": c} for i, c in zip(ok, caps, strict=True)]
        return records

    def score(self, records: list[dict]) -> dict[str, Any]:
        preds = {r["key"]: r["caption"] for r in records}
        refs = {k: self.by_key[k].captions for k in preds}
        m = self.cfg.metrics
        scores = caption_scores(preds, refs, m.caption_metrics, tokenizer=m.caption_tokenizer) if preds else {}
        out: dict[str, Any] = {k: 100.0 * v for k, v in scores.items()}
        scenes = [
            (self.by_key[r["key"]].scene, r["caption"]) for r in records if self.by_key[r["key"]].scene is not None
        ]
        if scenes:
            hits = sum(shapes_text.caption_names_scene(sc, c) for sc, c in scenes)
            out["attribute_accuracy"] = _percent(hits, len(scenes))
        return out


class VQATask(_Task):
    def predict(self, pipe, indices: list[int], seed: int) -> list[dict]:
        ok, images, records = self._load(indices)
        if images:
            questions = [self.items[i].question for i in ok]
            got = pipe.answer(images, questions, template=self.cfg.prompt, decoding=self.cfg.decoding)
            records += [{"key": self.items[i].key, "answer": a} for i, a in zip(ok, got, strict=True)]
        return records

    def score(self, records: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        preds = {r["key"]: r["answer"] for r in records}
        refs = {k: self.by_key[k].answers for k in preds}
        if preds and not any(refs.values()):
            # No answers (VQAv2 test-dev): write the evaluation server's results file instead.
            results = [{"question_id": _question_id(k), "answer": a} for k, a in preds.items()]
            (self.out / "results.json").write_text(json.dumps(results))
            return {"unscored": len(preds), "results_file": str(self.out / "results.json")}
        metric = {"gqa": "exact_match", "jsonl": "accepted"}.get(self.cfg.data.format, "vqa")
        if preds:
            out[f"{metric}_accuracy"] = vqa_scores(preds, refs, metric=metric)["accuracy"]
        return out


def _question_id(key: str) -> int | str:
    return int(key) if key.isdigit() else key


class Text2ImageTask(_Task):
    def predict(self, pipe, indices: list[int], seed: int) -> list[dict]:
        items = [self.items[i] for i in indices]
        # generate_image, keeping the codes for re-rendering (and with candidates, which was kept).
        gen = pipe.generate(
            [it.prompt for it in items],
            candidates=self.cfg.candidates,
            guidance_scale_for_llm=self.cfg.guidance_scale_for_llm,
            decoder=self.cfg.decoder,
            seed=seed,
            decoder_sampling=self._sampling(pipe),
        )
        drawn = pipe.cfg.image_candidates if self.cfg.candidates is None else self.cfg.candidates
        records = []
        for j, (it, c, image) in enumerate(zip(items, gen.codes, gen.images, strict=True)):
            record: dict[str, Any] = {
                "key": it.key,
                "prompt": it.prompt,
                "codes": c.tolist(),
                "image": self._save(it.key, image),
                "candidates": drawn,
                "candidate": gen.candidate[j],
            }
            if it.scene is not None:
                parsed = parse_scene(image)
                record["scene_ok"] = prompt_satisfied(it.scene, parsed)
                record["attributes_ok"] = attributes_kept(it.scene, parsed)
                record["layout_ok"] = layout_matches(it.scene, parsed)
            records.append(record)
        return records

    def score(self, records: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"decoder": self.cfg.decoder}
        drawn = sorted({r.get("candidates", 1) for r in records})
        if drawn:
            out["candidates"] = drawn[0] if len(drawn) == 1 else drawn
        judged = [r for r in records if "scene_ok" in r]
        if judged:
            out["scene_accuracy"] = _percent(sum(r["scene_ok"] for r in judged), len(judged))
            out["attribute_accuracy"] = _percent(sum(r["attributes_ok"] for r in judged), len(judged))
            laid = [r for r in judged if "layout_ok" in r]  # absent from runs before 2026-11-24
            if laid:
                out["layout_accuracy"] = _percent(sum(r["layout_ok"] for r in laid), len(laid))
        saved = [r for r in records if r["image"] is not None]
        if self.cfg.metrics.fid_weights is not None or self.cfg.metrics.clip_model is not None:
            if len(saved) < len(records):
                raise ValueError("FID and CLIP score read the generated images: rerun with save_images=true")
            fakes = [load_image(self.out / r["image"]) for r in records]
            refs = [self.by_key[r["key"]].reference for r in records]
            if all(ref is not None for ref in refs):
                out.update(self._fid([(ref(), f) for ref, f in zip(refs, fakes, strict=True)]))
            if self.cfg.metrics.clip_model is not None:
                out["clip_score"] = _clip_score(self.cfg.metrics.clip_model, fakes, [r["prompt"] for r in records])
        return out


def _clip_score(model_dir: str, images: list[Image.Image], prompts: list[str], batch: int = 32) -> float:
    from lavit.metrics.image import ClipScorer

    scorer = ClipScorer(model_dir, device="cuda" if torch.cuda.is_available() else "cpu")
    for s in range(0, len(images), batch):
        scorer.update(images[s : s + batch], prompts[s : s + batch])
    return float(scorer.compute())


class ReconstructTask(_Task):
    def predict(self, pipe, indices: list[int], seed: int) -> list[dict]:
        ok, images, records = self._load(indices)
        if not images:
            return records
        recons = pipe.reconstruct(
            images, decoder=self.cfg.decoder, seed=seed, sampling=self._sampling(pipe, reconstruction=True)
        )
        for i, original, recon in zip(ok, images, recons, strict=True):
            it = self.items[i]
            truth = to_tensor(original, recon.size[0])
            mse = float(((to_tensor(recon, recon.size[0]) - truth) ** 2).mean())
            record: dict[str, Any] = {
                "key": it.key,
                "psnr": 10 * math.log10(1 / max(mse, 1e-12)),
                "image": self._save(it.key, recon),
            }
            if it.scene is not None:
                parsed = parse_scene(recon)
                record["kept"] = attributes_kept(it.scene, parsed)
                record["recovered"] = scene_recovered(it.scene, parsed)
            records.append(record)
        return records

    def score(self, records: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {"decoder": self.cfg.decoder}
        if records:
            out["psnr"] = sum(r["psnr"] for r in records) / len(records)
        judged = [r for r in records if "kept" in r]
        if judged:
            out["scene_kept"] = _percent(sum(r["kept"] for r in judged), len(judged))
            out["scene_recovered"] = _percent(sum(r["recovered"] for r in judged), len(judged))
        if self.cfg.metrics.fid_weights is not None:
            if any(r["image"] is None for r in records):
                raise ValueError("FID reads the reconstructions: rerun with save_images=true")
            out.update(self._fid([(self.by_key[r["key"]].image(), load_image(self.out / r["image"])) for r in records]))
        return out


TASK_CLASSES = {"caption": CaptionTask, "vqa": VQATask, "text2image": Text2ImageTask, "reconstruct": ReconstructTask}


def build_task(cfg: EvalConfig) -> _Task:
    """The evaluation task named by ``cfg.task``, over the set named by ``cfg.data``."""
    from lavit.evaluation.grounding import GroundingTask, VisualPromptTask  # they build on _Task

    classes = {**TASK_CLASSES, "grounding": GroundingTask, "visual_prompts": VisualPromptTask}
    return classes[cfg.task](cfg)
