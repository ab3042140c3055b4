"""torchvision's ImageNet classification models and their weights: which exist, where they come from."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision

from image_classifier.engines import MEMORY_PER_MODEL_MB, MEMORY_PER_WEIGHT

DEFAULT_MODEL = "densenet121"
DEFAULT_MODELS = (
    "densenet121",
    "resnet50",
    "efficientnet_b0",
    "mobilenet_v3_large",
    "convnext_tiny",
    "regnet_y_1_6gf",
    "vit_b_16",
    "swin_t",
)
"""The models a server offers unless told otherwise: well-known families, each under 20 GFLOPs and together
about 0.8 GB of weights, so that all of them fit a free 2-vCPU / 16 GB Hugging Face Space at once."""


class ModelLoadError(RuntimeError):
    """The model or its weights could not be loaded; the message says what was tried and the ways out."""


def classification_models() -> list[str]:
    """Names of torchvision's ImageNet classification models (`--model` choices)."""
    return torchvision.models.list_models(module=torchvision.models)


def pretrained_weights(model: str) -> torchvision.models.WeightsEnum:
    """torchvision's default ImageNet-1k weights for `model` (DenseNet-121: IMAGENET1K_V1)."""
    return torchvision.models.get_model_weights(model).DEFAULT


def cached_weights_path(model: str) -> Path:
    """Where torchvision keeps (or would keep) the downloaded weights of `model`."""
    url = pretrained_weights(model).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def download_pretrained(model: str) -> torch.nn.Module:
    """`model` with torchvision's pretrained weights, downloaded once into the torch cache."""
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


def load_local_weights(net: torch.nn.Module, model: str, path: Path) -> None:
    """Load a local state dict into `net`, or raise `ModelLoadError` saying why it doesn't fit."""
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


def load_model(model: str, weights: str | os.PathLike | None = None) -> torch.nn.Module:
    """torchvision's `model` with ImageNet-1k weights: downloaded (`weights=None`) or from a local file."""
    if model not in classification_models():
        raise ModelLoadError(
            f"Unknown model {model!r}: use a torchvision ImageNet classification model, "
            "e.g. densenet121, resnet50, efficientnet_b0, convnext_tiny."
        )
    if weights is None:
        return download_pretrained(model)
    net = torchvision.models.get_model(model, weights=None)
    load_local_weights(net, model, Path(weights))
    return net


# --- what each model costs and knows ---------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """A model's published figures, all from its torchvision weights (`weights.meta`, `transforms()`)."""

    name: str
    weights: str
    """The weights enum, e.g. ResNet50_Weights.IMAGENET1K_V2."""
    top1: float
    """ImageNet-1K validation accuracy, %: the true class is the first guess."""
    top5: float
    """The same, with the true class among the five first guesses."""
    gflops: float
    """Multiply-adds per photo, in billions (torchvision's `_ops`)."""
    parameters: int
    file_mb: float
    """Size of the weights file to download, in MiB."""
    resize: int | None
    """The shorter side is resized to this before the centre crop (None: resized to the crop itself)."""
    crop: int
    interpolation: str


def model_facts(model: str) -> ModelFacts:
    """The figures torchvision publishes for `model`'s default ImageNet weights."""
    weights = pretrained_weights(model)
    meta, preset = weights.meta, weights.transforms()
    accuracy = meta["_metrics"]["ImageNet-1K"]
    resize = list(getattr(preset, "resize_size", None) or [])
    crop = list(preset.crop_size)
    return ModelFacts(
        name=model,
        weights=str(weights),
        top1=accuracy["acc@1"],
        top5=accuracy["acc@5"],
        gflops=meta["_ops"],
        parameters=meta["num_params"],
        file_mb=meta["_file_size"],
        resize=resize[0] if len(resize) == 1 else None,
        crop=crop[0],
        interpolation=preset.interpolation.value,
    )


def expected_memory_mb(model: str, engine: str) -> float:
    """About how much memory `model` will take once loaded on `engine`, before loading it."""
    return model_facts(model).file_mb * MEMORY_PER_WEIGHT[engine] + MEMORY_PER_MODEL_MB


def offered_models(spec: str | Sequence[str] = DEFAULT_MODELS) -> list[str]:
    """The models named by `spec` ("a,b,c", a list, or "all"), in order, without repeats.

    Raises ValueError naming every one that is not a torchvision ImageNet classification model.
    """
    known = classification_models()
    if isinstance(spec, str):
        if spec.strip() == "all":
            return known
        spec = spec.split(",")
    names = list(dict.fromkeys(name.strip() for name in spec if name.strip()))
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(
            f"Unknown model{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}: "
            f"choose among torchvision's ImageNet models ({', '.join(known)}), or 'all'."
        )
    if not names:
        raise ValueError("No models named: give torchvision model names separated by commas, or 'all'.")
    return names
