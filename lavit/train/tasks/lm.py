"""Stage 2: the unified LM (``lavit train lm``) on any sources of the data layer.

Codes come from a frozen, trained visual tokenizer and are extracted once to a sharded cache
(lavit/train/codes_cache.py). Each training item is one sample seen as one task, drawn
deterministically from the item index among the tasks its fields support: captioning (it has
captions), VQA (it has questions), text-to-image (captions, or ShapesWorld's prompt; the text
dropped with ``cfg_drop_prob`` for CFG) or, when the mixture asks for them, multimodal synthesis
(a ShapesWorld scene from its parts: image + text or image + image), grounding (it has regions:
a phrase -> its box, a box -> what is there, a caption boxing each shape; boxes are location
tokens, lavit/grounding.py) and marked questions (a region referred to only through a mark drawn
on the image, lavit/visual_prompts.py); the mixture's probabilities are renormalised over those
tasks. One next-token objective; per-task loss weights ride on the sequences' loss weights.

Evaluation on ``data.val``: caption BLEU-4 / CIDEr and VQA accuracy for any source, the
teacher-forced text-to-image code loss, and on a ShapesWorld val source its parser's caption
check.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from lavit.checkpoint import CheckpointError
from lavit.config import ConfigError, LMConfig, LMRunConfig
from lavit.data.annotations import (
    caption_right,
    grounded_caption,
    has_regions,
    has_scene,
    marked_question,
    regions,
    synthesis_prompt,
)
from lavit.data.transforms import to_tensor
from lavit.generate import generate_text
from lavit.grounding import fill_box
from lavit.lm_io import TOKENIZER_DIR, load_lm, save_lm
from lavit.metrics.caption import caption_scores
from lavit.metrics.vqa import answer_accuracy
from lavit.model import UnifiedLM
from lavit.sequence import SequenceBuilder, TokenSeq, collate
from lavit.text_tokenizer import load_text_tokenizer, train_bpe
from lavit.train.codes_cache import CodeRecord, codes_dataset
from tokenizer import load_tokenizer

VIEWS = 4  # items per scene: each scene is drawn as several (task, text) views


class LMTask:
    name = "lm"

    def __init__(self, cfg: LMRunConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        self.tokenizer = load_tokenizer(cfg.tokenizer_dir)
        if cfg.lm.num_codes != self.tokenizer.codebook_size:
            raise ConfigError(
                f"lm.num_codes={cfg.lm.num_codes} but the tokenizer at {cfg.tokenizer_dir} has "
                f"{self.tokenizer.codebook_size} codes; set lm.num_codes={self.tokenizer.codebook_size}"
            )
        if cfg.lm.understanding_input == "continuous" and cfg.lm.feature_dim != self.tokenizer.cfg.width:
            raise ConfigError(
                f"lm.feature_dim={cfg.lm.feature_dim} must equal the tokenizer width "
                f"{self.tokenizer.cfg.width} for continuous understanding input"
            )
        self.codes = self._codes()  # map-style CodeRecords of data.train
        self.text_tok = self._text_tokenizer()
        self.layout = None  # known once the model is built
        self.block_types: tuple[type[nn.Module], ...] = ()

    # --- data --------------------------------------------------------------------------------

    def _corpus(self, n: int) -> list[str]:
        """The BPE's training text: the prompts and the first ``n`` training records' captions,
        ShapesWorld prompts, and questions with their first answer."""
        mix = self.cfg.mixture
        texts = [mix.caption_prompt, mix.vqa_prompt.format("")]
        for i in range(min(n, len(self.codes))):
            r = self.codes[i]
            prompt = [r.meta["prompt"]] if "prompt" in r.meta else []
            texts += r.captions + prompt + [mix.vqa_prompt.format(q.question) + " " + q.answers[0] for q in r.qa]
        return texts

    def _text_tokenizer(self):
        path = self.out / "text_tokenizer"
        self.out.mkdir(parents=True, exist_ok=True)
        if self.cfg.init_from and not (path / "tokenizer.json").is_file():
            # The ids of init_from's text rows are its tokenizer's, so the run reads text with it.
            source = Path(self.cfg.init_from) / TOKENIZER_DIR
            if not (source / "tokenizer.json").is_file():
                raise ConfigError(
                    f"init_from={self.cfg.init_from!r} has no {TOKENIZER_DIR}/tokenizer.json: pass the "
                    "model/ folder of a `lavit train lm` run (or a pipeline's lm/ folder)"
                )
            shutil.copytree(source, path, dirs_exist_ok=True)
        if self.cfg.lm.pretrained_path and not (path / "tokenizer.json").is_file():
            # A pretrained LM reads text with its own tokenizer; the run keeps a copy beside it.
            tmp = self.out / f".text_tokenizer.tmp{id(self)}"
            load_text_tokenizer(self.cfg.lm.pretrained_path).save_pretrained(tmp)
            if not path.exists():
                tmp.replace(path)
            shutil.rmtree(tmp, ignore_errors=True)
        if not (path / "tokenizer.json").is_file():
            tok = train_bpe(self._corpus(5000), self.cfg.lm.text_vocab_size)
            tmp = self.out / f".text_tokenizer.tmp{id(self)}"
            tok.save_pretrained(tmp)
            if not path.exists():  # another rank may have written the identical file first
                tmp.replace(path)
            shutil.rmtree(tmp, ignore_errors=True)
        tok = load_text_tokenizer(path)
        if not self.cfg.lm.pretrained_path and len(tok) > self.cfg.lm.text_vocab_size:
            raise ConfigError(
                f"text tokenizer at {path} has {len(tok)} ids > lm.text_vocab_size={self.cfg.lm.text_vocab_size}"
            )
        return tok

    def _codes(self):
        """Records of ``data.train`` (codes cached once; see lavit/train/codes_cache.py)."""
        cfg = self.cfg
        continuous = cfg.lm.understanding_input == "continuous"
        return codes_dataset(
            self.tokenizer,
            cfg.tokenizer_dir,
            cfg.data,
            "train",
            cfg.codes_cache or self.out / "codes",
            limit=cfg.num_scenes,
            image_size=self.tokenizer.cfg.encoder.image_size if continuous else None,
        )

    def builder(self, layout) -> SequenceBuilder:
        return SequenceBuilder(self.text_tok, layout, self.cfg.lm.max_position_embeddings, add_bos=self.cfg.lm.add_bos)

    def build_model(self) -> nn.Module:
        lm = init_lm(self.cfg.lm, self.cfg.init_from) if self.cfg.init_from else UnifiedLM(self.cfg.lm)
        self.layout = lm.layout
        self.block_types = tuple({type(layer) for layer in lm.hf.model.layers})
        return lm

    def train_dataset(self) -> Dataset:
        assert self.layout is not None, "build_model() first: the layout comes from the model"
        return LMItems(self)

    def collate(self, items: list[tuple[TokenSeq, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
        batch = collate([seq for seq, _ in items], self.text_tok.pad_token_id)
        images = [img for _, img in items if img is not None]
        if self.cfg.lm.understanding_input == "continuous":
            batch["images"] = torch.cat(images) if images else torch.zeros(0)
        return batch

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int):
        features = feature_mask = None
        if self.cfg.lm.understanding_input == "continuous" and batch["images"].numel():
            self.tokenizer.to(batch["images"].device)
            features = torch.cat(self.tokenizer.encode_features(batch["images"]))
            feature_mask = batch["image_mask"]
        out = model(batch["input_ids"], batch["attention_mask"], batch["loss_weights"], features, feature_mask)
        return out.loss, out.logs

    # --- evaluation --------------------------------------------------------------------------

    def val_records(self):
        """Records of the first ``eval_scenes`` items of each ``data.val`` source (codes cached)."""
        cfg = self.cfg
        continuous = cfg.lm.understanding_input == "continuous"
        root = Path(cfg.codes_cache or self.out / "codes")
        size = self.tokenizer.cfg.encoder.image_size
        return codes_dataset(
            self.tokenizer, cfg.tokenizer_dir, cfg.data, "val", root, limit=cfg.eval_scenes,
            image_size=size if continuous else None,
        )  # fmt: skip

    @torch.no_grad()
    def evaluate(self, model: UnifiedLM, step: int) -> dict[str, float]:
        """Held-out (``data.val``) items: caption BLEU-4 / CIDEr (Python tokenizer, no Java) on
        those with captions, VQA accuracy on those with questions, the teacher-forced loss on
        image codes given the text against the unigram entropy of the training codes, and on
        ShapesWorld its caption attribute accuracy (every shape's colour and kind named)."""
        cfg, mix = self.cfg, self.cfg.mixture
        if not cfg.data.val:
            return {}
        device = next(model.parameters()).device
        self.tokenizer.to(device)
        val = self.val_records()
        n = min(cfg.eval_scenes, len(val))
        records = [val[i] for i in range(n)]
        size = self.tokenizer.cfg.encoder.image_size
        builder = self.builder(model.layout)
        continuous = cfg.lm.understanding_input == "continuous"

        def features(idx: list[int]) -> list[torch.Tensor] | None:
            if not continuous:
                return None
            images = torch.stack([to_tensor(val.image(i), size) for i in idx]).to(device)
            return self.tokenizer.encode_features(images)

        captioned = [i for i in range(n) if records[i].captions]
        preds, scenes_ok, scenes = {}, 0, 0
        for start in range(0, len(captioned), 50):
            idx = captioned[start : start + 50]
            prompts = [builder.understanding_prompt(records[i].codes, mix.caption_prompt) for i in idx]
            caps = generate_text(model, builder, prompts, cfg.caption_decoding, features=features(idx))
            for i, cap in zip(idx, caps, strict=True):
                preds[str(i)] = cap
                if has_scene(records[i].meta):
                    scenes_ok += caption_right(records[i].meta, cap)
                    scenes += 1

        questions = [(i, qa) for i in range(n) for qa in records[i].qa]
        vqa = []
        for start in range(0, len(questions), 100):
            chunk = questions[start : start + 100]
            prompts = [
                builder.understanding_prompt(records[i].codes, mix.vqa_prompt.format(q.question)) for i, q in chunk
            ]
            feats = features([i for i, _ in chunk])
            got = generate_text(model, builder, prompts, cfg.vqa_decoding, features=feats)
            vqa += [answer_accuracy(g, q.answers) for g, (_, q) in zip(got, chunk, strict=True)]

        # Text-to-image: teacher-forced loss on codes + </img> given the prompt (or a caption).
        seqs = [builder.generation(t2i_text(r), r.codes) for r in records if t2i_text(r) is not None]
        nll, count = 0.0, 0
        for start in range(0, len(seqs), 50):
            batch = {k: v.to(device) for k, v in collate(seqs[start : start + 50], self.text_tok.pad_token_id).items()}
            out = model(batch["input_ids"], batch["attention_mask"], batch["loss_weights"])
            k = int((batch["loss_weights"][:, 1:] > 0).sum())
            nll += float(out.loss) * k
            count += k
        metrics = {"t2i_code_loss": nll / max(count, 1), "code_unigram_entropy": self.unigram_entropy()}
        if preds:
            refs = {str(i): records[i].captions for i in captioned}
            scores = caption_scores(preds, refs, metrics=("bleu4", "cider"), tokenizer="python")
            metrics.update(caption_bleu4=scores["bleu4"], caption_cider=scores["cider"])
        if vqa:
            metrics["vqa_acc"] = sum(vqa) / len(vqa)
        if scenes:
            metrics["caption_attribute_acc"] = scenes_ok / scenes
        return metrics

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the training codes plus </img>: the loss of a prompt-blind model
        that predicts every image token from its frequency alone."""
        counts = torch.zeros(self.cfg.lm.num_codes, dtype=torch.double)
        for flat in self.codes.all_codes():
            counts += torch.bincount(flat, minlength=self.cfg.lm.num_codes).double()
        total = torch.cat([counts, torch.tensor([float(len(self.codes))], dtype=torch.double)])
        p = total / total.sum()
        return float(-(p * p.clamp_min(1e-30).log()).sum())

    def save(self, model: UnifiedLM, directory: Path) -> None:
        save_lm(model, self.text_tok, directory)


# The mixture's tasks, in LMTASKS order.
CAPTION, VQA, T2I, SYNTHESIS, GROUNDING, REGION, GROUNDED_CAPTION, MARKED_VQA = range(8)


def t2i_text(record: CodeRecord) -> str | None:
    """The text-to-image evaluation prompt of a record: ShapesWorld's prompt, else its first
    caption, or None (no text: no text-to-image item)."""
    return record.meta.get("prompt") or (record.captions[0] if record.captions else None)


def supported_tasks(record: CodeRecord) -> list[bool]:
    """Which of the mixture's tasks (LMTASKS order) a record's fields allow."""
    meta = record.meta
    has_text = bool(record.captions) or "prompt" in meta
    boxed = has_regions(meta) and any(r.box is not None for r in regions(meta))
    scene = has_scene(meta)
    return [bool(record.captions), bool(record.qa), has_text, scene, boxed, boxed, scene, has_regions(meta)]


class LMItems(Dataset):
    """Item j: record ``j % len(records)`` as one task, drawn from an RNG seeded by j among the
    tasks its fields support (the mixture renormalised over them)."""

    def __init__(self, task: LMTask) -> None:
        self.task, self.cfg, self.records = task, task.cfg, task.codes
        self.builder = task.builder(task.layout)
        self.size = task.tokenizer.cfg.encoder.image_size
        mix = self.cfg.mixture
        self.probs = np.array(mix.probs(), dtype=float)
        # Synthesis prompts and marked images are images the cache does not hold: their codes come
        # from a CPU copy of the frozen tokenizer, here in the data workers (the task's own may
        # move to the GPU).
        fresh = mix.synthesis_prob > 0 or mix.marked_vqa_prob > 0
        self.encoder = copy.deepcopy(task.tokenizer).cpu().eval() if fresh else None

    def __len__(self) -> int:
        return len(self.records) * VIEWS

    def draw(self, j: int) -> tuple[int, CodeRecord, np.random.Generator, int]:
        """(record index, record, item j's RNG, task (CAPTION, VQA, ...: an index into LMTASKS))."""
        i = j % len(self.records)
        record = self.records[i]
        rng = np.random.default_rng([self.cfg.train.seed, j, 17])
        probs = self.probs * supported_tasks(record)
        if probs.sum() == 0:
            raise ValueError(
                f"training item {record.image_id!r} has no caption, question or prompt, and the mixture "
                "gives it no task; give the source captions or questions (an image-only source cannot "
                "train the LM)"
            )
        # Tasks with probability 0 at the end leave the draw as a shorter choice would make it.
        return i, record, rng, int(rng.choice(len(probs), p=probs / probs.sum()))

    def __getitem__(self, j: int) -> tuple[TokenSeq, torch.Tensor | None]:
        """(the sequence, its input images (N, 3, H, W) in the order they appear, or None)."""
        i, record, rng, kind = self.draw(j)
        mix, codes = self.cfg.mixture, record.codes
        if kind == SYNTHESIS:
            return self._synthesis(record, rng)
        if kind == MARKED_VQA:
            return self._marked_vqa(i, record, rng)
        if kind == T2I:
            prompt = record.meta.get("prompt")
            if rng.random() < mix.cfg_drop_prob:
                text = None
            elif prompt is not None and (rng.random() < 0.5 or not record.captions):
                text = prompt
            else:
                text = record.captions[int(rng.integers(len(record.captions)))]
            return self.builder.generation(text, codes, mix.t2i_weight), None
        image = None
        if self.cfg.lm.understanding_input == "continuous":
            image = to_tensor(self.records.image(i), self.size)[None]
        if kind == CAPTION:
            cap = record.captions[int(rng.integers(len(record.captions)))]
            return self.builder.understanding(codes, mix.caption_prompt, cap, mix.caption_weight), image
        if kind in (GROUNDING, REGION, GROUNDED_CAPTION):
            return self._grounding(kind, record, rng), image
        q = record.qa[int(rng.integers(len(record.qa)))]
        return self.builder.understanding(codes, mix.vqa_prompt.format(q.question), q.answers[0], mix.vqa_weight), image

    def _grounding(self, kind: int, record: CodeRecord, rng: np.random.Generator) -> TokenSeq:
        """A phrase -> its region's box (GROUNDING), a box -> what is there (REGION), or a caption
        with a box after each shape (GROUNDED_CAPTION); boxes are location tokens."""
        mix, codes = self.cfg.mixture, record.codes
        if kind == GROUNDED_CAPTION:
            caption = grounded_caption(record.meta)
            return self.builder.understanding(codes, mix.grounded_caption_prompt, caption, mix.grounded_caption_weight)
        boxed = [r for r in regions(record.meta) if r.box is not None]
        r = boxed[int(rng.integers(len(boxed)))]
        if kind == GROUNDING:
            phrase = r.phrases[int(rng.integers(len(r.phrases)))]
            return self.builder.understanding(codes, mix.grounding_prompt.format(phrase), [r.box], mix.grounding_weight)
        return self.builder.understanding(codes, fill_box(mix.region_prompt, r.box), r.description, mix.region_weight)

    def _marked_vqa(self, i: int, record: CodeRecord, rng: np.random.Generator) -> tuple[TokenSeq, torch.Tensor | None]:
        """A question about one region that refers to it only through a mark drawn on the image
        (:func:`lavit.data.annotations.marked_question`); the marked image is encoded afresh."""
        mix = self.cfg.mixture
        q = marked_question(record.meta, self.records.image(i), rng)
        image = to_tensor(q.image, self.size)[None]
        with torch.no_grad():
            codes = self.encoder.encode(image)[0]
        seq = self.builder.understanding(codes, mix.vqa_prompt.format(q.question), q.answer, mix.marked_vqa_weight)
        return seq, image if self.cfg.lm.understanding_input == "continuous" else None

    def _synthesis(self, record: CodeRecord, rng: np.random.Generator) -> tuple[TokenSeq, torch.Tensor]:
        """A ShapesWorld record's scene as the answer to a prompt made of its parts
        (:func:`lavit.data.annotations.synthesis_prompt`: image + text or image + image)."""
        world = self.cfg.data.shapes
        parts = synthesis_prompt(record.meta, rng, world.resolution, world.supersample)
        images = torch.stack([to_tensor(p, self.size) for p in parts if not isinstance(p, str)])
        with torch.no_grad():
            encoded = iter(self.encoder.encode(images))
        prompt = [p if isinstance(p, str) else next(encoded) for p in parts]
        seq = self.builder.generation(prompt, record.codes, self.cfg.mixture.synthesis_weight)
        return seq, images if self.cfg.lm.prompt_images_as_features else None


# Fields of LMConfig that init_from does not compare: run-time choices, provenance, the text
# vocabulary's size, which is the copied tokenizer's (a from-scratch LM saves the BPE's real size),
# and the visual-words options, which add no weights (a trained LM may switch them on).
_NOT_COMPARED = (
    "pretrained_path",
    "attn_implementation",
    "text_vocab_size",
    "visual_words_weight",
    "pseudo_image_features",
)


def init_lm(cfg: LMConfig, directory: str | Path) -> UnifiedLM:
    """The saved LM in ``directory``, to train on; ``cfg`` (the run's ``lm``) must describe it,
    except that ``cfg.num_locations`` may exceed its count: location tokens are then added
    (:meth:`UnifiedLM.grow_locations`), to teach a trained LM grounding.

    Raises:
        ConfigError: the directory does not load as an LM, or ``cfg`` differs from its config
            in a field that shapes the model (the error names the field and the value to set).
    """
    where = f"init_from={str(directory)!r}"
    try:
        lm, _ = load_lm(directory)
    except (CheckpointError, ConfigError, FileNotFoundError) as e:
        raise ConfigError(
            f"{where}: not a loadable LM ({e}); pass the model/ folder of a `lavit train lm` run "
            "(or a pipeline's lm/ folder)"
        ) from e
    theirs = lm.cfg
    grow = cfg.num_locations > theirs.num_locations
    diff = [
        f.name
        for f in dataclasses.fields(LMConfig)
        if f.name not in _NOT_COMPARED
        and not (f.name == "num_locations" and grow)
        and getattr(cfg, f.name) != getattr(theirs, f.name)
    ]
    if diff:
        have = ", ".join(f"lm.{n}={getattr(cfg, n)!r}" for n in diff)
        fix = " ".join(f"lm.{n}={getattr(theirs, n)}" for n in diff)
        raise ConfigError(f"{where}: {have} differ from that LM's config.yaml; set {fix}")
    lm = lm.float().train()  # shipped weights may be float16; train in float32
    # The options that add no weights are the run's (a trained LM may switch visual words on).
    lm.cfg = dataclasses.replace(
        lm.cfg, visual_words_weight=cfg.visual_words_weight, pseudo_image_features=cfg.pseudo_image_features
    )
    if grow:
        lm.grow_locations(cfg.num_locations)
    return lm
