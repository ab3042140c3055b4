"""Decoding people's photos: bytes, paths or PIL images in, an upright 8-bit RGB image out.

Every way a file can fail becomes one `ImageError` whose message says what is wrong in plain words;
the size limits are checked from the header, before any pixels are decoded.
"""

from __future__ import annotations

import io
import os
import re
import struct
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

ImageInput = Image.Image | str | os.PathLike | bytes | bytearray | memoryview

DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image accepted, in pixels (width x height): a 50 MP photo decodes to ~150 MB of RGB."""
DECODING_BYTES_PER_PIXEL = 10
"""Decoding may use this many bytes for each pixel of the limit at its peak: 500 MB at 50 MP. Most formats
need 4 to 8 (Pillow keeps RGB and RGBA at 4 bytes a pixel, and mapping to RGB makes one copy); the few that
need more (see `_decoding_bytes`) get a lower pixel limit."""
MAX_ASPECT_RATIO = 4.0
"""Longer images are centre-cropped to this ratio before resizing (see `limit_aspect_ratio`)."""
READABLE_FORMATS = "PNG, JPEG, WebP, GIF, BMP, TIFF"
ORIENTATION = 0x0112
"""The EXIF tag saying how the stored pixels must be turned to stand upright."""
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
"""Each EXIF orientation -> the turn that makes the photo upright (as `ImageOps.exif_transpose` does it)."""

DAMAGED_FILE_ERRORS = (OSError, SyntaxError, ValueError, OverflowError, struct.error)
"""What PIL's parsers and decoders raise on a damaged file. OverflowError and struct.error came from the
fuzzer (tests/fuzz_findings/): a BigTIFF whose tag offset is past 2**63, an EXIF value of the wrong type."""


class ImageError(ValueError):
    """The input is not an image we can classify; the message says why in plain words."""


def load_image(
    source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode `source` into an upright RGB image, or raise `ImageError` saying what is wrong.

    Applies EXIF orientation, takes the first frame of animations, composites transparency on white
    and maps any pixel format to 8-bit RGB. `min_side` lets JPEG decode at a reduced scale (a free
    speed-up) as long as both sides stay at least that long.
    """
    return decode_image(source, max_pixels=max_pixels, min_side=min_side)[0]


def decode_image(
    source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> tuple[Image.Image, tuple[int, int]]:
    """`load_image`, and the upright photo's full size (width, height) even where JPEG decoding was
    reduced by `min_side`."""
    if isinstance(source, Image.Image):
        image = source
        _check_size(image.size, max_pixels)
    else:
        image = _open(source, max_pixels)
        _check_size(image.size, max_pixels)
        reduced = bool(min_side) and image.format in ("JPEG", "MPO")
        _check_decoding_memory(image, max_pixels, reduced)
    try:
        width, height = image.size
        orientation = image.getexif().get(ORIENTATION, 1)  # the EXIF block is parsed once, here
        if orientation in (5, 6, 7, 8):  # turned by a quarter: sides swap
            width, height = height, width
        if min_side and image.format in ("JPEG", "MPO") and not isinstance(source, Image.Image):
            image.draft(None, (min_side, min_side))
        image.load()  # decode here, so that a damaged file is an ImageError
        # ImageOps.exif_transpose would parse the EXIF block again and copy an upright photo whole.
        # RGB first, then upright: the decoded image and one copy at a time (PIL keeps RGB and RGBA at 4
        # bytes a pixel: turning a 50-megapixel RGBA before compositing it took three copies, 600 MB).
        image = _to_rgb(image)
        turn = _UPRIGHT.get(orientation)
        return (image if turn is None else image.transpose(turn)), (width, height)
    except DAMAGED_FILE_ERRORS as e:  # raised by the decoders while reading pixels
        raise ImageError(_damaged_message(e)) from e


def _open(source: str | os.PathLike | bytes | bytearray | memoryview, max_pixels: int) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "The upload"
    elif isinstance(source, (str, os.PathLike)):
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"No such file: {source}") from None
        except IsADirectoryError:
            raise ImageError(f"{source} is a folder, not an image file.") from None
        name = "The file"
    else:
        raise TypeError(f"expected a PIL image, a path or bytes, not {type(source).__name__}")
    if not data:
        raise ImageError(f"{name} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():  # our own, stricter pixel limit applies right after opening
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        # PIL's own guard fires while reading the header, before we see the size: say it our way.
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(
            f"The image is {int(pixels[1]) / 1e6:,.0f} megapixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels."
            if pixels
            else f"The image is too large; the limit is {max_pixels / 1e6:g} megapixels."
        ) from None
    except (UnidentifiedImageError, *DAMAGED_FILE_ERRORS) as e:
        if data.lstrip()[:5].lower() in (b"<svg ", b"<?xml") and b"<svg" in data[:4096].lower():
            raise ImageError(
                f"SVG drawings are not supported: please upload a photo ({READABLE_FORMATS})."
            ) from e
        raise ImageError(f"This file is not an image we can read ({READABLE_FORMATS}).") from e


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"The image is {width}×{height} pixels: it has no pixels to classify.")
    if width * height > max_pixels:
        raise ImageError(
            f"The image is {width}×{height} pixels; the limit is {max_pixels / 1e6:g} megapixels."
        )


def _check_decoding_memory(image: Image.Image, max_pixels: int, reduced: bool) -> None:
    """Refuse, before decoding, an image whose decoder would need more than DECODING_BYTES_PER_PIXEL
    bytes for each pixel of `max_pixels` (a smaller pixel limit for its kind, in plain words)."""
    needed = _decoding_bytes(image, reduced)
    if needed is None:
        return
    width, height = image.size
    budget = max_pixels * DECODING_BYTES_PER_PIXEL
    if needed > budget:
        limit = budget / (needed / (width * height))
        kind = "progressive JPEG" if image.format in ("JPEG", "MPO") else "WebP"
        raise ImageError(
            f"The image is {width}×{height} pixels; the limit for {kind} images is "
            f"{limit / 1e6:.0f} megapixels."
        )


def _decoding_bytes(image: Image.Image, reduced: bool) -> int | None:
    """The memory the decoders that need most take at their peak, from the header; None for the rest."""
    pixels = image.width * image.height
    if image.format == "WEBP":
        # Pillow decodes through libwebp's animation decoder: two RGBA canvases, a copy of the frame
        # and the image itself, 16 bytes a pixel (measured: 740 MB for a 7000×7000 WebP).
        return 16 * pixels
    if image.format in ("JPEG", "MPO") and image.info.get("progressive") and getattr(image, "layer", None):
        # libjpeg keeps every DCT coefficient (2 bytes) of a progressive JPEG until its last scan, even
        # when decoding at a reduced scale; the full-size image and its RGB copy come on top.
        h_max = max(h for _, h, _, _ in image.layer) or 1
        v_max = max(v for _, _, v, _ in image.layer) or 1
        samples = sum(h * v for _, h, v, _ in image.layer) / (h_max * v_max)
        output = 0 if reduced else 4 if image.mode == "RGB" else 8
        return round((2 * samples + output) * pixels)
    return None


def _damaged_message(error: Exception) -> str:
    if "truncated" in str(error):
        return "The image file is incomplete (truncated): please upload it again."
    return "The image file is damaged and could not be decoded."


def _to_rgb(image: Image.Image) -> Image.Image:
    """Map every PIL mode to 8-bit RGB: transparency on white, high bit depths rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode in ("PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        # Pasted through its own alpha onto white: one new image. (Compositing RGBA copies made a
        # transparent 50-megapixel upload take 760 MB; PIL keeps RGB and RGBA at 4 bytes a pixel.)
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image)
        return white
    if image.mode.startswith(("I", "F")):  # 16/32-bit integer or float grayscale
        return _rescale_to_8bit(image).convert("RGB")
    return image.convert("RGB")


def _rescale_to_8bit(image: Image.Image) -> Image.Image:
    """Integer pixels span 0..255 or 0..65535 (16-bit); float ones 0..1, else their own range."""
    if image.mode.startswith("I;16") and image.mode != "I;16":  # byte-swapped variants: via 32 bits
        image = image.convert("I")  # (plain I;16 is scaled as it is: half the memory, same values)
    low, high = image.getextrema()
    if image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    elif image.mode != "F":
        low, high = 0, (255 if high <= 255 else 65535 if high <= 65535 else high)
    scale = 255.0 / ((high - low) or 1)
    return image.point(lambda v: v * scale - low * scale).convert("L")


def aspect_crop_box(size: tuple[int, int], max_ratio: float = MAX_ASPECT_RATIO) -> tuple[int, int, int, int]:
    """The centred (left, top, right, bottom) box of an image of `size` that `limit_aspect_ratio` keeps."""
    width, height = size
    if width > height * max_ratio:
        keep = max(1, round(height * max_ratio))
        left = (width - keep) // 2
        return left, 0, left + keep, height
    if height > width * max_ratio:
        keep = max(1, round(width * max_ratio))
        top = (height - keep) // 2
        return 0, top, width, top + keep
    return 0, 0, width, height


def limit_aspect_ratio(image: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Centre-crop very long images: resizing a 1×20000 strip's short side to 256 px would
    allocate gigabytes, while the evaluation crop only ever looks at the centre."""
    box = aspect_crop_box(image.size, max_ratio)
    return image if box == (0, 0, *image.size) else image.crop(box)
