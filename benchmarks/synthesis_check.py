"""Does multimodal synthesis follow its prompt? Printed as JSON.

Each held-out ShapesWorld scene is given with a random "a <colour> <kind>" text
(``pipe.synthesize([[image, text]])``), and the ShapesWorld parser reads each output: how often
the text's shape is in it, how often all of the input image's shapes (by colour and kind) are,
and both. The same texts alone through text to image are the control. Image + image: pairs of
held-out scenes whose shapes fit one scene (3 at most, in distinct cells), given as
``[[image_a, image_b]]``: how often the first's shapes are in the output, the second's, and both.

    python benchmarks/synthesis_check.py [--model DIR] [--scenes 50]
    python benchmarks/synthesis_check.py --quick      # 1 scene (tests)
"""

from __future__ import annotations

import argparse
import json
import random

from lavit.config import ShapesWorldConfig
from lavit.data.shapes import COLOURS, KINDS
from lavit.data.shapes.dataset import ShapesWorld
from lavit.data.shapes.parser import colour_kinds, parse_scene
from lavit.demo import DEFAULT_MODEL
from lavit.pipeline import LaVITPipeline


def check(pipe: LaVITPipeline, scenes: int, decoders: list[str], batch: int = 25, seed: int = 0) -> dict:
    world = ShapesWorld(ShapesWorldConfig(), "val")
    rng, colours = random.Random(seed), list(COLOURS)
    texts = [(rng.choice(colours), rng.choice(KINDS)) for _ in range(scenes)]
    images = [world.image(i) for i in range(scenes)]

    def found(outputs) -> dict:
        """Percent of outputs with the text's shape, with every input shape, with both."""
        text, inputs = [], []
        for i, out in enumerate(outputs):
            got = colour_kinds(parse_scene(out))
            text.append(got[texts[i]] > 0)
            inputs.append(colour_kinds(world.scene(i).shapes) <= got)  # every input shape, counted
        both = [t and a for t, a in zip(text, inputs, strict=True)]
        return {
            k: round(100 * sum(v) / scenes, 1)
            for k, v in zip(("text_shape", "input_shapes", "both"), (text, inputs, both), strict=True)
        }

    def batched(render, prompts: list, decoder: str) -> list:  # bounded memory, one seed per batch
        return [
            im for b in range(0, scenes, batch) for im in render(prompts[b : b + batch], decoder=decoder, seed=seed + b)
        ]

    pairs = _fitting_pairs(world, scenes, start=scenes)

    def found_pairs(outputs) -> dict:
        """Percent of outputs with every shape of the first image, of the second, of both (counted:
        two red circles need two)."""
        hits = []
        for (a, b), out in zip(pairs, outputs, strict=True):
            got, first, second = (
                colour_kinds(x) for x in (parse_scene(out), world.scene(a).shapes, world.scene(b).shapes)
            )
            hits.append((first <= got, second <= got, first + second <= got))
        return {
            k: round(100 * sum(h[n] for h in hits) / len(pairs), 1)
            for n, k in enumerate(("first_shapes", "second_shapes", "both"))
        }

    with_image = [[images[i], f"a {c} {k}"] for i, (c, k) in enumerate(texts)]
    alone = [f"a {c} {k}." for c, k in texts]
    two_images = [[world.image(a), world.image(b)] for a, b in pairs]
    report: dict = {"scenes": scenes}
    for d in decoders:
        report[f"synthesis_{d}"] = found(batched(pipe.synthesize, with_image, d))
        report[f"text_only_{d}"] = {"text_shape": found(batched(pipe.generate_image, alone, d))["text_shape"]}
        report[f"image_image_{d}"] = found_pairs(batched(pipe.synthesize, two_images, d))
    return report


def _fitting_pairs(world: ShapesWorld, n: int, start: int) -> list[tuple[int, int]]:
    """The first ``n`` pairs of consecutive held-out scenes from ``start`` on whose shapes fit one
    scene: 3 at most, in distinct cells."""
    pairs, i = [], start
    while len(pairs) < n:
        a, b = world.scene(i).shapes, world.scene(i + 1).shapes
        if len(a) + len(b) <= 3 and not {(s.row, s.col) for s in a} & {(s.row, s.col) for s in b}:
            pairs.append((i, i + 1))
        i += 2
    return pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--scenes", type=int, default=50)
    ap.add_argument("--decoders", nargs="+", default=None, help="default: every decoder the model has")
    ap.add_argument("--quick", action="store_true", help="1 scene: the smoke test's setting")
    args = ap.parse_args()
    if args.quick:
        args.scenes = 1
    pipe = LaVITPipeline.from_pretrained(args.model)
    print(json.dumps(check(pipe, args.scenes, args.decoders or sorted(pipe.decoders)), indent=1))


if __name__ == "__main__":
    main()
