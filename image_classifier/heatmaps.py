"""Where the model looked: class activation maps from the same forward pass, or Grad-CAM where the head
needs a gradient, for any model; and the other methods people compare (`METHODS`).

For a model whose head is global average pooling followed by one linear layer, a class's logit is the
average over positions of that class's weights dotted with the last feature map. Dotting at each position
instead gives the class activation map (Zhou et al., 2016): exact, and almost free, because the engine
returns the feature map beside the logits (`WithFeatureMap`) and the rest is a (classes × channels) by
(channels × positions) product on a 7×7 grid. Such a head is found in any model by watching one forward
pass (`find_cam_layers`), not from a list of model classes.

Other heads (ConvNeXt, ViT, MaxViT, VGG, your own) get Grad-CAM (Selvaraju et al., 2017) from torchcam on
the last spatial feature map, found as torchcam finds it (`locate_candidate_layer`; a torchvision ViT's
tokens before its last block). The engine returns that feature map beside the logits in the same way, and
only the rest of the model after it (its "tail": pooling and the head, traced by torch.fx for a model this
module doesn't know) runs again in PyTorch, with autograd, when a map is asked for (`TailMaps`). The
backbone, nearly all the compute, runs once, on the fast engine, for the bars and the maps alike. On a
pooling + linear head Grad-CAM equals the class activation map (the tests use it). Score-CAM scores
masked copies of the photo, one per channel of the feature map, on the engine (`EngineScorer`): slow.
"""

from __future__ import annotations

import copy
import functools
import itertools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import torch
import torch.fx
import torchvision
from PIL import Image
from torchcam.methods import GradCAM, GradCAMpp, LayerCAM, ScoreCAM
from torchcam.methods._utils import locate_candidate_layer
from torchcam.methods.core import _CAM

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


def find_cam_layers(model: torch.nn.Module, example: torch.Tensor) -> CamLayers | None:
    """The CAM layers of any model whose head is global average pooling followed by one linear layer, found
    by watching one forward pass of `example` (a batch); None where the head is anything else.

    Forward hooks see what each module returns. The logits must be the output of a linear layer (the last
    one that ran), and that layer's input the spatial mean of the last output of some module, as it is or
    after a ReLU the model applies as a plain function (DenseNet): that module gives the feature map. The
    last module to finish wins, so a block's container is named rather than the layer inside it that made
    the same tensor. No list of model classes: the module graph as it runs, checked by value.
    """
    means: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # name -> spatial means, raw and after ReLU
    linears: list[tuple[str, torch.Tensor, torch.Tensor]] = []  # (name, input, output) of each call

    def record(name: str, module: torch.nn.Module, inputs: tuple, output: object) -> None:
        if isinstance(module, torch.nn.Linear) and isinstance(output, torch.Tensor):
            linears.append((name, inputs[0], output))
        elif isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[2] * output.shape[3] > 1:
            means.pop(name, None)  # re-inserted: the dict's order is the order of last calls
            means[name] = (output.mean(dim=(2, 3)), output.relu().mean(dim=(2, 3)))

    handles = [
        module.register_forward_hook(functools.partial(record, name))
        for name, module in model.named_modules()
        if name
    ]
    try:
        with torch.inference_mode():
            logits = model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or not linears:
        return None
    name, pooled, output = linears[-1]
    if output.shape != logits.shape or not torch.allclose(output, logits):
        return None
    tolerance = 1e-4 * max(1.0, pooled.abs().max().item())
    for features, (raw, activated) in reversed(means.items()):
        for activation, mean in ((None, raw), (torch.nn.ReLU(), activated)):
            if mean.shape == pooled.shape and torch.allclose(mean, pooled, rtol=1e-4, atol=tolerance):
                return CamLayers(features, name, activation)
    return None


def cam_layers_for(model: torch.nn.Module, input_shape: Sequence[int] = (3, 224, 224)) -> CamLayers | None:
    """`find_cam_layers` on a seeded random image of `input_shape`."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    probe = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0)).to(device)
    return find_cam_layers(model.eval(), probe)


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
    modules, with the input as its first module, "features" (an identity); None where no tail could be
    split off the model (the whole model then runs again in PyTorch for a map). `target` names the module of
    the tail whose output and gradient make the map, and `reshape` turns that output into (N, C, h, w) where
    it is not (a ViT's tokens).
    """

    features: str
    tail: Callable[[torch.nn.Module], torch.nn.Module] | None
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


class _LeafAt(torch.fx.Tracer):
    """torch.fx's tracer, keeping the module `name` whole (a call in the graph) wherever it is."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def is_leaf_module(self, module: torch.nn.Module, qualified_name: str) -> bool:
        return qualified_name == self.name or super().is_leaf_module(module, qualified_name)


def traced_tail(model: torch.nn.Module, features: str) -> torch.nn.Module | None:
    """The rest of `model` after the last call of its module `features`, as a module from that module's
    output to the logits (torch.fx), sharing the model's weights; None where torch.fx can't trace the model
    or where the rest also reads something computed before that module (a skip connection around it)."""
    try:
        graph = _LeafAt(features).trace(model)
    except Exception:  # noqa: BLE001 - torch.fx refuses data-dependent Python in many ways
        return None
    calls = [node for node in graph.nodes if node.op == "call_module" and node.target == features]
    if not calls:
        return None
    start, tail = calls[-1], torch.fx.Graph()
    env = {start: tail.placeholder("features")}
    computed: set[torch.fx.Node] = set()  # what the model computes from its input: the rest needs none of it
    after_start = False
    for node in graph.nodes:
        if node.op == "placeholder" or any(n in computed for n in node.all_input_nodes):
            computed.add(node)
        if node is start or node.op == "placeholder":
            after_start = after_start or node is start
        elif node not in computed:  # constants and weights (get_attr), wherever they are
            env[node] = tail.node_copy(node, env.__getitem__)
        elif after_start:
            if any(n not in env for n in node.all_input_nodes):
                return None  # reads something computed before `features`
            env[node] = tail.node_copy(node, env.__getitem__)
    return torch.fx.GraphModule(model, tail)


def found_gradcam_layer(model: torch.nn.Module, input_shape: Sequence[int]) -> GradCamLayer | None:
    """Grad-CAM on the last spatial feature map, found as torchcam finds it (`locate_candidate_layer`: the
    last module whose output is (N, C, h, w) with h·w > 1); the tail after it traced by torch.fx where it
    can be (else no tail: the whole model runs again). None where the model has no spatial feature map."""
    if next(model.parameters(), None) is None:
        return None  # torchcam's search needs a parameter to learn the device: no layers, no spatial map
    features = locate_candidate_layer(model, tuple(input_shape))
    if features is None:
        return None
    tail = traced_tail(model, features)
    return GradCamLayer(features, None if tail is None else lambda _: gradcam_tail(rest=tail))


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


@dataclass(frozen=True)
class Method:
    """A way to make a class's map, by what it costs once the engine's pass is done.

    `cost`: "free", a matrix product on the feature map that pass returned (the exact class activation map);
    "tail", one forward and one backward pass through the rest of the model after that feature map (its
    head), for all the classes asked at once; "model", forward passes of the whole model in PyTorch, one per
    channel of the feature map and class (Score-CAM: seconds to minutes, so the page says so).
    """

    name: str
    extractor: type[_CAM] | None
    cost: str
    about: str

    @property
    def slow(self) -> bool:
        return self.cost == "model"


METHODS = {
    method.name: method
    for method in (
        Method("CAM", None, "free", "the class's linear weights on the last feature map (Zhou et al., 2016)"),
        Method("Grad-CAM", GradCAM, "tail", "the feature map weighted by the class score's mean gradient"),
        Method("Grad-CAM++", GradCAMpp, "tail", "Grad-CAM with each position's gradient weighted"),
        Method("Layer-CAM", LayerCAM, "tail", "the feature map times the class score's positive gradient"),
        Method("Score-CAM", ScoreCAM, "model", "each channel as a mask on the photo, scored by the model"),
    )
}
"""The methods `explain(..., method=)` and the page offer (all but CAM from torchcam), cheapest first."""


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose modules are new but whose weights are the same tensors, without the hooks
    `WithFeatureMap` put on it: torchcam hooks the copy, so the engine's own passes never trigger them."""
    tensors = itertools.chain(module.parameters(), module.buffers())
    memo: dict[int, object] = {id(tensor): tensor for tensor in tensors}
    hooked = [getattr(hook, "__self__", None) for m in module.modules() for hook in m._forward_hooks.values()]
    memo.update({id(owner): owner for owner in hooked if isinstance(owner, WithFeatureMap)})
    copied = copy.deepcopy(module, memo=memo).eval()
    for m in copied.modules():
        for key, hook in list(m._forward_hooks.items()):
            if isinstance(getattr(hook, "__self__", None), WithFeatureMap):
                del m._forward_hooks[key]
    return copied


class TailMaps:
    """One gradient method's maps (torchcam's `GradCAM`, `GradCAMpp`, `LayerCAM`) of one image, from the
    feature map the engine returned.

    Only the model's tail runs, in PyTorch with autograd, when a map is asked for. torchcam hooks the
    target for the duration of a call; the hooks go on a copy of the tail that shares the model's weights,
    so the engine's own PyTorch forward passes, running in other threads, never trigger them. One call at
    a time (a lock).
    """

    CHUNK = 16
    """Classes whose maps are made in one batch: the memory of 16 tails' activations at most."""

    def __init__(self, model: torch.nn.Module, layer: GradCamLayer, extractor: type[_CAM] = GradCAM) -> None:
        self.tail = shared_copy(layer.tail(model))
        self.layer, self.extractor = layer, extractor
        self.tail.get_submodule(layer.target)  # fail early on a wrong name
        self._lock = threading.Lock()

    def maps(self, features: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        """Maps (len(classes), h, w) in [0, 1] from one image's feature map (as the engine returned it,
        without the batch dimension). The feature map goes through the tail as a batch, one copy per class
        (up to CHUNK at a time), and each copy backpropagates its own class: one forward and one backward
        pass, which read the tail's weights once each (VGG's head holds 120 M of them)."""
        weight = next(self.tail.parameters(), features)
        maps = []
        with (
            self._lock,
            torch.inference_mode(False),
            torch.enable_grad(),
            self.extractor(self.tail, self.layer.target, reshape_transform=self.layer.reshape) as extractor,
        ):
            for start in range(0, len(classes), self.CHUNK):
                chunk = list(classes[start : start + self.CHUNK])
                copies = features.to(weight.device, weight.dtype).expand(len(chunk), *features.shape)
                scores = self.tail(copies.clone().requires_grad_(True))
                maps.append(extractor(chunk, scores, normalized=False)[0])
        return scaled_to_peak(torch.cat(maps))


class EngineScorer(torch.nn.Module):
    """The engine as a module for torchcam's Score-CAM: logits for a batch, its feature map passed through
    `features` (an identity, where torchcam's hook reads it). Score-CAM's thousand masked copies of the
    photo then run on the engine (OpenVINO, in batches of 32), not in PyTorch."""

    def __init__(self, run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> None:
        super().__init__()
        self.run = run
        self.features = torch.nn.Identity()

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            logits, features = self.run(batch)
        self.features(features.float().cpu().clone())
        return logits.float().cpu().clone()


class ModelMaps:
    """One method's maps from the whole model run again on the image, one class at a time: torchcam's
    `ScoreCAM` on the engine (`EngineScorer`), or a gradient method on a copy of the model that shares its
    weights (see `shared_copy`) where no tail could be split off it. One call at a time (a lock)."""

    def __init__(
        self,
        model: torch.nn.Module,
        features: str,
        extractor: type[_CAM],
        reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.model = model if isinstance(model, EngineScorer) else shared_copy(model)
        self.features, self.extractor, self.reshape = features, extractor, reshape
        self._lock = threading.Lock()

    def maps(self, batch: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
        """Maps (len(classes), h, w) in [0, 1] of one preprocessed image (1, C, H, W)."""
        weight = next(self.model.parameters(), batch)
        gradient = self.extractor is not ScoreCAM
        maps = []
        with (
            self._lock,
            torch.inference_mode(False),
            torch.set_grad_enabled(gradient),
            self.extractor(
                self.model, self.features, input_shape=tuple(batch.shape[1:]), reshape_transform=self.reshape
            ) as extractor,
        ):
            for index in classes:
                image = batch.to(weight.device, weight.dtype).clone().requires_grad_(gradient)
                scores = self.model(image)
                maps.append(extractor([index], scores if gradient else None, normalized=False)[0])
        return scaled_to_peak(torch.cat(maps))


class Explainer:
    """Every method's maps for one model, from what the engine's pass gives: the feature map (and, for
    the methods that run the whole model, the preprocessed image). Each method's extractor is set up when
    first used, on the model as the engine left it (fp16 on CUDA, for one).

    `run` is the engine (batch -> logits and feature map), on which Score-CAM scores its masked photos.
    Where the head is pooling + one linear layer (`cam`), CAM is the default, and the gradient methods
    run a tail of that pooling and that layer. Otherwise `gradcam` gives the tail (or None: the whole model
    runs again) and Grad-CAM is the default.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cam: CamLayers | None,
        gradcam: GradCamLayer | None,
        run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self.model, self.cam, self.run = model, cam, run
        if cam is not None:
            linear = model.get_submodule(cam.classifier)
            self.class_weights = linear.weight.detach().float().cpu().clone()
            gradcam = GradCamLayer(cam.features, functools.partial(_pooled_linear_tail, cam.classifier))
        self.layer = gradcam
        self.default = "CAM" if cam is not None else "Grad-CAM"
        self.methods = tuple(name for name in METHODS if name != "CAM" or cam is not None)
        self._makers: dict[str, TailMaps | ModelMaps] = {}
        self._lock = threading.Lock()
        self.channels: int | None = None
        """Channels of the feature map, once a map has been made."""
        self.seconds_per_class: dict[str, float] = {}
        """Each method's time for one class's map, as last measured on this machine."""

    def maker(self, method: str) -> TailMaps | ModelMaps:
        """The extractor of a gradient or scoring method, set up on first use."""
        with self._lock:
            if method not in self._makers:
                extractor = METHODS[method].extractor
                reshape = None if self.cam is not None else self.layer.reshape
                if METHODS[method].cost == "model":  # the engine scores the masked photos
                    self._makers[method] = ModelMaps(EngineScorer(self.run), "features", extractor, reshape)
                elif self.layer.tail is not None:
                    self._makers[method] = TailMaps(self.model, self.layer, extractor)
                else:
                    self._makers[method] = ModelMaps(self.model, self.layer.features, extractor, reshape)
            return self._makers[method]

    def check(self, method: str | None) -> str:
        """`method`, or the default where None; a method this model can't use, refused in words."""
        if method is None:
            return self.default
        if method not in METHODS:
            raise ValueError(f"Unknown method {method!r}: use one of {', '.join(self.methods)}.")
        if method not in self.methods:
            raise ValueError(
                f"{method} needs a head of global average pooling followed by one linear layer, and this "
                f"model's head is something else: use one of {', '.join(self.methods)}."
            )
        return method

    def maps(
        self, method: str, features: torch.Tensor, batch: torch.Tensor, classes: list[int]
    ) -> np.ndarray:
        """Maps (len(classes), h, w) in [0, 1] of one image, from its feature map (C, h, w; a ViT's tokens)
        and its preprocessed batch (1, C, H, W)."""
        self.channels = features.shape[0] if features.ndim == 3 else features.shape[-1]
        if method == "CAM":
            return class_activation_maps(features, self.class_weights, classes)
        maker = self.maker(method)
        started = time.perf_counter()
        maps = maker.maps(features, classes) if isinstance(maker, TailMaps) else maker.maps(batch, classes)
        self.seconds_per_class[method] = (time.perf_counter() - started) / max(1, len(classes))
        return maps

    def seconds_estimate(self, method: str, ms_per_photo: float | None) -> float | None:
        """About how long `method` takes for one class on this machine: as last measured, else (for
        Score-CAM) one engine pass per channel of the feature map at `ms_per_photo`; None where unknown."""
        if method in self.seconds_per_class:
            return self.seconds_per_class[method]
        if METHODS[method].slow and self.channels and ms_per_photo:
            return self.channels * ms_per_photo / 1000
        return None


def _pooled_linear_tail(classifier: str, model: torch.nn.Module) -> torch.nn.Module:
    """The tail of a pooling + linear head, for the gradient methods: the same logits as the model's."""
    pool = torch.nn.AdaptiveAvgPool2d(1)
    return gradcam_tail(pool=pool, flatten=torch.nn.Flatten(1), fc=model.get_submodule(classifier))


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
    """One photo's maps, for any class and method, computed on demand and kept.

    `maps_of(method, classes)` gives the maps (len(classes), h, w) in [0, 1] of class indices by one of
    `methods` (names in METHODS), from the photo's feature map; `method` is the default one, and
    `needs_gradient` says whether its map costs more than a matrix product (a pass through the model's
    tail, or the whole model). `region` is the part of the photo the model saw, as fractions (left, top,
    right, bottom); `size` is the photo's size as decoded (width, height). Maps are zero outside the region.
    """

    def __init__(
        self,
        maps_of: Callable[[str, list[int]], np.ndarray],
        label_index: dict[str, int],
        region: tuple[float, float, float, float],
        size: tuple[int, int],
        *,
        method: str = "CAM",
        methods: Sequence[str] = ("CAM",),
    ) -> None:
        self.maps_of, self.label_index = maps_of, label_index
        self.region, self.size = region, size
        self.method, self.methods = method, tuple(methods)
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self._lock = threading.Lock()  # a page's clicks and its own map request may overlap

    @property
    def needs_gradient(self) -> bool:
        """Whether the default method's map costs more than a matrix product (see `Method.cost`)."""
        return METHODS[self.method].cost != "free"

    def cams(self, labels: Sequence[str], method: str | None = None) -> dict[str, np.ndarray]:
        """The maps of `labels` on the model's own grid (e.g. 7×7), in [0, 1]: the missing ones in one go."""
        method = method or self.method
        if method not in self.methods:
            raise ValueError(f"No {method!r} maps for this model: use one of {', '.join(self.methods)}.")
        unknown = [label for label in labels if label not in self.label_index]
        if unknown:
            raise ValueError(
                f"Unknown label {unknown[0]!r}: use one of the model's {len(self.label_index)} labels."
            )
        with self._lock:
            missing = list(dict.fromkeys(label for label in labels if (method, label) not in self._maps))
            if missing:
                maps = self.maps_of(method, [self.label_index[label] for label in missing])
                self._maps.update(((method, label), cam) for label, cam in zip(missing, maps, strict=True))
            return {label: self._maps[method, label] for label in labels}

    def cam(self, label: str, method: str | None = None) -> np.ndarray:
        """The map of `label` on the model's own grid, in [0, 1]."""
        return self.cams([label], method)[label]

    def heatmap(
        self, label: str, size: tuple[int, int] | None = None, method: str | None = None
    ) -> np.ndarray:
        """The map of `label` as a float32 (height, width) array at `size` (default: the photo's)."""
        return upsample(self.cam(label, method), size or self.size, self.region)

    def overlay(
        self, image: Image.Image, label: str, opacity: float = 0.5, method: str | None = None
    ) -> Image.Image:
        """`image` (the photo, at any scale) with the map of `label` blended over it."""
        return overlay(image, self.cam(label, method), self.region, opacity)
