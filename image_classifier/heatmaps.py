"""Where the model looked: class activation maps (Zhou et al., 2016), from the same forward pass.

For a model whose head is global average pooling followed by one linear layer, a class's logit is the
average over positions of that class's weights dotted with the last feature map. Dotting at each position
instead gives the class activation map: exact, and almost free, because the engine returns the feature map
beside the logits (`WithFeatureMap`) and the rest is a (classes × channels) by (channels × positions)
product on a 7×7 grid.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torchvision
from PIL import Image

DIMMED = 0.35
"""Brightness kept outside the region the model saw, so a person sees what was cropped away."""
COLORMAP = "inferno"
"""A perceptually uniform colormap (matplotlib's): dark where the model did not look, bright where it did."""


@dataclass(frozen=True)
class CamLayers:
    """Where a model's class activation map comes from.

    `features` names the module whose output is the last feature map, `classifier` the linear layer applied
    to its global average, and `activation` what the model applies to that output as a plain function
    (DenseNet calls ReLU after `features`), so that the map is taken after the final activation.
    """

    features: str
    classifier: str
    activation: torch.nn.Module | None = None


_TORCHVISION_CAM_LAYERS: dict[type[torch.nn.Module], CamLayers] = {
    torchvision.models.DenseNet: CamLayers("features", "classifier", torch.nn.ReLU()),
    torchvision.models.ResNet: CamLayers("layer4", "fc"),  # ResNet, ResNeXt, Wide ResNet
    torchvision.models.RegNet: CamLayers("trunk_output", "fc"),
    torchvision.models.EfficientNet: CamLayers("features", "classifier.1"),  # V1 and V2
    torchvision.models.MobileNetV2: CamLayers("features", "classifier.1"),
    torchvision.models.MNASNet: CamLayers("layers", "classifier.1"),
    torchvision.models.ShuffleNetV2: CamLayers("conv5", "fc"),
    torchvision.models.GoogLeNet: CamLayers("inception5b", "fc"),
    torchvision.models.Inception3: CamLayers("Mixed_7c", "fc"),
}


def cam_layers_for(model: torch.nn.Module) -> CamLayers | None:
    """The CAM layers of a torchvision model, or None where its head is not pooling + one linear layer."""
    for family, layers in _TORCHVISION_CAM_LAYERS.items():
        if isinstance(model, family):
            return layers
    return None


class WithFeatureMap(torch.nn.Module):
    """`model`, returning (logits, final feature map) from one forward pass.

    A forward hook catches the feature map while the model runs its own forward, so the logits are the
    model's own; the capture is per thread, so concurrent calls never see each other's maps. Traceable:
    OpenVINO converts it into one graph with two outputs. A deep copy (the tuner's engines are set up on
    copies) hooks the copied model.
    """

    def __init__(self, model: torch.nn.Module, layers: CamLayers) -> None:
        super().__init__()
        self.model = model
        self.activation = layers.activation
        self._captured = threading.local()
        model.get_submodule(layers.features).register_forward_hook(self._capture)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_captured"]  # per-thread captures are never copied: a copy (an engine's) gets its own
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._captured = threading.local()

    def _capture(self, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._captured.features = output

    def forward(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(batch)
        features = self._captured.__dict__.pop("features")
        return logits, features if self.activation is None else self.activation(features)


def class_activation_maps(features: torch.Tensor, weights: torch.Tensor, classes: list[int]) -> np.ndarray:
    """Maps (len(classes), h, w) in [0, 1] from one image's feature map (C, h, w) and the linear weights.

    Negative evidence is cut at zero and each map scaled to its own maximum (a class with no positive
    evidence anywhere gets an all-zero map).
    """
    channels, height, width = features.shape
    with torch.no_grad():
        maps = weights[classes].float() @ features.float().reshape(channels, height * width)
        maps = maps.clamp(min=0).reshape(len(classes), height, width)
        peak = maps.amax(dim=(1, 2), keepdim=True)
        return torch.where(peak > 0, maps / peak.clamp(min=1e-12), 0).numpy()


def upsample(cam: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float]) -> np.ndarray:
    """A float32 (height, width) heatmap of `size` (width, height): `cam` smoothly resized into `box`
    (left, top, right, bottom as fractions of the image), zero outside it."""
    width, height = size
    left, top, right, bottom = _pixel_box(box, size)
    heatmap = np.zeros((height, width), dtype=np.float32)
    if right > left and bottom > top:
        heatmap[top:bottom, left:right] = _smoothly_resized(cam, (right - left, bottom - top))
    return heatmap


def _smoothly_resized(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`cam` resized bicubically to `size` (width, height), kept in [0, 1]."""
    resized = Image.fromarray(cam.astype(np.float32), mode="F").resize(size, Image.BICUBIC)
    return np.clip(np.asarray(resized), 0, 1)


def _pixel_box(box: tuple[float, float, float, float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    width, height = size
    left, top, right, bottom = box
    return round(left * width), round(top * height), round(right * width), round(bottom * height)


@cache
def _colormap_lut() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def overlay(
    image: Image.Image, cam: np.ndarray, box: tuple[float, float, float, float], opacity: float = 0.5
) -> Image.Image:
    """`image` with `cam` blended over the region the model saw, in a perceptual colormap; the rest dimmed.

    Only the seen region is upsampled and coloured, and the blending is PIL's, in 8 bits: a few
    milliseconds for a 768-pixel picture.
    """
    rgb = image.convert("RGB")
    picture = rgb.point(lambda value: value * DIMMED)
    left, top, right, bottom = _pixel_box(box, rgb.size)
    if right > left and bottom > top:
        heat = Image.fromarray(cam.astype(np.float32), mode="F").resize(
            (right - left, bottom - top), Image.BICUBIC
        )
        levels = np.clip(np.asarray(heat) * 255 + 0.5, 0, 255).astype(np.uint8)
        colours = Image.fromarray(_colormap_lut()[levels])
        seen = rgb.crop((left, top, right, bottom))
        picture.paste(Image.blend(seen, colours, opacity), (left, top))
    return picture


class HeatmapsUnavailable(ValueError):
    """The model has no head that a class activation map can be read from; the message says so in words."""


class Heatmaps:
    """One photo's class activation maps, for any class, computed on demand from its feature map.

    `region` is the part of the photo the model saw, as fractions (left, top, right, bottom); `size` is
    the photo's size as decoded (width, height). Maps are zero outside the region.
    """

    def __init__(
        self,
        features: torch.Tensor,
        weights: torch.Tensor,
        label_index: dict[str, int],
        region: tuple[float, float, float, float],
        size: tuple[int, int],
    ) -> None:
        self.features, self.weights, self.label_index = features, weights, label_index
        self.region, self.size = region, size
        self._maps: dict[str, np.ndarray] = {}

    def cam(self, label: str) -> np.ndarray:
        """The map of `label` on the model's own grid (e.g. 7×7), in [0, 1]."""
        if label not in self._maps:
            if label not in self.label_index:
                raise ValueError(
                    f"Unknown label {label!r}: use one of the model's {len(self.label_index)} labels."
                )
            self._maps[label] = class_activation_maps(self.features, self.weights, [self.label_index[label]])[
                0
            ]
        return self._maps[label]

    def heatmap(self, label: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """The map of `label` as a float32 (height, width) array at `size` (default: the photo's)."""
        return upsample(self.cam(label), size or self.size, self.region)

    def overlay(self, image: Image.Image, label: str, opacity: float = 0.5) -> Image.Image:
        """`image` (the photo, at any scale) with the map of `label` blended over it."""
        return overlay(image, self.cam(label), self.region, opacity)
