"""Decoding an image, the one way the data path (tasks.load_image) and the HTTP API (serving/parsing.py) both do.

- Only the formats in FORMATS are opened: Pillow is never asked to try another plugin, so a format that runs an
  external program (EPS and PS start Ghostscript) or is rarely exercised never reaches its decoder. Anything else
  is refused naming the format, as Pillow's own header sniffers identify it.
- Pixels keep their meaning in 8-bit RGB: 16- and 32-bit integer images are scaled from their sample range
  (Pillow's convert would clip: 200 of 65535 would become 200 of 255), float images are read as 0..1.
- The EXIF orientation is applied, as every viewer applies it.
- `budget_pixels` (serving) shrinks a larger image while decoding it: a JPEG is decoded at a reduced scale
  (Pillow's draft), other formats are reduced by an integer factor right after; the result keeps at least the
  budget's pixels, so the model's processor still does the final resize. `check_size` sees the size the header
  declares before any pixel is decoded.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")
_INT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ORIENTATION = 0x0112
# EXIF orientation -> the transpose that undoes it (as PIL.ImageOps.exif_transpose maps them).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


class ImageError(ValueError):
    """An image that is not decoded. `kind`: "format" (not an allowed format), "too_large" (a decompression bomb),
    "unreadable" (anything else)."""

    def __init__(self, message: str, kind: str = "unreadable"):
        self.kind = kind
        super().__init__(message)

    def __reduce__(self):
        return (type(self), (str(self), self.kind))


def sniff_format(head: bytes) -> str | None:
    """The format Pillow's header sniffers take `head` for (None: none does); opens nothing."""
    Image.init()
    for name, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(head):
                return name
        except Exception:  # a sniffer given too few bytes
            continue
    return None


def decode_image(
    source: bytes | str | Path,
    check_size: Callable[[int, int], None] | None = None,
    budget_pixels: int | None = None,
) -> Image.Image:
    """An image's bytes or file -> an 8-bit RGB image, upright. Raises ImageError; `check_size(width, height)` may
    raise its own error to refuse a size before the pixels are decoded."""
    fp = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        img = Image.open(fp, formats=FORMATS)
    except UnidentifiedImageError:
        head = bytes(source[:64]) if isinstance(fp, io.BytesIO) else _head(fp)
        found = sniff_format(head)
        if found:
            raise ImageError(f"image format {found} is not accepted; send one of {', '.join(FORMATS)}",
                             "format") from None
        raise ImageError(f"not an image in a known format (accepted: {', '.join(FORMATS)})") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"too large to decode ({exc})", "too_large") from None
    except OSError as exc:
        raise ImageError(f"cannot open ({exc.strerror or exc})") from None
    with img:
        width, height = img.size
        if check_size is not None:
            check_size(width, height)
        try:
            return _decode(img, budget_pixels)
        except Image.DecompressionBombError as exc:
            raise ImageError(f"too large to decode ({exc})", "too_large") from None
        except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or malformed pixel data
            raise ImageError(f"{img.format} image does not decode ({type(exc).__name__}: {exc})") from None


def _head(path: str | Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(64)
    except OSError:
        return b""


def _decode(img: Image.Image, budget_pixels: int | None) -> Image.Image:
    orientation = img.getexif().get(_ORIENTATION)
    factor = 1.0
    if budget_pixels and img.width * img.height > budget_pixels:
        factor = math.sqrt(img.width * img.height / budget_pixels)
        if img.format in ("JPEG", "MPO"):  # decoded at 1/2, 1/4 or 1/8 scale, no smaller than asked
            img.draft(None, (math.ceil(img.width / factor), math.ceil(img.height / factor)))
            factor = math.sqrt(img.width * img.height / budget_pixels)
    img.load()
    out = to_rgb8(img)
    if int(factor) >= 2:  # box-averaged by an integer factor: still at least the budget's pixels
        out = out.reduce(int(factor))
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    return out.copy() if out is img else out  # the opened image is closed (its pixels freed) on return


def to_rgb8(img: Image.Image) -> Image.Image:
    """8-bit RGB with the pixels' meaning kept: wide integer samples scaled from their range, floats from 0..1."""
    if img.mode in _INT_MODES or img.mode == "F":
        values = np.asarray(img, dtype=np.float64)
        scale = 255.0 if img.mode == "F" else 255.0 / _int_max(img)
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return img if img.mode == "RGB" else img.convert("RGB")


def _int_max(img: Image.Image) -> int:
    """The largest value of an integer image's samples: 16-bit modes and PNG (16 bits at most) 65535; a TIFF's from
    its BitsPerSample and SampleFormat tags (2: signed)."""
    if img.mode != "I" or img.format != "TIFF":
        return 65535
    bits = img.tag_v2.get(258, (32,))
    bits = bits[0] if isinstance(bits, tuple) else bits
    fmt = img.tag_v2.get(339, (1,))
    fmt = fmt[0] if isinstance(fmt, tuple) else fmt
    return 2 ** (bits - 1) - 1 if fmt == 2 else 2**bits - 1
