"""The ``lavit`` commands of an LM with location tokens (registered by :func:`add_commands`):

    lavit ground IMG PHRASE...          where each phrase is: a box in the image's pixels
    lavit ground IMG --caption          a caption with a box after each thing it names

``lavit vqa IMG QUESTION --mark KIND:x0,y0,x1,y1[:COLOUR]`` asks about a mark drawn on the image
(lavit/cli.py). ``--out FILE.png`` writes the image with the boxes drawn on it.
"""

from __future__ import annotations

import argparse

from lavit.cli_common import (
    add_model_args,
    add_text_decoding_args,
    bad_input,
    decoding_from_args,
    emit,
    pipeline_from_args,
)
from lavit.cli_inputs import UsageError, check_images


def cmd_ground(args: argparse.Namespace) -> None:
    from lavit.data.image_io import load_image
    from lavit.grounding import Box, box_to_source
    from lavit.visual_prompts import Mark, draw_marks

    check_images([args.image])
    if bool(args.phrases) == args.caption:
        raise UsageError("give phrases to find (lavit ground IMG 'the red circle') or --caption, not both or neither")
    if any(not p.strip() for p in args.phrases):
        raise UsageError("empty phrase: give the words that refer to the region, e.g. 'the red circle'")
    pipe = pipeline_from_args(args)
    image = load_image(args.image)
    w, h = image.size

    def pixels(box: Box) -> list[float]:
        return [round(v, 1) for v in box_to_source(box, w, h)]

    with bad_input():
        if args.caption:
            decoding = pipe.cfg.grounded_caption_decoding
            parts = pipe.grounded_caption([image], decoding=decoding_from_args(decoding, args))[0]
            boxes = [p for p in parts if isinstance(p, Box)]
            text = "".join(p if isinstance(p, str) else f" [{', '.join(map(str, pixels(p)))}]" for p in parts)
            records = [{"image": args.image, "caption": text, "boxes": [pixels(b) for b in boxes]}]
            emit(records, args, lambda r: f"{r['image']}: {r['caption']}")
        else:
            boxes = pipe.ground(
                [image] * len(args.phrases),
                args.phrases,
                decoding=decoding_from_args(pipe.cfg.grounding_decoding, args),
            )
            records = [
                {"image": args.image, "phrase": p, "box": pixels(b)} for p, b in zip(args.phrases, boxes, strict=True)
            ]
            emit(records, args, lambda r: f"{r['phrase']}: {r['box']}")
    if args.out:  # a box whose corners share a bin is drawn a pixel wide
        marks = [Mark("rectangle", box=_visible(box_to_source(b, w, h), w, h), colour="red") for b in boxes]
        draw_marks(image, marks).save(args.out)
        print(f"wrote {args.out}")


def _visible(box: tuple[float, ...], width: int, height: int) -> tuple[float, ...]:
    x0, y0, x1, y1 = box
    x0, y0 = min(x0, width - 1.0), min(y0, height - 1.0)
    return (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))


def add_commands(sub) -> None:
    p = sub.add_parser("ground", help="find phrases in an image as boxes, or caption it with boxes (--caption)")
    p.add_argument("image", help="image file")
    p.add_argument("phrases", nargs="*", help="referring expressions, e.g. 'the small red circle'")
    p.add_argument("--caption", action="store_true", help="a caption with a box after each thing it names")
    p.add_argument("--out", default=None, help="write the image with the boxes drawn on it (PNG)")
    add_text_decoding_args(p)
    add_model_args(p)
    p.set_defaults(func=cmd_ground)
