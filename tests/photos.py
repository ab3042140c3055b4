"""Phone-like photos made from real ones: 12 MP, grain, quality-95 JPEG, EXIF orientation and GPS tags.

skimage's photos are small; a phone's are 12 MP with sensor grain, which is what makes them weigh
3–5 MB. Shared by the browser tests and bench/upload.py.
"""

from __future__ import annotations

import io

import numpy as np
import skimage.data
from PIL import ExifTags, Image

PHONE_SIZE = (4032, 3024)
"""A 12 MP phone camera's frame, upright (width, height)."""
REAL_PHOTOS = {
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
    "rocket": skimage.data.rocket,
    "astronaut": skimage.data.astronaut,
    "motorcycle": lambda: skimage.data.stereo_motorcycle()[0],
}
ROTATE_90_CW = 6
"""EXIF Orientation 6: the stored pixels must be turned 90° clockwise to stand upright."""
STORED_FOR = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}
"""How a camera stores an upright scene under each EXIF Orientation (what ImageOps.exif_transpose undoes)."""
GPS = {
    ExifTags.GPS.GPSLatitudeRef: "N",
    ExifTags.GPS.GPSLatitude: (48.0, 51.0, 29.6),
    ExifTags.GPS.GPSLongitudeRef: "E",
    ExifTags.GPS.GPSLongitude: (2.0, 17.0, 40.2),
}


def real_photo(name: str = "chelsea") -> Image.Image:
    return Image.fromarray(REAL_PHOTOS[name]()).convert("RGB")


def upscaled(photo: Image.Image, size: tuple[int, int], grain: float = 5.0, seed: int = 0) -> Image.Image:
    """`photo` at `size` (cropped to its aspect ratio first) with Gaussian sensor grain of std `grain`."""
    width, height = size
    scale = max(width / photo.width, height / photo.height)
    crop_w, crop_h = round(width / scale), round(height / scale)
    left, top = (photo.width - crop_w) // 2, (photo.height - crop_h) // 2
    big = photo.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if grain:
        noise = np.random.default_rng(seed).normal(0, grain, (height, width, 3)).astype(np.float32)
        big = Image.fromarray(np.clip(np.asarray(big, np.float32) + noise, 0, 255).astype(np.uint8))
    return big


def phone_jpeg(
    upright: Image.Image, *, orientation: int | None = ROTATE_90_CW, gps: bool = True, quality: int = 95
) -> bytes:
    """What a phone writes for the scene `upright`: pixels stored as the sensor saw them (sideways for
    orientation 6, the usual one) plus EXIF: camera, time, Orientation and, unless `gps` is False, where
    it was taken."""
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Example"
    exif[ExifTags.Base.Model] = "Phone 12"
    exif[ExifTags.Base.DateTime] = "2024:05:04 13:37:00"
    stored = upright
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
        if orientation != 1:
            stored = upright.transpose(STORED_FOR[orientation])
    if gps:
        exif[ExifTags.IFD.GPSInfo] = GPS
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=quality, exif=exif)
    return buffer.getvalue()


def phone_photo(name: str = "chelsea", size: tuple[int, int] = PHONE_SIZE, **options) -> bytes:
    """A real photo as a 12 MP phone JPEG with orientation and GPS tags (about 4 MB at the default size)."""
    return phone_jpeg(upscaled(real_photo(name), size), **options)
