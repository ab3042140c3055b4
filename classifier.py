"""Classify images with an ImageNet model from torchvision: the public entry point.

Bytes, paths or PIL images in; label -> probability out. This module knows nothing of Gradio, so the
same classifier serves the web demo, the command line and anyone importing it. Its parts live in the
`image_classifier` package, one concern per module (decoding, preprocessing, engines, catalogue, labels).

    >>> clf = load_classifier()                      # DenseNet-121, ImageNet weights
    >>> clf.predict("examples/cat.jpg")              # doctest: +SKIP
    {'tiger cat': 0.41, 'tabby': 0.33, 'Egyptian cat': 0.21, ...}
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from image_classifier import batch, cuda, tensor_pipeline, zerogpu
from image_classifier.batch import batch_of
from image_classifier.catalogue import (
    DEFAULT_MODEL,
    DEFAULT_MODELS,
    ModelFacts,
    ModelLoadError,
    cached_weights_path,
    classification_models,
    expected_memory_mb,
    load_model,
    model_facts,
    offered_models,
    pretrained_weights,
)
from image_classifier.decoding import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    ImageInput,
    aspect_crop_box,
    decode_image,
    limit_aspect_ratio,
    load_image,
)
from image_classifier.engines import (
    ENGINES,
    MEMORY_PER_MODEL_MB,
    MEMORY_PER_WEIGHT,
    NON_FINITE_MESSAGE,
    PRECISIONS,
    REFERENCE,
    EngineUnavailable,
    NonFiniteResultError,
    check_finite,
    log_non_finite,
    resolve_device,
    select_engine,
)
from image_classifier.heatmaps import (
    METHODS,
    CamLayers,
    Explainer,
    GradCamLayer,
    Heatmaps,
    HeatmapsUnavailable,
    WithFeatureMap,
    cam_layers_for,
    found_gradcam_layer,
    gradcam_layer_for,
)
from image_classifier.labels import DEFAULT_LABELS_PATH, load_labels
from image_classifier.model_set import DEFAULT_MODEL_MEMORY_MB, ModelNotOffered, ModelSet
from image_classifier.preprocessing import FusedEvalTransform, default_transform, draft_side, seen_region
from image_classifier.sharing import SharedForward
from image_classifier.tensor_pipeline import TensorPreprocess
from image_classifier.tuner import EngineChoice, FidelityCheck, setup_engine

__all__ = [
    "DEFAULT_LABELS_PATH",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MODEL",
    "DEFAULT_MODELS",
    "DEFAULT_MODEL_MEMORY_MB",
    "ENGINES",
    "EXAMPLE_PHOTOS",
    "METHODS",
    "PRECISIONS",
    "Analysis",
    "CamLayers",
    "Classifier",
    "EngineChoice",
    "EngineUnavailable",
    "Explanation",
    "FusedEvalTransform",
    "GradCamLayer",
    "ImageError",
    "HeatmapsUnavailable",
    "ImageInput",
    "ModelFacts",
    "ModelLoadError",
    "ModelNotOffered",
    "ModelSet",
    "NonFiniteResultError",
    "add_model_arguments",
    "cached_weights_path",
    "classification_models",
    "classifier_set",
    "default_transform",
    "load_classifier",
    "load_image",
    "load_labels",
    "main",
    "model_facts",
    "offered_models",
    "pretrained_weights",
    "time_one_photo",
    "resolve_device",
    "select_engine",
]

DEVICE_DECODE_MIN_PIXELS = 0
"""On CUDA, `precision="fast"` decodes one photo's JPEG on the GPU (nvJPEG) from this size up. Every size
pays on an H200: a 640×480 photo -> top 5 in 3.5 ms against 6.9 ms with the CPU decoder, 12 MP in 13.8 ms
against 83.9 ms (BENCHMARKS.md, section 5)."""

EXAMPLE_PHOTOS = sorted(Path(__file__).resolve().with_name("examples").glob("*.jpg"))
"""The bundled example photos: the page shows them, and the engine tuner checks answers on them."""


class Classifier:
    """Wraps a model mapping an (N, 3, H, W) float batch to (N, classes) logits.

    `transform` maps an RGB PIL image to a CHW float tensor (default: `default_transform()`).
    `precision="exact"` is the reference: full decoding, the transform as given and fp32 PyTorch.
    `precision="fast"` decodes large JPEGs at a reduced scale (`draft_side`), fuses a torchvision preset
    transform and runs the fastest engine on this machine that keeps the answers: timed at the first start
    (`setup_engine`, checked on `check_images`, by default the bundled examples), cached for later ones.
    `engine` forces an engine by name (see ENGINES), for benchmarks; `engine_choice` says what runs and why.
    Prediction runs in three small steps: `preprocess` (image -> tensor), `forward` (tensors only)
    and `postprocess` (probabilities -> label dict). A non-finite result raises `NonFiniteResultError`.

    Heatmaps (`analyse`, `explain`): the engine returns the last feature map beside the logits; the maps
    are class activation maps where the head is pooling + one linear layer (`cam_layers`, found for any
    model by watching one forward pass), else Grad-CAM on the last spatial feature map (`gradcam_layer`:
    torchvision's ViT through its last block, any other model where torchcam finds the layer) through the
    rest of the model in PyTorch. An explicit argument wins over the found layers. Other methods
    (Grad-CAM++, Layer-CAM, Score-CAM: `METHODS`) on request.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        labels: Sequence[str],
        *,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        precision: str = "fast",
        cam_layers: CamLayers | None = None,
        gradcam_layer: GradCamLayer | None = None,
        engine: str | None = None,
        name: str | None = None,
        check_images: Sequence[ImageInput] | None = None,
    ) -> None:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique, or the label -> probability dict merges classes")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.name = name or type(model).__name__
        self.labels = list(labels)
        self.precision = precision
        self.reference_transform = transform or default_transform()
        self.transform = self.reference_transform
        self.max_pixels = max_pixels
        self._decode_side = draft_side(self.transform) if precision == "fast" else None
        if precision == "fast" and FusedEvalTransform.fits(self.transform):
            self.transform = FusedEvalTransform(self.transform)
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        example = self.transform(Image.new("RGB", (256, 256))).unsqueeze(0)
        # Heatmaps: the engine runs the model wrapped to return its last feature map too (one pass);
        # where a map needs a gradient, Grad-CAM runs the model's tail from it when a map is asked for.
        if cam_layers is None and gradcam_layer is None:
            cam_layers = cam_layers_for(self.model, example.shape[1:])
            if cam_layers is None:
                gradcam_layer = gradcam_layer_for(self.model) or found_gradcam_layer(
                    self.model, example.shape[1:]
                )
        self.cam_layers, self.gradcam_layer = cam_layers, None if cam_layers else gradcam_layer
        runnable = self.model
        if self.cam_layers is not None:
            runnable = WithFeatureMap(self.model, self.cam_layers.features, self.cam_layers.activation)
        elif self.gradcam_layer is not None:
            runnable = WithFeatureMap(self.model, self.gradcam_layer.features)
        check = None
        if precision == "fast" and engine is None:
            check = self._fidelity_check(EXAMPLE_PHOTOS if check_images is None else check_images)
        cuda.configure(self.device)
        if zerogpu.active() and engine is None:  # no GPU outside the model's steps: nothing to time
            engine = REFERENCE
        self._runnable, self._check, self._forced_engine, self._example = runnable, check, engine, example
        self.engine_choice, self._run = setup_engine(
            runnable,
            self.device,
            example,
            precision=precision,
            engine=engine,
            check=check,
            name=self.name,
            keep_model=self.device.type == "cuda",  # fp32 stays for the batch runner's own choice
        )
        self.engine = self.engine_choice.engine
        self.engine_choices = {1: self.engine_choice}
        """The engine chosen for each batch size (`use_batch_size`); 1 is the page's."""
        self._runners = {1: self._run}
        # On the model's device: many photos decoded and preprocessed there (tensor_pipeline), and one
        # photo's JPEG too. Concurrent callers may share forward passes (SharedForward): off, since on an H200
        # 32 callers got 0.80x the throughput with it (the model is not their limit; BENCHMARKS.md section 5).
        fits = (
            precision == "fast" and TensorPreprocess.fits(self.reference_transform) and not zerogpu.active()
        )
        self.tensor_preprocess = TensorPreprocess(self.reference_transform) if fits else None
        on_cuda = self.device.type == "cuda"
        self.device_decode_min_pixels = DEVICE_DECODE_MIN_PIXELS if on_cuda and fits else None
        self.share_forward_passes = False
        """On CUDA, run concurrent callers' photos through the model together (`sharing.SharedForward`)."""
        self._shared = SharedForward(self._forward_on_device)
        # After the engine: the methods run the tail as the engine left the model (fp32 on CUDA, where the
        # engine is set up on a copy).
        self._explainer = None
        if self.cam_layers is not None or self.gradcam_layer is not None:
            self._explainer = Explainer(self.model, self.cam_layers, self.gradcam_layer, self._run)
            if self._explainer.default != "CAM" and self.gradcam_layer.tail is not None:
                self._explainer.maker(self._explainer.default)  # set up now: fail early on a wrong layer

    @property
    def methods(self) -> tuple[str, ...]:
        """The heatmap methods this model offers (names in METHODS), its default first; none without maps."""
        if self._explainer is None:
            return ()
        default = self._explainer.default
        return (default, *(name for name in self._explainer.methods if name != default))

    def method_seconds(self, method: str, ms_per_photo: float | None = None) -> float | None:
        """About how long `method` takes for one class's map on this machine: as last measured, else for
        Score-CAM estimated from `ms_per_photo` (one engine pass per feature channel); None where unknown."""
        return None if self._explainer is None else self._explainer.seconds_estimate(method, ms_per_photo)

    @property
    def _gradcam(self):
        """The default method's tail extractor where it is Grad-CAM (the tests watch it), else None."""
        explainer = self._explainer
        if explainer is None or explainer.default != "Grad-CAM" or self.gradcam_layer.tail is None:
            return None
        return explainer.maker("Grad-CAM")

    def _fidelity_check(self, photos: Sequence[ImageInput]) -> FidelityCheck | None:
        """The tuner's check: `photos` through the reference's preprocessing and through this classifier's."""
        photos = list(photos)
        if not photos:
            return None
        preprocessing = f"{self.reference_transform!r}|{type(self.transform).__name__}|{self._decode_side}"
        key = hashlib.sha256(preprocessing.encode())
        for photo in photos:
            key.update(photo.tobytes() if isinstance(photo, Image.Image) else _file_or_bytes(photo))

        def inputs() -> tuple[torch.Tensor, torch.Tensor]:
            # The check photos are the project's own, not uploads: the default pixel limit, not this one's.
            limit = max(self.max_pixels, DEFAULT_MAX_PIXELS)
            reference, fast = [], []
            for photo in photos:
                full = load_image(photo, max_pixels=limit)  # the reference decodes whole
                reduced = load_image(photo, max_pixels=limit, min_side=self._decode_side)
                reference += [
                    self.reference_transform(limit_aspect_ratio(view)) for view in check_views(full)
                ]
                fast += [self.transform(limit_aspect_ratio(view)) for view in check_views(reduced)]
            return torch.stack(reference), torch.stack(fast)

        return FidelityCheck(key.hexdigest(), inputs)

    def decode(self, image: ImageInput) -> Image.Image:
        """The upright RGB photo, decoded at the scale the model needs (see `load_image`)."""
        return load_image(image, max_pixels=self.max_pixels, min_side=self._decode_side)

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """Decode one image and turn it into the model's input tensor (C, H, W): on the CPU, or for a large
        JPEG on CUDA (`device_decode_min_pixels`), decoded and preprocessed on the GPU."""
        if self.device_decode_min_pixels is not None and not isinstance(image, Image.Image):
            loaded = tensor_pipeline.load(self, "", image, self.device_decode_min_pixels, cpu=False)
            if loaded.data is not None:
                (pixels,) = tensor_pipeline.decode_on(self.device, [loaded])
                if pixels is not None:
                    return self.tensor_preprocess([pixels])[0]
        rgb = image if isinstance(image, Image.Image) and image.mode == "RGB" else self.decode(image)
        return self.transform(limit_aspect_ratio(rgb))

    def forward(self, batch: torch.Tensor, *, threads: int | None = None) -> torch.Tensor:
        """Class probabilities (N, classes) for a preprocessed batch (N, C, H, W).

        `threads` caps the CPU threads of this pass on the OpenVINO engine (a model compiled for it on first
        use); the PyTorch engines use their global thread pool. The Live tab runs its frames on one thread.

        On CUDA the finiteness check runs on the GPU and one copy brings the answers back; with
        `share_forward_passes`, callers on several threads share forward passes (`sharing.SharedForward`).
        """
        if self.device.type != "cuda" or threads is not None:
            return self.forward_with_features(batch, threads=threads)[0]
        run = self._shared if self.share_forward_passes else self._forward_on_device
        probabilities, finite = run(batch)
        if not bool(finite.all()):
            self.report_non_finite(int((~finite).sum()), len(finite))
            raise NonFiniteResultError(NON_FINITE_MESSAGE)
        return probabilities

    def _forward_on_device(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities and whether each row is finite, brought back from the device in one copy."""
        with torch.inference_mode():
            outputs = self._runner_for(len(batch))(batch.to(self.device, non_blocking=True))
            logits, features = outputs if isinstance(outputs, tuple) else (outputs, None)
            finite = cuda.finite_rows(logits, features)
            packed = torch.cat([logits.float().softmax(dim=-1), finite[:, None].float()], dim=1).cpu()
        return packed[:, :-1], packed[:, -1].bool()

    def forward_top_k(self, batch: torch.Tensor, top_k: int) -> torch.Tensor:
        """(N, 2 top_k + 1) float64 on the model's device, nothing waited for: each row's top_k
        probabilities, their class indices, and 1 where the row is finite (the batch runner on CUDA)."""
        with torch.inference_mode():
            outputs = self._runner_for(len(batch))(batch.to(self.device, non_blocking=True))
            logits, features = outputs if isinstance(outputs, tuple) else (outputs, None)
            finite = cuda.finite_rows(logits, features)
            values, indices = logits.float().softmax(dim=-1).topk(top_k)
            return torch.cat([values.double(), indices.double(), finite[:, None].double()], dim=1)

    def report_non_finite(self, count: int, total: int) -> None:
        """Log that `count` of `total` images got a non-finite result (they get `NON_FINITE_MESSAGE`)."""
        log_non_finite(self.name, self.engine, count, total)

    def use_batch_size(self, batch_size: int) -> EngineChoice:
        """Choose the engine for batches of `batch_size` (the batch runner's) as well: on CUDA the tuner
        times every candidate at that size (cached like the batch-1 choice); elsewhere, or where the engine
        was forced or is exact, the batch-1 choice stands."""
        if batch_size in self.engine_choices:
            return self.engine_choices[batch_size]
        if self.device.type != "cuda" or self.precision != "fast" or self._forced_engine is not None:
            return self.engine_choice
        example = self._example.expand(batch_size, *self._example.shape[1:]).contiguous()
        choice, run = setup_engine(
            self._runnable, self.device, example, check=self._check, name=self.name, keep_model=True
        )
        self.engine_choices[batch_size], self._runners[batch_size] = choice, run
        return choice

    def _runner_for(self, rows: int):
        """The engine chosen for batch 1 runs single photos; the one chosen for the largest batch the rest."""
        if rows == 1 or len(self._runners) == 1:
            return self._run
        return self._runners[max(self._runners)]

    def forward_with_features(
        self, batch: torch.Tensor, *, threads: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities (N, classes) and, for models with heatmaps, the last feature map (N, C, h, w;
        a ViT's tokens).

        Raises `NonFiniteResultError` where any image's logits or feature map hold NaN or infinity."""
        with torch.inference_mode():
            batch = batch.to(self.device)
            run = self._runner_for(len(batch))
            outputs = run(batch) if threads is None else run(batch, threads=threads)
            logits, features = outputs if isinstance(outputs, tuple) else (outputs, None)
            check_finite(logits, features, model=self.name, engine=self.engine)
            return logits.float().softmax(dim=-1).cpu(), None if features is None else features.float().cpu()

    def postprocess(self, probabilities: torch.Tensor, top_k: int) -> dict[str, float]:
        """The `top_k` most probable labels of one image, highest first (never NaN: see `forward`)."""
        check_finite(probabilities.unsqueeze(0), model=self.name, engine=self.engine)
        values, indices = probabilities.topk(top_k)
        return {self.labels[i]: float(p) for p, i in zip(values.tolist(), indices.tolist(), strict=True)}

    def predict(self, image: ImageInput, top_k: int = 5, *, threads: int | None = None) -> dict[str, float]:
        """Label -> probability for the `top_k` most likely classes of `image`, highest first.
        `threads` caps the forward pass's CPU threads (see `forward`)."""
        return self.predict_batch([image], top_k, threads=threads)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], top_k: int = 5, *, threads: int | None = None
    ) -> list[dict[str, float]]:
        """`predict` for several images in one forward pass."""
        self._check_top_k(top_k)
        if not images:
            return []
        tensors = [self.preprocess(image) for image in images]
        batch = tensors[0].unsqueeze(0) if len(tensors) == 1 else batch_of(tensors)  # one: no copy
        return [self.postprocess(p, top_k) for p in self.forward(batch, threads=threads)]

    def analyse(self, image: ImageInput, top_k: int = 5, *, threads: int | None = None) -> Analysis:
        """`predict` and the heatmaps of every class, by every method the model offers, from one forward
        pass.

        Class activation maps are a matrix product on that pass's feature map. Grad-CAM maps run the
        model's tail from it, with autograd, when a map is first asked for (`Heatmaps.needs_gradient`);
        Score-CAM runs the whole model again, once per channel of the feature map.
        """
        self._check_top_k(top_k)
        rgb, full_size = decode_image(image, max_pixels=self.max_pixels, min_side=self._decode_side)
        batch = self.preprocess(rgb).unsqueeze(0)
        probabilities, features = self.forward_with_features(batch, threads=threads)
        heatmaps = None
        if features is not None and self._explainer is not None:
            # Kept with the maps for as long as a page session keeps the photo. The input serves only the
            # methods that run the whole model again (Score-CAM; gradients where the model's tail can't be run
            # on its own): kept in half precision, 294 KB instead of 588 at 224 px.
            maps_of = functools.partial(self._maps_of, features[0], batch.to(torch.float16))
            region = self.seen_region(rgb.size)
            heatmaps = Heatmaps(
                maps_of, self.label_index, region, full_size, method=self.methods[0], methods=self.methods
            )
        predictions = self.postprocess(probabilities[0], top_k)
        return Analysis(predictions, rgb, heatmaps, ClassProbabilities(self.label_index, probabilities[0]))

    def _maps_of(
        self, features: torch.Tensor, batch: torch.Tensor, method: str, classes: list[int]
    ) -> np.ndarray:
        return self._explainer.maps(method, features, batch.float(), classes)

    def explain(
        self,
        image: ImageInput,
        labels: Sequence[str] | None = None,
        top_k: int = 5,
        *,
        method: str | None = None,
    ) -> Explanation:
        """Label -> heatmap: where the model looked for each class.

        Each heatmap is a float32 (height, width) array in [0, 1] at the size of the upright photo
        (EXIF orientation applied, as `predict` sees it), zero outside the region the model saw.
        `labels` may name any of the model's labels; by default the `top_k` predicted ones, in
        `predict`'s order. `method` is one of `methods` (default: the first, CAM where the head allows,
        else Grad-CAM; Score-CAM is slow: see `METHODS`). The answer is a dict, whose `probabilities`
        give each label's probability and `method` the method used.
        """
        if labels is not None:
            unknown = [label for label in labels if label not in self.label_index]
            if unknown:
                raise ValueError(f"Unknown labels: {', '.join(map(repr, unknown))}.")
        if self.no_heatmaps_reason:
            raise HeatmapsUnavailable(self.no_heatmaps_reason)
        method = self._explainer.check(method)
        analysis = self.analyse(image, top_k)
        wanted = list(analysis.predictions if labels is None else labels)
        analysis.heatmaps.cams(wanted, method)  # all at once: Grad-CAM runs the tail once for them all
        maps = Explanation({label: analysis.heatmaps.heatmap(label, method=method) for label in wanted})
        maps.probabilities = {label: analysis.probabilities[label] for label in wanted}
        maps.method = method
        return maps

    @property
    def no_heatmaps_reason(self) -> str | None:
        """Why this model gets no heatmaps, in words; None when it does."""
        if self.cam_layers is not None or self.gradcam_layer is not None:
            return None
        return (
            f"No heatmap for {type(self.model).__name__}: no layer of it gives a spatial feature map (a "
            "channels × height × width output bigger than 1 × 1), which every heatmap method reads."
        )

    @property
    def memory_mb(self) -> float:
        """About how much memory this classifier holds, in MB: its weights (counted in fp32) times what
        its engine keeps of them (`MEMORY_PER_WEIGHT`), plus `MEMORY_PER_MODEL_MB`."""
        weights = sum(tensor.numel() * 4 for tensor in self.model.state_dict().values()) / 2**20
        return weights * MEMORY_PER_WEIGHT.get(self.engine, 1.5) + MEMORY_PER_MODEL_MB

    def seen_region(self, size: tuple[int, int]) -> tuple[float, float, float, float]:
        """The part of a photo of `size` that the model sees, as fractions (left, top, right, bottom)."""
        left, top, right, bottom = aspect_crop_box(size)
        kept_w, kept_h = right - left, bottom - top
        x0, y0, x1, y1 = seen_region(self.transform, (kept_w, kept_h))
        width, height = size
        return (
            (left + x0 * kept_w) / width,
            (top + y0 * kept_h) / height,
            (left + x1 * kept_w) / width,
            (top + y1 * kept_h) / height,
        )

    def _check_top_k(self, top_k: int) -> None:
        if not 1 <= top_k <= len(self.labels):
            raise ValueError(f"top_k must be between 1 and {len(self.labels)}, not {top_k}")


zerogpu.decorate(Classifier)  # on Hugging Face ZeroGPU, each forward pass runs in a `spaces.GPU` function


def check_views(photo: Image.Image) -> list[Image.Image]:
    """What the engine tuner checks answers on, per photo: the photo as it is, a centred portrait (3:4) crop,
    and its centre zoomed in. A reduced precision's error depends on the framing: EfficientNet-Lite0 in
    OpenVINO bf16 moves a top-5 probability by 0.016 at most on the three examples as they are, but by 0.050
    on the rocket's portrait crop."""
    width, height = photo.size
    portrait = min(width, height * 3 // 4)
    left = (width - portrait) // 2
    zoom = (width // 4, height // 4, width - width // 4, height - height // 4)
    return [photo, photo.crop((left, 0, left + portrait, height)), photo.crop(zoom)]


def _file_or_bytes(photo: ImageInput) -> bytes:
    return bytes(photo) if isinstance(photo, (bytes, bytearray, memoryview)) else Path(photo).read_bytes()


@dataclass(frozen=True)
class Analysis:
    """One photo's answers and heatmaps, from one forward pass (`Classifier.analyse`)."""

    predictions: dict[str, float]
    """Label -> probability for the top classes, highest first."""
    image: Image.Image
    """The upright photo as decoded for the model (large JPEGs at a reduced scale)."""
    heatmaps: Heatmaps | None
    """Every class's map, made when first asked for; None where the model has none
    (`Classifier.no_heatmaps_reason` says why)."""
    probabilities: ClassProbabilities
    """Every label's probability, from the same pass."""


class ClassProbabilities(Mapping[str, float]):
    """Label -> probability for every class, read from one float32 array: 4 KB for ImageNet's 1,000 classes,
    where a dict takes 49 KB in 1,000 small objects. A page session keeps one per photo shown; small objects
    kept by many sessions leave the allocator's pools fragmented once the sessions have gone."""

    __slots__ = ("_index", "_values")

    def __init__(self, label_index: Mapping[str, int], probabilities: torch.Tensor | np.ndarray) -> None:
        if isinstance(probabilities, torch.Tensor):
            probabilities = probabilities.detach().float().cpu().numpy()
        self._index = label_index
        self._values = np.array(probabilities, dtype=np.float32)  # its own copy, not a view of the batch's

    @property
    def array(self) -> np.ndarray:
        """The probabilities in the model's label order, as they are kept (read-only)."""
        view = self._values.view()
        view.flags.writeable = False
        return view

    def __getitem__(self, label: str) -> float:
        return float(self._values[self._index[label]])

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class Explanation(dict):
    """`Classifier.explain`'s answer: label -> heatmap, plus each label's probability and the method."""

    probabilities: dict[str, float]
    method: str


def load_classifier(
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = "fast",
    engine: str | None = None,
) -> Classifier:
    """A `Classifier` for a torchvision model with ImageNet-1k weights.

    `weights=None` uses torchvision's pretrained weights, downloaded once into the torch cache.
    `weights=PATH` loads a local state dict instead (torchvision's file, or a copy of it).
    `engine` forces an engine by name (ENGINES) instead of the tuned one.
    """
    device = resolve_device(device)
    net = load_model(model, weights)
    transform = pretrained_weights(model).transforms()
    return Classifier(
        net,
        load_labels(),
        transform=transform,
        device=device,
        max_pixels=max_pixels,
        precision=precision,
        engine=engine,
        name=model,
    )


@functools.cache
def timing_photo() -> bytes:
    """A 640 × 480 JPEG of smooth colours and fine noise, like a phone photo scaled for the web: what
    `time_one_photo` classifies."""
    rows, columns = np.mgrid[0:480, 0:640].astype(np.float32)
    noise = np.random.default_rng(0).normal(0, 12, (480, 640, 3))
    pixels = np.stack([columns / 640 * 255, rows / 480 * 255, (rows + columns) / 1120 * 255], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def time_one_photo(classifier: Classifier) -> dict[str, float]:
    """Classify `timing_photo()`, decoding included: what `ModelSet` times for each model's ms per photo."""
    return classifier.predict(timing_photo())


def classifier_set(
    models: str | Sequence[str] = DEFAULT_MODELS,
    *,
    default: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = "fast",
    engine: str | None = None,
    memory_mb: float = DEFAULT_MODEL_MEMORY_MB,
) -> ModelSet[Classifier]:
    """The torchvision models a server offers, as `load_classifier` loads them, each on first use.

    `models`: names, "a,b,c", or "all". `default` joins them when it isn't among them; `weights` (a local
    file) is the default model's; `engine` forces one engine for every model (see `load_classifier`).
    Loaded models stay while they fit in `memory_mb`, least recently used out first.
    """
    names = offered_models(models)
    if default not in names:
        names = [*offered_models([default]), *names]
    device = resolve_device(device)
    expected_engine = engine or select_engine(device, precision)
    loaders = {
        name: functools.partial(
            load_classifier,
            name,
            weights if name == default else None,
            device,
            max_pixels=max_pixels,
            precision=precision,
            engine=engine,
        )
        for name in names
    }
    return ModelSet(
        loaders,
        default=default,
        memory_mb=memory_mb,
        expected_mb=lambda name: expected_memory_mb(name, expected_engine),
        memory_mb_of=lambda classifier: classifier.memory_mb,
        timed=time_one_photo,
    )


# --- command line ------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `load_classifier` takes, shared by this CLI and app.py."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"torchvision model (default {DEFAULT_MODEL})")
    parser.add_argument("--weights", metavar="PATH", help="local weights file instead of the download")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fast",
        help="fast (default): the fastest engine on this machine that keeps the answers; "
        "exact: full decoding, torchvision's transform, fp32 PyTorch",
    )
    parser.add_argument(
        "--engine",
        choices=list(ENGINES),
        metavar="NAME",
        help=f"force one engine instead of the tuned one (for benchmarks): {', '.join(ENGINES)}",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with an ImageNet model.")
    parser.add_argument("images", nargs="+", metavar="PATH", help="images; with --output, folders and globs")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show (default 5)")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    parser.add_argument(
        "--explain",
        metavar="DIR",
        type=Path,
        help="also write each image's heatmap (top class) as a PNG into DIR",
    )
    add_batch_arguments(parser)
    args = parser.parse_args(argv)
    classes = len(load_labels())
    if not 1 <= args.top_k <= classes:
        parser.error(f"--top-k must be between 1 and {classes}")
    if args.output is None and (args.ray or args.resume):
        parser.error("--ray and --resume write a table: give it with --output results.csv")
    if args.ray:
        return run_on_ray(args)

    try:
        classifier = load_classifier(
            args.model, weights=args.weights, device=args.device, precision=args.precision, engine=args.engine
        )
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.explain and classifier.no_heatmaps_reason:
        print(f"error: {classifier.no_heatmaps_reason}", file=sys.stderr)
        return 1
    if args.output is not None:
        return run_batch(classifier, args)

    failed = 0
    written: set[Path] = set()
    for path in args.images:
        try:
            if args.explain:
                top = _write_heatmap(classifier, path, args.top_k, args.explain, written)
            else:
                top = classifier.predict(path, top_k=args.top_k)
        except (ImageError, NonFiniteResultError) as e:
            print(f"{path}: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"image": path, "predictions": top}, allow_nan=False))
        else:
            width = max(map(len, top))
            print(path)
            for label, probability in top.items():
                print(f"  {label:<{width}}  {probability:6.1%}")
    return 1 if failed else 0


def _write_heatmap(
    classifier: Classifier, path: str, top_k: int, folder: Path, written: set[Path]
) -> dict[str, float]:
    """Classify `path` and write its top class's heatmap over the photo as DIR/<name>.png (<name>-2.png
    and so on where two images share a name)."""
    analysis = classifier.analyse(path, top_k=top_k)
    folder.mkdir(parents=True, exist_ok=True)
    stem, number = Path(path).stem, 1
    target = folder / f"{stem}.png"
    while target in written:
        number += 1
        target = folder / f"{stem}-{number}.png"
    analysis.heatmaps.overlay(analysis.image, next(iter(analysis.predictions))).save(target)
    written.add(target)
    return analysis.predictions


def add_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """Many images into one table (image_classifier.batch), locally or on Ray."""
    group = parser.add_argument_group("many images into one table")
    group.add_argument("--output", metavar="FILE", help="write a .csv, .jsonl or .parquet table")
    group.add_argument(
        "--batch-size",
        type=int,
        metavar="N",
        help=f"images per forward pass (default {batch.DEFAULT_BATCH_SIZE}; {batch.CUDA_BATCH_SIZE} on CUDA)",
    )
    group.add_argument("--workers", type=int, metavar="N", help="decoding threads (default: up to 4)")
    group.add_argument("--resume", action="store_true", help="keep the rows in FILE, skip their images")
    group.add_argument("--progress", action="store_true", help="progress bar even when not on a terminal")
    group.add_argument("--ray", action="store_true", help="run on Ray (local, or RAY_ADDRESS's cluster)")
    group.add_argument("--ray-address", metavar="ADDR", help="an existing Ray cluster (default $RAY_ADDRESS)")
    group.add_argument("--ray-actors", type=int, metavar="N", help="classifier actors (default: from CPUs)")


def default_batch_size(device: torch.device) -> int:
    return batch.CUDA_BATCH_SIZE if device.type == "cuda" else batch.DEFAULT_BATCH_SIZE


def run_batch(classifier: Classifier, args: argparse.Namespace) -> int:
    try:
        summary = batch.run(
            classifier,
            args.images,
            args.output,
            top_k=args.top_k,
            batch_size=args.batch_size or default_batch_size(classifier.device),
            workers=args.workers,
            resume=args.resume,
            progress=args.progress or None,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary, file=sys.stderr)
    return 1 if summary.failed else 0


def run_on_ray(args: argparse.Namespace) -> int:
    from image_classifier import ray_batch

    weights = os.path.abspath(args.weights) if args.weights else None  # actors run in other folders
    load = functools.partial(
        load_classifier, args.model, weights, args.device, precision=args.precision, engine=args.engine
    )
    try:
        summary = ray_batch.run(
            load,
            args.images,
            args.output,
            top_k=args.top_k,
            batch_size=args.batch_size or batch.DEFAULT_BATCH_SIZE,  # the actors' device is theirs to know
            resume=args.resume,
            address=args.ray_address,
            actors=args.ray_actors,
            progress=args.progress or None,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary, file=sys.stderr)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
