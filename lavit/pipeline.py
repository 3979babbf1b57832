"""LaVITPipeline: the trained stages behind one object, saved and loaded as one directory.

    pipe = LaVITPipeline.from_pretrained("checkpoints/my-model")      # or from_parts(...)
    pipe.caption(["cat.png"])                                         # -> ["a cat on a sofa"]
    pipe.answer(["cat.png"], ["What animal is this?"])                # -> ["cat"]
    codes = pipe.generate_tokens(["a red circle"], num_images=2, seed=0)
    images = pipe.generate_image(["a red circle"], ratio="4:3", seed=0)   # PIL images
    best = pipe.generate(["a red circle"], candidates=8)              # best of 8 by the LM's caption score
    images = pipe.synthesize([[Path("cat.png"), "in watercolour"]])   # image + text -> image
    images = pipe.reconstruct(["cat.png"])                            # image -> codes -> image

A pipeline directory holds one model directory per stage and the inference defaults:

    my-model/
      pipeline.yaml     PipelineConfig: prompts, text decoding, image-token and decoder sampling
      tokenizer/        the dynamic visual tokenizer (tokenizer/io.py)
      lm/               the unified LM, its vocabulary layout and text tokenizer (lavit/lm_io.py)
      diffusion/        the diffusion detokenizer (detokenizer/diffusion/io.py), optional

Only the tokenizer is required: reconstruction needs a decoder, not the LM. Decoders are found
by name (``DECODERS``), so later ones plug in beside ``diffusion``. Images may be given as paths,
PIL images or a (B, 3, H, W) float tensor in [0, 1].

Loading reads only what is inside the pipeline folder: a stage or file that is a symlink out of
it is refused (one line naming it), and so is every damaged file (lavit/checkpoint.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from detokenizer.diffusion import DiffusionSamplingConfig
from detokenizer.var.config import VARSamplingConfig
from lavit.checkpoint import CheckpointError, atomic_dir, model_subdir, read_config_file
from lavit.config import ImageSamplingConfig, TextDecodingConfig, check, fills_once, to_yaml
from lavit.data.image_io import load_image
from lavit.data.transforms import to_pil, to_tensor
from lavit.generate import generate_grounded, generate_image_tokens, generate_text, seeded_generators
from lavit.lm_io import load_lm, save_lm
from lavit.model import UnifiedLM
from lavit.pipeline_config import DECODERS, PipelineConfig, check_decoder_names
from lavit.pipeline_grounding import GroundingMixin
from lavit.sequence import SequenceBuilder, Text, collate
from lavit.visual_prompts import Mark
from tokenizer import DynamicVisualTokenizer, load_tokenizer, save_tokenizer

PIPELINE_FILE = "pipeline.yaml"
ImageInput = str | os.PathLike[str] | Image.Image  # in a multimodal prompt a str is text
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
Images = Sequence[ImageInput] | torch.Tensor


class Generation(NamedTuple):
    """What :meth:`LaVITPipeline.generate` returns, one entry per image, prompt-major."""

    images: list[Image.Image]
    codes: list[torch.Tensor]  # the codes each image was rendered from
    scores: torch.Tensor | None  # log p(prompt | image) of each kept image; None without candidates
    candidate: list[int]  # which candidate was kept (0: the one drawn without reranking)


# Candidate k of image j is drawn with seed + j + k * CANDIDATE_SEED_STRIDE, so candidate 0 is the
# image drawn without reranking and an image's candidates do not depend on what shares its batch.
CANDIDATE_SEED_STRIDE = 1_000_000


class LaVITPipeline(GroundingMixin):
    """Tokenizer + unified LM + detokenizers with LaVIT's inference defaults (and, for an LM
    with location tokens, grounding: lavit/pipeline_grounding.py).

    Args:
        tokenizer: a trained dynamic visual tokenizer.
        lm: the unified LM whose code block matches the tokenizer's codebook (None: no
            captioning, VQA or generation; reconstruction still works).
        text_tokenizer: the LM's text tokenizer.
        cfg: prompts and decoding defaults (must match how the LM was trained).
        decoders: name -> detokenizer trained on this tokenizer's codes.
    """

    def __init__(
        self,
        tokenizer: DynamicVisualTokenizer,
        lm: UnifiedLM | None = None,
        text_tokenizer: PreTrainedTokenizerBase | None = None,
        cfg: PipelineConfig | None = None,
        decoders: dict[str, torch.nn.Module] | None = None,
    ) -> None:
        if lm is not None and lm.layout.num_codes != tokenizer.codebook_size:
            raise CheckpointError(
                f"the LM's vocabulary has {lm.layout.num_codes} image codes but the visual tokenizer's "
                f"codebook has {tokenizer.codebook_size}: they were not trained together; load the "
                "tokenizer the LM was trained on (its tokenizer_dir)"
            )
        if (lm is None) != (text_tokenizer is None):
            raise ValueError("give the LM and its text tokenizer together")
        check_decoder_names(decoders or {})
        self.tokenizer, self.lm, self.text_tokenizer = tokenizer.eval(), lm, text_tokenizer
        self.decoders = {name: d.eval() for name, d in (decoders or {}).items()}
        self.cfg = cfg or PipelineConfig()
        self.builder = None
        if lm is not None:
            lm.eval()
            self.builder = SequenceBuilder(
                text_tokenizer, lm.layout, lm.hf.config.max_position_embeddings, add_bos=lm.cfg.add_bos
            )

    # --- loading and saving --------------------------------------------------------------------

    @classmethod
    def from_parts(
        cls,
        tokenizer_dir: str | Path,
        lm_dir: str | Path | None = None,
        cfg: PipelineConfig | None = None,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        **decoder_dirs: str | Path | None,
    ) -> LaVITPipeline:
        """Assemble from stage outputs, e.g. ``from_parts("runs/tokenizer_tiny/model",
        "runs/lm_tiny/model", diffusion="runs/diffusion_tiny/model")``. Each stage folder is
        its own root: no file it loads may resolve outside it. ``dtype``: as in :meth:`from_pretrained`."""
        check_decoder_names(decoder_dirs)
        return cls._load(tokenizer_dir, lm_dir, cfg, device, decoder_dirs, root=None, dtype=dtype)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> LaVITPipeline:
        """Load a directory written by :meth:`save_pretrained` (or ``lavit convert lavit``).

        ``dtype`` (e.g. ``torch.bfloat16``, LaVIT's on a GPU): the LM's weights are built in it,
        and LaVIT's pixel decoder runs its conditioner and UNet in it; the visual tokenizer, the
        VAE and the detokenizers trained here stay float32. None: everything in float32.

        Everything is read from inside ``directory``: a stage folder or file that is a symlink
        resolving outside it is refused, as are non-regular files (lavit/checkpoint.py).

        Raises:
            CheckpointError: a stage or file is missing, damaged or outside the folder (one line
                naming it); ConfigError: pipeline.yaml or a config.yaml holds a bad value.
        """
        directory = Path(directory)
        cfg_path = directory / PIPELINE_FILE
        if not directory.is_dir() or not os.path.lexists(cfg_path):
            what = "does not exist" if not directory.exists() else f"has no {PIPELINE_FILE}"
            raise CheckpointError(
                f"{directory} {what}: a pipeline directory holds {PIPELINE_FILE}, tokenizer/ and its other "
                "stages (write one with LaVITPipeline.save_pretrained, or pass the stage folders to from_parts)"
            )
        cfg = read_config_file(cfg_path, PipelineConfig, root=directory)
        stages = {}
        for name in ("tokenizer", "lm", *DECODERS):
            path = directory / name
            if os.path.lexists(path):
                stages[name] = model_subdir(path, root=directory)
        if "tokenizer" not in stages:
            raise CheckpointError(
                f"{directory / 'tokenizer'} not found: a pipeline needs its tokenizer/ stage; restore it "
                "or re-save the pipeline with LaVITPipeline.save_pretrained"
            )
        decoders = {name: path for name, path in stages.items() if name in DECODERS}
        return cls._load(stages["tokenizer"], stages.get("lm"), cfg, device, decoders, root=directory, dtype=dtype)

    @classmethod
    def _load(
        cls,
        tokenizer_dir: str | Path,
        lm_dir: str | Path | None,
        cfg: PipelineConfig | None,
        device: str,
        decoder_dirs: dict[str, str | Path | None],
        root: Path | None,
        dtype: torch.dtype | None = None,
    ) -> LaVITPipeline:
        """Load the stages; ``root``: the folder all of them must stay inside (None: each its own)."""
        tokenizer = load_tokenizer(tokenizer_dir, device, root=root)  # first: the smallest and always there
        lm = text_tok = None
        if lm_dir is not None:
            lm, text_tok = load_lm(lm_dir, device, root=root, dtype=dtype)
        decoders = {
            name: DECODERS[name].load(d, device, root=root) for name, d in decoder_dirs.items() if d is not None
        }
        for model in decoders.values():
            if dtype is not None and hasattr(model, "set_dtype"):  # LaVIT's pixel decoder
                model.set_dtype(dtype)
        return cls(tokenizer, lm, text_tok, cfg, decoders)

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write every stage and the defaults atomically (a crash leaves the old copy intact)."""
        with atomic_dir(directory) as tmp:
            save_tokenizer(self.tokenizer, tmp / "tokenizer")
            if self.lm is not None:
                save_lm(self.lm, self.text_tokenizer, tmp / "lm")
            for name, model in self.decoders.items():
                DECODERS[name].save(model, tmp / name)
            (tmp / PIPELINE_FILE).write_text(to_yaml(self.cfg))
        return Path(directory)

    def to(self, device: str | torch.device) -> LaVITPipeline:
        for module in [self.tokenizer, self.lm, *self.decoders.values()]:
            if module is not None:
                module.to(device)
        return self

    @property
    def image_size(self) -> int:
        """The side, in pixels, that images are resized to before tokenization."""
        return self.tokenizer.cfg.encoder.image_size

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    def _need_lm(self, what: str) -> UnifiedLM:
        if self.lm is None:
            raise ValueError(f"{what} needs the LM: load the pipeline with an lm/ stage (from_parts(..., lm_dir))")
        return self.lm

    def _decoder(self, name: str) -> torch.nn.Module:
        if name not in self.decoders:
            have = ", ".join(sorted(self.decoders)) or "none"
            raise ValueError(f"decoder {name!r} is not loaded (loaded: {have}); add its stage folder to the pipeline")
        return self.decoders[name]

    # --- images -> codes -----------------------------------------------------------------------

    def images_to_tensor(self, images: Images) -> torch.Tensor:
        """Paths / PIL images / a tensor -> (B, 3, S, S) at the tokenizer's resolution."""
        size = self.image_size
        if isinstance(images, torch.Tensor):
            batch = images[None] if images.ndim == 3 else images
        else:
            if len(images) == 0:
                raise ValueError("no images given")
            pil = [im if isinstance(im, Image.Image) else load_image(im) for im in images]
            batch = torch.stack([to_tensor(im, size) for im in pil])
        if batch.shape[-2:] != (size, size):
            raise ValueError(
                f"image tensors must be {size}x{size} (the tokenizer's resolution), got "
                f"{tuple(batch.shape[-2:])}; pass PIL images or paths to have them resized"
            )
        return batch.to(self.device)

    @torch.no_grad()
    def encode(self, images: Images) -> list[torch.Tensor]:
        """Images -> one LongTensor of codes each (variable length)."""
        return [c.cpu() for c in self.tokenizer.encode(self.images_to_tensor(images))]

    # --- understanding -------------------------------------------------------------------------

    def _understand(self, images: Images, prompts: list[Text], decoding: TextDecodingConfig, mode: str = "text"):
        """Text after each (image, prompt): strings (``mode`` "text"), or strings and boxes
        ("grounded", "box": lavit.generate.generate_grounded)."""
        batch = self.images_to_tensor(images)
        if batch.shape[0] != len(prompts):
            raise ValueError(f"{batch.shape[0]} images for {len(prompts)} prompts")
        lm = self._need_lm("captioning, VQA and grounding")
        codes, features = self._read_images(batch, lm.cfg.understanding_input == "continuous")
        seqs = [self.builder.understanding_prompt(c, p) for c, p in zip(codes, prompts, strict=True)]
        if mode == "text":
            return generate_text(lm, self.builder, seqs, decoding, features=features)
        return generate_grounded(lm, self.builder, seqs, decoding, mode, features=features)

    def _read_images(
        self, batch: torch.Tensor, as_features: bool
    ) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """How the LM reads images: (their codes, None), or ``as_features`` (placeholder codes,
        the tokenizer's continuous features), the placeholders as many as the features so that
        one keep mask serves both, even a sampled one (LaVIT's)."""
        if not as_features:
            return [c.cpu() for c in self.tokenizer.encode(batch)], None
        features = self.tokenizer.encode_features(batch)
        return [torch.zeros(len(f), dtype=torch.long) for f in features], features

    @torch.no_grad()
    def caption_logprob(self, images: Images, texts: Sequence[str], prompt: str | None = None) -> torch.Tensor:
        """How well each text captions its image under the LM: log p(text </s> | image, caption
        prompt), summed over the text's tokens -> (B,) float tensor. Higher is a better match."""
        batch = self.images_to_tensor(images)
        if batch.shape[0] != len(texts):
            raise ValueError(f"{batch.shape[0]} images for {len(texts)} texts")
        lm = self._need_lm("caption scoring")
        prompt = self.cfg.caption_prompt if prompt is None else prompt
        codes, per_image = self._read_images(batch, lm.cfg.understanding_input == "continuous")
        seqs = [self.builder.understanding(c, prompt, t) for c, t in zip(codes, texts, strict=True)]
        inputs = {k: v.to(self.device) for k, v in collate(seqs, self.text_tokenizer.pad_token_id).items()}
        features = feature_mask = None
        if per_image is not None:
            features, feature_mask = torch.cat(per_image), inputs["image_mask"]
        return lm.sequence_logprob(
            inputs["input_ids"], inputs["attention_mask"], inputs["loss_weights"], features, feature_mask
        ).float()

    def caption(
        self, images: Images, prompt: str | None = None, decoding: TextDecodingConfig | None = None
    ) -> list[str]:
        """One caption per image (LaVIT: 2 beams, up to 36 new tokens)."""
        batch = self.images_to_tensor(images)
        prompt = self.cfg.caption_prompt if prompt is None else prompt
        return self._understand(batch, [prompt] * len(batch), decoding or self.cfg.caption_decoding)

    def answer(
        self,
        images: Images,
        questions: Sequence[str],
        template: str | None = None,
        decoding: TextDecodingConfig | None = None,
        marks: Sequence[Sequence[Mark]] | None = None,
    ) -> list[str]:
        """One answer per (image, question) pair, asked as ``template.format(question)``
        (LaVIT's "Question: {} Answer:", 5 beams, up to 10 new tokens). ``marks``: per image, the
        visual prompts drawn on it first (ViP-LLaVA: "the shape in the red ellipse";
        lavit/visual_prompts.py)."""
        template = self.cfg.vqa_prompt if template is None else template
        if not fills_once(template):
            raise ValueError(f"VQA template {template!r} must hold the question's place as {{}} once")
        empty = [i for i, q in enumerate(questions) if not q.strip()]
        if empty:
            raise ValueError(f"question {empty[0]} is empty")
        if marks is not None:
            images = self.mark_images(images, marks)
        return self._understand(images, [template.format(q) for q in questions], decoding or self.cfg.vqa_decoding)

    # --- generation ----------------------------------------------------------------------------

    def _prompt(self, prompt: str | Sequence[str | ImageInput | torch.Tensor] | None):
        """Text, None (unconditional) or a multimodal list, whose images become their codes ->
        (the prompt for the sequence builder, its images' tokenizer features or None). The
        features are what an LM with continuous understanding input reads in the codes' place."""
        if prompt is None or isinstance(prompt, str):
            return prompt, None
        parts = list(prompt)
        if not parts:
            raise ValueError("empty multimodal prompt: give text, images or both")
        for part in parts:
            if isinstance(part, str) and Path(part).suffix.lower() in IMAGE_SUFFIXES and Path(part).is_file():
                raise ValueError(
                    f"prompt part {part!r} is a str, which a multimodal prompt reads as text; for the "
                    f"image pass Path({part!r}) or a PIL image"
                )
        as_features = self._need_lm("image-token generation").cfg.prompt_images_as_features
        if as_features and any(isinstance(p, torch.Tensor) for p in parts):
            raise ValueError(
                "this LM reads a prompt's images as continuous features (lm.understanding_input: continuous, "
                "lm.synthesis_input: understanding): give them as paths or PIL images, not as codes"
            )
        pending = [p for p in parts if not isinstance(p, str | torch.Tensor)]
        if not pending:
            return parts, None
        codes, features = self._read_images(self.images_to_tensor(pending), as_features)
        images = iter(codes)
        built = [p if isinstance(p, str | torch.Tensor) else next(images) for p in parts]
        return built, None if features is None else torch.cat(features)

    def generate_tokens(
        self,
        prompts: Sequence[str | Sequence[str | ImageInput | torch.Tensor] | None],
        *,
        num_images: int = 1,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        seed: int = 0,
        sampling: ImageSamplingConfig | None = None,
    ) -> list[torch.Tensor]:
        """Image codes for each prompt (text, a list mixing text and images, or None).

        Image ``j`` gets its own generator seeded ``seed + j`` (prompt-major order), so it is the
        same whatever else is generated with it.

        Returns:
            ``len(prompts) * num_images`` LongTensors of codes, prompt-major.
        """
        lm = self._need_lm("image-token generation")
        if num_images < 1:
            raise ValueError(f"num_images must be at least 1, got {num_images}")
        sampling = sampling or self.cfg.image_sampling
        # An image never holds more codes than the tokenizer has patches: cap the length there,
        # so a model that does not close the image (</img>) still yields decodable codes.
        most = self.tokenizer.cfg.encoder.num_patches
        if sampling.max_tokens > most:
            sampling = dataclasses.replace(sampling, max_tokens=most, min_tokens=min(sampling.min_tokens, most))
        if guidance_scale is not None:
            sampling = dataclasses.replace(sampling, guidance_scale=guidance_scale)
        built, features = zip(*(self._prompt(p) for p in prompts), strict=True) if prompts else ((), ())
        generators = seeded_generators(len(built) * num_images, seed, self.device)
        return generate_image_tokens(
            lm,
            self.builder,
            list(built),
            sampling,
            num_images=num_images,
            negative_prompt=negative_prompt,
            generator=generators,
            features=list(features) if lm.cfg.prompt_images_as_features else None,
        )

    # --- pixels --------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(
        self,
        codes: list[torch.Tensor],
        *,
        decoder: str = "diffusion",
        ratio: str | float | None = None,
        size: tuple[int, int] | None = None,
        seed: int = 0,
        sampling: DiffusionSamplingConfig | VARSamplingConfig | None = None,
    ) -> list[Image.Image]:
        """Code sequences -> PIL images; image ``j`` is rendered with seed ``seed + j``.
        ``sampling`` defaults to the pipeline's settings for ``decoder``; ``ratio`` picks an
        aspect-ratio bucket (diffusion only: VAR renders its square resolution)."""
        model = self._decoder(decoder)
        sampling = sampling or self.cfg.sampling_for(decoder)
        if ratio is not None:
            if not hasattr(sampling, "ratio"):
                raise ValueError(f"the {decoder} decoder renders square images only; drop ratio={ratio!r}")
            sampling = dataclasses.replace(sampling, ratio=str(ratio))
        device = next(model.parameters()).device
        images = DECODERS[decoder].decode(
            model,
            self.tokenizer,
            [c.to(device) for c in codes],
            sampling,
            size=size,
            generator=seeded_generators(len(codes), seed, device),
        )
        return [to_pil(im) for im in images]

    def generate_image(
        self,
        prompts: Sequence[str | Sequence[str | ImageInput | torch.Tensor] | None],
        *,
        guidance_scale_for_llm: float | None = None,
        decoder: str = "diffusion",
        ratio: str | float | None = None,
        seed: int = 0,
        num_images: int = 1,
        negative_prompt: str | None = None,
        sampling: ImageSamplingConfig | None = None,
        decoder_sampling: DiffusionSamplingConfig | VARSamplingConfig | None = None,
        candidates: int | None = None,
    ) -> list[Image.Image]:
        """Text (or multimodal) prompts -> image codes from the LM -> pixels from ``decoder``.

        Returns ``len(prompts) * num_images`` PIL images, prompt-major. With ``candidates`` > 1
        (default ``cfg.image_candidates``), each is the best of that many (see :meth:`generate`).
        """
        return self.generate(
            prompts,
            candidates=candidates,
            guidance_scale_for_llm=guidance_scale_for_llm,
            decoder=decoder,
            ratio=ratio,
            seed=seed,
            num_images=num_images,
            negative_prompt=negative_prompt,
            sampling=sampling,
            decoder_sampling=decoder_sampling,
        ).images

    def generate(
        self,
        prompts: Sequence[str | Sequence[str | ImageInput | torch.Tensor] | None],
        *,
        candidates: int | None = None,
        guidance_scale_for_llm: float | None = None,
        decoder: str = "diffusion",
        ratio: str | float | None = None,
        seed: int = 0,
        num_images: int = 1,
        negative_prompt: str | None = None,
        sampling: ImageSamplingConfig | None = None,
        decoder_sampling: DiffusionSamplingConfig | VARSamplingConfig | None = None,
    ) -> Generation:
        """:meth:`generate_image`, keeping the codes, optionally as best of ``candidates``.

        Self-reranking: with ``candidates`` = n > 1 (default ``cfg.image_candidates``) each image
        is drawn n times (candidate k with seed ``seed + j + k * CANDIDATE_SEED_STRIDE``), every
        render is scored by the LM's own understanding, :meth:`caption_logprob` of the prompt, and
        the best is kept, as DALL-E reranks its samples with CLIP; it costs n times the
        generation. Text prompts only: the score is the prompt read as the image's caption.
        """
        n = self.cfg.image_candidates if candidates is None else candidates
        check(n >= 1, "candidates", n, "use 1 (no reranking) or more")
        if n > 1:
            bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
            if bad:
                raise ValueError(
                    f"prompt {bad[0]} is not text: reranking candidates scores the prompt as the image's "
                    "caption, so it needs text prompts; use candidates=1 for unconditional or multimodal ones"
                )
        self._decoder(decoder)  # fail before the LM runs
        texts = [p for p in prompts for _ in range(num_images)]  # each image's prompt, prompt-major
        drawn: list[tuple[list[torch.Tensor], list[Image.Image], torch.Tensor | None]] = []
        for k in range(n):
            s = seed + k * CANDIDATE_SEED_STRIDE
            codes = self.generate_tokens(
                prompts,
                num_images=num_images,
                guidance_scale=guidance_scale_for_llm,
                negative_prompt=negative_prompt,
                seed=s,
                sampling=sampling,
            )
            images = self.decode(codes, decoder=decoder, ratio=ratio, seed=s, sampling=decoder_sampling)
            drawn.append((codes, images, self.caption_logprob(images, texts) if n > 1 else None))
        if n == 1:
            codes, images, _ = drawn[0]
            return Generation(images, codes, None, [0] * len(images))
        top = torch.stack([d[2] for d in drawn], dim=1).max(dim=1)  # over (images, candidates)
        best = top.indices.tolist()
        return Generation(
            [drawn[k][1][j] for j, k in enumerate(best)],
            [drawn[k][0][j] for j, k in enumerate(best)],
            top.values.cpu(),
            best,
        )

    def synthesize(
        self,
        prompts: Sequence[Sequence[str | ImageInput]],
        *,
        decoder: str = "diffusion",
        guidance_scale_for_llm: float | None = None,
        seed: int = 0,
        num_images: int = 1,
        ratio: str | float | None = None,
    ) -> list[Image.Image]:
        """Multimodal synthesis: each prompt is a list of images and texts in order, e.g.
        ``[[img, "in blue"], [img_a, img_b]]`` (image+text, image+image). Images enter the LM
        as their codes, unwrapped, as LaVIT does (an LM with continuous understanding input reads
        their tokenizer features in the codes' place); the LM then writes a new image.

        Returns ``len(prompts) * num_images`` PIL images, prompt-major.
        """
        for i, prompt in enumerate(prompts):
            if isinstance(prompt, str | os.PathLike | Image.Image) or not len(prompt):
                raise ValueError(
                    f"prompt {i} must be a non-empty list of images and texts, e.g. [image, 'in red']; "
                    "for text alone use generate_image"
                )
            blank = [j for j, part in enumerate(prompt) if isinstance(part, str) and not part.strip()]
            if blank:
                raise ValueError(f"prompt {i}, part {blank[0]} is empty text")
        return self.generate_image(
            [list(p) for p in prompts],
            guidance_scale_for_llm=guidance_scale_for_llm,
            decoder=decoder,
            ratio=ratio,
            seed=seed,
            num_images=num_images,
            candidates=1,  # reranking scores a text prompt as the caption; these are multimodal
        )

    def reconstruct(
        self,
        images: Images,
        *,
        decoder: str = "diffusion",
        seed: int = 0,
        sampling: DiffusionSamplingConfig | VARSamplingConfig | None = None,
    ) -> list[Image.Image]:
        """Images -> their codes -> images again (square, at the decoder's resolution), with
        ``cfg.reconstruction_sampling`` unless ``sampling`` is given."""
        res = self._decoder(decoder).resolution
        sampling = sampling or self.cfg.sampling_for(decoder, reconstruction=True)
        return self.decode(self.encode(images), decoder=decoder, size=(res, res), seed=seed, sampling=sampling)
