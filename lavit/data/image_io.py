"""The one safe image loader every reader uses.

:func:`load_image` turns a path into a fully decoded RGB :class:`PIL.Image.Image`, or raises
:class:`ImageLoadError` with a message that names the file and says what to do. It guards
against decompression bombs (pixel count checked from the header before decoding), truncated
or corrupt files, EXIF rotation and every pixel mode Pillow hands back. :func:`to_rgb` is the
mode conversion on its own, so in-memory images (generated ones, ShapesWorld scenes) go
through the same rules.

Nothing here touches Pillow's global settings (``Image.MAX_IMAGE_PIXELS``,
``ImageFile.LOAD_TRUNCATED_IMAGES``): the limit is a per-call argument.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 64_000_000

# Modes whose alpha channel is composited onto white. "La"/"RGBa" hold premultiplied alpha.
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
# Modes where a PNG/GIF ``transparency`` entry (palette alpha or one colour key) is honoured.
_KEYED_TRANSPARENCY_MODES = frozenset({"1", "L", "P", "RGB"})
_WHITE_RGBA = (255, 255, 255, 255)


class ImageLoadError(ValueError):
    """An image file could not be turned into an RGB image.

    The message names the file and the fix; ``path`` holds the file (or ``None`` for an
    in-memory image). Subclasses :class:`ValueError` so callers catching bad input catch it.
    """

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


def load_image(path: str | os.PathLike[str], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into a fully loaded RGB image.

    Args:
        path: the image file.
        max_pixels: largest ``width * height`` accepted; checked from the header before any
            pixel is decoded, so a decompression bomb costs nothing. Raise it for trusted
            files that are genuinely large.

    Returns:
        An RGB image, EXIF orientation applied, not tied to any open file.

    Raises:
        ImageLoadError: the file is missing, unreadable, not an image, too large, truncated,
            or in a mode that cannot be converted. The message names the file.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    name = os.fspath(path)
    # The with-block closes the file handle; everything returned is decoded before it ends.
    with _open(name, max_pixels) as img:
        return _finish(img, name, max_pixels)


def load_image_bytes(data: bytes, name: str, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """:func:`load_image` for an image already in memory (a member of a tar shard).

    Args:
        data: the encoded image file's bytes.
        name: how errors name it (e.g. ``shard-000.tar:KEY.jpg``).
        max_pixels: as for :func:`load_image`.

    Returns:
        An RGB image, EXIF orientation applied.

    Raises:
        ImageLoadError: not an image, too large, truncated or corrupt; the message names ``name``.
    """
    if max_pixels <= 0:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as e:
        raise ImageLoadError(f"{name}: not a recognised image (Pillow cannot identify it).", path=name) from e
    except Image.DecompressionBombError as e:
        raise _pillow_bomb_error(name, e, max_pixels) from e
    except Exception as e:  # a malformed header can make a format plugin raise anything
        raise _corrupt_error(name, e) from e
    with img:
        return _finish(img, name, max_pixels)


def _finish(img: Image.Image, name: str, max_pixels: int) -> Image.Image:
    """An opened (header-only) image -> fully decoded, upright RGB, size-checked first."""
    width, height = img.size  # from the header: Image.open decodes no pixels
    if width * height > max_pixels:
        raise ImageLoadError(
            f"{name}: image is {width}x{height} = {width * height:,} pixels, over "
            f"max_pixels={max_pixels:,} (a guard against decompression bombs). If you "
            f"trust this file, pass a larger max_pixels.",
            path=name,
        )
    _decode(img, name, max_pixels)
    # exif_transpose returns a new image (a copy when there is no orientation tag).
    return to_rgb(_exif_transpose(img, name), name=name)


def _open(name: str, max_pixels: int) -> Image.Image:
    """Open lazily (header only), turning every failure into an ImageLoadError naming the file.
    Only regular files are opened: reading a FIFO (or a device) would block forever."""
    with contextlib.suppress(OSError):  # a missing or unreadable path fails in Image.open below
        mode = os.stat(name).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ImageLoadError(
                f"{name}: not a regular file (a FIFO, socket or device), which is never read; give an image file",
                path=name,
            )
    try:
        return Image.open(name)
    except FileNotFoundError as e:
        raise ImageLoadError(f"{name}: no such file. Check the path or the image root.", path=name) from e
    except IsADirectoryError as e:
        raise ImageLoadError(f"{name}: is a folder, not an image file. Check the path.", path=name) from e
    except PermissionError as e:
        raise ImageLoadError(f"{name}: permission denied. Make the file readable.", path=name) from e
    except UnidentifiedImageError as e:
        raise ImageLoadError(
            f"{name}: not a recognised image (Pillow cannot identify it). Replace or remove the "
            f"file, or use on_bad_image='skip' in the dataset.",
            path=name,
        ) from e
    except Image.DecompressionBombError as e:
        raise _pillow_bomb_error(name, e, max_pixels) from e
    except OSError as e:
        if e.errno is not None:  # a real I/O failure from the operating system
            raise ImageLoadError(
                f"{name}: cannot read the file ({e}). Check the disk and permissions.", path=name
            ) from e
        raise _corrupt_error(name, e) from e
    except Exception as e:
        # A malformed header can make a format plugin raise anything (ValueError, EOFError...).
        raise _corrupt_error(name, e) from e


def _corrupt_error(name: str, e: Exception) -> ImageLoadError:
    return ImageLoadError(
        f"{name}: truncated or corrupt image ({type(e).__name__}: {e}). Re-download or remove "
        f"the file, or use on_bad_image='skip' in the dataset.",
        path=name,
    )


def _pillow_bomb_error(name: str, e: Image.DecompressionBombError, max_pixels: int) -> ImageLoadError:
    """Pillow refuses images over 2 * Image.MAX_IMAGE_PIXELS inside Image.open, before our check."""
    return ImageLoadError(
        f"{name}: Pillow refused it as a possible decompression bomb ({e}); max_pixels={max_pixels:,}. "
        f"If you trust this file, pass a larger max_pixels and also raise PIL.Image.MAX_IMAGE_PIXELS "
        f"in your own script (this loader never changes Pillow's global settings).",
        path=name,
    )


def _decode(img: Image.Image, name: str, max_pixels: int) -> None:
    """Decode all pixels now, so a truncated or corrupt file fails here with its name."""
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise _pillow_bomb_error(name, e, max_pixels) from e
    except Exception as e:
        # Decoders of untrusted bytes raise many types (OSError, SyntaxError, ValueError,
        # struct.error, EOFError, zlib.error...); every one means the same thing to the user.
        raise _corrupt_error(name, e) from e


def _exif_transpose(img: Image.Image, name: str) -> Image.Image:
    """Rotate/flip by the EXIF orientation tag; malformed EXIF is a load error, not a crash."""
    try:
        upright = ImageOps.exif_transpose(img)
    except Exception as e:
        raise ImageLoadError(
            f"{name}: malformed EXIF metadata ({type(e).__name__}: {e}). Strip the metadata "
            f"(e.g. re-save the image) or remove the file.",
            path=name,
        ) from e
    assert upright is not None, "exif_transpose returns an image unless in_place=True"
    return upright


def to_rgb(img: Image.Image, *, name: str = "<image>") -> Image.Image:
    """Convert an image of any Pillow mode to 8-bit RGB.

    Rules:
        - alpha (RGBA, LA, PA, premultiplied La/RGBa, P/L/RGB with a ``transparency``
          entry, P with an RGBA palette) is composited onto white;
        - 16-bit modes (``I;16*``, and ``I`` whose values lie in [0, 65535]) are scaled
          ``round(v * 255 / 65535)``, so 65535 -> 255 and 32768 -> 128 (no clipping at 255);
        - ``F`` in [0, 1] is scaled by 255, ``F`` in [0, 255] is kept;
        - ``I`` or ``F`` outside those ranges has no standard scale and is min-max
          normalised to [0, 255] (non-finite ``F`` values become 0);
        - 1, L, P, RGBX, CMYK, YCbCr, LAB, HSV use Pillow's conversion (CMYK without an
          ICC profile: ``r = (255 - c) * (255 - k) / 255``).

    Args:
        img: the image; it is not modified.
        name: how to name the image in an error message (a file path when there is one).

    Returns:
        An RGB image; ``img`` itself when it is already RGB without transparency (so
        callers that need an independent copy of an RGB input must copy it).

    Raises:
        ImageLoadError: the mode has no conversion to RGB.
    """
    mode = img.mode
    if _has_alpha(img):
        return _composite_on_white(img)
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        gray = _scale_16bit(np.asarray(img))
    elif mode == "I":
        values = np.asarray(img)
        in_16bit_range = values.size == 0 or (int(values.min()) >= 0 and int(values.max()) <= 65535)
        gray = _scale_16bit(values) if in_16bit_range else _min_max(values)
    elif mode == "F":
        gray = _float_to_uint8(np.asarray(img))
    else:
        try:  # 1, L, P, RGBX, CMYK, YCbCr, LAB, HSV: Pillow's own conversion is correct
            return img.convert("RGB")
        except ValueError as e:
            raise ImageLoadError(
                f"{name}: pixel mode {mode!r} cannot be converted to RGB ({e}). Convert the image "
                f"to RGB (e.g. re-save it as an 8-bit PNG) or upgrade Pillow.",
                path=None if name == "<image>" else name,
            ) from e
    assert gray.dtype == np.uint8 and gray.shape == (img.height, img.width), (gray.dtype, gray.shape)
    return Image.fromarray(gray).convert("RGB")  # (H, W) uint8 -> mode L


def _has_alpha(img: Image.Image) -> bool:
    """Whether the image carries transparency: an alpha band, a tRNS key, or an RGBA palette."""
    if img.mode in _ALPHA_MODES:
        return True
    if img.mode in _KEYED_TRANSPARENCY_MODES and "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def _composite_on_white(img: Image.Image) -> Image.Image:
    """Blend onto a white background; transparent pixels become white."""
    if img.mode == "La":
        img = img.convert("LA")  # Pillow has no La -> RGBA path; La -> LA un-premultiplies.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, _WHITE_RGBA)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_16bit(values: np.ndarray) -> np.ndarray:
    """Map [0, 65535] to [0, 255] with rounding: (H, W) any int dtype -> (H, W) uint8."""
    wide = values.astype(np.uint32)
    # (v * 255 + 32767) // 65535 is round(v * 255 / 65535) in exact integer arithmetic.
    return ((wide * 255 + 32767) // 65535).astype(np.uint8)


def _float_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map float pixels to uint8: [0, 1] -> x255, [0, 255] kept, anything else min-max."""
    finite = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if finite.size == 0:
        return finite.astype(np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(finite * 255.0).astype(np.uint8)
    if low >= 0.0 and high <= 255.0:
        return np.rint(finite).astype(np.uint8)
    return _min_max(finite)


def _min_max(values: np.ndarray) -> np.ndarray:
    """Stretch [min, max] linearly onto [0, 255]; a constant image maps to 0."""
    wide = values.astype(np.float64)
    low, high = float(wide.min()), float(wide.max())
    if high == low:
        return np.zeros(wide.shape, dtype=np.uint8)
    return np.rint((wide - low) * (255.0 / (high - low))).astype(np.uint8)
