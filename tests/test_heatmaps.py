"""Heatmaps: exact class activation maps from the same forward pass, checked on real photos."""

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from classifier import Classifier, HeatmapsUnavailable, classification_models
from conftest import EXAMPLES, ROOT
from image_classifier.heatmaps import (
    WithFeatureMap,
    cam_layers_for,
    class_activation_maps,
    gradcam_layer_for,
)

CAT, COFFEE = "tabby", "espresso"  # the two photos' classes, as the oracle names them


def side_by_side(left: Image.Image, right: Image.Image) -> Image.Image:
    """A square composite, so the model's centre crop sees nearly all of both photos."""
    composite = Image.new("RGB", (512, 512))
    composite.paste(left.convert("RGB").resize((256, 512)), (0, 0))
    composite.paste(right.convert("RGB").resize((256, 512)), (256, 0))
    return composite


@pytest.fixture(scope="module")
def photos():
    return Image.open(EXAMPLES / "cat.jpg"), Image.open(EXAMPLES / "coffee.jpg")


def left_share(heatmap: np.ndarray) -> float:
    return float(heatmap[:, : heatmap.shape[1] // 2].sum() / heatmap.sum())


def test_each_class_heatmap_sits_on_its_own_photo(oracle, photos):
    cat, coffee = photos
    maps = oracle.explain(side_by_side(cat, coffee), labels=[CAT, COFFEE])
    assert left_share(maps[CAT]) >= 0.8 and left_share(maps[COFFEE]) <= 0.2
    swapped = oracle.explain(side_by_side(coffee, cat), labels=[CAT, COFFEE])
    assert left_share(swapped[CAT]) <= 0.2 and left_share(swapped[COFFEE]) >= 0.8


def test_heatmap_follows_the_upright_photo_of_an_exif_rotated_file(oracle, photos):
    upright = side_by_side(*photos)
    stored = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": the pixels are stored turned the other way
    upright.transpose(Image.Transpose.ROTATE_90).save(stored, "JPEG", quality=95, exif=exif)
    maps = oracle.explain(stored.getvalue(), labels=[CAT, COFFEE])
    assert maps[CAT].shape == (512, 512)
    assert left_share(maps[CAT]) >= 0.8 and left_share(maps[COFFEE]) <= 0.2


def test_fast_and_exact_engines_give_the_same_maps(oracle, photos):
    from oracle import load_oracle

    exact = load_oracle(precision="exact")
    assert exact.engine == "torch-fp32" and oracle.engine != exact.engine
    composite = side_by_side(*photos)
    fast_maps, exact_maps = oracle.explain(composite), exact.explain(composite)
    assert list(fast_maps) == list(exact_maps)
    for label, heatmap in fast_maps.items():
        assert np.corrcoef(heatmap.ravel(), exact_maps[label].ravel())[0, 1] >= 0.98, label


@pytest.mark.parametrize(
    "engine", ["torch-fp32-channels-last", "torch-bf16-channels-last", "openvino-fp32", "openvino-bf16"]
)
def test_every_engine_gives_the_same_maps(photos, engine):
    """The tuner may pick any of these: heatmaps come out of each, bf16 included, and agree with fp32's."""
    from oracle import load_oracle

    exact = load_oracle(precision="exact")
    model = load_oracle(precision="exact").model  # a model of its own: engines may set it up in place
    forced = Classifier(
        model,
        exact.labels,
        transform=exact.reference_transform,
        cam_layers=exact.cam_layers,
        engine=engine,
        device="cpu",
    )
    assert forced.engine == engine
    composite = side_by_side(*photos)
    exact_maps = exact.explain(composite)
    maps = forced.explain(composite, labels=list(exact_maps))
    for label, heatmap in maps.items():
        assert heatmap.dtype == np.float32 and heatmap.shape == exact_maps[label].shape
        assert np.corrcoef(heatmap.ravel(), exact_maps[label].ravel())[0, 1] >= 0.98, (engine, label)


def test_explain_returns_predicts_labels_in_order_as_float32_in_0_1(oracle):
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        maps = oracle.explain(EXAMPLES / name)
        assert list(maps) == list(oracle.predict(EXAMPLES / name))
        size = Image.open(EXAMPLES / name).size
        for heatmap in maps.values():
            assert heatmap.dtype == np.float32 and heatmap.shape == (size[1], size[0])
            assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0, abs=1e-6)
    assert list(oracle.explain(EXAMPLES / "cat.jpg", top_k=3)) == list(
        oracle.predict(EXAMPLES / "cat.jpg", 3)
    )


def test_heatmap_is_zero_where_the_model_did_not_look(oracle, photos):
    wide = photos[0].convert("RGB").resize((900, 300))  # the centre crop keeps the middle 224/768
    heatmap = oracle.explain(wide, labels=[CAT])[CAT]
    left, _, right, _ = oracle.seen_region(wide.size)
    assert 0.3 < left < 0.36 and 0.64 < right < 0.7
    assert heatmap[:, : int(left * 900) - 1].max() == 0 and heatmap[:, int(right * 900) + 1 :].max() == 0
    assert heatmap[:, int(left * 900) + 1 : int(right * 900) - 1].max() > 0.5


def test_any_label_can_be_explained_and_unknown_ones_are_refused(oracle):
    maps = oracle.explain(EXAMPLES / "rocket.jpg", labels=["tabby", "goldfish"])
    assert list(maps) == ["tabby", "goldfish"]
    with pytest.raises(ValueError, match="Unknown labels: 'not a class'"):
        oracle.explain(EXAMPLES / "rocket.jpg", labels=["not a class"])


def test_analyse_is_predict_and_maps_from_one_forward_pass(oracle, monkeypatch):
    calls = []
    run = oracle._run
    monkeypatch.setattr(oracle, "_run", lambda batch: calls.append(batch.shape) or run(batch))
    analysis = oracle.analyse(EXAMPLES / "cat.jpg")
    assert len(calls) == 1 and analysis.predictions == oracle.predict(EXAMPLES / "cat.jpg")
    overlay = analysis.heatmaps.overlay(analysis.image, next(iter(analysis.predictions)))
    assert overlay.size == analysis.image.size and overlay.mode == "RGB"


SMALL_MODELS = {
    "densenet121": {},
    "resnet18": {},
    "resnext50_32x4d": {},
    "regnet_y_400mf": {},
    "efficientnet_b0": {},
    "mobilenet_v2": {},
    "mnasnet0_5": {},
    "shufflenet_v2_x0_5": {},
    "googlenet": {"aux_logits": False, "init_weights": False},
    "swin_t": {},
}


@pytest.mark.parametrize("name", sorted(SMALL_MODELS))
def test_cam_layers_reproduce_the_models_own_logits(name):
    """Averaging each class's map over positions, plus the bias, gives back the model's logits: so the
    layers named are the right ones, and the feature map is taken after the final activation."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, **SMALL_MODELS[name]).eval()
    layers = cam_layers_for(model)
    assert layers is not None
    with torch.inference_mode():
        batch = torch.randn(2, 3, 224, 224)
        logits, features = WithFeatureMap(model, layers.features, layers.activation)(batch)
        assert torch.equal(logits, model(batch))
        linear = model.get_submodule(layers.classifier)
        pooled = features.mean(dim=(2, 3)) @ linear.weight.T + linear.bias
        assert torch.allclose(pooled, logits, atol=1e-4, rtol=1e-4)
    maps = class_activation_maps(features[0], linear.weight, [0, 1, 2])
    assert maps.shape[0] == 3 and maps.min() >= 0 and maps.max() <= 1


def test_a_model_no_method_knows_says_so_in_words(labels):
    """A linear classifier over pixels has neither a pooled feature map nor a known layer for Grad-CAM."""
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(8), torch.nn.Flatten(), torch.nn.Linear(192, 1000))
    assert cam_layers_for(model) is None and gradcam_layer_for(model) is None
    classifier = Classifier(model, labels, device="cpu")
    assert "No heatmap for Sequential" in classifier.no_heatmaps_reason
    assert classifier.analyse(EXAMPLES / "cat.jpg").heatmaps is None
    with pytest.raises(HeatmapsUnavailable, match="No heatmap for Sequential"):
        classifier.explain(EXAMPLES / "cat.jpg")


def built_without_weights(name: str) -> torch.nn.Module:
    """torchvision's `name` with no memory behind its weights (the meta device). RegNet's builders compute
    their block widths with tensors, which the meta device can't hold: its smallest member stands in (every
    RegNet is the same class, with the same layer names)."""
    try:
        with torch.device("meta"):
            return torchvision.models.get_model(name)
    except NotImplementedError:
        assert name.startswith("regnet_"), name
        return torchvision.models.get_model(f"{name[:9]}400mf")


GOOGLENET_INIT_WARNING = "ignore:The default weight initialization:FutureWarning"  # and Inception's


@pytest.mark.filterwarnings(GOOGLENET_INIT_WARNING)
def test_every_torchvision_classification_model_gets_a_heatmap_method():
    methods = {}
    for name in classification_models():
        model = built_without_weights(name)
        cam, gradcam = cam_layers_for(model), gradcam_layer_for(model)
        assert (cam is None) != (gradcam is None), name  # exactly one method
        layer = model.get_submodule(cam.features if cam else gradcam.features)
        assert not isinstance(layer, torch.nn.ModuleList), name  # a module that runs, so its hook fires
        if gradcam:
            gradcam.tail(model).get_submodule(gradcam.target)
        methods.setdefault("CAM" if cam else "Grad-CAM", set()).add(type(model).__name__)
    assert methods["Grad-CAM"] == {
        "AlexNet",
        "ConvNeXt",
        "MaxVit",
        "MobileNetV3",
        "SqueezeNet",
        "VGG",
        "VisionTransformer",
    }
    assert {"DenseNet", "ResNet", "RegNet", "EfficientNet", "SwinTransformer"} <= methods["CAM"]


# --- Grad-CAM, where the head is more than pooling + one linear layer -------------------------------


def test_gradcam_fallback_on_real_weights_puts_each_class_on_its_own_photo(gradcam_oracle, photos):
    assert gradcam_oracle.cam_layers is None and gradcam_oracle.gradcam_layer is not None
    cat, coffee = photos
    maps = gradcam_oracle.explain(side_by_side(cat, coffee), labels=[CAT, COFFEE])
    assert left_share(maps[CAT]) >= 0.8 and left_share(maps[COFFEE]) <= 0.2
    swapped = gradcam_oracle.explain(side_by_side(coffee, cat), labels=[CAT, COFFEE])
    assert left_share(swapped[CAT]) <= 0.2 and left_share(swapped[COFFEE]) >= 0.8


def test_gradcam_fallback_gives_the_exact_maps_for_the_fast_engines_labels(oracle, gradcam_oracle, photos):
    """On a pooling + linear head Grad-CAM is the class activation map (up to scale): the PyTorch pass
    reproduces the exact maps, for the labels the fast engine predicted, in its order."""
    assert gradcam_oracle.engine == oracle.engine == "openvino-fp32"
    composite = side_by_side(*photos)
    exact, fallback = oracle.explain(composite), gradcam_oracle.explain(composite)
    assert list(fallback) == list(exact) == list(gradcam_oracle.predict(composite))
    for label, heatmap in fallback.items():
        assert heatmap.dtype == np.float32 and heatmap.shape == exact[label].shape
        assert np.corrcoef(heatmap.ravel(), exact[label].ravel())[0, 1] >= 0.99, label


def test_gradcam_runs_once_when_a_map_is_first_asked_for(gradcam_oracle, monkeypatch):
    calls, runs = [], []
    maps = gradcam_oracle._gradcam.maps
    monkeypatch.setattr(
        gradcam_oracle._gradcam,
        "maps",
        lambda features, classes: calls.append(classes) or maps(features, classes),
    )
    run = gradcam_oracle._run
    monkeypatch.setattr(gradcam_oracle, "_run", lambda batch: runs.append(batch.shape) or run(batch))
    analysis = gradcam_oracle.analyse(EXAMPLES / "cat.jpg")
    assert calls == [] and analysis.heatmaps.needs_gradient and analysis.heatmaps.method == "Grad-CAM"
    top = list(analysis.predictions)
    assert list(analysis.heatmaps.cams(top)) == top and len(calls) == 1 and len(calls[0]) == 5
    analysis.heatmaps.cam(top[2])  # kept
    analysis.heatmaps.cam("goldfish")  # any class: the tail once more
    assert [len(classes) for classes in calls] == [5, 1]
    assert len(runs) == 1  # the engine ran once: the maps come from its feature map


TAIL_MODELS = [
    "convnext_tiny",
    "vgg11",
    "alexnet",
    "squeezenet1_1",
    "mobilenet_v3_small",
    "maxvit_t",
    "vit_b_32",
]


@pytest.mark.parametrize("name", TAIL_MODELS)
def test_gradcam_tails_finish_the_models_own_forward_pass(name):
    """The tail, run on the feature map the engine returns beside the logits, gives the model's logits back:
    so the layer named is the right one and the tail repeats the model's forward after it."""
    torch.manual_seed(0)
    model = torchvision.models.get_model(name).eval()
    layer = gradcam_layer_for(model)
    with torch.inference_mode():
        batch = torch.randn(2, 3, 224, 224)
        logits, features = WithFeatureMap(model, layer.features)(batch)
        assert torch.equal(logits, model(batch))
        scale = logits.abs().max().item()  # a random MobileNetV3's logits are about 1e-9
        torch.testing.assert_close(layer.tail(model).eval()(features), logits, rtol=1e-4, atol=1e-4 * scale)


FALLBACK_MODELS = [
    ("convnext_tiny", "exact"),
    ("vit_b_16", "exact"),
    ("maxvit_t", "exact"),
    ("vgg11", "exact"),
    ("alexnet", "exact"),
    ("squeezenet1_1", "exact"),
    ("mobilenet_v3_small", "exact"),
    # Probabilities from OpenVINO, maps from PyTorch. (A random MobileNetV3's activations vanish, so all
    # its probabilities tie: SqueezeNet's differ, which makes the order a real check.)
    ("squeezenet1_1", "fast"),
]


@pytest.mark.parametrize(("name", "precision"), FALLBACK_MODELS)
def test_gradcam_fallback_plumbing_on_random_models(name, precision, labels, photos):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name)
    if isinstance(model, torchvision.models.VisionTransformer):  # its head starts at zero: no gradient
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    classifier = Classifier(model, labels, device="cpu", precision=precision)
    assert classifier.cam_layers is None and classifier.no_heatmaps_reason is None
    wide = photos[0].convert("RGB").resize((600, 300))  # the centre crop keeps the middle 300 columns
    maps = classifier.explain(wide)
    assert list(maps) == list(classifier.predict(wide))
    left, _, right, _ = classifier.seen_region(wide.size)
    outside = np.r_[0 : int(left * 600) - 1, int(right * 600) + 1 : 600]
    for label, heatmap in maps.items():
        assert heatmap.dtype == np.float32 and heatmap.shape == (300, 600), label
        assert heatmap.min() >= 0 and heatmap.max() == pytest.approx(1.0, abs=1e-6), label
        assert heatmap[:, outside].max() == 0, label
    assert list(classifier.explain(wide, labels=["goldfish", "tabby"])) == ["goldfish", "tabby"]


def test_gradcam_hooks_never_see_the_engines_own_forward_passes(labels):
    """A ViT's map is read inside its last block, which its tail runs again: Grad-CAM hooks a copy of the
    tail that shares the weights, so a PyTorch engine's forward pass on the model itself, in the middle of
    a Grad-CAM pass, leaves the maps as they were."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(224, 32, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)
    classifier = Classifier(vit, labels, device="cpu", precision="exact")
    assert classifier.engine == "torch-fp32"  # predict runs the model itself
    alone = classifier.explain(EXAMPLES / "cat.jpg")
    meanwhile = []
    tail = classifier._gradcam.tail
    assert tail.last is not vit.encoder.layers[-1]
    assert all(
        a is b for a, b in zip(tail.last.parameters(), vit.encoder.layers[-1].parameters(), strict=True)
    )

    def predict_meanwhile(*_) -> None:  # runs after Grad-CAM caught the last block's tokens
        if not meanwhile:  # once (the engine's own pass runs the shared heads too)
            meanwhile.append("running")
            meanwhile[0] = classifier.predict(EXAMPLES / "coffee.jpg")

    handle = tail.heads.register_forward_hook(predict_meanwhile)
    try:
        interleaved = classifier.explain(EXAMPLES / "cat.jpg")
    finally:
        handle.remove()
    assert len(meanwhile) == 1 and list(interleaved) == list(alone)
    for label, heatmap in alone.items():
        np.testing.assert_allclose(interleaved[label], heatmap, atol=1e-5)


def test_cli_explain_writes_one_overlay_png_per_image(densenet_weights, tmp_path):
    folder = tmp_path / "heatmaps"
    images = [str(EXAMPLES / "cat.jpg"), str(EXAMPLES / "coffee.jpg"), str(EXAMPLES / "cat.jpg")]
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    result = subprocess.run(
        [sys.executable, "classifier.py", *images, str(bad), "--weights", str(densenet_weights)]
        + ["--explain", str(folder), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "This file is not an image we can read" in result.stderr
    assert sorted(path.name for path in folder.iterdir()) == ["cat-2.png", "cat.png", "coffee.png"]
    for name, photo in (("cat.png", "cat.jpg"), ("coffee.png", "coffee.jpg")):
        with Image.open(folder / name) as overlay, Image.open(EXAMPLES / photo) as original:
            assert overlay.size == original.size and overlay.mode == "RGB"
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(line["image"]).name for line in lines] == ["cat.jpg", "coffee.jpg", "cat.jpg"]
