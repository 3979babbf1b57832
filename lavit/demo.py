"""``lavit demo``: everything the model does, on held-out ShapesWorld scenes, as one HTML page.

    lavit demo                              # the shipped model -> outputs/demo/index.html
    lavit demo --model DIR --out DIR

Sections: captions and VQA answers (with the ground truth), text-to-image through every loaded
decoder side by side (judged by the ShapesWorld parser), multimodal synthesis (image + text and
image + image prompts), and reconstruction from tokens. ``overview.png`` puts every generated
image of the page in one picture (the README shows it). The page and its PNGs are written to a
temporary folder that replaces ``out`` only when complete.
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from lavit.checkpoint import atomic_dir
from lavit.config import ShapesWorldConfig
from lavit.data.shapes import text as shapes_text
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.shapes.parser import parse_scene, prompt_satisfied
from lavit.metrics.vqa import vqa_accuracy
from lavit.pipeline import LaVITPipeline
from lavit.viz import image_grid

DEFAULT_MODEL = "checkpoints/lavit-shapes-tiny"


@dataclass
class DemoConfig:
    """What the page shows; the defaults run in well under a minute on a 2-core CPU."""

    understanding: int = 6  # held-out scenes captioned and questioned
    prompts: int = 4  # text-to-image prompts (held-out scenes' prompts)
    candidates: int = 8  # text to image also as the best of this many by the LM's caption score (1: not shown)
    reconstructions: int = 4
    first_scene: int = 0  # index of the first held-out (val) scene used
    seed: int = 0
    synthesis_texts: list[str] = field(default_factory=lambda: ["a red circle", "a blue square"])


def run_demo(pipe: LaVITPipeline, out: str | Path, cfg: DemoConfig | None = None) -> dict:
    """Write ``out/index.html`` (+ PNGs) and return the summary that ``lavit demo`` prints."""
    cfg = cfg or DemoConfig()
    t0 = time.perf_counter()
    world = ShapesWorld(ShapesWorldConfig(), "val")
    decoders = sorted(pipe.decoders)
    with atomic_dir(out) as tmp:
        page = _Page(tmp)
        summary = {"model_decoders": decoders}
        if pipe.lm is not None:
            summary.update(_understanding(pipe, world, cfg, page))
            if decoders:
                summary.update(_text_to_image(pipe, world, cfg, page, decoders))
                _synthesis(pipe, world, cfg, page, decoders)
        if decoders:
            _reconstruction(pipe, world, cfg, page, decoders)
        summary["seconds"] = round(time.perf_counter() - t0, 1)
        page.write(summary)
    summary["page"] = str(Path(out) / "index.html")
    return summary


class _Page:
    """Sections of cards (an image + a few lines of text), rendered to one static HTML file, and
    the cards of the sections that make images laid out in ``overview.png``."""

    OVERVIEW_COLUMNS = 6

    def __init__(self, folder: Path) -> None:
        self.folder, self.parts, self.count = folder, [], 0
        self.overview_rows: list[list[tuple[Image.Image, str]]] = []
        self.in_overview = False

    def section(self, title: str, note: str, overview: bool = True) -> None:
        self.parts.append(f"<h2>{html.escape(title)}</h2><p>{html.escape(note)}</p><div class=row>")
        self.in_overview = overview
        if overview:
            self.overview_rows.append([])  # a section starts a row

    def end(self) -> None:
        self.parts.append("</div>")

    def card(self, images: list[tuple[Image.Image, str]], lines: list[str]) -> None:
        figs = []
        for im, label in images:
            self.count += 1
            name = f"img{self.count:03d}.png"
            im.save(self.folder / name)
            figs.append(f"<figure><img src={name} width=128><figcaption>{html.escape(label)}</figcaption></figure>")
        text = "".join(f"<div>{html.escape(s)}</div>" for s in lines)
        self.parts.append(f"<div class=card>{''.join(figs)}{text}</div>")
        if self.in_overview:  # whole cards, packed into rows of OVERVIEW_COLUMNS images
            cells = [
                (im, f"{label} | {lines[0]}" if j == 0 and lines else label) for j, (im, label) in enumerate(images)
            ]
            if len(self.overview_rows[-1]) + len(cells) > self.OVERVIEW_COLUMNS:
                self.overview_rows.append([])
            self.overview_rows[-1] += cells

    def overview(self) -> Image.Image | None:
        """The packed cards as one grid (rows padded with blank cells), or None without any."""
        rows = [row for row in self.overview_rows if row]  # a section may have made no card
        if not rows:
            return None
        blank = (Image.new("RGB", (1, 1), (255, 255, 255)), "")
        cells = [cell for row in rows for cell in row + [blank] * (self.OVERVIEW_COLUMNS - len(row))]
        return image_grid([im for im, _ in cells], [t for _, t in cells], columns=self.OVERVIEW_COLUMNS, wrap=21)

    def write(self, summary: dict) -> None:
        style = (
            "body{font-family:sans-serif;margin:2em}.row{display:flex;flex-wrap:wrap;gap:12px}"
            ".card{border:1px solid #ccc;padding:8px;max-width:420px}figure{display:inline-block;margin:4px}"
            "img{image-rendering:pixelated}figcaption{font-size:12px;text-align:center}"
        )
        head = f"<h1>LaVIT-style model demo</h1><pre>{html.escape(json.dumps(summary, indent=1))}</pre>"
        overview, intro = self.overview(), ""
        if overview is not None:
            overview.save(self.folder / "overview.png")
            intro = "<h2>Overview</h2><img src=overview.png>"
        body = head + intro + "".join(self.parts)
        (self.folder / "index.html").write_text(f"<!doctype html><meta charset=utf-8><style>{style}</style>{body}")


def _understanding(pipe: LaVITPipeline, world: ShapesWorld, cfg: DemoConfig, page: _Page) -> dict:
    idx = range(cfg.first_scene, cfg.first_scene + cfg.understanding)
    images = [world.image(i) for i in idx]
    captions = pipe.caption(images)
    qas = [world.words(i).qa[:2] for i in idx]
    flat = [(k, qa) for k, group in enumerate(qas) for qa in group]
    answers = pipe.answer([images[k] for k, _ in flat], [qa.question for _, qa in flat])
    page.section("Understanding", "Captions and VQA answers for held-out scenes (truth in brackets).", overview=False)
    caption_ok, vqa_score, j = 0, 0.0, 0
    for k, i in enumerate(idx):
        ok = shapes_text.caption_names_scene(world.scene(i), captions[k])
        caption_ok += ok
        lines = [f"caption: {captions[k]} {'OK' if ok else 'X'}", f"[{world.words(i).captions[0]}]"]
        for qa in qas[k]:
            vqa_score += vqa_accuracy(answers[j], qa.answers)
            lines.append(f"Q: {qa.question} A: {answers[j]} [{qa.answers[0]}]")
            j += 1
        page.card([(images[k], f"val {i}")], lines)
    page.end()
    return {"captions_right": f"{caption_ok}/{len(idx)}", "vqa_accuracy": round(100 * vqa_score / len(flat), 1)}


def _text_to_image(pipe, world: ShapesWorld, cfg: DemoConfig, page: _Page, decoders: list[str]) -> dict:
    idx = range(cfg.first_scene, cfg.first_scene + cfg.prompts)
    prompts = [world.words(i).prompt for i in idx]
    codes = pipe.generate_tokens(prompts, seed=cfg.seed)  # one set of codes, rendered by every decoder
    rendered = {d: pipe.decode(codes, decoder=d, seed=cfg.seed) for d in decoders}
    keys = {d: f"text2image_{d}" for d in decoders}  # column label -> summary key
    note = f"LM image tokens (CFG) rendered by {' and '.join(decoders)}; parser verdict."
    if cfg.candidates > 1:  # the first decoder again, as the best of N (LaVITPipeline.generate)
        best = f"{decoders[0]}, best of {cfg.candidates}"
        rendered[best] = pipe.generate(prompts, candidates=cfg.candidates, decoder=decoders[0], seed=cfg.seed).images
        keys[best] = f"text2image_{decoders[0]}_bestof{cfg.candidates}"
        note += f" Last: {best} draws by the LM's caption log-likelihood of the prompt."
    page.section("Text to image", note)
    satisfied = Counter()
    for k, i in enumerate(idx):
        figs = []
        for col in keys:
            ok = prompt_satisfied(world.scene(i), parse_scene(rendered[col][k]))
            satisfied[col] += ok
            figs.append((rendered[col][k], f"{col} {'OK' if ok else 'X'}"))
        page.card(figs, [prompts[k], f"{len(codes[k])} codes"])
    page.end()
    return {key: f"{satisfied[col]}/{len(prompts)} prompts satisfied" for col, key in keys.items()}


def _synthesis(pipe, world: ShapesWorld, cfg: DemoConfig, page: _Page, decoders: list[str]) -> None:
    a, b = world.image(cfg.first_scene), world.image(cfg.first_scene + 1)
    prompts = [[a, text] for text in cfg.synthesis_texts] + [[a, b]]
    labels = [f"[image] + '{t}'" for t in cfg.synthesis_texts] + ["[image] + [image]"]
    outs = {d: pipe.synthesize(prompts, decoder=d, seed=cfg.seed) for d in decoders}
    page.section("Multimodal synthesis", "Image + text and image + image prompts.")
    for k, prompt in enumerate(prompts):
        inputs = [(p, "input") for p in prompt if isinstance(p, Image.Image)]
        page.card(inputs + [(outs[d][k], d) for d in decoders], [labels[k]])
    page.end()


def _reconstruction(pipe, world: ShapesWorld, cfg: DemoConfig, page: _Page, decoders: list[str]) -> None:
    idx = range(cfg.first_scene, cfg.first_scene + cfg.reconstructions)
    images = [world.image(i) for i in idx]
    codes = pipe.encode(images)
    outs = {d: pipe.reconstruct(images, decoder=d, seed=cfg.seed) for d in decoders}
    page.section("Reconstruction from tokens", "Image -> dynamic tokenizer codes -> each decoder.")
    for k, i in enumerate(idx):
        page.card([(images[k], "original")] + [(outs[d][k], d) for d in decoders], [f"val {i}: {len(codes[k])} codes"])
    page.end()
