"""The hostile-upload corpus, generated on the fly: everything a public demo gets sent.

Each case is a file name, its bytes, and what a person should get: either a prediction (`expect_top`
is None for "any 5 labels", or the set the top-1 must fall in) or an error containing `error`.
"""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass

from PIL import Image

from conftest import EXAMPLES, EXPECTED

CATS = EXPECTED["cat.jpg"]
NOT_AN_IMAGE = "This file is not an image we can read (PNG, JPEG, WebP, GIF, BMP, TIFF)."


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    error: str | None = None
    expect_top: frozenset[str] | None = None


def encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
"""Samples per pixel of each PNG colour type: gray, RGB, palette, gray + alpha, RGBA."""


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def blank_png(
    width: int, height: int, bit_depth: int = 1, color_type: int = 0, chunks: dict[bytes, bytes] | None = None
) -> bytes:
    """An all-zero PNG of any size and pixel format (default: black 1-bit), written chunk by chunk: tiny
    on disk, huge when decoded. `chunks` (PLTE, tRNS...) go before the pixels."""
    row = bytes(1 + (width * PNG_CHANNELS[color_type] * bit_depth + 7) // 8)  # filter byte + pixels
    compressor = zlib.compressobj(9)
    rows_per_piece = max(1, (1 << 20) // len(row))
    pieces = [
        compressor.compress(row * min(rows_per_piece, height - y)) for y in range(0, height, rows_per_piece)
    ]
    pixels = b"".join(pieces) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    extra = b"".join(png_chunk(kind, body) for kind, body in (chunks or {}).items())
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + extra
        + png_chunk(b"IDAT", pixels)
        + png_chunk(b"IEND", b"")
    )


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """What a phone writes: pixels stored sideways plus EXIF Orientation 6 ("rotate 90° clockwise")."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif)


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("photo.jpg", (EXAMPLES / "cat.jpg").read_bytes())
    return buffer.getvalue()


def _with_transparent_band(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, rgba.width, 12))
    return rgba


def corpus(max_megapixels: float = 50) -> list[Case]:
    cat_bytes = (EXAMPLES / "cat.jpg").read_bytes()
    cat = Image.open(EXAMPLES / "cat.jpg").convert("RGB")
    cats = frozenset(CATS)
    frames = [cat, cat.rotate(180)]
    limit = f"the limit is {max_megapixels:g} megapixels"
    return [
        Case("empty.jpg", b"", error="empty (0 bytes)"),
        Case("truncated.jpg", cat_bytes[: len(cat_bytes) // 2], error="incomplete (truncated)"),
        Case("random.jpg", random.Random(0).randbytes(50_000), error=NOT_AN_IMAGE),
        Case("notes.jpg", b"Dear diary, today I uploaded a text file.\n" * 20, error=NOT_AN_IMAGE),
        Case(
            "page.png",
            b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
            error=NOT_AN_IMAGE,
        ),
        Case(
            "document.jpg",
            b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n",
            error=NOT_AN_IMAGE,
        ),
        Case("archive.png", _zip_bytes(), error=NOT_AN_IMAGE),
        Case(
            "drawing.svg",
            b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle r="9"/></svg>',
            error="SVG",
        ),
        Case("pixel.png", encode(Image.new("RGB", (1, 1), (200, 120, 40)), "PNG")),
        Case("strip.png", encode(Image.new("RGB", (1, 20000), (40, 90, 200)), "PNG")),
        Case("large.png", blank_png(12000, 12000), error=f"The image is 12000×12000 pixels; {limit}."),
        Case("bomb.png", blank_png(30000, 30000), error=f"The image is 900 megapixels; {limit}."),
        Case(
            "gray16.png",
            encode(cat.convert("L").point(lambda v: v * 257, "I").convert("I;16"), "PNG"),
            expect_top=cats,
        ),
        Case("float32.tif", encode(cat.convert("L").point(lambda v: v / 255, "F"), "TIFF"), expect_top=cats),
        Case("cmyk.jpg", encode(cat.convert("CMYK"), "JPEG", quality=95), expect_top=cats),
        Case(
            "palette-transparent.png",
            encode(_with_transparent_band(cat).quantize(255), "PNG"),
            expect_top=cats,
        ),
        Case("la.png", encode(_with_transparent_band(cat).convert("LA"), "PNG"), expect_top=cats),
        Case(
            "animated.gif",
            encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=200),
            expect_top=cats,
        ),
        Case("photo.webp", encode(cat, "WEBP", quality=90), expect_top=cats),
        Case("exif-rotated.jpg", exif_rotated_jpeg(cat), expect_top=cats),
    ]
