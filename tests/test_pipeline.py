"""LaVITPipeline and the model CLI commands on debug stages: caption / answer / generate_tokens
for both understanding inputs, save -> load round trip, seeding, and bad input."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from detokenizer.diffusion import DiffusionSamplingConfig
from lavit.checkpoint import CheckpointError
from lavit.cli import main
from lavit.config import ConfigError, ImageSamplingConfig, ShapesWorldConfig, TextDecodingConfig
from lavit.data.shapes.dataset import ShapesWorld
from lavit.generate import generate_image_tokens
from lavit.lm_io import load_lm
from lavit.pipeline import LaVITPipeline, PipelineConfig
from tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def images(tmp_path_factory):

    world = ShapesWorld(ShapesWorldConfig(resolution=32), "val")
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(3):
        world.image(i).save(folder / f"scene{i}.png")
        paths.append(str(folder / f"scene{i}.png"))
    return paths


CFG = PipelineConfig(
    caption_decoding=TextDecodingConfig(num_beams=2, max_new_tokens=8),
    vqa_decoding=TextDecodingConfig(num_beams=3, max_new_tokens=4),
    image_sampling=ImageSamplingConfig(min_tokens=4, max_tokens=16),
    diffusion_sampling=DiffusionSamplingConfig(steps=2),
)


@pytest.fixture(scope="module", params=["discrete", "continuous"])
def pipe(request, tokenizer_dir, lm_dirs, diffusion_dir):
    return LaVITPipeline.from_parts(tokenizer_dir, lm_dirs[request.param], CFG, diffusion=diffusion_dir)


def test_understanding_batch_equals_each_alone(pipe, images):
    from PIL import Image

    caps = pipe.caption(images)
    assert len(caps) == 3 and all(isinstance(c, str) for c in caps)
    assert caps[1] == pipe.caption([Image.open(images[1])])[0]  # PIL and path agree
    answers = pipe.answer(images[:2], ["what colour is the circle?", "how many shapes are there?"])
    assert answers[1] == pipe.answer([images[1]], ["how many shapes are there?"])[0]
    tensor = pipe.images_to_tensor(images)
    assert pipe.caption(tensor) == caps
    assert pipe.caption(tensor[1]) == [caps[1]]  # one (3, H, W) image


def test_generate_tokens_is_seeded_and_batch_independent(pipe, images):
    codes = pipe.generate_tokens(["a red circle.", None], num_images=2, seed=3)
    assert len(codes) == 4
    lo, hi = pipe.cfg.image_sampling.min_tokens, pipe.cfg.image_sampling.max_tokens
    assert all(lo <= c.numel() <= hi and 0 <= int(c.min()) and int(c.max()) < 64 for c in codes)
    # image j is seeded seed + j: the third image alone (seed 5) is the same
    assert torch.equal(pipe.generate_tokens([None], seed=5)[0], codes[2])
    # a multimodal prompt (image codes then text), and a negative prompt
    multi = pipe.generate_tokens([[Path(images[0]), "a red circle."]], negative_prompt="a blue square.", seed=0)
    assert lo <= multi[0].numel() <= hi
    with pytest.raises(ValueError, match="reads as text; for the image pass Path"):
        pipe.generate_tokens([[images[0], "a red circle."]])  # a str is text: a file name is a mistake


def test_a_continuous_input_lm_reads_prompt_images_as_features(tokenizer_dir, lm_dirs, images):
    pipe = LaVITPipeline.from_parts(tokenizer_dir, lm_dirs["continuous"], CFG)
    prompt, feats = pipe._prompt([Path(images[0]), "a red circle."])
    assert feats.shape == (prompt[0].numel(), pipe.lm.cfg.feature_dim)  # one feature per code
    before = pipe.generate_tokens([[Path(images[0]), "a red circle."]], num_images=2, seed=0)
    proj = pipe.lm.feature_proj.weight
    saved = proj.detach().clone()
    with torch.no_grad():
        proj.mul_(-1)  # the features, not the codes' embeddings, reach the LM
    try:
        after = pipe.generate_tokens([[Path(images[0]), "a red circle."]], num_images=2, seed=0)
    finally:
        with torch.no_grad():
            proj.copy_(saved)
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    with pytest.raises(ValueError, match="not as codes"):
        pipe.generate_tokens([[prompt[0], "a red circle."]])
    with pytest.raises(ValueError, match="pass the prompt images' tokenizer features"):
        generate_image_tokens(pipe.lm, pipe.builder, [prompt], CFG.image_sampling)


def test_images_from_text_and_from_their_own_codes(pipe, images):
    out = pipe.generate_image(["a red circle.", "a blue square."], ratio="4:3", seed=1)
    assert len(out) == 2 and all(im.size == (36, 28) for im in out)  # the debug bucket nearest 4:3
    recon = pipe.reconstruct(images[:2], seed=0)
    assert [im.size for im in recon] == [(32, 32)] * 2
    again = pipe.reconstruct(images[1:2], seed=1)  # image j is seeded seed + j
    # The same sample; the UNet's convolutions may round differently at another batch size (CPU
    # kernels vary by machine), which can move a pixel across one uint8 step.
    diff = np.abs(np.asarray(again[0]).astype(int) - np.asarray(recon[1]).astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).sum())


def test_caption_logprob_is_the_training_loss_of_each_pair(pipe, images):
    texts = ["a red circle.", "there are a blue square and a green cross."]
    got = pipe.caption_logprob(images[:2], texts)
    for i, text in enumerate(texts):  # alone, through forward's weighted-mean training loss
        codes = pipe.encode(images[i : i + 1])
        seq = pipe.builder.understanding(codes[0], pipe.cfg.caption_prompt, text)
        ids, w = torch.tensor([seq.ids]), torch.tensor([seq.weights])
        feats = mask = None
        if pipe.lm.cfg.understanding_input == "continuous":
            feats = torch.cat(pipe.tokenizer.encode_features(pipe.images_to_tensor(images[i : i + 1])))
            mask = torch.zeros_like(ids, dtype=torch.bool)
            mask[0, seq.image_spans[0][0] : seq.image_spans[0][1]] = True
        with torch.no_grad():
            loss = pipe.lm(ids, torch.ones_like(ids), w, feats, mask).loss
        assert got[i] == pytest.approx(-float(loss) * w[0, 1:].sum().item(), rel=1e-4)


def test_generate_keeps_the_candidate_the_lm_captions_best(pipe, images):
    from lavit.pipeline import CANDIDATE_SEED_STRIDE

    prompts = ["a red circle.", "a blue square."]
    one = pipe.generate(prompts, seed=2)  # the pipeline's default: one candidate, no scoring
    assert one.scores is None and one.candidate == [0, 0]
    best = pipe.generate(prompts, seed=2, candidates=3)
    # candidate k is what a plain call seeded seed + k * stride draws; the kept one scores highest
    drawn = [pipe.generate(prompts, seed=2 + k * CANDIDATE_SEED_STRIDE) for k in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(drawn[0].codes, one.codes, strict=True))
    scores = torch.stack([pipe.caption_logprob(d.images, prompts) for d in drawn], dim=1)
    assert best.candidate == scores.argmax(dim=1).tolist()
    assert torch.allclose(best.scores, scores.max(dim=1).values)
    for j, k in enumerate(best.candidate):
        assert torch.equal(best.codes[j], drawn[k].codes[j])
        assert best.images[j].tobytes() == drawn[k].images[j].tobytes()
    assert pipe.generate_image(prompts, seed=2)[1].tobytes() == one.images[1].tobytes()
    # several images per prompt: image j (prompt-major) is scored against its own prompt
    many = pipe.generate(prompts, seed=2, candidates=2, num_images=2)
    assert len(many.images) == 4 and len(many.candidate) == 4
    assert torch.allclose(many.scores[2:], pipe.caption_logprob(many.images[2:], [prompts[1]] * 2))
    # a pipeline that reranks by default (pipeline.yaml: image_candidates) still synthesizes
    two = LaVITPipeline(
        pipe.tokenizer, pipe.lm, pipe.text_tokenizer, replace(pipe.cfg, image_candidates=3), pipe.decoders
    )
    assert two.generate_image(prompts, seed=2)[0].tobytes() == best.images[0].tobytes()
    assert len(two.synthesize([[Path(images[0]), "in red."]])) == 1
    with pytest.raises(ValueError, match="prompt 1 is not text: reranking candidates"):
        pipe.generate(["a red circle.", None], candidates=2)
    with pytest.raises(ConfigError, match="candidates"):
        pipe.generate(prompts, candidates=0)
    with pytest.raises(ConfigError, match="image_candidates"):
        PipelineConfig(image_candidates=0)


SHIPPED = Path(__file__).resolve().parent.parent / "checkpoints" / "lavit-shapes-tiny"


@pytest.mark.skipif(not (SHIPPED / "pipeline.yaml").is_file(), reason="no shipped model")
def test_the_shipped_lm_scores_each_scene_own_caption_highest():
    from lavit.evaluation.config import EvalDataConfig
    from lavit.evaluation.sets import build_items

    pipe = LaVITPipeline.from_pretrained(SHIPPED)
    items = build_items("caption", EvalDataConfig(split="val", limit=8))
    images, captions = [it.image() for it in items], [it.captions[0] for it in items]
    n = len(items)
    scores = pipe.caption_logprob([im for im in images for _ in range(n)], captions * n).view(n, n)
    assert scores.argmax(dim=1).tolist() == list(range(n)), scores  # what reranking relies on


def test_save_and_load_round_trip(pipe, images, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    again = LaVITPipeline.from_pretrained(tmp_path / "pipe")
    assert again.cfg == pipe.cfg
    assert again.caption(images) == pipe.caption(images)
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.generate_tokens(["a red circle."]), pipe.generate_tokens(["a red circle."]), strict=True)
    )
    assert sorted(again.decoders) == ["diffusion"]
    assert np.array_equal(np.asarray(again.reconstruct(images[:1])[0]), np.asarray(pipe.reconstruct(images[:1])[0]))
    # reconstruction needs no LM
    only = LaVITPipeline(pipe.tokenizer, decoders=pipe.decoders, cfg=pipe.cfg)
    with pytest.raises(ValueError, match="captioning, VQA and grounding needs the LM"):
        only.caption(images[:1])


def test_bad_input(tokenizer_dir, lm_dirs, images, tmp_path):
    pipe = LaVITPipeline.from_parts(tokenizer_dir, lm_dirs["discrete"])
    with pytest.raises(ValueError, match="question 1 is empty"):
        pipe.answer(images[:2], ["what?", " "])
    with pytest.raises(ValueError, match="empty text"):
        pipe.generate_tokens([""])
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        pipe._understand(images[:2], ["a"], pipe.cfg.caption_decoding)
    with pytest.raises(ValueError, match="must be 32x32"):
        pipe.caption(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ValueError, match=r"image codes must lie in \[0, 64\)"):
        pipe.generate_tokens([[torch.tensor([70]), "a red circle."]])
    with pytest.raises(CheckpointError, match="has no pipeline.yaml"):
        LaVITPipeline.from_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="vqa_prompt"):
        PipelineConfig(vqa_prompt="no slot")
    # An LM whose code block disagrees with the visual tokenizer's codebook.
    tok = load_tokenizer(tokenizer_dir)
    lm, text_tok = load_lm(lm_dirs["discrete"])
    tok.cfg.quantizer.codebook_size = 128
    with pytest.raises(CheckpointError, match="64 image codes but the visual tokenizer's codebook has 128"):
        LaVITPipeline(tok, lm, text_tok)


def test_cli_caption_vqa_and_generate_tokens(tokenizer_dir, lm_dirs, images, tmp_path, capsys):
    model = ["--tokenizer", str(tokenizer_dir), "--lm", str(lm_dirs["discrete"])]
    assert main(["caption", *images[:2], *model, "--max-new-tokens", "4", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in records] == images[:2]
    assert main(["vqa", images[0], "what colour is the circle?", "how many?", *model, "--beams", "1"]) == 0
    assert capsys.readouterr().out.count("A: ") == 2
    out = tmp_path / "codes.json"
    argv = ["generate-tokens", "a red circle.", "--out", str(out), "--num-images", "2", "--max-tokens", "24"]
    assert main([*argv, *model]) == 0
    saved = json.loads(out.read_text())
    # An image holds at most the tokenizer's patch count (16 here): both bounds are capped there.
    most = load_tokenizer(tokenizer_dir).cfg.encoder.num_patches
    assert [r["seed"] for r in saved] == [0, 1] and all(len(r["codes"]) == min(20, most) for r in saved)

    # bad input: one line, exit code 2, nothing written
    bad = tmp_path / "not_an_image.png"
    bad.write_text("hello")
    cases = [
        (["caption", str(tmp_path / "missing.png"), *model], "image file not found"),
        (["caption", str(bad), *model], "not_an_image.png"),
        (["caption", images[0], "--lm", str(lm_dirs["discrete"])], "incomplete model: pass --model DIR"),
        (["caption", images[0], "--model", str(tmp_path / "nope")], "does not exist"),
        (["vqa", images[0], " ", *model], "empty question"),
        (["caption", images[0], "--prompt", "red " * 200, *model], "exceeds the LM context"),
        (["generate-tokens", "", "--out", str(tmp_path / "x.json"), *model], "empty prompt"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "x.json").exists()
    # No model named at all: the shipped one.
    assert main(["caption", images[0], "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["caption"]


def test_cli_generate_and_reconstruct(tokenizer_dir, lm_dirs, diffusion_dir, images, tmp_path, capsys):
    from PIL import Image

    from lavit.cli import DECODER_NAMES
    from lavit.pipeline import DECODERS

    assert set(DECODER_NAMES) == set(DECODERS)

    pipe = LaVITPipeline.from_parts(tokenizer_dir, lm_dirs["discrete"], CFG, diffusion=diffusion_dir)
    pipe.save_pretrained(tmp_path / "model")
    model = ["--model", str(tmp_path / "model")]
    assert main(["generate", "a red circle.", "a blue square.", "--out", str(tmp_path / "gen"), *model]) == 0
    assert sorted(p.name for p in (tmp_path / "gen").iterdir()) == ["000_0.png", "001_0.png", "prompts.json"]
    gen2 = ["generate", "a red circle.", "--candidates", "2", "--out", str(tmp_path / "gen2"), *model]
    assert main(gen2) == 0
    assert json.loads((tmp_path / "gen2" / "prompts.json").read_text())[0]["candidate"] in (0, 1)
    assert main(["reconstruct", *images[:2], "--out", str(tmp_path / "rec"), "--steps", "1", *model]) == 0
    pair = Image.open(tmp_path / "rec" / "scene0_reconstruction.png")
    assert pair.size == (64, 32)
    # the tokenizer and decoder alone are enough to reconstruct
    parts = ["--tokenizer", str(tokenizer_dir), "--diffusion", str(diffusion_dir)]
    assert main(["reconstruct", images[2], "--out", str(tmp_path / "rec"), "--steps", "1", *parts]) == 0
    capsys.readouterr()

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    cases = [
        (["reconstruct", str(bad), "--out", str(tmp_path / "bad"), *model], "notes.png"),
        (
            ["reconstruct", images[0], "--out", str(tmp_path / "bad"), "--tokenizer", str(tokenizer_dir)],
            "--diffusion DIR",
        ),
        (["generate", " ", "--out", str(tmp_path / "bad"), *model], "empty prompt"),
        (["generate", "a red circle.", "--candidates", "0", "--out", str(tmp_path / "bad"), *model], "--candidates"),
        (["generate", "a red circle.", "--ratio", "wide", "--out", str(tmp_path / "bad"), *model], "bad aspect ratio"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists() or not any((tmp_path / "bad").iterdir())


def test_var_decoder_plugs_in_beside_diffusion(
    tokenizer_dir, lm_dirs, diffusion_dir, var_dir, images, tmp_path, capsys
):
    pipe = LaVITPipeline.from_parts(tokenizer_dir, lm_dirs["discrete"], CFG, diffusion=diffusion_dir, var=var_dir)
    recon = pipe.reconstruct(images[:2], decoder="var", seed=0)
    assert [im.size for im in recon] == [(32, 32)] * 2
    again = pipe.reconstruct(images[1:2], decoder="var", seed=1)  # image j is seeded seed + j
    # Same tokens; the CNN decoder's batch-size-dependent float sums may move a pixel by one level.
    assert np.abs(np.asarray(again[0], dtype=int) - np.asarray(recon[1], dtype=int)).max() <= 1
    out = pipe.generate_image(["a red circle."], decoder="var", seed=0)
    assert len(out) == 1 and out[0].size == (32, 32)
    with pytest.raises(ValueError, match="square images only"):
        pipe.generate_image(["a red circle."], decoder="var", ratio="4:3")
    pipe.save_pretrained(tmp_path / "model")
    loaded = LaVITPipeline.from_pretrained(tmp_path / "model")
    assert sorted(loaded.decoders) == ["diffusion", "var"]
    assert np.array_equal(np.asarray(loaded.reconstruct(images[:1], decoder="var")[0]), np.asarray(recon[0]))

    parts = ["--tokenizer", str(tokenizer_dir), "--var", str(var_dir), "--decoder", "var"]
    assert main(["reconstruct", images[2], "--out", str(tmp_path / "rec"), *parts]) == 0
    assert (
        main(["generate", "a red circle.", "--out", str(tmp_path / "gen"), "--lm", str(lm_dirs["discrete"]), *parts])
        == 0
    )
    capsys.readouterr()
    assert main(["reconstruct", images[2], "--out", str(tmp_path / "bad"), "--steps", "2", *parts]) == 2
    err = capsys.readouterr().err
    assert "--steps" in err and err.count("\n") == 1, err
    assert not (tmp_path / "bad").exists()
