"""`lavit demo`, multimodal synthesis (API and CLI, and benchmarks/synthesis_check.py), and the CLI's
one-line errors."""

import sys
from pathlib import Path

import pytest
from PIL import Image

from lavit.cli import main
from lavit.config import ImageSamplingConfig, ShapesWorldConfig
from lavit.data.shapes.dataset import ShapesWorld
from lavit.demo import DemoConfig, run_demo
from lavit.pipeline import LaVITPipeline


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    world = ShapesWorld(ShapesWorldConfig(resolution=32), "val")
    folder = tmp_path_factory.mktemp("scenes")
    for i in range(2):
        world.image(i).save(folder / f"s{i}.png")
    return [folder / "s0.png", folder / "s1.png"]


def test_pipeline_directory_holds_every_stage(pipeline_dir):
    pipe = LaVITPipeline.from_pretrained(pipeline_dir)
    assert pipe.lm is not None and sorted(pipe.decoders) == ["diffusion", "var"]


def test_synthesize_image_text_and_image_image(pipeline_dir, scenes):
    pipe = LaVITPipeline.from_pretrained(pipeline_dir)
    a, b = Image.open(scenes[0]), Image.open(scenes[1])
    for decoder in ("diffusion", "var"):
        out = pipe.synthesize([[a, "a red circle"], [a, b]], decoder=decoder, seed=3, num_images=2)
        assert len(out) == 4 and all(isinstance(im, Image.Image) for im in out)
        again = pipe.synthesize([[a, b]], decoder=decoder, seed=3 + 2, num_images=2)
        assert [im.tobytes() for im in again] == [im.tobytes() for im in out[2:]]  # image j has seed + j
    with pytest.raises(ValueError, match="prompt 0 must be a non-empty list"):
        pipe.synthesize(["a red circle"])
    with pytest.raises(ValueError, match="prompt 1, part 1 is empty text"):
        pipe.synthesize([[a], [a, "  "]])


def test_demo_writes_the_page(pipeline_dir, tmp_path, capsys):
    assert main(["demo", "--model", str(pipeline_dir), "--out", str(tmp_path / "demo")]) == 0
    page = (tmp_path / "demo" / "index.html").read_text()
    for section in ("Understanding", "Text to image", "Multimodal synthesis", "Reconstruction from tokens"):
        assert section in page
    pngs = sorted((tmp_path / "demo").glob("*.png"))
    cfg = DemoConfig()
    # understanding: 1 per scene; text to image: 1 per decoder + the best of N; synthesis: 2 text
    # prompts with 1 input image + 1 prompt with 2, 1 output per decoder each; reconstruction:
    # original + decoders
    synthesis = len(cfg.synthesis_texts) + 2 + 2 * (len(cfg.synthesis_texts) + 1)
    expected = cfg.understanding + 3 * cfg.prompts + synthesis + 3 * cfg.reconstructions + 1  # + overview.png
    assert len(pngs) == expected and all(f"src={p.name}" in page for p in pngs)
    # The overview packs whole cards into rows of 6 images, a new row for each section:
    # text to image 2 + 2 cards of 3; synthesis 2 cards of 2, then 1 of 3; reconstruction 2 + 2 of 3.
    overview = Image.open(tmp_path / "demo" / "overview.png")
    assert overview.size == (6 * 128, 6 * (128 + 48))  # 6 rows of 128 px cells over 4 label lines
    out = capsys.readouterr().out
    assert '"text2image_var"' in out and f'"text2image_diffusion_bestof{cfg.candidates}"' in out


def test_demo_without_an_lm_still_reconstructs(tokenizer_dir, diffusion_dir, tmp_path):
    pipe = LaVITPipeline.from_parts(tokenizer_dir, None, diffusion=diffusion_dir)
    summary = run_demo(pipe, tmp_path / "d", DemoConfig(reconstructions=2))
    assert summary["model_decoders"] == ["diffusion"] and len(list((tmp_path / "d").glob("*.png"))) == 4 + 1


def test_cli_bad_input_one_line_and_nothing_written(pipeline_dir, scenes, tmp_path, capsys):
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    model = ["--model", str(pipeline_dir)]
    cases = [
        (["synthesize", "--image", str(tmp_path / "missing.png"), "--out", str(tmp_path / "o1"), *model], "not found"),
        (["synthesize", "--image", str(not_image), "--out", str(tmp_path / "o2"), *model], "notes.txt"),
        (["synthesize", "--out", str(tmp_path / "o3"), *model], "empty prompt"),
        (["synthesize", "--image", str(scenes[0]), "--text", " ", "--out", str(tmp_path / "o4"), *model], "empty"),
        (["generate", "", "--out", str(tmp_path / "o5"), *model], "empty prompt"),
        (["caption", str(not_image), *model], "notes.txt"),
        (["demo", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o6")], "nope"),
        (["caption", str(scenes[0]), "--model", str(tmp_path / "nope")], "nope"),
    ]
    for argv, needle in cases:
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (argv, err)
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 7))


def test_cli_synthesize_writes_pngs(pipeline_dir, scenes, tmp_path, capsys):
    argv = ["synthesize", "--image", str(scenes[0]), "--text", "a blue square", "--image", str(scenes[1])]
    assert (
        main([*argv, "--decoder", "var", "--num-images", "2", "--out", str(tmp_path), "--model", str(pipeline_dir)])
        == 0
    )
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["synthesis_0.png", "synthesis_1.png"]


def test_image_tokens_never_exceed_the_tokenizer_patches(pipeline_dir):
    pipe = LaVITPipeline.from_pretrained(pipeline_dir)
    most = pipe.tokenizer.cfg.encoder.num_patches
    sampling = ImageSamplingConfig(min_tokens=most + 5, max_tokens=most + 50)  # </img> barred past the patches
    codes = pipe.generate_tokens(["a red circle."], sampling=sampling)
    assert len(codes[0]) == most
    assert pipe.decode(codes, decoder="diffusion")[0].size == (32, 32)


def test_synthesis_check_reports_percentages(pipeline_dir):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from synthesis_check import check

    report = check(LaVITPipeline.from_pretrained(pipeline_dir), scenes=3, decoders=["var"], batch=2)
    assert set(report) == {"scenes", "synthesis_var", "text_only_var", "image_image_var"}
    pairs = report["image_image_var"]
    assert set(pairs) == {"first_shapes", "second_shapes", "both"}
    assert all(v in {0.0, 33.3, 66.7, 100.0} for v in pairs.values())
    assert pairs["both"] <= min(pairs["first_shapes"], pairs["second_shapes"])
    assert set(report["synthesis_var"]) == {"text_shape", "input_shapes", "both"}
    values = [*report["synthesis_var"].values(), report["text_only_var"]["text_shape"]]
    assert all(v in {0.0, 33.3, 66.7, 100.0} for v in values)
    assert report["synthesis_var"]["both"] <= min(
        report["synthesis_var"]["text_shape"], report["synthesis_var"]["input_shapes"]
    )


def test_var_scales_reports_every_prefix_and_all_forced_is_the_vqvae_alone(pipeline_dir):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from var_scales import scenes_kept_by_prefix

    from detokenizer.var.decoder import decode_codes_var
    from lavit.data.transforms import to_tensor
    from lavit.generate import seeded_generators

    pipe = LaVITPipeline.from_pretrained(pipeline_dir)
    report = scenes_kept_by_prefix(pipe, scenes=3, batch=2)
    var, world = pipe.decoders["var"], ShapesWorld(ShapesWorldConfig(), "val")
    sides = [str(p) for p in var.transformer.scales]
    assert report["scales"] == sides
    assert list(report["kept_by_forced_prefix"]) == ["none"] + [f"1..{s}" for s in sides]
    assert all(v in {0.0, 33.3, 66.7, 100.0} for v in report["kept_by_forced_prefix"].values())
    # What the benchmark decodes: every scale forced is the VQ-VAE alone; none forced, sampling.
    images = [world.image(i) for i in range(2)]
    true = var.vqvae.encode(torch.stack([to_tensor(im, var.resolution) for im in images]))
    codes, sampling = pipe.encode(images), pipe.cfg.var_sampling

    def decode(forced):
        return decode_codes_var(var, pipe.tokenizer, codes, sampling, generator=seeded_generators(2, 0), forced=forced)

    torch.testing.assert_close(decode(true), var.vqvae.decode(true))
    torch.testing.assert_close(decode([None] * len(true)), decode(None))
