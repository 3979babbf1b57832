"""The analytic scene parser: exact recovery on clean renders, tolerance to mild degradation."""

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image, ImageFilter

from lavit.config import ShapesWorldConfig
from lavit.data.shapes import CELL_CENTRES, Scene, Shape, render, scene_for_index
from lavit.data.shapes import text as shapes_text
from lavit.data.shapes.parser import (
    attributes_kept,
    label_components,
    layout_matches,
    parse_scene,
    prompt_satisfied,
    scene_recovered,
)


def _accuracy(resolution, n, degrade=None):
    cfg = ShapesWorldConfig(resolution=resolution)
    ok = 0
    for i in range(n):
        scene = scene_for_index(cfg, "test", i)
        img = render(scene, resolution)
        if degrade is not None:
            img = degrade(img, i)
        ok += scene_recovered(scene, parse_scene(img))
    return ok / n


def test_recovers_full_scene_on_1000_clean_64px_renders():
    # Issue requirement: >= 99% of 1,000 test scenes at 64 px (measured: 100%).
    assert _accuracy(64, 1000) >= 0.99


def _blur_noise(sigma, noise):
    def degrade(img, i):
        rng = np.random.default_rng(i)
        a = np.asarray(img.filter(ImageFilter.GaussianBlur(sigma))).astype(np.float32) / 255
        return np.clip(a + rng.normal(0, noise, a.shape), 0, 1)

    return degrade


def test_tolerates_mild_blur_and_noise_at_64px():
    # Gaussian blur sigma 0.75 px + N(0, 0.05) pixel noise (measured: 99.9% on 1,000 scenes).
    assert _accuracy(64, 400, _blur_noise(0.75, 0.05)) >= 0.98


def test_jpeg_compression_at_64px():
    # 4:4:4 JPEG at quality 75: measured 100%. (With 4:2:0 chroma subsampling, small 9-px
    # crosses lose their arms: 74% at q75, 94.5% at q90; see the module docstring.)
    import io

    def jpeg(img, i):
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=75, subsampling=0)
        return Image.open(buf).convert("RGB")

    assert _accuracy(64, 200, jpeg) >= 0.99


@pytest.mark.parametrize("resolution", [32, 128])
def test_other_resolutions_clean(resolution):
    assert _accuracy(resolution, 150) >= 0.99


def test_reports_boxes_and_scores():
    scene = Scene(shapes=(Shape("red", "square", "large", 1, 1, 0.5, 0.5),), background=0.5)
    (p,) = parse_scene(render(scene, 64))
    assert p.key() == ("red", "square", "large", 1, 1)
    np.testing.assert_allclose(p.box, scene.shapes[0].box(64), atol=0.6)
    assert p.score > 0.95


def test_blank_image_has_no_shapes_and_mismatch_is_detected():
    assert parse_scene(Image.new("RGB", (64, 64), (128, 128, 128))) == []
    scene = scene_for_index(ShapesWorldConfig(), "test", 0)
    other = scene_for_index(ShapesWorldConfig(), "test", 1)
    assert not scene_recovered(scene, parse_scene(render(other, 64)))


def test_label_components_counts_blobs():
    m = np.zeros((8, 8), bool)
    m[0:2, 0:2] = True
    m[5:8, 5:6] = True
    m[4, 0] = True
    labels, n = label_components(m)
    assert n == 3 and set(np.unique(labels)) == {0, 1, 2, 3}
    assert len(np.unique(labels[0:2, 0:2])) == 1


def test_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="RGB"):
        parse_scene(np.zeros((8, 8)))


def test_reconstruction_and_prompt_criteria():
    cfg = ShapesWorldConfig(resolution=64)
    scenes = [scene_for_index(cfg, "val", i) for i in range(100)]
    for scene in scenes:  # clean renders satisfy both
        parsed = parse_scene(render(scene, 64))
        assert attributes_kept(scene, parsed) and prompt_satisfied(scene, parsed)
    # Two shapes: swapping their cells keeps the attributes but breaks the layout.
    two = next(s for s in scenes if len(s.shapes) == 2)
    a, b = two.shapes
    swapped = Scene(
        shapes=(replace(a, row=b.row, col=b.col, cx=b.cx, cy=b.cy), replace(b, row=a.row, col=a.col, cx=a.cx, cy=a.cy)),
        background=two.background,
    )
    parsed = parse_scene(render(swapped, 64))
    assert attributes_kept(two, parsed) and not prompt_satisfied(two, parsed)
    # A different colour fails both; a lone shape in another cell fails the prompt only.
    recoloured = Scene(shapes=(replace(a, colour="red" if a.colour != "red" else "blue"), b), background=0.5)
    assert not attributes_kept(two, parse_scene(render(recoloured, 64)))
    one = next(s for s in scenes if len(s.shapes) == 1)
    (s,) = one.shapes
    row, col = (s.row + 1) % 3, s.col
    moved = Scene(shapes=(replace(s, row=row, col=col, cx=(col + 0.5) / 3, cy=(row + 0.5) / 3),), background=0.5)
    parsed = parse_scene(render(moved, 64))
    assert attributes_kept(one, parsed) and not prompt_satisfied(one, parsed)


def _placed(colour: str, kind: str, row: int, col: int) -> Shape:
    return Shape(colour, kind, "large", row, col, CELL_CENTRES[col], CELL_CENTRES[row])


def test_prompt_judge_asks_what_the_prompt_states():
    """Three shapes: the prompt gives the first two's relation and the third's cell, nothing else."""
    a, b, c = _placed("red", "circle", 0, 0), _placed("blue", "square", 0, 2), _placed("green", "triangle", 2, 1)
    scene = Scene(shapes=(a, b, c), background=0.5)
    text = shapes_text.prompt(scene, np.random.default_rng(0))
    assert text == "a large red circle to the left of a large blue square and a large green triangle at the bottom."
    assert shapes_text.stated_layout(scene) == ((0, "left of", 1), {2: (2, 1)})
    assert shapes_text.parse_relations(text) == [(("red", "circle"), "left of", ("blue", "square"))]

    def judged(*shapes):
        parsed = parse_scene(render(Scene(shapes=shapes, background=0.5), 64))
        return prompt_satisfied(scene, parsed), layout_matches(scene, parsed)

    assert judged(a, b, c) == (True, True)
    # The circle moves above the triangle: still left of the square, so the prompt holds; the
    # circle-triangle relation (unstated) changed, which the old layout check counted as wrong.
    assert judged(replace(a, col=1, cx=CELL_CENTRES[1]), b, c) == (True, False)
    # The triangle leaves its stated cell ("at the bottom") but keeps every pairwise relation.
    assert judged(a, b, replace(c, row=1, cy=CELL_CENTRES[1])) == (False, True)
    # The triangle drawn small where the prompt says large: the old check ignored sizes.
    assert judged(a, b, replace(c, size="small")) == (False, True)
    # The stated relation broken (the circle right of the square): wrong under both.
    assert judged(
        replace(a, row=1, col=2, cx=CELL_CENTRES[2], cy=CELL_CENTRES[1]), replace(b, col=0, cx=CELL_CENTRES[0]), c
    ) == (False, False)


def test_prompt_judge_follows_the_prompts_of_held_out_scenes():
    """Every val scene's prompt states its first relation and the later shapes' cells."""
    cfg = ShapesWorldConfig(resolution=64)
    for i in range(200):
        scene = scene_for_index(cfg, "val", i)
        text = shapes_text.prompt(scene, np.random.default_rng(0))
        stated, cells = shapes_text.stated_layout(scene)
        if stated is None:
            (only,) = scene.shapes
            assert text.endswith(f"{only.colour} {only.kind} {shapes_text._where(only)}.")
            continue
        first, rel, second = (scene.shapes[stated[0]], stated[1], scene.shapes[stated[2]])
        assert shapes_text.parse_relations(text)[0] == ((first.colour, first.kind), rel, (second.colour, second.kind))
        for k in cells:
            s = scene.shapes[k]
            assert f"{s.colour} {s.kind} {shapes_text._where(s)}" in text
