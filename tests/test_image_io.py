"""Tests for lavit.data.image_io: every pixel mode, EXIF rotation, and each way a file can be bad.

All fixtures are written to ``tmp_path`` by the tests themselves.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lavit.data.image_io import ImageLoadError, load_image, to_rgb

RED, BLUE, WHITE, BLACK = (255, 0, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def _pixels(img: Image.Image) -> list[tuple[int, ...]]:
    """Row-major list of pixel tuples."""
    return [img.getpixel((x, y)) for y in range(img.height) for x in range(img.width)]


def _stored_mode(path: Path) -> str:
    """The mode Pillow opens the file in, before any conversion."""
    with Image.open(path) as img:
        return img.mode


def _noise_file(path: Path, size: int = 64) -> Path:
    """A random RGB image: incompressible, so cutting the file in half cuts pixel data."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def test_rgb_png_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (3, 2), RED).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (3, 2)
    assert _pixels(img) == [RED] * 6


def test_palette_without_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE] + [0] * (256 - 2) * 3)
    img.putdata([0, 1])
    path = tmp_path / "p.png"
    img.save(path)
    assert _stored_mode(path) == "P"
    assert _pixels(load_image(path)) == [RED, BLUE]


def test_palette_with_transparency_becomes_white(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE] + [0] * (256 - 2) * 3)
    img.putdata([0, 1])
    path = tmp_path / "p_trans.png"
    img.save(path, transparency=0)  # index 0 (red) is fully transparent
    with Image.open(path) as stored:
        assert "transparency" in stored.info
    assert _pixels(load_image(path)) == [WHITE, BLUE]


def test_gif_transparency_becomes_white(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, *BLUE] + [0] * (256 - 2) * 3)
    img.putdata([0, 1])
    path = tmp_path / "t.gif"
    img.save(path, transparency=1)
    assert _pixels(load_image(path)) == [RED, WHITE]


def test_palette_with_rgba_palette_in_memory() -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([*RED, 0, *BLUE, 255], rawmode="RGBA")
    img.putdata([0, 1])
    assert _pixels(to_rgb(img)) == [WHITE, BLUE]


def test_rgba_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (3, 1))
    img.putdata([(255, 0, 0, 0), (0, 0, 255, 255), (0, 0, 0, 128)])
    path = tmp_path / "rgba.png"
    img.save(path)
    out = _pixels(load_image(path))
    assert out[:2] == [WHITE, BLUE]
    # Half-transparent black over white: 255 * (1 - 128/255) = 127.
    assert all(abs(c - 127) <= 1 for c in out[2])


def test_la_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("LA", (3, 1))
    img.putdata([(0, 0), (0, 255), (100, 255)])
    path = tmp_path / "la.png"
    img.save(path)
    assert _stored_mode(path) == "LA"
    assert _pixels(load_image(path)) == [WHITE, BLACK, (100, 100, 100)]


def test_premultiplied_la_in_memory() -> None:
    img = Image.new("LA", (1, 1), (200, 255)).convert("La")
    assert _pixels(to_rgb(img)) == [(200, 200, 200)]


def test_grayscale_l(tmp_path: Path) -> None:
    path = tmp_path / "l.png"
    Image.new("L", (2, 2), 77).save(path)
    assert _pixels(load_image(path)) == [(77, 77, 77)] * 4


def test_one_bit(tmp_path: Path) -> None:
    img = Image.new("1", (2, 1))
    img.putdata([0, 1])
    path = tmp_path / "bw.png"
    img.save(path)
    assert _stored_mode(path) == "1"
    assert _pixels(load_image(path)) == [BLACK, WHITE]


def test_16bit_png_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(values).save(path)
    assert _stored_mode(path).startswith("I")  # 'I;16' in Pillow >= 10.?, 'I' before
    assert [p[0] for p in _pixels(load_image(path))] == [0, 1, 128, 255]


def test_16bit_big_endian_in_memory() -> None:
    img = Image.frombytes("I;16B", (3, 1), struct.pack(">3H", 65535, 32768, 1000))
    assert [p[0] for p in _pixels(to_rgb(img))] == [255, 128, 4]  # 1000 * 255 / 65535 = 3.89


def test_mode_i_with_16bit_values_and_out_of_range_values() -> None:
    in_range = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32))
    assert in_range.mode == "I"
    assert [p[0] for p in _pixels(to_rgb(in_range))] == [0, 128, 255]
    # No standard scale outside [0, 65535]: min-max normalised.
    wide = Image.fromarray(np.array([[-100, 0, 155]], dtype=np.int32))
    assert [p[0] for p in _pixels(to_rgb(wide))] == [0, 100, 255]


def test_float_tiff_unit_range(tmp_path: Path) -> None:
    path = tmp_path / "f.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(path)
    assert _stored_mode(path) == "F"
    assert [p[0] for p in _pixels(load_image(path))] == [0, 128, 255]


def test_float_in_memory_byte_range_and_nan() -> None:
    img = Image.fromarray(np.array([[np.nan, 10.0, 200.0]], dtype=np.float32))
    assert [p[0] for p in _pixels(to_rgb(img))] == [0, 10, 200]


def test_cmyk_tiff_exact(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.tif"
    Image.new("CMYK", (2, 2), (0, 255, 255, 0)).save(path)  # no cyan, full magenta+yellow: red
    assert _stored_mode(path) == "CMYK"
    assert _pixels(load_image(path)) == [RED] * 4


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=95)
    assert _stored_mode(path) == "CMYK"
    for pixel in _pixels(load_image(path)):
        assert np.abs(np.array(pixel) - np.array(RED)).max() <= 3


def test_ycbcr_hsv_lab_in_memory() -> None:
    assert _pixels(to_rgb(Image.new("HSV", (1, 1), (0, 255, 255)))) == [RED]
    assert _pixels(to_rgb(Image.new("YCbCr", (1, 1), (128, 128, 128)))) == [(128, 128, 128)]
    lab_white = _pixels(to_rgb(Image.new("LAB", (1, 1), (255, 128, 128))))[0]  # L=100, a=b=0
    assert min(lab_white) >= 250


def test_rgb_input_is_returned_unchanged() -> None:
    img = Image.new("RGB", (1, 1), RED)
    assert to_rgb(img) is img


@pytest.mark.parametrize(("orientation", "marker_xy"), [(6, "top_right"), (8, "bottom_left"), (3, "bottom_right")])
def test_exif_orientation_applied(tmp_path: Path, orientation: int, marker_xy: str) -> None:
    # Stored 32 wide x 16 tall, black with a red 8x8 marker in the stored top-left corner.
    stored = Image.new("RGB", (32, 16), BLACK)
    stored.paste(RED, (0, 0, 8, 8))
    exif = stored.getexif()
    exif[0x0112] = orientation  # Orientation tag
    path = tmp_path / f"o{orientation}.jpg"
    stored.save(path, exif=exif, quality=95)

    img = load_image(path)
    # 6: rotate 90 clockwise to display; 8: 90 counter-clockwise; 3: 180.
    expected_size = (32, 16) if orientation == 3 else (16, 32)
    assert img.size == expected_size
    w, h = img.size
    where = {"top_right": (w - 4, 4), "bottom_left": (4, h - 4), "bottom_right": (w - 4, h - 4)}[marker_xy]
    r, g, b = img.getpixel(where)
    assert r > 200 and g < 60 and b < 60
    r, g, b = img.getpixel((4, 4))  # the stored corner no longer shows the marker
    assert r < 60


def test_oversize_image_rejected_with_path_and_max_pixels(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    with pytest.raises(ImageLoadError, match="max_pixels") as info:
        load_image(path, max_pixels=1000)
    assert str(path) in str(info.value) and "100x100" in str(info.value)
    assert info.value.path == str(path)
    assert load_image(path, max_pixels=10_000).size == (100, 100)  # exactly at the limit is fine


def test_size_checked_before_decoding(tmp_path: Path) -> None:
    # A truncated file: if pixels were decoded first we would see a "truncated" error instead.
    full = _noise_file(tmp_path / "full.png").read_bytes()
    path = tmp_path / "cut.png"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageLoadError, match="max_pixels"):
        load_image(path, max_pixels=100)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature, an IHDR and a tiny IDAT: enough for Image.open to read the size."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 16))


def test_pillow_decompression_bomb_error_is_wrapped(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(30_000, 30_000))  # 9e8 pixels > 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageLoadError, match="decompression bomb") as info:
        load_image(path, max_pixels=10**12)
    message = str(info.value)
    assert str(path) in message and "900000000 pixels" in message
    assert "max_pixels=1,000,000,000,000" in message and "MAX_IMAGE_PIXELS" in message


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_names_the_file(tmp_path: Path, suffix: str) -> None:
    full = _noise_file(tmp_path / f"full{suffix}").read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(ImageLoadError, match="truncated or corrupt") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_text_file_with_png_extension(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_text("not an image")
    with pytest.raises(ImageLoadError, match="not a recognised image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    with pytest.raises(ImageLoadError, match="no such file") as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match="folder"):
        load_image(tmp_path)


def test_non_positive_max_pixels_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(tmp_path / "x.png", max_pixels=0)


def test_result_is_independent_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rgb.png"
    Image.new("RGB", (4, 4), BLUE).save(path)
    fds = Path("/proc/self/fd")
    before = len(os.listdir(fds)) if fds.exists() else None
    img = load_image(path)
    if before is not None:
        assert len(os.listdir(fds)) == before  # the file handle was closed
    path.unlink()
    assert img.getpixel((3, 3)) == BLUE  # pixels were decoded before the file closed
