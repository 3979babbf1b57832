"""VARGPT (lavit/vargpt/, lavit/convert/vargpt.py): parity with VARGPT's own code on a small random
model (fixture made by tests/parity/make_vargpt_fixture.py) for understanding logits and
teacher-forced next-scale logits; cached sampling through the LLM and the head against teacher
forcing; batches against single prompts; guidance; and the inputs it must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_var_convert import FIXTURE as VQ_FIXTURE
from test_var_convert import SMALL as SMALL_VQ

from lavit.checkpoint import CheckpointError
from lavit.convert.vargpt import convert_vargpt
from lavit.vargpt import VARGPTSamplingConfig
from lavit.vargpt.io import load_vargpt

FIXTURE = Path(__file__).parent / "parity" / "vargpt.safetensors"
TOL = 1e-4


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return load_file(str(FIXTURE)), meta


def published_state(tensors) -> dict[str, torch.Tensor]:
    """The small model's state dict as VARGPT saves it (the VQ-VAE fixture's VAE as vae_local)."""
    state = {k.removeprefix("sd."): v for k, v in tensors.items() if k.startswith("sd.")}
    vq = load_file(str(VQ_FIXTURE))
    state |= {f"vae_local.{k.removeprefix('sd.')}": v for k, v in vq.items() if k.startswith("sd.")}
    length = sum(p * p for p in SMALL_VQ.scales)
    state["vargpt_gen.attn_bias_for_masking"] = torch.zeros(1, 1, length, length)  # values never read
    return state


def write_published(fixture, root: Path, state: dict | None = None, **config) -> Path:
    tensors, meta = fixture
    root.mkdir(parents=True)
    ids = meta["ids"]
    fields = {
        "model_type": "vargpt_llava",
        "text_config": meta["text_config"],
        "vision_config": meta["vision_config"],
        "image_token_index": ids["image"],
        "vision_feature_layer": -2,
        "special_tokens": {
            "image_gen_start_token_id": ids["gen_start"],
            "image_gen_end_token_id": ids["gen_end"],
            "image_gen_pad_token_id": ids["gen_pad"],
        },
        **config,
    }
    (root / "config.json").write_text(json.dumps(fields))
    save_file(published_state(tensors) if state is None else state, str(root / "model.safetensors"))
    return root


@pytest.fixture(scope="module")
def model(fixture, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vargpt")
    out = convert_vargpt(write_published(fixture, tmp / "VARGPT_LLaVA-v1"), tmp / "vargpt", SMALL_VQ)
    return load_vargpt(out)[0]


def gen_images() -> torch.Tensor:
    image = load_file(str(VQ_FIXTURE))["input.images"].float() / 255
    return torch.cat([image, image.flip(-1)])  # in [0, 1]: our VQ-VAE reads them so


def prompts(fixture) -> tuple[torch.Tensor, torch.Tensor]:
    """The generation rows' prompts up to <|image_gen_start|>, left-padded."""
    tensors, meta = fixture
    start = meta["ids"]["gen_start"]
    rows = [row[: int((row == start).nonzero()[0]) + 1] for row in tensors["gen.input_ids"]]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :], mask[i, width - len(r) :] = r, 1
    return ids, mask


def scale_maps(model, codes: torch.Tensor) -> list[torch.Tensor]:
    """(B, L) codes -> per-scale (B, p, p) maps."""
    out, start = [], 0
    for p in model.head.scales:
        out.append(codes[:, start : start + p * p].view(-1, p, p))
        start += p * p
    return out


# ------------------------------------------------------------------------------------------------
# Parity with VARGPT
# ------------------------------------------------------------------------------------------------


def test_understanding_logits_match_vargpt(model, fixture):
    """<image> positions take CLIP's layer -2 (CLS dropped) through the projector."""
    tensors, _ = fixture
    out = model(tensors["und.input_ids"], tensors["und.attention_mask"], pixel_values=tensors["und.pixel_values"])
    assert out.scale_logits is None
    assert (out.logits - tensors["und.logits"]).abs().max() < TOL


def test_teacher_forced_next_scale_logits_match_vargpt(model, fixture):
    """The scale tokens through gen_in, the LLM (at the pad positions of right-padded rows),
    gen_out and the head: every scale's logits within 1e-4; the VQ-VAE reads the same codes."""
    tensors, _ = fixture
    indices = model.vqvae.encode(gen_images())
    assert torch.equal(torch.cat([i.flatten(1) for i in indices], 1), tensors["gen.codes"])
    inputs = model.vqvae.quantizer.teacher_forcing_inputs(indices)
    out = model(tensors["gen.input_ids"], tensors["gen.attention_mask"], scale_inputs=inputs)
    assert out.scale_logits.shape == tensors["gen.scale_logits"].shape == (2, 385, 64)
    assert (out.scale_logits - tensors["gen.scale_logits"]).abs().max() < TOL


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


def test_cached_sampling_through_llm_and_head_reproduces_teacher_forcing(model, fixture):
    """Scale by scale, with the LLM's and the head's KV caches, left-padded prompts: the logits of
    the true tokens equal the teacher-forced ones (g = 1: the conditional branch alone)."""
    tensors, _ = fixture
    ids, mask = prompts(fixture)
    forced = scale_maps(model, tensors["gen.codes"])
    drawn = model.sample(ids, mask, VARGPTSamplingConfig(guidance_scale=1.0), forced=forced)
    assert (torch.cat(drawn.logits, 1) - tensors["gen.scale_logits"]).abs().max() < TOL
    assert all(torch.equal(a, b) for a, b in zip(drawn.tokens, forced, strict=True))


def test_guidance_contrasts_the_llm_states_with_noise_and_g_1_is_the_conditional_branch(model, fixture):
    """With the same noise, logits are linear in g: u + g (c - u), whose g = 1 point is the
    teacher-forced conditional logits."""
    tensors, _ = fixture
    ids, mask = prompts(fixture)
    forced = scale_maps(model, tensors["gen.codes"])

    def logits(g: float) -> torch.Tensor:
        gens = [torch.Generator().manual_seed(j) for j in range(2)]
        drawn = model.sample(ids, mask, VARGPTSamplingConfig(guidance_scale=g), gens, forced=forced)
        return torch.cat(drawn.logits, 1)

    two, three = logits(2.0), logits(3.0)
    step = three - two  # c - u
    assert step.abs().max() > 1e-2  # the noise branch differs from the LLM's
    assert (two - step - tensors["gen.scale_logits"]).abs().max() < 1e-3


def test_a_batch_draws_what_its_prompts_draw_one_by_one(model, fixture):
    ids, mask = prompts(fixture)
    cfg = VARGPTSamplingConfig(guidance_scale=1.5, top_k=20)
    both = model.sample(ids, mask, cfg, [torch.Generator().manual_seed(10 + j) for j in range(2)])
    for j in range(2):
        keep = mask[j].bool()
        alone = model.sample(ids[j : j + 1, keep], mask[j : j + 1, keep], cfg, [torch.Generator().manual_seed(10 + j)])
        assert all(torch.equal(a[j : j + 1], b) for a, b in zip(both.tokens, alone.tokens, strict=True))
    pixels = model.vqvae.decode_fhat(both.f_hat)
    assert pixels.shape == (2, 3, 160, 160) and torch.isfinite(pixels).all()


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_a_prompt_past_the_context_once_the_scales_are_added_is_refused(model, fixture):
    _, meta = fixture
    long = torch.full((1, 512 - 385 + 1), 5)
    long[0, -1] = meta["ids"]["gen_start"]
    with pytest.raises(ValueError, match="runs past the LLM's context of 512"):
        model.sample(long, torch.ones_like(long))
    with pytest.raises(ValueError, match="must end with <|image_gen_start|>"):
        model.sample(long[:, :-1], torch.ones_like(long[:, :-1]))


def test_a_clip_tower_of_another_width_is_refused(fixture, tmp_path):
    _, meta = fixture
    src = write_published(fixture, tmp_path / "src", vision_config={**meta["vision_config"], "hidden_size": 24})
    with pytest.raises(CheckpointError, match="vision_tower.*shape"):
        convert_vargpt(src, tmp_path / "out", SMALL_VQ)
    assert not (tmp_path / "out").exists()


def test_a_vqvae_whose_codebook_does_not_match_the_head_is_refused(fixture, tmp_path):
    import dataclasses

    src = write_published(fixture, tmp_path / "src")
    bigger = dataclasses.replace(SMALL_VQ, codebook_size=128)
    with pytest.raises(CheckpointError, match="vae_local.*quantize.embedding.weight"):
        convert_vargpt(src, tmp_path / "out", bigger)
    assert not (tmp_path / "out").exists()


def test_another_models_folder_is_refused_in_one_line(fixture, tmp_path):
    src = write_published(fixture, tmp_path / "src", model_type="llava")
    with pytest.raises(CheckpointError, match="model_type 'llava', not VARGPT's"):
        convert_vargpt(src, tmp_path / "out", SMALL_VQ)
    state = published_state(fixture[0])
    state["extra_head.weight"] = torch.zeros(2)
    src = write_published(fixture, tmp_path / "src2", state=state)
    with pytest.raises(CheckpointError, match="'extra_head.'"):
        convert_vargpt(src, tmp_path / "out", SMALL_VQ)


def test_transformers_4_clip_layout_converts_the_same(fixture, model, tmp_path):
    """VARGPT's file was saved by transformers 4.46, whose CLIPVisionModel kept its tensors under
    ``vision_model.``: that layout converts to the same model."""
    state = published_state(fixture[0])
    state = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in state.items()}
    again = load_vargpt(
        convert_vargpt(write_published(fixture, tmp_path / "src", state=state), tmp_path / "out", SMALL_VQ)
    )[0]
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), model.state_dict().values(), strict=True))


# ------------------------------------------------------------------------------------------------
# Full size
# ------------------------------------------------------------------------------------------------

PUBLISHED_KEYS = Path(__file__).parent / "parity" / "vargpt_keys.json"
PUBLISHED_PARAMETERS = 9_278_137_863  # VARGPT_LLaVA-v1 as VARGPT's class builds it
UNUSED_PARAMETERS = 2 * 1920 + 2 * 4096  # its projectors' LayerNorms, never applied: not converted


def test_the_published_names_load_strictly_into_the_preset():
    """VARGPT_LLaVA-v1's (name, shape) list, from VARGPT's own class at full size on the meta
    device, converts and loads strictly into configs/vargpt/vargpt_llava_v1.yaml."""
    from transformers import CLIPVisionConfig, LlamaConfig

    from lavit.config import load_config
    from lavit.convert.vargpt import convert_state
    from lavit.vargpt import VARGPT, VARGPTConfig

    published = json.loads(PUBLISHED_KEYS.read_text())
    assert published["parameters"] == PUBLISHED_PARAMETERS
    cfg = load_config(Path(__file__).parents[1] / "configs" / "vargpt" / "vargpt_llava_v1.yaml", VARGPTConfig)
    text = {k: v for k, v in published["text_config"].items() if k != "model_type"}
    vision = {k: v for k, v in published["vision_config"].items() if k != "model_type"}
    with torch.device("meta"):
        ours = VARGPT(cfg, hf_config=LlamaConfig(**text), vision_config=CLIPVisionConfig(**vision))
        state = {k: torch.empty(shape) for k, shape in published["keys"]}
    ours.load_state_dict(convert_state(state, ours, "VARGPT_LLaVA-v1"), strict=True, assign=True)
    assert sum(p.numel() for p in ours.parameters()) == PUBLISHED_PARAMETERS - UNUSED_PARAMETERS


def test_the_cli_converts_the_published_size_only_and_says_why_in_one_line(fixture, tmp_path, capsys):
    """``lavit convert vargpt`` reads VARGPT's VQ-VAE as VAR's published one: this small model's is
    another size, named in one line, and nothing is written."""
    from conftest import assert_user_error

    from lavit.cli import main

    src = write_published(fixture, tmp_path / "src")
    rc = main(["convert", "vargpt", str(src), str(tmp_path / "out")])
    assert_user_error(rc, capsys.readouterr().err, "model.safetensors", "vae_local")
    assert not (tmp_path / "out").exists()
    rc = main(["convert", "vargpt", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert_user_error(rc, capsys.readouterr().err, "nowhere")


# ------------------------------------------------------------------------------------------------
# The pipeline: the LaVIT pipeline's calls on a VARGPT folder
# ------------------------------------------------------------------------------------------------


def small_tokenizer(meta):
    """A word-level tokenizer with VARGPT's special tokens at the small model's ids."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = meta["ids"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i for i in range(3, ids["image"])}
    specials = {"<image>": ids["image"], "<|image_gen_start|>": ids["gen_start"]}
    specials |= {"<|image_gen_end|>": ids["gen_end"], "<|image_gen_pad|>": ids["gen_pad"]}
    tok = Tokenizer(models.WordLevel(vocab | specials, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<unk>",
        additional_special_tokens=list(specials),
    )  # fmt: skip


def test_the_pipeline_captions_answers_and_draws_from_a_vargpt_folder(model, fixture, tmp_path, capsys):
    from lavit.vargpt.pipeline import VARGPTPipeline, VARGPTPipelineConfig

    _, meta = fixture
    cfg = VARGPTPipelineConfig(system="w3 w4", caption_prompt="w5 w6", image_size=28)
    folder = VARGPTPipeline(model, small_tokenizer(meta), cfg).save_pretrained(tmp_path / "pipe")
    pipe = VARGPTPipeline.from_pretrained(folder)
    images = torch.rand(2, 3, 28, 28)
    # The CLIP tower reads the images normalised once (CLIP's mean and std), whatever the call.
    seen, embed = [], pipe.model.embed
    pipe.model.embed = lambda ids, pixels=None, *a: (seen.append(pixels), embed(ids, pixels, *a))[1]
    assert [type(c) for c in pipe.caption(images)] == [str, str]
    del pipe.model.embed
    mean, std = torch.tensor(cfg.image_mean).view(1, 3, 1, 1), torch.tensor(cfg.image_std).view(1, 3, 1, 1)
    assert torch.allclose(seen[0], (images - mean) / std)
    assert len(pipe.answer(images, ["w7 w8", "w9"])) == 2
    one = pipe.generate_image(["w10 w11", "w12"], seed=3, guidance_scale=1.5)
    assert [im.size for im in one] == [(160, 160)] * 2
    again = pipe.generate_image(["w12"], seed=4, guidance_scale=1.5)  # image 1 of the first call
    diff = np.abs(np.asarray(again[0], dtype=int) - np.asarray(one[1], dtype=int))
    assert diff.max() <= 1  # the same tokens; the decoder's float noise may move a pixel by one level
    # The same folder through the command line.
    from conftest import assert_user_error, write_image

    from lavit.cli import main

    image = write_image(tmp_path / "x.png", (200, 40, 40))
    assert main(["caption", "--model", str(folder), str(image)]) == 0
    assert main(["vqa", "--model", str(folder), str(image), "w7 w8"]) == 0
    assert main(["generate", "--model", str(folder), "--out", str(tmp_path / "gen"), "--seed", "4", "w12"]) == 0
    drawn = np.asarray(Image.open(tmp_path / "gen" / "000_0.png"), dtype=int)
    assert np.abs(drawn - np.asarray(again[0], dtype=int)).max() <= 1
    rc = main(["generate", "--model", str(folder), "--out", str(tmp_path / "g2"), "--ratio", "4:3", "w12"])
    assert_user_error(rc, capsys.readouterr().err, "VARGPT folder", "--ratio")
