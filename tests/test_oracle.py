"""Correctness on real photos, with a real pretrained ImageNet model (EfficientNet-Lite0 from PyPI).

A wrong orientation, colour conversion or normalisation shows up here as a wrong answer.
"""

import pytest
from PIL import Image

from conftest import EXAMPLES, EXPECTED
from hostile import encode, exif_rotated_jpeg


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
