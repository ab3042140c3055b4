"""Fuzzing the decoder: the seed corpus and the target, shared by tests/test_fuzz.py and scripts/fuzz.py.

The seeds are small real photos (examples/ and skimage.data, shrunk to a few dozen pixels) saved in every
format and flavour `load_image` reads, generated here so that nothing binary is committed. The target feeds
one input through `load_image` and both preprocessing paths of `Classifier.preprocess` (the fused transform
of precision="fast" and torchvision's preset of "exact"); only `ImageError` may come out, and each call is
measured against the limits: 2 s of CPU time and 500 MB of memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import io
import math
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from classifier import Classifier, ImageError, default_transform, load_image, load_labels
from hostile import blank_png, png_chunk
from image_classifier.decoding import DECODING_BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS

ROOT = Path(__file__).resolve().parent.parent
LIMIT_SECONDS = 2.0
"""Most CPU time one call may take on one input."""
LIMIT_MB = 500
"""Most memory one call may add at its peak, over what the process held before it."""
SEED_SIDE = 40
"""Longest side of the seed images: small files keep the fuzzer fast."""


# --- seeds ----------------------------------------------------------------------------------------


def _photos() -> dict[str, Image.Image]:
    """The real photos the seeds are made from, shrunk to SEED_SIDE."""
    import skimage.data

    photos = {path.stem: Image.open(path) for path in sorted((ROOT / "examples").glob("*.jpg"))}
    photos.update(
        astronaut=Image.fromarray(skimage.data.astronaut()),
        chelsea=Image.fromarray(skimage.data.chelsea()),
        camera=Image.fromarray(skimage.data.camera()),
    )
    for image in photos.values():
        image.draft("RGB", (SEED_SIDE * 2, SEED_SIDE * 2))  # JPEGs: decode at a reduced scale
        image.thumbnail((SEED_SIDE, SEED_SIDE), Image.Resampling.LANCZOS)
    return photos


def _encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def _exif(orientation: int = 1) -> Image.Exif:
    """What a camera writes: make, model, date, orientation, and an Exif sub-IFD with exposure."""
    exif = Image.Exif()
    exif[0x010F] = "Fuzzcam"  # Make
    exif[0x0110] = "Model 1"  # Model
    exif[0x0132] = "2024:05:01 12:00:00"  # DateTime
    exif[0x0112] = orientation
    exif.get_ifd(0x8769)[0x829A] = 1 / 125  # ExposureTime, in the Exif sub-IFD
    return exif


def png_file(header: bytes, rows: bytes) -> bytes:
    """A PNG of one IHDR `header` and the filtered scanlines `rows`, compressed into one IDAT chunk."""
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(rows, 9))
        + png_chunk(b"IEND", b"")
    )


def png_16bit_rgb(image: Image.Image) -> bytes:
    """A 48-bit RGB PNG (PIL writes 8-bit RGB only): each 8-bit value v becomes the 16-bit v * 257."""
    pixels = np.asarray(image.convert("RGB"), dtype=">u2") * 257
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", image.width, image.height, 16, 2, 0, 0, 0)
    return png_file(header, rows)


def png_interlaced(image: Image.Image) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG, written by hand: PIL does not write interlaced PNGs."""
    pixels = np.asarray(image.convert("RGB"))
    passes = [
        (0, 0, 8, 8),
        (4, 0, 8, 8),
        (0, 4, 4, 8),
        (2, 0, 4, 4),
        (0, 2, 2, 4),
        (1, 0, 2, 2),
        (0, 1, 1, 2),
    ]
    rows = b""
    for x0, y0, dx, dy in passes:
        sub = pixels[y0::dy, x0::dx]
        if sub.size:
            rows += b"".join(b"\x00" + row.tobytes() for row in sub)
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, 2, 0, 0, 1)
    return png_file(header, rows)


def _transparent_band(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    rgba.paste((0, 0, 0, 0), (0, 0, rgba.width, rgba.height // 4))
    return rgba


def seed_corpus() -> dict[str, bytes]:
    """File name -> bytes: every format and flavour `load_image` reads, made from real photos."""
    photos = _photos()
    cat, coffee, rocket = photos["cat"], photos["coffee"], photos["rocket"]
    astronaut, chelsea, camera = photos["astronaut"], photos["chelsea"], photos["camera"]
    gray16 = camera.convert("L").point(lambda v: v * 257, "I").convert("I;16")
    frames = [chelsea.convert("RGB"), chelsea.convert("RGB").rotate(180)]
    return {
        # JPEG: baseline with a camera's EXIF (turned by a quarter), plain 4:4:4, progressive, CMYK
        # (Adobe), grayscale.
        "exif-rotated.jpg": _encode(cat.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=_exif(6)),
        "plain-444.jpg": _encode(coffee, "JPEG", quality=90, subsampling=0),
        "progressive.jpg": _encode(astronaut, "JPEG", progressive=True, optimize=True),
        "progressive-exif.jpg": _encode(rocket, "JPEG", progressive=True, exif=_exif(3)),
        "cmyk.jpg": _encode(chelsea.convert("CMYK"), "JPEG", quality=90),
        "gray.jpg": _encode(camera, "JPEG"),
        # PNG: 8-bit RGB (with an eXIf chunk), RGBA, 16-bit gray and RGB, palette (plain and with a
        # transparent entry), 1-bit, gray + alpha, Adam7-interlaced.
        "rgb-exif.png": _encode(coffee, "PNG", exif=_exif(8)),
        "rgba.png": _encode(_transparent_band(cat), "PNG"),
        "gray16.png": _encode(gray16, "PNG"),
        "rgb16.png": png_16bit_rgb(astronaut),
        "palette.png": _encode(rocket.quantize(16), "PNG"),
        "palette-transparent.png": _encode(_transparent_band(cat).quantize(32), "PNG"),
        "bilevel.png": _encode(camera.convert("1"), "PNG"),
        "gray-alpha.png": _encode(_transparent_band(camera).convert("LA"), "PNG"),
        "interlaced.png": png_interlaced(chelsea),
        # GIF: one frame; two frames with a transparent colour.
        "still.gif": _encode(rocket, "GIF"),
        "animated.gif": _encode(
            frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, transparency=0
        ),
        # WebP: lossy (with EXIF), lossless with alpha, animated.
        "lossy-exif.webp": _encode(astronaut, "WEBP", quality=80, exif=_exif(6)),
        "lossless-alpha.webp": _encode(_transparent_band(cat), "WEBP", lossless=True),
        "animated.webp": _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100),
        # TIFF: raw RGB with EXIF orientation, LZW, deflate 16-bit gray, float32, CMYK packbits,
        # JPEG-compressed, two pages.
        "rgb-orientation.tif": _encode(coffee, "TIFF", tiffinfo={0x0112: 6}),
        "lzw.tif": _encode(chelsea, "TIFF", compression="tiff_lzw"),
        "gray16-deflate.tif": _encode(gray16, "TIFF", compression="tiff_adobe_deflate"),
        "float32.tif": _encode(camera.convert("L").point(lambda v: v / 255, "F"), "TIFF"),
        "cmyk-packbits.tif": _encode(rocket.convert("CMYK"), "TIFF", compression="packbits"),
        "jpeg.tif": _encode(astronaut, "TIFF", compression="jpeg"),
        "pages.tif": _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
        # BMP: 24-bit, 32-bit with alpha, 8-bit palette, 1-bit.
        "rgb24.bmp": _encode(cat, "BMP"),
        "rgba32.bmp": _encode(_transparent_band(coffee), "BMP"),
        "palette8.bmp": _encode(chelsea.quantize(64), "BMP"),
        "bilevel.bmp": _encode(camera.convert("1"), "BMP"),
    }


def largest_images(max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, bytes]:
    """File name -> bytes: the largest images the decoder accepts, in the pixel formats that take the most
    memory to decode (blank, so the files stay small). Each must decode within LIMIT_MB."""
    side = math.isqrt(max_pixels)
    # WebP and 4-component progressive JPEG take 16 bytes a pixel: their limit is lower (decoding.py).
    smaller = math.isqrt(max_pixels * DECODING_BYTES_PER_PIXEL // 16)
    exif = _exif(6).tobytes()
    exif = exif.removeprefix(b"Exif\x00\x00")
    return {
        "rgba8.png": blank_png(side, side, 8, 6),
        "rgba16.png": blank_png(side, side, 16, 6),
        "gray-alpha16.png": blank_png(side, side, 16, 4),
        "gray16.png": blank_png(side, side, 16, 0),
        "palette-transparent.png": blank_png(side, side, 8, 3, {b"PLTE": bytes(768), b"tRNS": b"\x00"}),
        "rotated-rgba.png": blank_png(side, side, 8, 6, {b"eXIf": exif}),
        "float32.tif": _encode(Image.new("F", (side, side)), "TIFF", compression="tiff_adobe_deflate"),
        "int32.tif": _encode(Image.new("I", (side, side)), "TIFF", compression="tiff_adobe_deflate"),
        "cmyk.tif": _encode(Image.new("CMYK", (side, side)), "TIFF", compression="tiff_adobe_deflate"),
        "transparent.gif": _encode(Image.new("P", (side, side)), "GIF", transparency=0),
        "progressive-444.jpg": _encode(
            Image.new("RGB", (side, side)), "JPEG", progressive=True, subsampling=0
        ),
        "progressive-cmyk.jpg": _encode(Image.new("CMYK", (smaller, smaller)), "JPEG", progressive=True),
        "alpha.webp": _encode(Image.new("RGBA", (smaller, smaller)), "WEBP", lossless=True),
        "lossy.webp": _encode(Image.new("RGB", (smaller, smaller)), "WEBP", quality=50),
    }


# --- the target -----------------------------------------------------------------------------------


class _Linear(torch.nn.Module):
    """The cheapest model Classifier takes: preprocessing is what is fuzzed, not the forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 1000)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.head(batch.mean(dim=(2, 3)))


@dataclass(frozen=True)
class Outcome:
    """One input, through every step: the worst step's CPU seconds and memory, and what went wrong."""

    seconds: float
    wall_seconds: float
    peak_mb: float
    process_peak_mb: float
    """The whole process's resident memory at its highest during this input."""
    failure: BaseException | None
    """Anything other than ImageError, or a wrong result; None when the input behaved."""

    @property
    def slow(self) -> bool:
        return self.seconds > LIMIT_SECONDS

    @property
    def over_memory(self) -> bool:
        return self.peak_mb > LIMIT_MB


class DecoderTarget:
    """`load_image`, then `Classifier.preprocess` with the fused (fast) and torchvision (exact) transforms."""

    def __init__(self) -> None:
        labels, model, preset = load_labels(), _Linear(), default_transform()
        self.steps = {
            "load_image": self._load,
            # fast: the fused transform and JPEGs decoded at a reduced scale (no engine tuning: one is named)
            "preprocess-fast": Classifier(model, labels, transform=preset, engine="torch-fp32").preprocess,
            "preprocess-exact": Classifier(model, labels, transform=preset, precision="exact").preprocess,
        }

    @staticmethod
    def _load(data: bytes) -> Image.Image:
        image = load_image(data)
        if image.mode != "RGB" or min(image.size) < 1:
            raise AssertionError(f"load_image gave a {image.mode} image of {image.size}")
        return image

    def __call__(self, data: bytes) -> Outcome:
        seconds = wall = peak = process_peak = 0.0
        failure = None
        for name, step in self.steps.items():
            memory = PeakMemory()
            cpu_started, wall_started = time.process_time(), time.perf_counter()
            try:
                result = step(data)
                if isinstance(result, torch.Tensor) and (
                    result.shape != (3, 224, 224) or not torch.isfinite(result).all()
                ):
                    raise AssertionError(
                        f"{name} gave a tensor of {tuple(result.shape)} with non-finite values"
                    )
            except ImageError:
                pass
            except Exception as e:  # the fuzzer records anything else as a finding
                failure = failure or e
            seconds = max(seconds, time.process_time() - cpu_started)
            wall = max(wall, time.perf_counter() - wall_started)
            peak = max(peak, memory.peak_mb())
            process_peak = max(process_peak, memory.start + memory.peak_mb())
        return Outcome(seconds, wall, peak, process_peak, failure)


class PeakMemory:
    """The most memory the process gained since this object was made (Linux: the VmHWM mark, reset).

    Freed memory the allocator kept is handed back first, so that it does not hide the next peak.
    """

    def __init__(self) -> None:
        self.available = Path("/proc/self/clear_refs").exists()
        self.start = 0.0
        if self.available:
            _malloc_trim()
            self.start = _status_mb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS

    def peak_mb(self) -> float:
        return _status_mb("VmHWM") - self.start if self.available else 0.0


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _malloc_trim() -> None:
    """glibc's malloc_trim(0): give the free heap memory back to the system."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
