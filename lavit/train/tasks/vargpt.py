"""``lavit train vargpt``: the VARGPT-style model on any sources of the data layer, in VARGPT's
stages (``stage``: projectors, then the LLM with them, then the VAR head) or all at once.

Each item is one sample seen as one task, drawn deterministically from its id and the reader's
count among the tasks its fields support: a caption or an answer after the image (``<image>``
per patch, the vision tower's features in their place), or its image drawn after a prompt (a
ShapesWorld prompt or a caption; dropped with ``cfg_drop_prob`` for guidance) as the scale
tokens of the frozen VQ-VAE at ``<|image_gen_pad|>`` positions. The loss is the LLM's next-token
cross-entropy on the answer (and on ``<|image_gen_start|>``, ``<|image_gen_end|>``, ``</s>``)
plus ``t2i_loss_weight`` times the head's cross-entropy of every scale token. Sequences are
built with the prompts the saved pipeline uses (``prompts``, pipeline.yaml).
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import CLIPVisionConfig

from detokenizer.var.io import load_vqvae
from lavit.config import ConfigError
from lavit.data.annotations import caption_right, has_scene, prompt_drawn
from lavit.data.preprocess import preprocess
from lavit.data.sample import Sample
from lavit.data.sources import build_data
from lavit.metrics.vqa import answer_accuracy
from lavit.text_tokenizer import load_text_tokenizer, train_bpe
from lavit.train.tasks.images import sample_data
from lavit.vargpt.config import SPECIAL_TOKENS, STAGE_TRAINABLE, VARGPTRunConfig
from lavit.vargpt.io import load_vargpt, read_vision_config
from lavit.vargpt.model import VARGPT, image_patches
from lavit.vargpt.pipeline import VARGPTPipeline
from tokenizer import load_tokenizer

CAPTION, VQA, T2I = "caption", "vqa", "t2i"
IGNORE = -100


class VARGPTTask:
    name = "vargpt"
    block_types: tuple[type[nn.Module], ...] = ()

    def __init__(self, cfg: VARGPTRunConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.train.out_dir)
        self.vqvae = load_vqvae(cfg.vqvae_dir)
        # The head predicts this VQ-VAE's tokens: its architecture is the folder's, whatever
        # model.vqvae says.
        self.model_cfg = model = dataclasses.replace(cfg.model, vqvae=self.vqvae.cfg)
        self.tok = self._text_tokenizer()
        ids = [self.tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
        want = [model.image_token_id, model.gen_start_id, model.gen_end_id, model.gen_pad_id]
        if ids != want:
            raise ConfigError(
                f"the text tokenizer's {', '.join(SPECIAL_TOKENS)} are ids {ids}, the model's (image_token_id, "
                f"gen_start_id, gen_end_id, gen_pad_id) {want}: set them so (and var.num_classes={ids[1] + 1})"
            )
        self.length = sum(p * p for p in self.vqvae.cfg.scales)
        self.patches = self._patches()
        self.data = sample_data(cfg.data, "train", self._item)

    # --- data ----------------------------------------------------------------------------------

    def _text_tokenizer(self):
        """A from-scratch LLM's byte-level BPE (trained once, kept in the run folder, VARGPT's
        special tokens at ids 4-7), or a pretrained LLM's own tokenizer."""
        path = self.out / "text_tokenizer"
        if self.cfg.model.lm.pretrained_path:
            return load_text_tokenizer(self.cfg.model.lm.pretrained_path)
        if not (path / "tokenizer.json").is_file():
            texts = [self.cfg.prompts.caption_prompt, self.cfg.prompts.vqa_prompt.format("")]
            for k, sample in enumerate(build_data(self.cfg.data, "train")):
                if k >= 5000:
                    break
                texts += sample.captions + [q.question + " " + q.answers[0] for q in sample.qa]
                texts += [sample.meta["prompt"]] if "prompt" in sample.meta else []
            tok = train_bpe(texts, self.cfg.model.lm.text_vocab_size, SPECIAL_TOKENS)
            tmp = self.out / f".text_tokenizer.tmp{id(self)}"
            tok.save_pretrained(tmp)
            if not path.exists():  # another rank may have written the identical file first
                tmp.replace(path)
            shutil.rmtree(tmp, ignore_errors=True)
        return load_text_tokenizer(path)

    def _tasks(self, sample: Sample) -> list[tuple[str, float]]:
        mix = self.cfg.mixture
        reads = self.model_cfg.vision != "none"  # a model without a vision tower only draws
        out = [(CAPTION, mix.caption)] if sample.captions and reads else []
        out += [(VQA, mix.vqa)] if sample.qa and reads else []
        out += [(T2I, mix.t2i)] if (sample.captions or "prompt" in sample.meta) else []
        return [(t, w) for t, w in out if w > 0]

    def _item(self, sample: Sample, counter: int) -> dict:
        """One training item: ids, labels, and the image for understanding or drawing."""
        cfg, prompts = self.cfg, self.cfg.prompts
        rng = np.random.default_rng([cfg.data.seed, zlib.crc32(sample.image_id.encode()), counter])
        tasks = self._tasks(sample)
        if not tasks:
            raise ValueError(f"sample {sample.image_id} has no captions, questions or prompt to train on")
        weights = np.array([w for _, w in tasks])
        task = tasks[int(rng.choice(len(tasks), p=weights / weights.sum()))][0]
        eos = self.tok.eos_token_id
        if task == T2I:
            if "prompt" in sample.meta and (not sample.captions or rng.random() < 0.5):
                text = sample.meta["prompt"]
            else:
                text = sample.captions[int(rng.integers(len(sample.captions)))]
            drop = bool(rng.random() < cfg.mixture.cfg_drop_prob)
            prompt = self.tok(prompts.generation_text("" if drop else text))["input_ids"]
            m = self.model_cfg
            image = [m.gen_start_id] + [m.gen_pad_id] * self.length + [m.gen_end_id, eos]
            labels = [IGNORE] * len(prompt) + [m.gen_start_id] + [IGNORE] * self.length + [m.gen_end_id, eos]
            pixels = preprocess(sample.image, self.vqvae.cfg.resolution)
            return {"ids": prompt + image, "labels": labels, "draw": pixels, "drop": drop}
        if task == CAPTION:
            question, answer = prompts.caption_prompt, sample.captions[int(rng.integers(len(sample.captions)))]
        else:
            qa = sample.qa[int(rng.integers(len(sample.qa)))]
            question, answer = prompts.vqa_prompt.format(qa.question), qa.answers[0]
        prompt = self.tok(prompts.understanding_text(question, self.patches))["input_ids"]
        reply = self.tok(" " + answer, add_special_tokens=False)["input_ids"] + [eos]
        pixels = prompts.normalise(preprocess(sample.image, prompts.image_size)[None])[0]  # as the pipeline reads it
        return {"ids": prompt + reply, "labels": [IGNORE] * len(prompt) + reply, "read": pixels}

    def _patches(self) -> int:
        """``<image>`` tokens per understanding image: the tower's patches (a CLIP tower's as
        init_from saved it, else as a fresh model builds it); its input side must be the
        prompts' ``image_size``."""
        model = self.model_cfg
        vision = read_vision_config(self.cfg.init_from) if model.vision == "clip" and self.cfg.init_from else None
        side = {"encoder": model.encoder.image_size, "clip": (vision or CLIPVisionConfig()).image_size}
        if model.vision in side and side[model.vision] != self.cfg.prompts.image_size:
            raise ConfigError(
                f"prompts.image_size={self.cfg.prompts.image_size}, but the vision tower reads "
                f"{side[model.vision]} px images: set prompts.image_size={side[model.vision]}"
            )
        return image_patches(model, vision)

    def train_dataset(self) -> Dataset:
        return self.data

    def collate(self, items: list[dict]) -> dict:
        """Right-padded ids, labels and mask, the images read (rows with ``<image>``, in order),
        the images drawn (rows with scale tokens, in order) and their guidance drops."""
        width = max(len(it["ids"]) for it in items)
        pad = self.tok.pad_token_id
        ids = torch.full((len(items), width), pad, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for i, it in enumerate(items):
            n = len(it["ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(it["ids"]), torch.tensor(it["labels"]), 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        read = [it["read"] for it in items if "read" in it]
        draw = [it["draw"] for it in items if "draw" in it]
        batch["read"] = torch.stack(read) if read else None
        batch["draw"] = torch.stack(draw) if draw else None
        batch["drop"] = torch.tensor([it["drop"] for it in items if "draw" in it], dtype=torch.bool)
        return batch

    # --- model ---------------------------------------------------------------------------------

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        if cfg.init_from:
            model, _ = load_vargpt(cfg.init_from)
            if model.cfg != self.model_cfg:
                raise ConfigError(
                    f"init_from={cfg.init_from!r} holds another architecture than model: copy its config.yaml"
                )
            model.train()
        else:
            model = VARGPT(self.model_cfg)
        model.vqvae.load_state_dict(self.vqvae.state_dict())
        if cfg.encoder_from and not cfg.init_from:
            encoder = load_tokenizer(cfg.encoder_from).encoder
            if model.cfg.vision != "encoder" or encoder.cfg != model.cfg.encoder:
                raise ConfigError(
                    f"encoder_from={cfg.encoder_from!r}: its encoder is not model.encoder (vision: encoder); copy "
                    "the encoder section of its config.yaml into model.encoder"
                )
            model.vision.load_state_dict(encoder.state_dict())
        prefixes = STAGE_TRAINABLE[cfg.stage]
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(tuple(prefixes)))
        return model

    def training_step(self, model: nn.Module, batch: dict, step: int):
        inputs = drop = None
        if batch["draw"] is not None:
            self.vqvae.to(batch["draw"].device)
            with torch.no_grad():
                indices = self.vqvae.encode(batch["draw"])
                inputs = self.vqvae.quantizer.teacher_forcing_inputs(indices)
                targets = torch.cat([i.flatten(1) for i in indices], dim=1)
            drop = batch["drop"].to(batch["draw"].device)
        out = model(batch["input_ids"], batch["attention_mask"], batch["read"], inputs, drop)
        text = F.cross_entropy(out.logits[:, :-1].flatten(0, 1).float(), batch["labels"][:, 1:].flatten(), ignore_index=IGNORE)  # fmt: skip
        logs = {"loss_text": text.detach()}
        loss = text
        if out.scale_logits is not None:
            scale = F.cross_entropy(out.scale_logits.flatten(0, 1).float(), targets.flatten())
            loss = loss + self.cfg.mixture.t2i_loss_weight * scale
            logs["loss_image"] = scale.detach()
        logs["loss"] = loss.detach()
        return loss, logs

    # --- evaluation and saving -----------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, model: VARGPT, step: int) -> dict[str, float]:
        """Held-out (``data.val``) items: caption accuracy on ShapesWorld (every shape named),
        VQA accuracy, and text to image judged by ShapesWorld's parser (one draw each)."""
        cfg = self.cfg
        if not cfg.data.val:
            return {}
        pipe = VARGPTPipeline(model, self.tok, cfg.prompts)
        samples = list(itertools.islice(build_data(cfg.data, "val"), cfg.eval_scenes))
        metrics: dict[str, float] = {}
        images = [s.image for s in samples]
        if samples and all(has_scene(s.meta) for s in samples):
            captions = pipe.caption(images)
            metrics["caption_acc"] = float(np.mean([caption_right(s.meta, c) for s, c in zip(samples, captions, strict=True)]))  # fmt: skip
            prompted = [s for s in samples if "prompt" in s.meta]
            if prompted:
                drawn = pipe.generate_image([s.meta["prompt"] for s in prompted], seed=0)
                right = [prompt_drawn(s.meta, im) for s, im in zip(prompted, drawn, strict=True)]
                metrics["t2i_scene_acc"] = float(np.mean(right))
        asked = [s for s in samples if s.qa]
        if asked:
            answers = pipe.answer([s.image for s in asked], [s.qa[0].question for s in asked])
            metrics["vqa_acc"] = float(np.mean([answer_accuracy(a, s.qa[0].answers) for s, a in zip(asked, answers, strict=True)]))  # fmt: skip
        return metrics

    def save(self, model: VARGPT, directory: Path) -> None:
        VARGPTPipeline(model, self.tok, self.cfg.prompts).save_pretrained(directory)
