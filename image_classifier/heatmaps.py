"""Where the model looked: class activation maps from the same forward pass, or Grad-CAM where the head
needs a gradient.

For a model whose head is global average pooling followed by one linear layer, a class's logit is the
average over positions of that class's weights dotted with the last feature map. Dotting at each position
instead gives the class activation map (Zhou et al., 2016): exact, and almost free, because the engine
returns the feature map beside the logits (`WithFeatureMap`) and the rest is a (classes × channels) by
(channels × positions) product on a 7×7 grid.

Other heads (ConvNeXt, ViT, MaxViT, VGG, AlexNet, SqueezeNet, MobileNetV3) get Grad-CAM (Selvaraju et al.,
2017) from torchcam: the last feature map weighted by the class score's mean gradient. The engine returns
that feature map beside the logits in the same way, and only the rest of the model after it (its "tail":
pooling and the head; for ViT the last block too) runs again in PyTorch, with autograd, when a map is
asked for (`GradCam`). The backbone, nearly all the compute, runs once, on the fast engine, for the bars
and the maps alike. On a pooling + linear head Grad-CAM equals the class activation map (the tests use it).
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torchvision
from PIL import Image
from torchcam.methods import GradCAM

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
    # Swin's head is LayerNorm per position, then pooling + linear: exact from its channels-first permute.
    torchvision.models.SwinTransformer: CamLayers("permute", "head"),
}


def cam_layers_for(model: torch.nn.Module) -> CamLayers | None:
    """The CAM layers of a torchvision model, or None where its head is not pooling + one linear layer."""
    for family, layers in _TORCHVISION_CAM_LAYERS.items():
        if isinstance(model, family):
            return layers
    return None


def vit_patch_grid(tokens: torch.Tensor) -> torch.Tensor:
    """A torchvision ViT's tokens (N, 1 + h·w, C) as a feature map (N, C, h, w), the class token left out."""
    batch, count, channels = tokens.shape
    side = math.isqrt(count - 1)
    return tokens[:, 1:].reshape(batch, side, side, channels).permute(0, 3, 1, 2)


@dataclass(frozen=True)
class GradCamLayer:
    """Where Grad-CAM reads a model.

    `features` names the module whose output the engine returns beside the logits (as for `CamLayers`);
    `tail(model)` is the rest of the model, from that output to the logits, built from the model's own
    modules, with the input as its first module, "features" (an identity). `target` names the module of the
    tail whose output and gradient make the map, and `reshape` turns that output into (N, C, h, w) where it
    is not (a ViT's tokens).
    """

    features: str
    tail: Callable[[torch.nn.Module], torch.nn.Module]
    target: str = "features"
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None


def gradcam_tail(**modules: torch.nn.Module) -> torch.nn.Sequential:
    """A tail for `GradCamLayer`: its input as "features" (an identity), then `modules` in order."""
    return torch.nn.Sequential(OrderedDict(features=torch.nn.Identity(), **modules))


def _pooled_tail(model: torch.nn.Module) -> torch.nn.Module:  # VGG, AlexNet, MobileNetV3
    return gradcam_tail(avgpool=model.avgpool, flatten=torch.nn.Flatten(1), classifier=model.classifier)


def _convnext_tail(model: torch.nn.Module) -> torch.nn.Module:  # its classifier flattens after a LayerNorm
    return gradcam_tail(avgpool=model.avgpool, classifier=model.classifier)


def _squeezenet_tail(model: torch.nn.Module) -> torch.nn.Module:  # a 1×1 convolution, ReLU and pooling
    return gradcam_tail(classifier=model.classifier, flatten=torch.nn.Flatten(1))


def _maxvit_tail(model: torch.nn.Module) -> torch.nn.Module:  # pooling, LayerNorm, linear, tanh, linear
    return gradcam_tail(classifier=model.classifier)


class _ClassToken(torch.nn.Module):
    """A ViT's class token, the one its head reads: tokens (N, T, C) -> (N, C)."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 0]


def _vit_layer(model: torch.nn.Module) -> GradCamLayer:
    """The class token alone feeds the head, so the patch tokens' gradient is zero at the encoder's output:
    Grad-CAM reads them where the last block's attention takes them in, and the tail starts at that block."""
    *_, before_last, last = dict(model.encoder.layers.named_children())

    def tail(vit: torch.nn.Module) -> torch.nn.Module:
        block = vit.encoder.layers.get_submodule(last)
        return gradcam_tail(last=block, ln=vit.encoder.ln, token=_ClassToken(), heads=vit.heads)

    return GradCamLayer(f"encoder.layers.{before_last}", tail, "last.ln_1", vit_patch_grid)


def gradcam_layer_for(model: torch.nn.Module) -> GradCamLayer | None:
    """The Grad-CAM layer of a torchvision model whose head needs a gradient, or None if unknown. Each tail
    repeats its model's forward after the feature map (the tests check they give the model's logits)."""
    models = torchvision.models
    if isinstance(model, (models.VGG, models.AlexNet, models.MobileNetV3)):
        return GradCamLayer("features", _pooled_tail)
    if isinstance(model, models.ConvNeXt):
        return GradCamLayer("features", _convnext_tail)
    if isinstance(model, models.SqueezeNet):
        return GradCamLayer("features", _squeezenet_tail)
    if isinstance(model, models.MaxVit):  # its blocks are a ModuleList: the last one's output
        return GradCamLayer(f"blocks.{len(model.blocks) - 1}", _maxvit_tail)
    if isinstance(model, models.VisionTransformer):
        return _vit_layer(model)
    return None


class WithFeatureMap(torch.nn.Module):
    """`model`, returning (logits, the output of its module `features`) from one forward pass, with
    `activation` applied to that output where given.

    A forward hook catches the feature map while the model runs its own forward, so the logits are the
    model's own; the capture is per thread, so concurrent calls never see each other's maps. Where the
    module runs more than once, its last output is kept. Traceable: OpenVINO converts it into one graph
    with two outputs. A deep copy (the tuner's engines are set up on copies) hooks the copied model.
    """

    def __init__(
        self, model: torch.nn.Module, features: str, activation: torch.nn.Module | None = None
    ) -> None:
        super().__init__()
        self.model = model
        self.activation = activation
        self._captured = threading.local()
        model.get_submodule(features).register_forward_hook(self._capture)

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

    In NumPy, on one thread: torch would split the product over its OpenMP threads, which then wait for
    the cores OpenVINO's threads still hold after the forward pass (milliseconds, for microseconds of work).
    """
    channels, height, width = features.shape
    chosen = weights[classes].detach().float().cpu().numpy()
    grid = features.detach().float().cpu().numpy().reshape(channels, height * width)
    return scaled_to_peak((chosen @ grid).reshape(len(classes), height, width))


def scaled_to_peak(maps: torch.Tensor | np.ndarray) -> np.ndarray:
    """Maps (n, h, w) with negative evidence cut at zero and each scaled to its own maximum (a class with no
    positive evidence anywhere gets an all-zero map), as float32."""
    if isinstance(maps, torch.Tensor):
        maps = maps.detach().float().cpu().numpy()
    maps = np.maximum(maps.astype(np.float32, copy=False), 0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


class GradCam:
    """Grad-CAM maps (torchcam's `GradCAM`) of one image, from the feature map the engine returned.

    Only the model's tail runs, in PyTorch with autograd, when a map is asked for. torchcam hooks the
    target for the duration of a call; the hooks go on a copy of the tail that shares the model's weights,
    so the engine's own PyTorch forward passes, running in other threads, never trigger them. One call at
    a time (a lock).
    """

    CHUNK = 16
    """Classes whose maps are made in one batch: the memory of 16 tails' activations at most."""

    def __init__(self, model: torch.nn.Module, layer: GradCamLayer) -> None:
        tail = layer.tail(model)
        shared = {id(tensor): tensor for tensor in itertools.chain(tail.parameters(), tail.buffers())}
        self.tail = copy.deepcopy(tail, memo=shared).eval()  # new modules, the same weight tensors
        self.layer = layer
        self.tail.get_submodule(layer.target)  # fail early on a wrong name
        self._lock = threading.Lock()

    def maps(self, features: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        """Maps (len(classes), h, w) in [0, 1] from one image's feature map (as the engine returned it,
        without the batch dimension). The feature map goes through the tail as a batch, one copy per class
        (up to CHUNK at a time), and each copy backpropagates its own class: one forward and one backward
        pass, which read the tail's weights once each (VGG's head holds 120 M of them)."""
        weight = next(self.tail.parameters())
        maps = []
        with (
            self._lock,
            torch.inference_mode(False),
            torch.enable_grad(),
            GradCAM(self.tail, self.layer.target, reshape_transform=self.layer.reshape) as extractor,
        ):
            for start in range(0, len(classes), self.CHUNK):
                chunk = list(classes[start : start + self.CHUNK])
                copies = features.to(weight.device, weight.dtype).expand(len(chunk), *features.shape)
                scores = self.tail(copies.clone().requires_grad_(True))
                maps.append(extractor(chunk, scores, normalized=False)[0])
        return scaled_to_peak(torch.cat(maps))


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
def _colormap_palette() -> bytes:
    """The colormap as a PIL palette: 256 RGB entries, one per 8-bit level."""
    from matplotlib import colormaps

    return (colormaps[COLORMAP](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8).tobytes()


def overlay(
    image: Image.Image, cam: np.ndarray, box: tuple[float, float, float, float], opacity: float = 0.5
) -> Image.Image:
    """`image` with `cam` blended over the region the model saw, in a perceptual colormap; the rest dimmed.

    Only the seen region is upsampled and coloured, all in PIL, in 8 bits: the map's levels are coloured
    as a palette image (2 ms less than a NumPy lookup at 480×480, the same pixels). About 2 ms for a
    640×480 photo.
    """
    rgb = image.convert("RGB")
    picture = rgb.point(lambda value: value * DIMMED)
    left, top, right, bottom = _pixel_box(box, rgb.size)
    if right > left and bottom > top:
        heat = Image.fromarray(cam.astype(np.float32), mode="F").resize(
            (right - left, bottom - top), Image.BICUBIC
        )
        levels = heat.point(lambda value: value * 255 + 0.5).convert("L")  # rounded, clipped to 0-255
        levels.putpalette(_colormap_palette())
        colours = levels.convert("RGB")
        seen = rgb.crop((left, top, right, bottom))
        picture.paste(Image.blend(seen, colours, opacity), (left, top))
    return picture


class HeatmapsUnavailable(ValueError):
    """No heatmap method knows where to read the model; the message says so in words."""


class Heatmaps:
    """One photo's maps, for any class, computed on demand and kept.

    `maps_of(classes)` gives the maps (len(classes), h, w) in [0, 1] of class indices, from the photo's
    feature map: class activation maps, or Grad-CAM. `method` names it and `needs_gradient` says whether a
    map costs a backward pass through the model's tail (Grad-CAM) rather than a matrix product.
    `region` is the part of the photo the model saw, as fractions (left, top, right, bottom); `size` is the
    photo's size as decoded (width, height). Maps are zero outside the region.
    """

    def __init__(
        self,
        maps_of: Callable[[list[int]], np.ndarray],
        label_index: dict[str, int],
        region: tuple[float, float, float, float],
        size: tuple[int, int],
        *,
        method: str = "class activation map",
        needs_gradient: bool = False,
    ) -> None:
        self.maps_of, self.label_index = maps_of, label_index
        self.region, self.size = region, size
        self.method, self.needs_gradient = method, needs_gradient
        self._maps: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()  # a page's clicks and its own map request may overlap

    def cams(self, labels: Sequence[str]) -> dict[str, np.ndarray]:
        """The maps of `labels` on the model's own grid (e.g. 7×7), in [0, 1]: the missing ones in one go."""
        unknown = [label for label in labels if label not in self.label_index]
        if unknown:
            raise ValueError(
                f"Unknown label {unknown[0]!r}: use one of the model's {len(self.label_index)} labels."
            )
        with self._lock:
            missing = list(dict.fromkeys(label for label in labels if label not in self._maps))
            if missing:
                maps = self.maps_of([self.label_index[label] for label in missing])
                self._maps.update(zip(missing, maps, strict=True))
            return {label: self._maps[label] for label in labels}

    def cam(self, label: str) -> np.ndarray:
        """The map of `label` on the model's own grid, in [0, 1]."""
        return self.cams([label])[label]

    def heatmap(self, label: str, size: tuple[int, int] | None = None) -> np.ndarray:
        """The map of `label` as a float32 (height, width) array at `size` (default: the photo's)."""
        return upsample(self.cam(label), size or self.size, self.region)

    def overlay(self, image: Image.Image, label: str, opacity: float = 0.5) -> Image.Image:
        """`image` (the photo, at any scale) with the map of `label` blended over it."""
        return overlay(image, self.cam(label), self.region, opacity)
