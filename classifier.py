"""Classify images with an ImageNet model from torchvision.

Bytes, paths or PIL images in; label -> probability out. This module knows nothing of Gradio, so the
same classifier serves the web demo, the command line and anyone importing it.

    >>> clf = load_classifier()                      # DenseNet-121, ImageNet weights
    >>> clf.predict("examples/cat.jpg")              # doctest: +SKIP
    {'tiger cat': 0.41, 'tabby': 0.33, 'Egyptian cat': 0.21, ...}
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps, UnidentifiedImageError

ImageInput = Image.Image | str | os.PathLike | bytes | bytearray | memoryview

DEFAULT_MODEL = "densenet121"
DEFAULT_LABELS_PATH = Path(__file__).with_name("imagenet_class_index.json")
DEFAULT_MAX_PIXELS = 50_000_000
"""Largest image accepted, in pixels (width x height): a 50 MP photo decodes to ~150 MB of RGB."""
MAX_ASPECT_RATIO = 4.0
"""Longer images are centre-cropped to this ratio before resizing (see `Classifier.preprocess`)."""
READABLE_FORMATS = "PNG, JPEG, WebP, GIF, BMP, TIFF"
PRECISIONS = ("fast", "exact")
"""fast: the quickest engine that keeps the answers (`select_engine`); exact: PyTorch fp32."""

logger = logging.getLogger(__name__)

# ImageNet gives two pairs of classes the same name; these WordNet ids tell them apart.
_DISAMBIGUATIONS = {
    "n02012849": "crane (bird)",
    "n03126707": "crane (machine)",
    "n03710637": "maillot (swimsuit)",
    "n03710721": "maillot (tank suit)",
}


class ImageError(ValueError):
    """The input is not an image we can classify; the message says why in plain words."""


class ModelLoadError(RuntimeError):
    """The model or its weights could not be loaded; the message says what was tried and the ways out."""


# --- labels ------------------------------------------------------------------------------------


def load_labels(path: str | os.PathLike = DEFAULT_LABELS_PATH) -> list[str]:
    """The display labels of an ImageNet class index file, in class-index order.

    The file maps "0".."999" to [WordNet id, name]. Underscores become spaces, and names that occur
    more than once are qualified, so that a label -> probability dict never merges two classes.
    """
    with open(path, encoding="utf-8") as f:
        index = json.load(f)
    entries = [index[str(i)] for i in range(len(index))]
    names = [name.replace("_", " ") for _, name in entries]
    counts = Counter(names)
    return [
        _DISAMBIGUATIONS.get(wnid, f"{name} ({wnid})") if counts[name] > 1 else name
        for (wnid, _), name in zip(entries, names, strict=True)
    ]


# --- images ------------------------------------------------------------------------------------


def load_image(
    source: ImageInput, *, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int | None = None
) -> Image.Image:
    """Decode `source` into an upright RGB image, or raise `ImageError` saying what is wrong.

    Applies EXIF orientation, takes the first frame of animations, composites transparency on white
    and maps any pixel format to 8-bit RGB. `min_side` lets JPEG decode at a reduced scale (a free
    speed-up) as long as both sides stay at least that long.
    """
    if isinstance(source, Image.Image):
        image = source
        _check_size(image.size, max_pixels)
    else:
        image = _open(source, max_pixels)
        _check_size(image.size, max_pixels)
        if min_side and image.format == "JPEG":
            image.draft(None, (min_side, min_side))
    try:
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, SyntaxError, ValueError) as e:  # raised by the decoders while reading pixels
        raise ImageError(_damaged_message(e)) from e


def _open(source: str | os.PathLike | bytes | bytearray | memoryview, max_pixels: int) -> Image.Image:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = "The upload"
    elif isinstance(source, (str, os.PathLike)):
        try:
            data = Path(source).read_bytes()
        except FileNotFoundError:
            raise ImageError(f"No such file: {source}") from None
        except IsADirectoryError:
            raise ImageError(f"{source} is a folder, not an image file.") from None
        name = "The file"
    else:
        raise TypeError(f"expected a PIL image, a path or bytes, not {type(source).__name__}")
    if not data:
        raise ImageError(f"{name} is empty (0 bytes).")
    try:
        with warnings.catch_warnings():  # our own, stricter pixel limit applies right after opening
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        # PIL's own guard fires while reading the header, before we see the size: say it our way.
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise ImageError(
            f"The image is {int(pixels[1]) / 1e6:,.0f} megapixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels."
            if pixels
            else f"The image is too large; the limit is {max_pixels / 1e6:g} megapixels."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if data.lstrip()[:5].lower() in (b"<svg ", b"<?xml") and b"<svg" in data[:4096].lower():
            raise ImageError(
                f"SVG drawings are not supported: please upload a photo ({READABLE_FORMATS})."
            ) from e
        raise ImageError(f"This file is not an image we can read ({READABLE_FORMATS}).") from e


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"The image is {width}×{height} pixels: it has no pixels to classify.")
    if width * height > max_pixels:
        raise ImageError(
            f"The image is {width}×{height} pixels; the limit is {max_pixels / 1e6:g} megapixels."
        )


def _damaged_message(error: Exception) -> str:
    if "truncated" in str(error):
        return "The image file is incomplete (truncated): please upload it again."
    return "The image file is damaged and could not be decoded."


def _to_rgb(image: Image.Image) -> Image.Image:
    """Map every PIL mode to 8-bit RGB: transparency on white, high bit depths rescaled."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode.startswith(("I", "F")):  # 16/32-bit integer or float grayscale
        return _rescale_to_8bit(image).convert("RGB")
    return image.convert("RGB")


def _rescale_to_8bit(image: Image.Image) -> Image.Image:
    """Integer pixels span 0..255 or 0..65535 (16-bit); float ones 0..1, else their own range."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")
    low, high = image.getextrema()
    if image.mode == "F" and low >= 0 and high <= 1:
        low, high = 0.0, 1.0
    elif image.mode != "F":
        low, high = 0, (255 if high <= 255 else 65535 if high <= 65535 else high)
    scale = 255.0 / ((high - low) or 1)
    return image.point(lambda v: v * scale - low * scale).convert("L")


# --- the classifier ----------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """`None` picks CUDA when available, else the CPU; a named device must exist."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"Unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'.") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was requested, but no CUDA GPU is available here: use --device cpu.")
    return device


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


class Classifier:
    """Wraps a model mapping an (N, 3, H, W) float batch to (N, classes) logits.

    `transform` maps an RGB PIL image to a CHW float tensor (default: `default_transform()`).
    `precision="fast"` picks the quickest engine that keeps the answers (`select_engine`) and fuses a
    torchvision preset transform; `"exact"` runs the model and transform as given, in fp32 PyTorch.
    Prediction runs in three small steps: `preprocess` (image -> tensor), `forward` (tensors only)
    and `postprocess` (probabilities -> label dict).
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
    ) -> None:
        if len(set(labels)) != len(labels):
            raise ValueError("labels must be unique, or the label -> probability dict merges classes")
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.labels = list(labels)
        self.transform = transform or default_transform()
        self.max_pixels = max_pixels
        resize = getattr(self.transform, "resize_size", None)  # torchvision presets tell their size
        self._decode_side = resize[0] if isinstance(resize, (list, tuple)) and resize else None
        if precision == "fast" and FusedEvalTransform.fits(self.transform):
            self.transform = FusedEvalTransform(self.transform)
        self.engine, self._run = self._prepare_engine(select_engine(self.device, precision))

    def _prepare_engine(self, engine: str) -> tuple[str, Callable[[torch.Tensor], torch.Tensor]]:
        """Set the model up for `engine`; OpenVINO falls back to PyTorch if it can't take the model."""
        if engine == "openvino-fp32":
            example = self.transform(Image.new("RGB", (256, 256))).unsqueeze(0)
            try:
                return engine, _openvino_runner(self.model, example)
            except Exception as e:  # a missing plugin, an unsupported layer: PyTorch always works
                logger.warning("OpenVINO could not take the model (%s); using PyTorch instead.", e)
                engine = "torch-fp32-channels-last"
        if engine == "torch-fp16-channels-last":
            model = self.model.half().to(memory_format=torch.channels_last)
            return engine, lambda batch: model(batch.half().contiguous(memory_format=torch.channels_last))
        if engine == "torch-fp32-channels-last":
            model = self.model.to(memory_format=torch.channels_last)
            return engine, lambda batch: model(batch.contiguous(memory_format=torch.channels_last))
        return engine, self.model

    def preprocess(self, image: ImageInput) -> torch.Tensor:
        """Decode one image and turn it into the model's input tensor (C, H, W)."""
        rgb = load_image(image, max_pixels=self.max_pixels, min_side=self._decode_side)
        return self.transform(_limit_aspect_ratio(rgb))

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, classes) for a preprocessed batch (N, C, H, W)."""
        with torch.inference_mode():
            logits = self._run(batch.to(self.device))
            return logits.float().softmax(dim=-1).cpu()

    def postprocess(self, probabilities: torch.Tensor, top_k: int) -> dict[str, float]:
        """The `top_k` most probable labels of one image, highest first."""
        values, indices = probabilities.topk(top_k)
        return {self.labels[i]: float(p) for p, i in zip(values.tolist(), indices.tolist(), strict=True)}

    def predict(self, image: ImageInput, top_k: int = 5) -> dict[str, float]:
        """Label -> probability for the `top_k` most likely classes of `image`, highest first."""
        return self.predict_batch([image], top_k)[0]

    def predict_batch(self, images: Sequence[ImageInput], top_k: int = 5) -> list[dict[str, float]]:
        """`predict` for several images in one forward pass."""
        if not 1 <= top_k <= len(self.labels):
            raise ValueError(f"top_k must be between 1 and {len(self.labels)}, not {top_k}")
        if not images:
            return []
        tensors = [self.preprocess(image) for image in images]
        batch = tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)  # one: no copy
        return [self.postprocess(p, top_k) for p in self.forward(batch)]


def select_engine(device: torch.device, precision: str = "fast", openvino: bool | None = None) -> str:
    """How the forward pass runs.

    exact: PyTorch fp32, the reference. fast: on CUDA, fp16 with channels_last; on CPU, OpenVINO in fp32
    when it is installed (1.85x PyTorch's forward pass here, same answers), else PyTorch channels_last.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "exact":
        return "torch-fp32"
    if device.type == "cuda":
        return "torch-fp16-channels-last"
    if openvino is None:
        openvino = importlib.util.find_spec("openvino") is not None
    return "openvino-fp32" if openvino and device.type == "cpu" else "torch-fp32-channels-last"


def cache_dir() -> Path:
    """Where converted models are kept: $IMAGE_CLASSIFIER_CACHE, else ~/.cache/image-classifier."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "image-classifier"
    return Path(os.environ.get("IMAGE_CLASSIFIER_CACHE", default))


def _openvino_runner(model: torch.nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """Convert `model` to OpenVINO once (cached on disk, keyed by its weights) and compile it for the CPU."""
    import openvino as ov

    key = hashlib.sha256(f"{type(model).__qualname__}|{tuple(example.shape)}|{ov.__version__}".encode())
    for name, tensor in model.state_dict().items():
        key.update(name.encode())
        key.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    path = cache_dir() / "openvino" / f"{key.hexdigest()[:32]}.xml"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # conversion traces the model; its tracer warnings are noise here
            warnings.simplefilter("ignore")
            converted = ov.convert_model(
                model, example_input=example, input=[ov.PartialShape([-1, *example.shape[1:]])]
            )
        with tempfile.TemporaryDirectory(dir=path.parent) as folder:  # complete files or none
            ov.save_model(converted, Path(folder) / "model.xml", compress_to_fp16=False)
            os.replace(Path(folder) / "model.bin", path.with_suffix(".bin"))
            os.replace(Path(folder) / "model.xml", path)
    core = ov.Core()
    graph = core.read_model(str(path))
    compiled: dict[int, ov.CompiledModel] = {}
    lock = threading.Lock()

    def compiled_for(batch_size: int) -> ov.CompiledModel:
        """A static-shape model per batch size: about 15 % faster than one with a dynamic batch."""
        with lock:
            if batch_size not in compiled:
                static = graph.clone()
                static.reshape([batch_size, *example.shape[1:]])
                # fp32 explicitly: on CPUs with bf16 OpenVINO would pick it (slower here, less exact).
                compiled[batch_size] = core.compile_model(
                    static, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
                )
            return compiled[batch_size]

    compiled_for(1)

    def run(batch: torch.Tensor) -> torch.Tensor:
        request = compiled_for(batch.shape[0]).create_infer_request()  # a request per call: thread-safe
        return torch.from_numpy(request.infer([batch.numpy()])[0].copy())

    return run


def _limit_aspect_ratio(image: Image.Image, max_ratio: float = MAX_ASPECT_RATIO) -> Image.Image:
    """Centre-crop very long images: resizing a 1×20000 strip's short side to 256 px would
    allocate gigabytes, while the evaluation crop only ever looks at the centre."""
    width, height = image.size
    if width > height * max_ratio:
        keep = max(1, round(height * max_ratio))
        left = (width - keep) // 2
        return image.crop((left, 0, left + keep, height))
    if height > width * max_ratio:
        keep = max(1, round(width * max_ratio))
        top = (height - keep) // 2
        return image.crop((0, top, width, top + keep))
    return image


# --- loading models ----------------------------------------------------------------------------


def classification_models() -> list[str]:
    """Names of torchvision's ImageNet classification models (`--model` choices)."""
    return torchvision.models.list_models(module=torchvision.models)


def load_classifier(
    model: str = DEFAULT_MODEL,
    weights: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    precision: str = "fast",
) -> Classifier:
    """A `Classifier` for a torchvision model with ImageNet-1k weights.

    `weights=None` uses torchvision's pretrained weights, downloaded once into the torch cache.
    `weights=PATH` loads a local state dict instead (torchvision's file, or a copy of it).
    """
    if model not in classification_models():
        raise ModelLoadError(
            f"Unknown model {model!r}: use a torchvision ImageNet classification model, "
            "e.g. densenet121, resnet50, efficientnet_b0, convnext_tiny."
        )
    device = resolve_device(device)
    labels = load_labels()
    if weights is None:
        net = _download_pretrained(model)
    else:
        net = torchvision.models.get_model(model, weights=None)
        _load_local_weights(net, model, Path(weights))
    transform = pretrained_weights(model).transforms()
    return Classifier(
        net, labels, transform=transform, device=device, max_pixels=max_pixels, precision=precision
    )


def pretrained_weights(model: str) -> torchvision.models.WeightsEnum:
    """torchvision's default ImageNet-1k weights for `model` (DenseNet-121: IMAGENET1K_V1)."""
    return torchvision.models.get_model_weights(model).DEFAULT


def cached_weights_path(model: str) -> Path:
    """Where torchvision keeps (or would keep) the downloaded weights of `model`."""
    url = pretrained_weights(model).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _download_pretrained(model: str) -> torch.nn.Module:
    weights = pretrained_weights(model)
    try:
        return torchvision.models.get_model(model, weights=weights)
    except (OSError, RuntimeError) as e:  # URLError is an OSError; a corrupt download a RuntimeError
        reason = getattr(e, "reason", e)
        cache = cached_weights_path(model)
        raise ModelLoadError(
            f"Could not download the pretrained weights for {model} from {weights.url} ({reason}).\n"
            "Ways out:\n"
            "  - connect to the internet once: the file is then cached for good;\n"
            "  - pass a local weights file: --weights PATH (or load_classifier(weights=PATH));\n"
            f"  - or put the file into the torch cache at {cache}"
        ) from None


# Old DenseNet checkpoints (PyTorch's model zoo) name layers "denselayer1.norm.1"; torchvision's
# densenet module remaps them to "denselayer1.norm1" with this pattern when it loads its own file.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _load_local_weights(net: torch.nn.Module, model: str, path: Path) -> None:
    if not path.is_file():
        raise ModelLoadError(f"Weights file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and torch errors all mean "not a loadable state dict"
        raise ModelLoadError(f"{path} is not a PyTorch weights file ({e}).") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} holds a {type(state).__name__}, not a state dict of weights.")
    if model.startswith("densenet"):
        state = {_OLD_DENSENET_KEY.sub(r"\1\2", key): value for key, value in state.items()}
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        first_lines = "\n".join(line[:300] for line in str(e).splitlines()[:3])
        raise ModelLoadError(f"{path} does not fit the {model} model:\n{first_lines}") from None


# --- command line ------------------------------------------------------------------------------


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `load_classifier` takes, shared by this CLI and app.py."""
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"torchvision model (default {DEFAULT_MODEL})")
    parser.add_argument("--weights", metavar="PATH", help="local weights file instead of the download")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default="fast", help="fast (default) or exact (fp32 PyTorch)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with an ImageNet model.")
    parser.add_argument("images", nargs="+", metavar="IMG", help="image files to classify")
    parser.add_argument("--top-k", type=int, default=5, metavar="K", help="classes to show (default 5)")
    add_model_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object per image")
    args = parser.parse_args(argv)
    classes = len(load_labels())
    if not 1 <= args.top_k <= classes:
        parser.error(f"--top-k must be between 1 and {classes}")

    try:
        classifier = load_classifier(
            args.model, weights=args.weights, device=args.device, precision=args.precision
        )
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1

    failed = 0
    for path in args.images:
        try:
            top = classifier.predict(path, top_k=args.top_k)
        except ImageError as e:
            print(f"{path}: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps({"image": path, "predictions": top}))
        else:
            width = max(map(len, top))
            print(path)
            for label, probability in top.items():
                print(f"  {label:<{width}}  {probability:6.1%}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
