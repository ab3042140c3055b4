"""The tutorial pipeline this project descends from, kept only as the benchmarks' baseline.

Image.open(BytesIO(b)) -> Resize(255) -> CenterCrop(224) -> ToTensor -> Normalize -> model.forward(x)
(gradients on) -> max -> label, DenseNet-121 in float32, eager.
"""

from __future__ import annotations

import io

import torch
from PIL import Image
from torchvision import transforms

SEED_TRANSFORM = transforms.Compose(
    [
        transforms.Resize(255),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ]
)


class SeedPipeline:
    def __init__(self, model: torch.nn.Module, labels: list[str]) -> None:
        self.model = model.eval()
        self.labels = labels

    def tensor(self, image_bytes: bytes) -> torch.Tensor:
        return SEED_TRANSFORM(Image.open(io.BytesIO(image_bytes))).unsqueeze(0)

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.model.forward(tensor)

    def predict(self, image_bytes: bytes) -> str:
        _, index = self.forward(self.tensor(image_bytes)).max(1)
        return self.labels[index.item()]
