"""What a JPEG file's header says, read on the CPU in microseconds: size, components, coding, orientation.

The GPU decoder (nvJPEG) takes ordinary 8-bit YCbCr JPEGs; this tells them apart from what the CPU decoder
must take (CMYK and YCCK, grayscale, 12-bit, lossless or arithmetic-coded files, anything unusual), and
reads the EXIF orientation that nvJPEG ignores. Anything it doesn't fully understand is None: the CPU path
then decodes the file, and its errors are the project's own (`decoding.ImageError`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SEQUENTIAL = frozenset({0xC0, 0xC1})
"""Baseline and extended sequential Huffman frames."""
PROGRESSIVE = 0xC2
OTHER_FRAMES = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
"""Lossless, hierarchical and arithmetic-coded frames: the CPU decoder's."""
STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
"""Markers without a length field (TEM, RST0-7)."""
ORIENTATION = 0x0112


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int
    bits: int
    progressive: bool
    orientation: int
    """EXIF orientation 1-8 (1: stored upright), as PIL reads it (the last Exif block, IFD0)."""
    adobe: bool
    """An Adobe APP14 segment: its colour transform may differ from what nvJPEG assumes."""

    @property
    def gpu_decodable(self) -> bool:
        """An 8-bit, 3-component, Huffman-coded JPEG: what nvJPEG decodes as PIL would."""
        return self.components == 3 and self.bits == 8 and not self.adobe

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


def read_jpeg_header(data: bytes | memoryview) -> JpegHeader | None:
    """The header of a JPEG in `data`, or None where it is not a JPEG this parser fully understands."""
    data = memoryview(data)
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    position, exif, adobe = 2, None, False
    try:
        while position + 4 <= len(data):
            if data[position] != 0xFF:
                return None
            marker = data[position + 1]
            if marker == 0xFF:  # fill byte
                position += 1
                continue
            if marker in STANDALONE:
                position += 2
                continue
            (length,) = struct.unpack_from(">H", data, position + 2)
            segment = data[position + 4 : position + 2 + length]
            if length < 2 or len(segment) != length - 2:
                return None
            if marker == 0xE1 and bytes(segment[:6]) == b"Exif\x00\x00":
                exif = segment[6:]  # PIL keeps the last one
            elif marker == 0xEE and bytes(segment[:5]) == b"Adobe":
                adobe = True
            elif marker in SEQUENTIAL or marker == PROGRESSIVE:
                bits, height, width, components = struct.unpack_from(">BHHB", segment, 0)
                orientation = _orientation(exif) if exif is not None else 1
                if orientation is None or width < 1 or height < 1:
                    return None
                return JpegHeader(width, height, components, bits, marker == PROGRESSIVE, orientation, adobe)
            elif marker in OTHER_FRAMES or marker in (0xDA, 0xD9):  # a scan or the end before any frame
                return None
            position += 2 + length
    except struct.error:
        return None
    return None


def _orientation(tiff: memoryview) -> int | None:
    """IFD0's orientation tag (1 where there is none), or None where the block is not plain enough."""
    order = bytes(tiff[:2])
    if order not in (b"II", b"MM"):
        return None
    endian = "<" if order == b"II" else ">"
    magic, first = struct.unpack_from(f"{endian}HI", tiff, 2)
    if magic != 42:
        return None
    (count,) = struct.unpack_from(f"{endian}H", tiff, first)
    for entry in range(count):
        tag, kind, values = struct.unpack_from(f"{endian}HHI", tiff, first + 2 + 12 * entry)
        if tag == ORIENTATION:
            if kind != 3 or values != 1:
                return None
            (value,) = struct.unpack_from(f"{endian}H", tiff, first + 2 + 12 * entry + 8)
            return value if 1 <= value <= 8 else None
    return 1
