"""Converting LaVIT-7B-v2 whole (lavit/convert/lavit.py, lavit_lm.py): the LLM input path's parity
with LaVIT's own code on a small random model (fixture made by
tests/parity/make_lavit_llm_fixture.py): understanding logits and guided image-token steps; the
vocabulary layout of a checkpoint that already holds the codes; the pipeline folder the
converter writes, run through the API and the CLI; and the files it must refuse."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_lavit_decoder_convert import FIXTURE as DECODER_FIXTURE
from test_lavit_decoder_convert import small_config as small_decoder_config
from test_lavit_decoder_convert import write_sources as write_decoder_sources
from test_lavit_tokenizer_convert import FIXTURE as TOKENIZER_FIXTURE
from test_lavit_tokenizer_convert import small_config as small_tokenizer_config
from test_lavit_tokenizer_convert import write_published as write_tokenizer
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, PreTrainedTokenizerFast

from lavit.checkpoint import CheckpointError
from lavit.config import ImageSamplingConfig, LMConfig, TextDecodingConfig
from lavit.convert.lavit import convert_lavit
from lavit.generate import _prompt_inputs, generate_image_tokens, generate_text
from lavit.model import UnifiedLM
from lavit.pipeline import LaVITPipeline
from lavit.vocab import LAVIT_LAYOUT

FIXTURE = Path(__file__).parent / "parity" / "lavit_llm.safetensors"
TOL = 1e-4
ROWS = 32000 + 2 + 64  # the small model's vocabulary: LaVIT's layout with 64 codes


@pytest.fixture(scope="module")
def fixture() -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(FIXTURE), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return load_file(str(FIXTURE)), meta


def llm_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The small Llama's state dict as published: the stored embedding rows scattered into zeros."""
    rows = tensors["llm.rows"]
    state = {}
    for key, value in tensors.items():
        if key.startswith("llm.") and key != "llm.rows":
            name = key.removeprefix("llm.")
            if name in ("model.embed_tokens.weight", "lm_head.weight"):
                full = torch.zeros(ROWS, value.shape[1])
                full[rows] = value
                value = full
            state[name] = value
    return state


def word_tokenizer(words: dict[str, int]) -> PreTrainedTokenizerFast:
    """A tokenizer whose words are the fixture's ids (EOS 2), standing in for Llama's."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **words}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def write_lavit(fixture, root: Path, *, decoder: bool = False, llm_format: str = "bin") -> Path:
    """The fixture laid out as the LaVIT-7B-v2 folder: visual_tokenizer/ (the tokenizer fixture),
    language_model/ (config.json, the Llama's weights, visual_weight.bin, the tokenizer) and,
    with ``decoder``, the pixel decoder fixture's highres_pixel_decoding/ and conditioner."""
    tensors, meta = fixture
    write_tokenizer(load_file(str(TOKENIZER_FIXTURE)), root)
    lm_dir = root / "language_model"
    lm_dir.mkdir()
    (lm_dir / "config.json").write_text(json.dumps({**meta["llama"], "model_type": "llama", "vocab_size": ROWS}))
    state = llm_state(tensors)
    if llm_format == "bin":
        torch.save(state, lm_dir / "pytorch_model.bin")
    else:
        save_file(state, str(lm_dir / "model.safetensors"))
    torch.save(
        {k.removeprefix("vw."): v for k, v in tensors.items() if k.startswith("vw.")}, lm_dir / "visual_weight.bin"
    )
    word_tokenizer(meta["words"]).save_pretrained(lm_dir)
    if decoder:
        d_tensors = load_file(str(DECODER_FIXTURE))
        with safe_open(str(DECODER_FIXTURE), framework="pt") as f:
            d_meta = {k: json.loads(v) for k, v in f.metadata().items()}
        made = write_decoder_sources(d_tensors, d_meta, root / "scratch")
        shutil.move(made["decoder"], root / "visual_tokenizer" / made["decoder"].name)
        shutil.move(made["pixel"], root / "highres_pixel_decoding")
        shutil.rmtree(root / "scratch")
    return root


def decoder_config():
    """The pixel decoder fixture's small model, rendering 32 x 32 and 32 x 48 buckets."""
    with safe_open(str(DECODER_FIXTURE), framework="pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
    return dataclasses.replace(small_decoder_config(meta), buckets=[[32, 32], [32, 48]])


@pytest.fixture(scope="module")
def pipeline_dir(fixture, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lavit_llm")
    src = write_lavit(fixture, tmp / "LaVIT-7B-v2", decoder=True)
    return convert_lavit(src, tmp / "lavit-small", small_tokenizer_config(), decoder_config())


@pytest.fixture(scope="module")
def pipe(pipeline_dir) -> LaVITPipeline:
    return LaVITPipeline.from_pretrained(pipeline_dir)


# ------------------------------------------------------------------------------------------------
# Parity with LaVIT
# ------------------------------------------------------------------------------------------------


def test_understanding_features_and_logits_match_lavit(pipe, fixture):
    """<img> vit_proj(second merger) </img> prompt, no BOS, EOS left padding: every greedy
    step's logits within 1e-4, and the same greedy answer (min 2 new tokens, as LaVIT's VQA)."""
    tensors, meta = fixture
    images = load_file(str(TOKENIZER_FIXTURE))["input.images"][:2]
    keep = tensors["und.keep"].bool()
    feats = pipe.tokenizer.encode_features_with_keep(images, keep)
    projected = pipe.lm.feature_proj(torch.cat(feats))
    assert (projected - tensors["und.features"]).abs().max() < TOL

    lm, builder = pipe.lm, pipe.builder
    seqs = [builder.understanding_prompt(torch.zeros(len(f), dtype=torch.long), p) for f, p in zip(feats, meta["und_prompts"], strict=True)]  # fmt: skip
    assert seqs[0].ids[0] == LAVIT_LAYOUT.image_start_id  # no BOS
    ids, mask, flat, fmask = _prompt_inputs(seqs, feats, builder.tok.pad_token_id, torch.device("cpu"))
    logits, cache = lm.prefill(ids, mask, flat, fmask)
    rows = tensors["llm.rows"]
    steps = [logits]
    for t in range(tensors["und.tokens"].shape[1] - 1):
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        steps.append(lm.decode_step(tensors["und.tokens"][:, t : t + 1], mask, cache))
    ours = torch.stack(steps)  # (steps, B, V)
    assert (ours[..., rows] - tensors["und.logits"]).abs().max() < TOL
    others = torch.ones(ours.shape[-1], dtype=torch.bool)
    others[rows] = False
    assert ours[..., others].abs().max() == 0  # zero rows of the fixture: exactly 0 on both sides

    decoding = TextDecodingConfig(num_beams=1, max_new_tokens=tensors["und.tokens"].shape[1], min_new_tokens=2)
    texts = generate_text(lm, builder, seqs, decoding, features=feats)
    words = {v: k for k, v in meta["words"].items()}
    want = [" ".join(words.get(int(t), "") for t in row if int(t) != 2).split() for row in tensors["und.tokens"]]
    assert [t.split() for t in texts] == want


def test_guided_image_token_steps_match_lavit(pipe, fixture):
    """Text and codes + text prompts then <img>, guided (g = 4) against <img> alone: every step's
    distribution over the codes within 1e-4 of LaVIT's (HF's guidance on log-probabilities), and
    the same greedy codes."""
    tensors, meta = fixture
    prompts = [[torch.tensor(p) if isinstance(p, list) else p for p in q] for q in meta["gen_prompts"]]
    prompts = [q[0] if len(q) == 1 else q for q in prompts]
    n = tensors["gen.tokens"].shape[1]
    cfg = ImageSamplingConfig(guidance_scale=meta["guidance"], top_k=1, min_tokens=n, max_tokens=n, kv_cache="dynamic")
    recorded: list[torch.Tensor] = []
    codes = generate_image_tokens(pipe.lm, pipe.builder, prompts, cfg, step_logits=recorded)
    assert torch.equal(torch.stack(codes), tensors["gen.tokens"] - LAVIT_LAYOUT.code_start)
    code_ids = slice(LAVIT_LAYOUT.code_start, LAVIT_LAYOUT.code_start + 64)
    ours = torch.stack(recorded)[..., code_ids].log_softmax(-1)
    theirs = tensors["gen.scores"].log_softmax(-1)
    assert (ours - theirs).abs().max() < TOL


# ------------------------------------------------------------------------------------------------
# The converted folder in use
# ------------------------------------------------------------------------------------------------


def test_the_converted_folder_records_its_sources_and_lavits_defaults(pipeline_dir, pipe):
    record = json.loads((pipeline_dir / "convert.json").read_text())
    names = {s["file"] for s in record["sources"]}
    assert {"tokenizer_encoder.bin", "visual_weight.bin", "pytorch_model.bin", "tokenizer.json"} <= names
    assert all(len(s["sha256"]) == 64 for s in record["sources"]) and record["pixel_decoder"]
    lm = pipe.lm
    assert lm.layout.text_size == 32000 and lm.layout.total == ROWS  # the checkpoint's rows, not resized
    assert (lm.cfg.add_bos, lm.cfg.understanding_input, lm.cfg.synthesis_input) == (False, "continuous", "discrete")
    assert json.loads((pipeline_dir / "lm" / "hf_config.json").read_text())["rms_norm_eps"] == 1e-5
    assert pipe.tokenizer.understanding_merger is not None
    cfg = pipe.cfg
    assert (cfg.caption_prompt, cfg.caption_decoding.num_beams, cfg.caption_decoding.min_new_tokens) == ("", 2, 8)
    assert (cfg.vqa_prompt, cfg.vqa_decoding.num_beams, cfg.vqa_decoding.length_penalty) == (
        "Question: {} Answer:",
        5,
        0.0,
    )
    assert (cfg.image_sampling.guidance_scale, cfg.image_sampling.top_k) == (4.0, 50)
    assert (cfg.diffusion_sampling.steps, cfg.diffusion_sampling.guidance_scale) == (25, 7.0)
    assert (cfg.reconstruction_sampling.steps, cfg.reconstruction_sampling.guidance_scale) == (50, 5.0)


def test_every_task_runs_on_the_converted_folder(pipe):
    """Caption, VQA, text to image, image + text to image and reconstruction through LaVIT's
    pixel decoder (its tiny fixture model); the LaVIT keep mask is drawn, so only shapes are fixed."""
    images = load_file(str(TOKENIZER_FIXTURE))["input.images"][:2]
    fast = dataclasses.replace(pipe.cfg.diffusion_sampling, steps=2)
    assert len(pipe.caption(images)) == 2
    assert len(pipe.answer(images, ["w1 w2", "w3"])) == 2
    made = pipe.generate_image(["w4 w5"], ratio="3:2", decoder_sampling=fast)
    assert made[0].size == (48, 32)
    from lavit.data.transforms import to_pil

    mixed = pipe.synthesize([[to_pil(images[0]), "w6 w7"]], guidance_scale_for_llm=2.0)
    assert mixed[0].size == (32, 32)
    assert [im.size for im in pipe.reconstruct(images, sampling=fast)] == [(32, 32)] * 2


def test_the_cli_captions_with_the_converted_folder(pipeline_dir, tmp_path, capsys):
    from lavit.cli import main
    from lavit.data.transforms import to_pil

    image = tmp_path / "x.png"
    to_pil(load_file(str(TOKENIZER_FIXTURE))["input.images"][0]).save(image)
    assert main(["caption", "--model", str(pipeline_dir), str(image)]) == 0
    assert f"{image}:" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------


def test_convert_lavit_refuses_bad_folders_in_one_line_writing_nothing(fixture, tmp_path, capsys):
    from conftest import assert_user_error

    from lavit.cli import main

    def refused(src: Path, *names: str) -> None:
        out = tmp_path / "out"
        with pytest.raises(CheckpointError) as e:
            convert_lavit(src, out, small_tokenizer_config())
        assert "\n" not in str(e.value) and all(n in str(e.value) for n in names), str(e.value)
        assert not out.exists() and not list(tmp_path.glob(".out*"))

    src = write_lavit(fixture, tmp_path / "src")
    (src / "language_model" / "visual_weight.bin").rename(tmp_path / "vw.bin")
    refused(src, "visual_weight.bin")  # a folder missing a part

    (tmp_path / "vw.bin").rename(src / "language_model" / "visual_weight.bin")
    config = src / "language_model" / "config.json"
    good = config.read_text()
    config.write_text(json.dumps({**json.loads(good), "vocab_size": 32000}))
    refused(src, "config.json", "vocab_size")  # another model: a plain Llama

    config.write_text(good)
    weights = src / "language_model" / "pytorch_model.bin"
    state = torch.load(weights, weights_only=True)
    state["model.layers.0.mlp.up_proj.weight"] = torch.zeros(41, 16)
    torch.save(state, weights)
    refused(src, "pytorch_model.bin", "model.layers.0.mlp.up_proj.weight")  # a tensor of the wrong shape

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"model.embed_tokens.weight": Evil()}, weights)
    refused(src, "pytorch_model.bin", "refused")  # a pickle that would run code
    assert "ran" not in capsys.readouterr().out

    refused(tmp_path / "nowhere", "nowhere")
    # The command line: the published size is LaVIT-7B-v2's, so this small model is another model.
    torch.save(state | {"model.embed_tokens.weight": torch.zeros(ROWS, 16)}, weights)
    rc = main(["convert", "lavit", str(src), str(tmp_path / "out")])
    assert_user_error(rc, capsys.readouterr().err, "config.json", "vocab_size 32066, expected 48386")
    rc = main(["convert", "lavit", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert_user_error(rc, capsys.readouterr().err, "nowhere")


def test_visual_weight_with_a_foreign_tensor_is_refused(fixture, tmp_path):
    src = write_lavit(fixture, tmp_path / "src", llm_format="safetensors")
    vw = src / "language_model" / "visual_weight.bin"
    state = torch.load(vw, weights_only=True)
    state["token_predictor.in_conv.1.weight"] = torch.zeros(32, 32)
    torch.save(state, vw)
    with pytest.raises(CheckpointError, match="visual_weight.bin.*token_predictor.in_conv.1.weight"):
        convert_lavit(src, tmp_path / "out", small_tokenizer_config())


# ------------------------------------------------------------------------------------------------
# The vocabulary of a checkpoint that already holds the codes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [100, 100 + 2 + 16])
def test_a_pretrained_folder_with_the_codes_rows_is_laid_out_by_the_config(tmp_path, rows):
    """A Llama folder of 100 text rows gets <img>, </img> and 16 codes added; one whose embedding
    already has 100 + 2 + 16 rows (as LaVIT's 48,386) is that layout, not 118 text ids resized again."""
    from transformers import LlamaForCausalLM

    hf = LlamaForCausalLM(LlamaConfig(vocab_size=rows, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32))  # fmt: skip
    hf.save_pretrained(tmp_path / "llama", safe_serialization=True)
    cfg = LMConfig(pretrained_path=str(tmp_path / "llama"), text_vocab_size=100, num_codes=16, tie_embeddings=False)
    lm = UnifiedLM(cfg)
    assert (lm.layout.text_size, lm.layout.total) == (100, 118)
    if rows == 118:  # the rows are the checkpoint's, untouched
        assert torch.equal(lm.hf.get_input_embeddings().weight, hf.get_input_embeddings().weight)


# ------------------------------------------------------------------------------------------------
# The tokenizer: sentencepiece's ids
# ------------------------------------------------------------------------------------------------


def test_a_sentencepiece_tokenizer_converts_to_the_ids_sentencepiece_gives(tmp_path):
    """LaVIT's tokenizer.model (here a small sentencepiece BPE with Llama's normaliser) becomes a
    fast tokenizer that encodes every probe text as sentencepiece does; one that disagrees is refused."""
    spm = pytest.importorskip("sentencepiece")
    from lavit.convert.lavit_lm import PROBES, check_against_sentencepiece, text_tokenizer
    from lavit.text_tokenizer import load_text_tokenizer

    folder = tmp_path / "src" / "language_model"
    folder.mkdir(parents=True)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([*PROBES, "a photo of a cat on a red sofa", "the quick brown fox"] * 20))
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=500, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=3,
        normalization_rule_name="identity", remove_extra_whitespaces=False, character_coverage=1.0,
    )  # fmt: skip
    (folder / "tokenizer.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "LlamaTokenizer", "legacy": True}))
    tok = text_tokenizer(tmp_path / "src")
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in PROBES:
        assert tok(text, add_special_tokens=False)["input_ids"] == sp.encode(text)
    tok.save_pretrained(tmp_path / "saved")  # as save_lm writes it into lm/text_tokenizer/
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
    again = load_text_tokenizer(tmp_path / "saved")
    assert all(again(t, add_special_tokens=False)["input_ids"] == sp.encode(t) for t in PROBES)
    with pytest.raises(CheckpointError, match="encodes 'Question"):
        check_against_sentencepiece(word_tokenizer({"Question:": 5}), folder / "tokenizer.model")


# ------------------------------------------------------------------------------------------------
# Full size
# ------------------------------------------------------------------------------------------------

# Llama-2-7B with LaVIT's 48,386 untied rows: 6,738,415,616 + 2 x 16,386 x 4,096; plus vit_proj.
LLM_PARAMETERS = 6_872_649_728
UNDERSTANDING_MERGER_PARAMETERS = 398_267_392  # = the tokenizer's merger (configs/tokenizer/lavit.yaml)


def test_the_published_llm_and_visual_weight_names_load_strictly_into_the_preset():
    """LaVIT-7B-v2's language model as transformers builds it from its config (meta device) and
    visual_weight.bin's names (LaVIT's causal_encoder, from the tokenizer's published list, and
    vit_proj 1408 -> 4096) convert and load strictly; the counts are the published ones."""
    from transformers import LlamaForCausalLM

    from lavit.convert.common import apply_key_map
    from lavit.convert.lavit_lm import build_meta_lm, convert_lm_state, lm_config
    from lavit.convert.lavit_tokenizer import published_config, understanding_key_map

    config = LlamaConfig(vocab_size=48386, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                         num_attention_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-5,
                         tie_word_embeddings=False)  # fmt: skip
    with torch.device("meta"):
        published = LlamaForCausalLM(config).state_dict()
    assert sum(v.numel() for v in published.values()) == LLM_PARAMETERS
    proj = {
        "vit_proj.weight": torch.empty(4096, 1408, device="meta"),
        "vit_proj.bias": torch.empty(4096, device="meta"),
    }
    lm = build_meta_lm(lm_config(config, 1408, Path("LaVIT-7B-v2/language_model"), 16384), config)
    state = convert_lm_state(published, "pytorch_model.bin", proj, "visual_weight.bin", lm)
    lm.load_state_dict(state, strict=True, assign=True)
    assert sum(p.numel() for p in lm.parameters()) == LLM_PARAMETERS + 4096 * 1408 + 4096

    keys = json.loads((Path(__file__).parent / "parity" / "lavit_tokenizer_keys.json").read_text())
    merger = {k: torch.empty(shape, device="meta") for k, shape in keys["tokenizer_encoder.bin"] if k.startswith("causal_encoder.")}  # fmt: skip
    ours = apply_key_map(merger, understanding_key_map(published_config()), "visual_weight.bin")
    assert all(k.startswith("understanding_merger.") for k in ours)
    assert sum(v.numel() for v in ours.values()) == UNDERSTANDING_MERGER_PARAMETERS


def test_bfloat16_runs_the_llm_and_the_unet_in_it_keeping_the_tokenizer_and_vae_float32(pipeline_dir, pipe, fixture):
    """LaVIT's precision on a GPU (here on the CPU): the LLM built in bfloat16 (no float32 copy),
    the conditioner and UNet cast, the tokenizer and VAE float32; its understanding logits stay
    within bfloat16's rounding of the float32 ones, and every task still runs."""
    half = LaVITPipeline.from_pretrained(pipeline_dir, dtype=torch.bfloat16)
    assert {p.dtype for p in half.lm.parameters()} == {torch.bfloat16}
    decoder = half.decoders["diffusion"]
    assert decoder.unet.dtype == torch.bfloat16 and decoder.conditioner.in_proj.weight.dtype == torch.bfloat16
    assert decoder.vae.dtype == torch.float32 and half.tokenizer.quantizer.codebook.dtype == torch.float32
    tensors, meta = fixture
    images = load_file(str(TOKENIZER_FIXTURE))["input.images"][:2]
    feats = half.tokenizer.encode_features_with_keep(images, tensors["und.keep"].bool())
    seqs = [half.builder.understanding_prompt(torch.zeros(len(f), dtype=torch.long), p) for f, p in zip(feats, meta["und_prompts"], strict=True)]  # fmt: skip
    logits = [m.lm.prefill(*_prompt_inputs(seqs, feats, 2, torch.device("cpu")))[0] for m in (half, pipe)]
    rows = tensors["llm.rows"]
    assert (logits[0][:, rows] - logits[1][:, rows]).abs().max() < 0.1 * logits[1][:, rows].abs().max()
    fast = dataclasses.replace(half.cfg.diffusion_sampling, steps=2)
    assert half.generate_image(["w4 w5"], decoder_sampling=fast)[0].size == (32, 32)
    assert len(half.caption(images)) == 2


def test_the_cli_refuses_bf16_without_a_gpu(pipeline_dir, tmp_path, capsys):
    from conftest import assert_user_error, write_image

    from lavit.cli import main

    image = write_image(tmp_path / "x.png", (200, 30, 30))
    rc = main(["caption", "--model", str(pipeline_dir), "--bf16", str(image)])
    assert_user_error(rc, capsys.readouterr().err, "--bf16", "--device cuda")
