"""Stage 2: the unified LM on ShapesWorld (``lavit train lm``).

Codes come from a frozen, trained visual tokenizer and are extracted once to a safetensors
cache. Each training item is one scene seen as one task, drawn deterministically from the item
index: captioning, VQA, text-to-image (prompt dropped with ``cfg_drop_prob`` for CFG) or,
when the mixture asks for it, multimodal synthesis (the scene from its parts: image + text or
image + image). One next-token objective; per-task loss weights ride on the sequences' loss
weights.
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
from lavit.data import shapes_text
from lavit.data.shapes import Scene, render
from lavit.data.shapes_dataset import ShapesWorld
from lavit.data.transforms import to_tensor
from lavit.generate import generate_text
from lavit.lm_io import TOKENIZER_DIR, load_lm, save_lm
from lavit.model import UnifiedLM
from lavit.sequence import SequenceBuilder, TokenSeq, collate
from lavit.text_tokenizer import load_text_tokenizer, train_bpe
from lavit.train.codes_cache import cached_codes, train_world
from tokenizer import load_tokenizer

VIEWS = 4  # items per scene: each scene is drawn as several (task, text) views


def normalise_answer(s: str) -> str:
    return s.lower().strip().rstrip(".").strip()


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
        self.world = train_world(cfg.data, cfg.num_scenes)
        self.text_tok = self._text_tokenizer()
        self.layout = None  # known once the model is built
        self.codes = self._codes()
        self.block_types: tuple[type[nn.Module], ...] = ()

    # --- data --------------------------------------------------------------------------------

    def _corpus(self, n: int) -> list[str]:
        mix = self.cfg.mixture
        texts = [mix.caption_prompt, mix.vqa_prompt.format("")]
        for i in range(n):
            captions, qa, prompt = self.world.words(i)
            texts += captions + [prompt] + [mix.vqa_prompt.format(q.question) + " " + q.answers[0] for q in qa]
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
        if not (path / "tokenizer.json").is_file():
            tok = train_bpe(self._corpus(min(self.cfg.num_scenes, 5000)), self.cfg.lm.text_vocab_size)
            tmp = self.out / f".text_tokenizer.tmp{id(self)}"
            tok.save_pretrained(tmp)
            if not path.exists():  # another rank may have written the identical file first
                tmp.replace(path)
            shutil.rmtree(tmp, ignore_errors=True)
        tok = load_text_tokenizer(path)
        if len(tok) > self.cfg.lm.text_vocab_size:
            raise ConfigError(
                f"text tokenizer at {path} has {len(tok)} ids > lm.text_vocab_size={self.cfg.lm.text_vocab_size}"
            )
        return tok

    def _codes(self) -> list[torch.Tensor]:
        """Codes of the first ``num_scenes`` train scenes (cached in safetensors)."""
        path = self.cfg.codes_cache or self.out / "codes_train.safetensors"
        return cached_codes(self.tokenizer, self.cfg.tokenizer_dir, self.world, self.cfg.num_scenes, path)

    def builder(self, layout) -> SequenceBuilder:
        return SequenceBuilder(self.text_tok, layout, self.cfg.lm.max_position_embeddings)

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

    @torch.no_grad()
    def evaluate(self, model: UnifiedLM, step: int) -> dict[str, float]:
        """Held-out (val) scenes: caption attribute accuracy (every shape's colour and kind
        named, counts included), VQA exact-match accuracy, and the teacher-forced loss on image
        codes against the unigram entropy of the training codes."""
        cfg, mix = self.cfg, self.cfg.mixture
        device = next(model.parameters()).device
        self.tokenizer.to(device)
        val = ShapesWorld(cfg.data, "val")
        n = min(cfg.eval_scenes, len(val))
        size = self.tokenizer.cfg.encoder.image_size
        builder = self.builder(model.layout)
        images = torch.stack([to_tensor(val.image(i), size) for i in range(n)]).to(device)
        codes = self.tokenizer.encode(images)
        continuous = cfg.lm.understanding_input == "continuous"
        feats = self.tokenizer.encode_features(images) if continuous else None

        cap_ok, answers, vqa_ok = 0, 0, 0
        for start in range(0, n, 50):
            idx = range(start, min(start + 50, n))
            prompts = [builder.understanding_prompt(codes[i], mix.caption_prompt) for i in idx]
            caps = generate_text(
                model, builder, prompts, cfg.caption_decoding, features=[feats[i] for i in idx] if continuous else None
            )
            for i, cap in zip(idx, caps, strict=True):
                cap_ok += shapes_text.caption_names_scene(val.scene(i), cap)
            qs, refs, qfeats = [], [], []
            for i in idx:
                for qa in val.words(i)[1]:
                    qs.append(builder.understanding_prompt(codes[i], mix.vqa_prompt.format(qa.question)))
                    refs.append(qa.answers[0])
                    qfeats.append(feats[i] if continuous else None)
            for qstart in range(0, len(qs), 100):
                got = generate_text(
                    model,
                    builder,
                    qs[qstart : qstart + 100],
                    cfg.vqa_decoding,
                    features=qfeats[qstart : qstart + 100] if continuous else None,
                )
                vqa_ok += sum(
                    normalise_answer(g) == normalise_answer(r)
                    for g, r in zip(got, refs[qstart : qstart + 100], strict=True)
                )
            answers += len(qs)

        # Text-to-image: teacher-forced loss on codes + </img> given the prompt.
        seqs = [builder.generation(val.words(i)[2], codes[i]) for i in range(n)]
        nll, count = 0.0, 0
        for start in range(0, n, 50):
            batch = {k: v.to(device) for k, v in collate(seqs[start : start + 50], self.text_tok.pad_token_id).items()}
            out = model(batch["input_ids"], batch["attention_mask"], batch["loss_weights"])
            k = int((batch["loss_weights"][:, 1:] > 0).sum())
            nll += float(out.loss) * k
            count += k
        return {
            "caption_attribute_acc": cap_ok / n,
            "vqa_acc": vqa_ok / max(answers, 1),
            "t2i_code_loss": nll / max(count, 1),
            "code_unigram_entropy": self.unigram_entropy(),
        }

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the training codes plus </img>: the loss of a prompt-blind model
        that predicts every image token from its frequency alone."""
        counts = torch.bincount(torch.cat(self.codes), minlength=self.cfg.lm.num_codes).double()
        total = torch.cat([counts, torch.tensor([float(len(self.codes))], dtype=torch.double)])
        p = total / total.sum()
        return float(-(p * p.clamp_min(1e-30).log()).sum())

    def save(self, model: UnifiedLM, directory: Path) -> None:
        save_lm(model, self.text_tok, directory)


class LMItems(Dataset):
    """Item j: scene ``j % num_scenes`` as one task, drawn from an RNG seeded by j."""

    def __init__(self, task: LMTask) -> None:
        self.task, self.cfg = task, task.cfg
        self.builder = task.builder(task.layout)
        self.size = task.tokenizer.cfg.encoder.image_size
        mix = self.cfg.mixture
        probs = np.array([mix.caption_prob, mix.vqa_prob, mix.t2i_prob, mix.synthesis_prob], dtype=float)
        self.probs = probs / probs.sum()
        # Synthesis prompts hold images the cache does not: their codes come from a CPU copy of
        # the frozen tokenizer, here in the data workers (the task's own may move to the GPU).
        self.encoder = copy.deepcopy(task.tokenizer).cpu().eval() if mix.synthesis_prob > 0 else None

    def __len__(self) -> int:
        return self.cfg.num_scenes * VIEWS

    def __getitem__(self, j: int) -> tuple[TokenSeq, torch.Tensor | None]:
        """(the sequence, its input images (N, 3, H, W) in the order they appear, or None)."""
        scene = j % self.cfg.num_scenes
        rng = np.random.default_rng([self.cfg.train.seed, j, 17])
        mix, codes = self.cfg.mixture, self.task.codes[scene]
        kind = rng.choice(4, p=self.probs)  # drawn as by choice(3) when synthesis_prob is 0
        if kind == 3:
            return self._synthesis(scene, rng)
        captions, qa, prompt = self.task.world.words(scene)
        image = None
        if kind == 2:  # text-to-image
            text = (
                None
                if rng.random() < mix.cfg_drop_prob
                else (prompt if rng.random() < 0.5 else captions[int(rng.integers(len(captions)))])
            )
            return self.builder.generation(text, codes, mix.t2i_weight), None
        if self.cfg.lm.understanding_input == "continuous":
            image = to_tensor(self.task.world.image(scene), self.size)[None]
        if kind == 0:
            cap = captions[int(rng.integers(len(captions)))]
            return self.builder.understanding(codes, mix.caption_prompt, cap, mix.caption_weight), image
        q = qa[int(rng.integers(len(qa)))]
        return self.builder.understanding(codes, mix.vqa_prompt.format(q.question), q.answers[0], mix.vqa_weight), image

    def _synthesis(self, scene: int, rng: np.random.Generator) -> tuple[TokenSeq, torch.Tensor]:
        """Train scene ``scene`` as the answer to a prompt made of its parts, in the order
        `pipe.synthesize` gives them: [image, "a <size> <colour> <kind>"] (one shape left out of
        the image and named; the size half the time) or [image, image] (the shapes split
        between the two, in random order). A part may show no shape (the background alone)."""
        target, world = self.task.world.scene(scene), self.task.world.cfg
        shapes = [target.shapes[i] for i in rng.permutation(len(target.shapes))]
        if rng.random() < 0.5:
            named = shapes.pop()
            size = f"{named.size} " if rng.random() < 0.5 else ""
            parts: list = [tuple(shapes), f"a {size}{named.colour} {named.kind}"]
        else:
            cut = int(rng.integers(len(shapes) + 1))
            parts = [tuple(shapes[:cut]), tuple(shapes[cut:])]
        images = torch.stack(
            [
                to_tensor(render(Scene(p, target.background), world.resolution, world.supersample), self.size)
                for p in parts
                if isinstance(p, tuple)
            ]
        )
        with torch.no_grad():
            encoded = iter(self.encoder.encode(images))
        prompt = [p if isinstance(p, str) else next(encoded) for p in parts]
        seq = self.builder.generation(prompt, self.task.codes[scene], self.cfg.mixture.synthesis_weight)
        return seq, images if self.cfg.lm.understanding_input == "continuous" else None


# Fields of LMConfig that init_from does not compare: run-time choices, provenance, and the text
# vocabulary's size, which is the copied tokenizer's (a from-scratch LM saves the BPE's real size).
_NOT_COMPARED = ("pretrained_path", "attn_implementation", "text_vocab_size")


def init_lm(cfg: LMConfig, directory: str | Path) -> UnifiedLM:
    """The saved LM in ``directory``, to train on; ``cfg`` (the run's ``lm``) must describe it.

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
    diff = [
        f.name
        for f in dataclasses.fields(LMConfig)
        if f.name not in _NOT_COMPARED and getattr(cfg, f.name) != getattr(theirs, f.name)
    ]
    if diff:
        have = ", ".join(f"lm.{n}={getattr(cfg, n)!r}" for n in diff)
        fix = " ".join(f"lm.{n}={getattr(theirs, n)}" for n in diff)
        raise ConfigError(f"{where}: {have} differ from that LM's config.yaml; set {fix}")
    return lm.float().train()  # shipped weights may be float16; train in float32
