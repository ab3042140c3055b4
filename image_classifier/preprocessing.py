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
        width, height = image.size
        shorter, crop = self.resize_size[0], self.crop_size[0]
        # The preset's arithmetic: shorter side to `shorter`, longer side truncated, crop offset rounded.
        if width <= height:
            resized_w, resized_h = shorter, int(shorter * height / width)
        else:
            resized_w, resized_h = int(shorter * width / height), shorter
        x_scale, y_scale = width / resized_w, height / resized_h  # source pixels per resized pixel
        left, top = round((resized_w - crop) / 2), round((resized_h - crop) / 2)
        box = (left * x_scale, top * y_scale, (left + crop) * x_scale, (top + crop) * y_scale)
        pixels = np.asarray(image.resize((crop, crop), self.resample, box=box)).transpose(2, 0, 1)
        normalised = np.empty(pixels.shape, dtype=np.float32)  # CHW, written in one pass per step
        np.subtract(pixels, self.mean, out=normalised, dtype=np.float32)
        normalised *= self.scale
        return torch.from_numpy(normalised)
