"""The one image decoder (r3v_ray/tasks/imaging.py) that the data path (tasks.load_image) and serving both use: allowed
formats only, wide and float pixels scaled into 8 bits, EXIF orientation applied, large images reduced while
decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from r3v_ray.tasks.imaging import FORMATS, ImageError, decode_image
from r3v_ray.tasks import RecordError, load_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n0 0 moveto 8 8 lineto stroke\nshowpage\n"


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_allowed_format_decodes_to_rgb(fmt):
    img = decode_image(_encode(Image.new("RGB", (8, 6), (200, 100, 50)), fmt))
    assert (img.mode, img.size) == ("RGB", (8, 6))
    assert all(abs(a - b) <= 8 for a, b in zip(img.getpixel((3, 3)), (200, 100, 50)))  # JPEG/WEBP are lossy


@pytest.mark.parametrize("name,data,needle", [
    ("EPS", EPS, "image format EPS is not accepted"),
    ("ICO", _encode(Image.new("RGB", (16, 16)), "ICO"), "image format ICO is not accepted"),
    ("PPM", _encode(Image.new("RGB", (4, 4)), "PPM"), "image format PPM is not accepted"),
    ("text", b"plain text, not an image", "not an image in a known format"),
])
def test_other_formats_are_refused_naming_the_format(name, data, needle):
    with pytest.raises(ImageError, match=needle) as caught:
        decode_image(data)
    assert caught.value.kind == ("unreadable" if name == "text" else "format")
    assert "PNG, JPEG, WEBP, GIF, BMP, TIFF" in str(caught.value)


@pytest.mark.parametrize("array,fmt,grey", [
    (np.full((4, 4), 200, np.uint16), "PNG", 1),  # 200 of 65535 is nearly black, not grey 200
    (np.full((4, 4), 32768, np.uint16), "PNG", 128),  # mid-grey, not white
    (np.full((4, 4), 65535, np.uint16), "TIFF", 255),
    (np.full((4, 4), 2**30, np.int32), "TIFF", 128),  # a 32-bit signed TIFF: half of 2**31 - 1
    (np.full((4, 4), 0.5, np.float32), "TIFF", 128),  # floats are 0..1: not black
    (np.full((4, 4), 1.5, np.float32), "TIFF", 255),
])
def test_wide_and_float_pixels_are_scaled_not_clipped(array, fmt, grey):
    img = decode_image(_encode(Image.fromarray(array), fmt))
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (grey, grey, grey)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (20, 10), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red on the left half
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    upright = decode_image(_encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert upright.size == (10, 20)
    top, bottom = upright.getpixel((5, 2)), upright.getpixel((5, 17))
    assert top[1] < 60 and bottom[1] > 200  # the red half now on top


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_large_image_is_reduced_while_decoding_to_no_less_than_the_budget(fmt):
    budget = 50_176
    img = decode_image(_encode(Image.new("RGB", (4096, 3000), (10, 20, 30)), fmt), budget_pixels=budget)
    assert budget <= img.width * img.height < 4 * budget
    assert abs(img.width / img.height - 4096 / 3000) < 0.02
    assert all(abs(a - b) <= 3 for a, b in zip(img.getpixel((5, 5)), (10, 20, 30)))
    assert decode_image(_encode(Image.new("RGB", (300, 200)), fmt), budget_pixels=budget).size == (300, 200)


def test_size_is_checked_from_the_header_before_the_pixels_are_decoded():
    data = _encode(Image.new("RGB", (600, 400)), "PNG")[:100]  # header intact, pixel data cut off
    seen = []

    def refuse(width, height):
        seen.append((width, height))
        raise ValueError("too big")

    with pytest.raises(ValueError, match="too big"):
        decode_image(data, refuse)
    assert seen == [(600, 400)]
    with pytest.raises(ImageError, match="PNG image does not decode"):
        decode_image(data)


def test_load_image_uses_the_same_decoder_and_names_the_record(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 32768, np.uint16)).save(path)
    assert load_image(str(path), "q1").getpixel((0, 0)) == (128, 128, 128)
    assert load_image(path.read_bytes(), "q1").getpixel((0, 0)) == (128, 128, 128)
    (tmp_path / "a.eps").write_bytes(EPS)
    with pytest.raises(RecordError, match=r"record 'q2': field 'image': unreadable image \(image format EPS"):
        load_image(str(tmp_path / "a.eps"), "q2")
