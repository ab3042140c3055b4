"""Correctness on real photos, with a real pretrained ImageNet model (EfficientNet-Lite0 from PyPI).

A wrong orientation, colour conversion or normalisation shows up here as a wrong answer.
"""

import io

import pytest
from PIL import Image

from conftest import EXAMPLES, EXPECTED
from test_images import encode, exif_rotated_jpeg


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_photos_are_classified_correctly(oracle, name):
    top = oracle.predict(EXAMPLES / name)
    assert next(iter(top)) in EXPECTED[name], top
    assert len(top) == 5


def test_examples_folder_has_an_expectation_for_every_photo():
    assert sorted(path.name for path in EXAMPLES.glob("*.jpg")) == sorted(EXPECTED)


def test_photo_that_is_no_cat_is_not_called_a_cat(oracle):
    """Guards against a preprocessing bug that makes every photo look alike."""
    assert next(iter(oracle.predict(EXAMPLES / "coffee.jpg"))) not in EXPECTED["cat.jpg"]


def test_exif_rotated_photo_gets_the_upright_answer(oracle):
    upright = Image.open(EXAMPLES / "cat.jpg").convert("RGB")
    rotated_top1 = next(iter(oracle.predict(exif_rotated_jpeg(upright))))
    assert rotated_top1 == next(iter(oracle.predict(encode(upright, "JPEG", quality=95))))
    assert rotated_top1 in EXPECTED["cat.jpg"]


def as_gif(image):
    frames = [image, image.rotate(90)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def with_transparent_border(image, mode):
    rgba = image.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, rgba.width, 12))
    return encode(rgba.convert(mode) if mode != "P" else rgba.quantize(255), "PNG")


def sixteen_bit(image):
    return image.convert("L").point(lambda v: v * 257, "I").convert("I;16")


FORMATS = {
    "CMYK JPEG": lambda im: encode(im.convert("CMYK"), "JPEG", quality=95),
    "WebP": lambda im: encode(im, "WEBP", quality=90),
    "animated GIF": as_gif,
    "palette PNG with transparency": lambda im: with_transparent_border(im, "P"),
    "RGBA PNG": lambda im: with_transparent_border(im, "RGBA"),
    "16-bit grayscale PNG": lambda im: encode(sixteen_bit(im), "PNG"),
    "LA PNG": lambda im: with_transparent_border(im, "LA"),
    "32-bit float TIFF": lambda im: encode(im.convert("L").point(lambda v: v / 255, "F"), "TIFF"),
}


@pytest.mark.parametrize("format", FORMATS)
def test_the_cat_is_a_cat_in_every_format(oracle, format):
    data = FORMATS[format](Image.open(EXAMPLES / "cat.jpg").convert("RGB"))
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format in {"JPEG", "WEBP", "GIF", "PNG", "TIFF"}
    assert next(iter(oracle.predict(data))) in EXPECTED["cat.jpg"], format
