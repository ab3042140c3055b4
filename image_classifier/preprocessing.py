"""RGB image -> the model's input tensor: torchvision's evaluation preset, or the same preset fused."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torchvision
from PIL import Image


def default_transform() -> Callable[[Image.Image], torch.Tensor]:
    """ImageNet evaluation preprocessing as torchvision ships it: resize 256, crop 224, normalise."""
    return torchvision.models.DenseNet121_Weights.IMAGENET1K_V1.transforms()


DRAFT_OVERSAMPLING = 5
"""`precision="fast"` decodes a JPEG at a reduced DCT scale (`draft`) only where its shorter side keeps at
least this many times the preset's resize size (1280 px for a 256 px resize): 12 MP photos decode at 1/2
scale, 4K and smaller ones whole. Each scale step saves decoding time but moves the answers; measured against
the reference (full decode, torchvision's transform, fp32) with the real EfficientNet-Lite0 on 14 photos of
each size, largest top-5 probability difference: 12 MP at 1/8 scale 0.085, 1/4 0.031, 1/2 0.020, whole
0.0004; 4K UHD at 1/2 (4.2x the resize) 0.046, whole 0.0004; 24 MP at 1/2 (8.4x) 0.015. See BENCHMARKS.md."""


def draft_side(transform: object) -> int | None:
    """The shortest side a JPEG may be decoded at for `transform` (torchvision's preset, plain or fused),
    or None for transforms that don't say their size (their JPEGs are decoded whole)."""
    resize = getattr(transform, "resize_size", None)
    if isinstance(resize, (list, tuple)) and resize:
        return DRAFT_OVERSAMPLING * int(resize[0])
    return None


def eval_crop_box(size: tuple[int, int], shorter: int, crop: int) -> tuple[float, float, float, float]:
    """The (left, top, right, bottom) box of an image of `size`, in its own pixels, that torchvision's
    preset keeps: shorter side resized to `shorter` (longer side truncated), then a centred `crop` square
    whose offset is rounded."""
    width, height = size
    if width <= height:
        resized_w, resized_h = shorter, int(shorter * height / width)
    else:
        resized_w, resized_h = int(shorter * width / height), shorter
    x_scale, y_scale = width / resized_w, height / resized_h  # source pixels per resized pixel
    left, top = round((resized_w - crop) / 2), round((resized_h - crop) / 2)
    return left * x_scale, top * y_scale, (left + crop) * x_scale, (top + crop) * y_scale


def seen_region(transform: object, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The part of an image of `size` that `transform` shows the model, as fractions (left, top, right,
    bottom): the centre crop for torchvision's preset (plain or fused), else the whole image."""
    resize, crop = getattr(transform, "resize_size", None), getattr(transform, "crop_size", None)
    if not (resize and crop and len(resize) == 1 and len(crop) == 1):
        return 0.0, 0.0, 1.0, 1.0
    left, top, right, bottom = eval_crop_box(size, resize[0], crop[0])
    width, height = size
    return left / width, top / height, min(right / width, 1.0), min(bottom / height, 1.0)


class FusedEvalTransform:
    """torchvision's ImageClassification preset (resize, centre crop, normalise), fused for speed.

    Resizes only the pixels inside the crop, in one PIL call, and normalises in NumPy, leaving torch's
    thread pool idle for the engine. The parameters come from the preset; the output matches it to within
    about one grey level at the crop's edges (tests/test_classifier.py measures it).
    """

    def __init__(self, preset: torch.nn.Module) -> None:
        self.resize_size = list(preset.resize_size)
        self.crop_size = list(preset.crop_size)
        self.resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
            preset.interpolation.value
        ]
        self.mean = (np.array(preset.mean, dtype=np.float32) * 255).reshape(3, 1, 1)
        self.scale = (1 / (np.array(preset.std, dtype=np.float32) * 255)).reshape(3, 1, 1)

    @staticmethod
    def fits(transform: object) -> bool:
        return isinstance(transform, torchvision.transforms._presets.ImageClassification) and (
            len(transform.resize_size) == 1 and len(transform.crop_size) == 1
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        crop = self.crop_size[0]
        box = eval_crop_box(image.size, self.resize_size[0], crop)
        pixels = np.asarray(image.resize((crop, crop), self.resample, box=box)).transpose(2, 0, 1)
        normalised = np.empty(pixels.shape, dtype=np.float32)  # CHW, written in one pass per step
        np.subtract(pixels, self.mean, out=normalised, dtype=np.float32)
        normalised *= self.scale
        return torch.from_numpy(normalised)
