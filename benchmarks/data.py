"""Data-loading throughput (samples/s) from JSONL and from tar shards, printed as JSON.

    python benchmarks/data.py            # 512 photo-like JPEGs, 64 and 256 px, 0 and 2 workers
    python benchmarks/data.py --quick    # 128 images, 64 px only: a few seconds

Each case reads one full pass (decode, centre crop, resize to the side, to a float tensor,
batched) through a DataLoader; the time includes starting its workers, as a training run pays
it too. Images are written to a temporary folder first: smooth gradients with noise and a few
shapes, saved as JPEG (quality 90), so decoding costs what a camera photo of that size costs.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_utils import print_report
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

from lavit.data.readers import JsonlDataset
from lavit.data.sample import Sample
from lavit.data.shards import ShardStream
from lavit.data.transforms import to_tensor


class ToBatch:
    """Collate: Samples -> (B, 3, side, side) float in [0, 1]; a class so workers can pickle it."""

    def __init__(self, side: int) -> None:
        self.side = side

    def __call__(self, samples: list[Sample]) -> torch.Tensor:
        return torch.stack([to_tensor(s.image, self.side) for s in samples])


def photo_like(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A JPEG with smooth colour gradients, sensor-like noise and a few filled shapes."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    phase = rng.random(3) * 6.28
    rgb = np.stack([128 + 100 * np.sin(3 * x + 2 * y + p) for p in phase], -1)
    rgb += rng.normal(0, 6, rgb.shape)  # (H, W, 3)
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(4):
        x0, y0 = rng.integers(0, width - 40), rng.integers(0, height - 40)
        size = int(rng.integers(20, 120))
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_fixtures(folder: Path, n: int, side: int, per_shard: int) -> tuple[Path, list[str]]:
    """``n`` JPEGs (side x 3/4 side) as files + a JSONL, and the same as img2dataset shards."""
    rng = np.random.default_rng(0)
    (folder / "img").mkdir()
    lines, shards, members = [], [], []
    for i in range(n):
        data = photo_like(rng, side, side * 3 // 4)
        (folder / "img" / f"{i:06d}.jpg").write_bytes(data)
        lines.append(json.dumps({"image": f"img/{i:06d}.jpg", "text": f"photo {i}"}))
        members += [(f"{i:06d}.jpg", data), (f"{i:06d}.txt", f"photo {i}".encode())]
        if len(members) == 2 * per_shard or i == n - 1:
            shards.append(str(folder / f"{len(shards):05d}.tar"))
            with tarfile.open(shards[-1], "w") as tar:
                for name, blob in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(blob)
                    tar.addfile(info, io.BytesIO(blob))
            members = []
    (folder / "data.jsonl").write_text("\n".join(lines))
    return folder / "data.jsonl", shards


def run(loader: DataLoader) -> tuple[int, float]:
    """(samples, seconds) of one pass, worker start-up included."""
    t0, n = time.perf_counter(), 0
    for batch in loader:
        n += batch.shape[0]
    return n, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--source-side", type=int, default=384, help="width of the written JPEGs (height 3/4 of it)")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument("--quick", action="store_true", help="128 images at 64 px: a smoke run")
    args = p.parse_args()
    if args.quick:
        args.images, args.sizes = 128, [64]

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        jsonl, shards = write_fixtures(Path(tmp), args.images, args.source_side, args.per_shard)
        written = time.perf_counter() - t0
        for side in args.sizes:
            for workers in args.workers:
                sources = {
                    "jsonl": (JsonlDataset(jsonl), {"shuffle": False}),
                    "shards": (ShardStream(shards, shuffle_buffer=100).one_epoch(0), {}),
                }
                for name, (dataset, extra) in sources.items():
                    loader = DataLoader(
                        dataset, batch_size=args.batch, num_workers=workers, collate_fn=ToBatch(side), **extra
                    )
                    n, seconds = run(loader)
                    assert n == args.images, (name, n)
                    results.append(
                        {
                            "source": name,
                            "side": side,
                            "workers": workers,
                            "samples": n,
                            "seconds": round(seconds, 3),
                            "samples_per_second": round(n / seconds, 1),
                        }  # fmt: skip
                    )
    print_report(
        "data",
        "cpu",
        results,
        images=args.images,
        source_size=f"{args.source_side}x{args.source_side * 3 // 4} JPEG q90",
        batch=args.batch,
        shards=len(shards),
        seconds_to_write_fixtures=round(written, 2),
    )


if __name__ == "__main__":
    main()
