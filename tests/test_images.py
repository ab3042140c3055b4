"""load_image: images as people have them become upright 8-bit RGB; anything else a plain ImageError."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from classifier import ImageError, load_image
from conftest import EXAMPLES
from hostile import encode, exif_rotated_jpeg
from image_classifier.decoding import decode_image
from photos import phone_jpeg, real_photo

RED = (220, 30, 30)


def centre(image: Image.Image) -> tuple[int, int, int]:
    return image.getpixel((image.width // 2, image.height // 2))


def close(a, b, tolerance=6) -> bool:
    return all(abs(x - y) <= tolerance for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    "name, data",
    [
        ("RGB PNG", lambda: encode(Image.new("RGB", (32, 24), RED), "PNG")),
        ("JPEG", lambda: encode(Image.new("RGB", (32, 24), RED), "JPEG", quality=95)),
        ("WebP", lambda: encode(Image.new("RGB", (32, 24), RED), "WEBP", lossless=True)),
        ("BMP", lambda: encode(Image.new("RGB", (32, 24), RED), "BMP")),
        ("TIFF", lambda: encode(Image.new("RGB", (32, 24), RED), "TIFF")),
        ("CMYK JPEG", lambda: encode(Image.new("RGB", (32, 24), RED).convert("CMYK"), "JPEG", quality=95)),
        ("palette PNG", lambda: encode(Image.new("RGB", (32, 24), RED).quantize(4), "PNG")),
        ("RGBA opaque", lambda: encode(Image.new("RGBA", (32, 24), RED + (255,)), "PNG")),
    ],
)
def test_colour_images_decode_to_the_same_rgb(name, data):
    image = load_image(data())
    assert image.mode == "RGB" and image.size == (32, 24)
    assert close(centre(image), RED, tolerance=12), name


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA"])
def test_transparent_pixels_are_composited_on_white(mode):
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0)).convert(mode)
    assert centre(load_image(image)) == (255, 255, 255)


def test_palette_png_with_transparency_is_composited_on_white():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.putpixel((0, 0), 1)
    decoded = load_image(encode(image, "PNG", transparency=0))
    assert centre(decoded) == (255, 255, 255) and decoded.getpixel((0, 0)) == (200, 0, 0)


def test_half_transparent_red_blends_with_white():
    assert close(centre(load_image(Image.new("RGBA", (4, 4), (255, 0, 0, 128)))), (255, 127, 127), 2)


def test_sixteen_bit_grayscale_png_keeps_its_brightness():
    image = Image.new("I;16", (8, 8), 32768)
    decoded = load_image(encode(image, "PNG"))
    assert close(centre(decoded), (128, 128, 128), 1)


def test_float_tiff_in_unit_range_keeps_its_brightness():
    decoded = load_image(encode(Image.new("F", (8, 8), 0.25), "TIFF"))
    assert close(centre(decoded), (64, 64, 64), 1)


def test_float_tiff_outside_unit_range_is_stretched():
    image = Image.new("F", (8, 8), -10.0)
    image.putpixel((0, 0), 30.0)
    decoded = load_image(encode(image, "TIFF"))
    assert decoded.getpixel((0, 0)) == (255, 255, 255) and centre(decoded) == (0, 0, 0)


@pytest.mark.parametrize("mode", ["L", "1", "I"])
def test_grayscale_modes_become_rgb(mode):
    decoded = load_image(Image.new("L", (8, 8), 255).convert(mode))
    assert decoded.mode == "RGB" and centre(decoded) == (255, 255, 255)


def test_animated_gif_and_webp_use_the_first_frame():
    frames = [Image.new("RGB", (16, 16), colour) for colour in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    for format in ["GIF", "WEBP"]:
        data = encode(frames[0], format, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert Image.open(io.BytesIO(data)).n_frames == 3
        assert close(centre(load_image(data)), (255, 0, 0), 30), format


def test_exif_orientation_is_applied():
    upright = Image.open(EXAMPLES / "cat.jpg").convert("RGB")
    decoded = load_image(exif_rotated_jpeg(upright))
    assert decoded.size == upright.size
    assert close(centre(decoded), centre(upright), 12)
    assert close(decoded.getpixel((10, 10)), upright.getpixel((10, 10)), 12)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("name", ["chelsea", "rocket"])  # landscape and portrait: the sides swap or not
def test_every_exif_orientation_stands_upright_as_pil_turns_it(name, orientation):
    """The table in decoding.py against PIL's own `ImageOps.exif_transpose`, on a real photo stored as a
    camera would store it under each orientation; and both against the upright photo itself."""
    upright = real_photo(name)
    data = phone_jpeg(upright, orientation=orientation, gps=False)
    expected = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    decoded, full_size = decode_image(data, min_side=64)  # reduced JPEG decoding: the full size is still told
    assert full_size == upright.size
    for image in (load_image(data), load_image(Image.open(io.BytesIO(data)))):  # bytes, and a PIL image
        assert image.size == upright.size
        assert image.tobytes() == expected.tobytes()  # the same decoder, the same turn: the same pixels
    difference = np.abs(np.asarray(expected, np.int16) - np.asarray(upright, np.int16))
    assert difference.mean() < 3  # upright indeed: only JPEG's loss away from the photo
    assert decoded.size[0] < upright.size[0] and decoded.size[0] / decoded.size[1] == pytest.approx(
        upright.size[0] / upright.size[1], rel=0.02
    )


def test_bytes_paths_and_pil_images_decode_alike(tmp_path):
    path = EXAMPLES / "coffee.jpg"
    from_path, from_str = load_image(path), load_image(str(path))
    from_bytes, from_pil = load_image(path.read_bytes()), load_image(Image.open(path))
    for other in (from_str, from_bytes, from_pil):
        assert other.tobytes() == from_path.tobytes()


def test_jpeg_draft_keeps_both_sides_at_least_min_side():
    data = encode(Image.new("RGB", (2000, 1200), RED), "JPEG")
    assert min(load_image(data, min_side=256).size) >= 256
    assert load_image(data, min_side=256).size[0] < 2000  # decoded at a reduced scale
    assert load_image(data).size == (2000, 1200)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"just some text, not an image", "not an image we can read (PNG, JPEG, WebP, GIF, BMP, TIFF)"),
        (b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n", "not an image we can read"),
        (b"PK\x03\x04" + bytes(40), "not an image we can read"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', "SVG"),
    ],
)
def test_unreadable_input_raises_a_plain_image_error(data, message):
    with pytest.raises(ImageError, match=None) as error:
        load_image(data)
    assert message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_truncated_jpeg_is_reported_as_incomplete():
    data = (EXAMPLES / "cat.jpg").read_bytes()
    with pytest.raises(ImageError, match="incomplete"):
        load_image(data[: len(data) // 2])


def test_missing_file_and_folder_are_reported(tmp_path):
    with pytest.raises(ImageError, match="No such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="folder"):
        load_image(tmp_path)


def test_images_over_the_pixel_limit_are_refused_before_decoding():
    data = encode(Image.new("L", (4000, 3000)), "PNG")
    with pytest.raises(ImageError, match="4000×3000 pixels; the limit is 10 megapixels"):
        load_image(data, max_pixels=10_000_000)
    assert load_image(data, max_pixels=12_000_000).size == (4000, 3000)


def test_unsupported_input_type_is_a_type_error():
    with pytest.raises(TypeError, match="PIL image, a path or bytes"):
        load_image(12345)
