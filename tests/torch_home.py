"""A torch cache holding random-initialised weights under torchvision's own file names.

Pretrained weights can't be downloaded here, but torchvision loads whatever file sits in
`$TORCH_HOME/hub/checkpoints/<basename of weights.url>` without checking its hash (the hash is checked only
while downloading), so with these files `load_classifier(name)` runs torchvision's real loading code.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torchvision

SMALL_MODELS = ("mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5", "squeezenet1_0")
"""Small torchvision models of four families: two with heatmaps (ResNet, ShuffleNet), two without."""


def checkpoint_path(torch_home: Path, model: str) -> Path:
    url = torchvision.models.get_model_weights(model).DEFAULT.url
    return Path(torch_home) / "hub" / "checkpoints" / os.path.basename(url)


def write_random_weights(torch_home: Path, models: Iterable[str], seed: int = 0) -> dict[str, Path]:
    """Random-initialised weights for `models` (each from `seed`), where torchvision looks for its files."""
    paths = {}
    for model in models:
        path = checkpoint_path(torch_home, model)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.manual_seed(seed)
            torch.save(torchvision.models.get_model(model).state_dict(), path)
        paths[model] = path
    return paths
