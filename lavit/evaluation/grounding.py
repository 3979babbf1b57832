"""The grounding and visual-prompt evaluations: predictions and scores (items: sets.py).

- grounding (``eval/grounding.py``): per region, referring-expression comprehension (the box the
  LM writes for the region's phrase: Acc@0.5, the share with IoU >= 0.5, and the mean IoU) and
  generation (what the LM says is in the region's box: on ShapesWorld whether it names the
  shape, colour and kind; BLEU-4 / CIDEr against the region's phrases); per ShapesWorld scene,
  grounded captioning (every shape named, each with a box of IoU >= 0.5). Sets: ShapesWorld's
  held-out scenes (a region per shape) and RefCOCO / RefCOCO+ / RefCOCOg (an item per referring
  expression; generation once per region).
- visual_prompts (``eval/visual_prompts.py``): ViP-Bench-style questions on ShapesWorld. Each
  shape's colour, kind and size asked twice: about "the shape in the red ellipse", a mark drawn
  on the image (a random kind and colour, seeded per item), and in words ("what colour is the
  circle in the top left corner?") on the clean image. Accuracy of each, and per mark kind.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

import lavit.data.annotations as annotations
from lavit.evaluation.tasks import _percent, _Task
from lavit.grounding import iou
from lavit.metrics.caption import caption_scores


class GroundingTask(_Task):
    def predict(self, pipe, indices: list[int], seed: int) -> list[dict]:
        ok, images, records = self._load(indices)
        if not images:
            return records
        items = [self.items[i] for i in ok]
        regions = [annotations.regions(it.meta, im.size)[it.region] for it, im in zip(items, images, strict=True)]
        boxes = pipe.ground(images, [it.phrase for it in items])
        asked = [k for k, it in enumerate(items) if (it.scene is not None or it.variant) and regions[k].box is not None]
        described = pipe.describe_region([images[k] for k in asked], [regions[k].box for k in asked]) if asked else []
        said = dict(zip(asked, described, strict=True))
        scenes = [k for k, it in enumerate(items) if it.scene is not None and it.region == 0]
        grounded = pipe.grounded_caption([images[k] for k in scenes]) if scenes else []
        told = dict(zip(scenes, grounded, strict=True))
        for k, (it, region, box) in enumerate(zip(items, regions, boxes, strict=True)):
            overlap = iou(box, region.box) if region.box is not None else 0.0
            record: dict[str, Any] = {
                "key": it.key,
                "phrase": it.phrase,
                "box": dataclasses.astuple(box),
                "iou": overlap,
            }
            if k in said:
                record["description"] = said[k]
                record["named"] = annotations.region_named(it.meta, region, said[k])
                record["references"] = [region.description, *region.phrases]
            if k in told:
                record["grounded_caption"] = [p if isinstance(p, str) else dataclasses.astuple(p) for p in told[k]]
                record["grounded_ok"] = annotations.grounded_caption_right(it.meta, told[k])
            records.append(record)
        return records

    def score(self, records: list[dict]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if records:
            out["comprehension_acc50"] = _percent(sum(r["iou"] >= 0.5 for r in records), len(records))
            out["comprehension_mean_iou"] = 100.0 * sum(r["iou"] for r in records) / len(records)
        described = [r for r in records if "description" in r]
        if described:
            out["generation_accuracy"] = _percent(sum(r["named"] for r in described), len(described))
            preds = {r["key"]: r["description"] for r in described}
            refs = {r["key"]: r["references"] for r in described}
            scores = caption_scores(preds, refs, metrics=("bleu4", "cider"), tokenizer="python")
            out.update({f"generation_{k}": 100.0 * v for k, v in scores.items()})
        grounded = [r for r in records if "grounded_ok" in r]
        if grounded:
            out["grounded_caption_accuracy"] = _percent(sum(r["grounded_ok"] for r in grounded), len(grounded))
        return out


class VisualPromptTask(_Task):
    def predict(self, pipe, indices: list[int], seed: int) -> list[dict]:
        ok, images, records = self._load(indices)
        if not images:
            return records
        marked, asked, worded, answers, kinds = [], [], [], [], []
        for i, image in zip(ok, images, strict=True):
            it = self.items[i]
            rng = np.random.default_rng(seed + i - indices[0])  # item i's seed, whatever shares its batch
            q = annotations.marked_question(it.meta, image, rng, it.region, it.variant)
            marked.append(q.image)
            asked.append(q.question)
            worded.append(q.worded)
            answers.append(q.answer)
            kinds.append(q.mark.kind)
        got_marked = pipe.answer(marked, asked)
        got_worded = pipe.answer(images, worded)
        for i, q, w, a, gm, gw, kind in zip(ok, asked, worded, answers, got_marked, got_worded, kinds, strict=True):
            records.append(
                {
                    "key": self.items[i].key,
                    "mark": kind,
                    "marked_question": q,
                    "worded_question": w,
                    "answer": a,
                    "marked_answer": gm,
                    "worded_answer": gw,
                    "marked_ok": gm.strip().lower() == a,
                    "worded_ok": gw.strip().lower() == a,
                }
            )
        return records

    def score(self, records: list[dict]) -> dict[str, Any]:
        if not records:
            return {}
        out: dict[str, Any] = {
            "marked_accuracy": _percent(sum(r["marked_ok"] for r in records), len(records)),
            "worded_accuracy": _percent(sum(r["worded_ok"] for r in records), len(records)),
        }
        for kind in sorted({r["mark"] for r in records}):
            mine = [r for r in records if r["mark"] == kind]
            out[f"marked_accuracy_{kind}"] = _percent(sum(r["marked_ok"] for r in mine), len(mine))
        return out


__all__ = ["GroundingTask", "VisualPromptTask"]
