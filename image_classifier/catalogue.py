"""torchvision's ImageNet classification models and their weights: which exist, where they come from."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
import torchvision

DEFAULT_MODEL = "densenet121"


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
