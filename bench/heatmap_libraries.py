"""Grad-CAM libraries side by side: the top five classes' maps of one photo, on 2 CPU cores.

    python bench/heatmap_libraries.py           # a few minutes on 2 cores
    python bench/heatmap_libraries.py --quick   # tiny smoke run

torchcam (what this project uses) against pytorch-grad-cam (`pip install grad-cam`) and captum (`pip install
captum`), each where installed: they are not this project's dependencies, so install them into a scratch
environment (or `pip install --target DIR` and put DIR on PYTHONPATH) to compare. All three do the same job
here, Grad-CAM of the whole PyTorch model at the same layer, each in its own idiom for five classes of one
photo: torchcam reuses one forward pass for five backward passes; pytorch-grad-cam and captum run a batch
of five copies. "forward" is the model's plain PyTorch forward pass, for scale. (The app does less: the
engine's own pass gives the feature map and only the model's tail runs in PyTorch; bench/heatmaps.py
times that.) Random weights (the same compute as pretrained ones).
Also prints how closely each library's top-class map matches torchcam's (correlation), as a check that
they compute the same Grad-CAM. Writes OUT/heatmap_libraries.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from image_classifier.heatmaps import gradcam_layer_for, vit_patch_grid  # noqa: E402
from image_classifier.preprocessing import default_transform  # noqa: E402
from latency import side_by_side  # noqa: E402

MODELS = ["convnext_tiny", "vit_b_16", "swin_t", "mobilenet_v3_large", "vgg16"]
TOP = 5


def swin_channels_first(output: torch.Tensor) -> torch.Tensor:
    return output.permute(0, 3, 1, 2)  # Swin's norm gives (N, h, w, C)


def target_layer(model: torch.nn.Module) -> tuple[str, object]:
    """The layer each library reads, in the whole model: where this project reads Grad-CAM; Swin (which the
    project reads with exact class activation maps) at its last norm, channels first."""
    if isinstance(model, torchvision.models.SwinTransformer):
        return "norm", swin_channels_first
    if isinstance(model, torchvision.models.VisionTransformer):
        last = list(dict(model.encoder.layers.named_children()))[-1]
        return f"encoder.layers.{last}.ln_1", vit_patch_grid
    return gradcam_layer_for(model).features, None


def torchcam_maps(model: torch.nn.Module, name: str, reshape, batch: torch.Tensor, classes: list[int]):
    """torchcam's GradCAM for `classes` of one image: one forward pass, one backward pass per class."""
    from torchcam.methods import GradCAM

    with torch.enable_grad(), GradCAM(model, name, reshape_transform=reshape) as extractor:
        scores = model(batch.clone().requires_grad_(True))
        maps = [extractor(c, scores, retain_graph=n < len(classes) - 1)[0][0] for n, c in enumerate(classes)]
    return torch.stack(maps).numpy()


def contenders(model: torch.nn.Module, batch: torch.Tensor, classes: list[int]) -> dict[str, object]:
    """name -> a function giving the top class's map (h, w); None where the library can't read the layer."""
    name, reshape = target_layer(model)
    layer = model.get_submodule(name)
    copies = batch.repeat(len(classes), 1, 1, 1)

    def forward() -> None:
        with torch.inference_mode():
            model(batch)

    grid = torchcam_maps(model, name, reshape, batch, classes[:1])[0].shape  # (h, w)
    found = {"forward": forward, "torchcam": lambda: torchcam_maps(model, name, reshape, batch, classes)[0]}
    if importlib.util.find_spec("pytorch_grad_cam"):
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        def grad_cam() -> np.ndarray:
            with GradCAM(model, [layer], reshape_transform=reshape) as cam:
                # scaled and resized to the input by the library; the top class's map, back on the grid
                full = cam(input_tensor=copies, targets=[ClassifierOutputTarget(c) for c in classes])[0]
            return np.asarray(Image.fromarray(full).resize(grid[::-1], Image.BILINEAR))

        found["grad-cam"] = grad_cam
    if importlib.util.find_spec("captum"):
        from captum.attr import LayerGradCam

        if reshape is None:  # LayerGradCam averages the gradient over every dim after the channels

            def captum() -> np.ndarray:
                maps = LayerGradCam(model, layer).attribute(copies, target=classes, relu_attributions=True)
                top = maps[0, 0].detach()
                return (top / top.max().clamp(min=1e-12)).numpy()

            found["captum"] = captum
        else:
            found["captum"] = None
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision models")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where heatmap_libraries.json goes")
    args = parser.parse_args()
    rounds = 1 if args.quick else 5
    names = ["mobilenet_v3_small"] if args.quick else args.models.split(",")
    batch = default_transform()(Image.open(ROOT / "examples" / "cat.jpg").convert("RGB")).unsqueeze(0)

    print(f"{torch.get_num_threads()} threads; top {TOP} classes of one photo; median ms")
    rows = {}
    for name in names:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name).eval()
        if isinstance(model, torchvision.models.VisionTransformer):  # its head starts at zero: no gradient
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        with torch.inference_mode():
            classes = model(batch)[0].topk(TOP).indices.tolist()
        found = contenders(model, batch, classes)
        runnable = {library: fn for library, fn in found.items() if fn is not None}
        reference = runnable["torchcam"]()
        agreement = {}
        for library, fn in runnable.items():
            if library not in ("forward", "torchcam"):
                agreement[library] = float(np.corrcoef(fn().ravel(), reference.ravel())[0, 1])
        times = side_by_side(runnable, rounds)
        rows[name] = {
            library: None if library not in times else statistics.median(times[library]) for library in found
        }
        cells = [
            f"{library} {'n/a':>6}"
            if samples is None
            else f"{library} {samples:6.0f}"
            + (f" (r={agreement[library]:.3f})" if library in agreement else "")
            for library, samples in rows[name].items()
        ]
        print(f"  {name:<20} " + "   ".join(cells), flush=True)
        rows[name] = {"median_ms": rows[name], "correlation_with_torchcam": agreement}
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "heatmap_libraries.json"
    target.write_text(json.dumps({"threads": torch.get_num_threads(), "models": rows}, indent=1))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
