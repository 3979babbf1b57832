"""``lavit convert lavit``: the published LaVIT-7B-v2 folder (rain1011/LaVIT-7B-v2) -> one
pipeline folder that :meth:`lavit.pipeline.LaVITPipeline.from_pretrained` and every ``lavit``
command load.

    lavit convert lavit LaVIT-7B-v2/ lavit-7b-v2/
    lavit caption --model lavit-7b-v2 --device cuda --bf16 photo.jpg

    lavit-7b-v2/
      pipeline.yaml   LaVIT's inference defaults (below)
      tokenizer/      the visual tokenizer with understanding's second merger (lavit_tokenizer)
      lm/             Llama-2-7B with LaVIT's 48,386 ids, vit_proj as its feature projection (lavit_lm)
      diffusion/      the pixel decoder: conditioner + SDXL-shaped unet/, vae/, scheduler/ (lavit_decoder);
                      left out when the folder has no highres_pixel_decoding/
      convert.json    every file read, with its SHA-256

LaVIT's defaults, from its ``predict_answers``, ``generate`` and ``generate_image``: captions
with no prompt, 2 beams, 8 to 36 new tokens, cut at the first "."; VQA as "Question: {}
Answer:", 5 beams, 2 to 10 new tokens, length penalty 0, cut at a new line, "," or "."; image
tokens at guidance 4 with top-k 50, 20 to 200 codes (256 at most: the tokenizer's patches); the
pixel decoder's 25 DDIM steps at guidance 7, 1024 px in six aspect ratios (reconstruction: 50
steps at guidance 5). Not reproduced: the
spaCy lemmatisation LaVIT applies to VQA answers for its benchmark numbers.
"""

from __future__ import annotations

from pathlib import Path

from detokenizer.diffusion.config import LaVITPixelDecoderConfig
from lavit.checkpoint import CheckpointError
from lavit.config import ImageSamplingConfig, TextDecodingConfig, TokenizerConfig, to_yaml
from lavit.convert import lavit_decoder, lavit_lm, lavit_tokenizer
from lavit.convert.common import write_converted
from lavit.lm_io import save_lm
from tokenizer.io import save_tokenizer

REFERENCE = "jy0205/LaVIT LaVIT/models: lavit_for_understanding.py, lavit_for_generation.py"


def lavit_pipeline_config():
    """LaVIT's inference defaults as a :class:`~lavit.pipeline.PipelineConfig`."""
    from detokenizer.diffusion import DiffusionSamplingConfig
    from lavit.pipeline import PipelineConfig

    return PipelineConfig(
        caption_prompt="",
        vqa_prompt="Question: {} Answer:",
        caption_decoding=TextDecodingConfig(num_beams=2, max_new_tokens=36, min_new_tokens=8, stop_strings=["."]),
        vqa_decoding=TextDecodingConfig(
            num_beams=5, max_new_tokens=10, min_new_tokens=2, length_penalty=0.0, stop_strings=["\n", ",", "."]
        ),
        image_sampling=ImageSamplingConfig(guidance_scale=4.0, top_k=50, top_p=1.0, min_tokens=20, max_tokens=200),
        diffusion_sampling=DiffusionSamplingConfig(scheduler="ddim", steps=25, guidance_scale=7.0, ratio="1:1"),
        reconstruction_sampling=DiffusionSamplingConfig(scheduler="ddim", steps=50, guidance_scale=5.0, ratio="1:1"),
    )


def convert_lavit(
    src: str | Path,
    out_dir: str | Path,
    tokenizer_cfg: TokenizerConfig | None = None,
    decoder_cfg: LaVITPixelDecoderConfig | None = None,
) -> Path:
    """Convert the LaVIT-7B-v2 folder ``src`` into the pipeline folder ``out_dir``.

    ``tokenizer_cfg`` / ``decoder_cfg``: the architectures of the visual tokenizer and the pixel
    decoder (default: the published ones); the LLM's is read from ``language_model/config.json``.

    Every tensor is read without running code (safetensors, or pickles as tensors only), every
    name and shape is checked before anything is written, and ``out_dir`` is written whole or not
    at all.

    Raises:
        CheckpointError: one line naming the missing part, or the file and tensor that do not
            fit (a checkpoint of another model or size, a tensor of the wrong shape, a pickle
            that would run code).
    """
    src = Path(src)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a folder: give the downloaded LaVIT-7B-v2 folder (rain1011/LaVIT-7B-v2)")
    tok_cfg = lavit_tokenizer.published_config() if tokenizer_cfg is None else tokenizer_cfg
    num_codes = tok_cfg.quantizer.codebook_size
    lavit_tokenizer.source_files(src)  # the parts that must be there, named first
    hf_config = lavit_lm.read_hf_config(src, num_codes)
    visual_weight = src / lavit_lm.FOLDER / lavit_lm.VISUAL_WEIGHT
    if not visual_weight.is_file():
        raise CheckpointError(
            f"{visual_weight} not found: LaVIT's understanding reads images through it (vit_proj and a second merger)"
        )
    lavit_lm.weight_files(src)
    merger, proj = lavit_lm.split_visual_weight(visual_weight, lavit_tokenizer.understanding_key_map(tok_cfg))
    tokenizer = lavit_tokenizer.load_lavit_tokenizer(src, tok_cfg, (merger, visual_weight))
    text_tok = lavit_lm.text_tokenizer(src)
    lm = lavit_lm.load_lavit_lm(src, hf_config, proj, visual_weight, num_codes)
    if lm.cfg.feature_dim != tokenizer.cfg.width:
        raise CheckpointError(
            f"{visual_weight}: vit_proj reads {lm.cfg.feature_dim} features, the tokenizer's merger gives "
            f"{tokenizer.cfg.width}: the parts are of different models"
        )
    pixel_dir = src / lavit_decoder.PIXEL_DIR
    has_decoder = pixel_dir.is_dir()
    sources = [*lavit_tokenizer.source_files(src), visual_weight, *lavit_lm.weight_files(src)]
    sources += sorted(p for p in (src / lavit_lm.FOLDER).glob("tokenizer*") if p.is_file())

    def save(folder: Path) -> None:
        save_tokenizer(tokenizer, folder / "tokenizer")
        save_lm(lm, text_tok, folder / "lm")
        if has_decoder:
            lavit_decoder.convert_lavit_decoder(
                src / lavit_decoder.DECODER_FILE,
                src / lavit_decoder.CODEBOOK_FILE,
                pixel_dir,
                folder / "diffusion",
                decoder_cfg,
            )
        (folder / "pipeline.yaml").write_text(to_yaml(lavit_pipeline_config()))

    return write_converted(
        out_dir, save, sources, converter="lavit.convert.lavit", reference=REFERENCE, pixel_decoder=has_decoder
    )
