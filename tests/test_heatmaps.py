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
from torchcam.methods._utils import locate_candidate_layer

from classifier import METHODS, CamLayers, Classifier, HeatmapsUnavailable, classification_models
from conftest import EXAMPLES, ROOT
from image_classifier.heatmaps import (
    DIMMED,
    WithFeatureMap,
    cam_layers_for,
    class_activation_maps,
    found_gradcam_layer,
    gradcam_layer_for,
    traced_tail,
)
from photos import real_photo

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


def test_the_picture_dims_what_the_model_never_saw_and_colours_the_hottest_point_brightest(oracle, photos):
    """The overlay as a person sees it: outside the seen region the photo at DIMMED (0.35) of its
    brightness; inside, at full opacity, the map's hottest point in the colormap's top colour (inferno's
    pale yellow) and its coldest in the colormap's dark end."""
    from matplotlib import colormaps

    assert DIMMED == 0.35  # the documented factor
    wide = photos[0].convert("RGB").resize((900, 300))  # the centre crop keeps the middle 224/768
    analysis = oracle.analyse(wide)
    top_class = next(iter(analysis.predictions))
    picture = np.asarray(analysis.heatmaps.overlay(wide, top_class, opacity=1.0), np.float64)
    photo = np.asarray(wide, np.float64)
    region = zip(analysis.heatmaps.region, (900, 300, 900, 300), strict=True)
    left, top, right, bottom = (round(edge * side) for edge, side in region)
    assert left > 250 and right < 650  # a wide photo: the model saw its middle only
    unseen = np.ones((300, 900), bool)
    unseen[max(top - 1, 0) : bottom + 1, left - 1 : right + 1] = False  # a pixel's margin for the rounding
    assert np.abs(picture[unseen] - photo[unseen] * 0.35).max() <= 1  # rounded to 8 bits
    inside = np.s_[top + 1 : bottom - 1, left + 1 : right - 1]
    heat, seen = analysis.heatmaps.heatmap(top_class)[inside], picture[inside]  # the map at the photo's size
    hottest, coldest = (np.unravel_index(i, heat.shape) for i in (heat.argmax(), heat.argmin()))
    assert heat[hottest] > 0.99 and heat[coldest] < 0.1
    inferno = colormaps["inferno"]
    assert np.abs(seen[hottest] - 255 * np.array(inferno(1.0)[:3])).max() <= 3  # the top colour
    assert np.abs(seen[coldest] - 255 * np.array(inferno(float(heat[coldest]))[:3])).max() <= 3
    assert seen[coldest].sum() < seen[hottest].sum() / 4  # dark


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


def test_a_model_with_no_spatial_feature_map_says_so_in_words(labels):
    """A linear classifier over the photo's mean colour: no layer gives a map with more than one position."""
    model = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 1000))
    classifier = Classifier(model, labels, device="cpu")
    assert classifier.cam_layers is None and classifier.gradcam_layer is None and classifier.methods == ()
    assert (
        "No heatmap for Sequential: no layer of it gives a spatial feature map"
        in classifier.no_heatmaps_reason
    )
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
def test_every_torchvision_classification_model_has_a_layer_for_grad_cam():
    """Shapes only (no weights): each model has a spatial feature map torchcam finds, or a known layer (ViT's
    tokens), so none says "no heatmap". Which ones get exact maps is found by value, with real tensors
    (`test_cam_layers_reproduce_the_models_own_logits`)."""
    for name in classification_models():
        model = built_without_weights(name).eval()
        known = gradcam_layer_for(model)
        assert known is not None or locate_candidate_layer(model) is not None, name


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


# --- Any model: the layers found, no hints -------------------------------------------------------------


@pytest.fixture(scope="module")
def composite() -> Image.Image:
    """skimage's cat (left) and espresso (right), side by side: the oracle names both."""
    return side_by_side(real_photo("chelsea"), real_photo("coffee"))


def test_the_oracle_wrapped_with_no_hints_gets_exact_maps_from_the_layers_it_finds(oracle, composite):
    """The oracle fixture names no layer: its pooling + linear head is found by watching one pass."""
    assert oracle.cam_layers == CamLayers("_swish", "_fc", None) and oracle.engine == "openvino-fp32"
    assert oracle.methods[0] == "CAM"
    maps = oracle.explain(composite, labels=[CAT, COFFEE])
    assert maps.method == "CAM"
    assert left_share(maps[CAT]) >= 0.8 and left_share(maps[COFFEE]) <= 0.2


class GlobalMaxHead(torch.nn.Module):
    """A few convolutions and a head of its own: a 1×1 convolution to the classes, then global max pooling
    (no linear layer, so no class activation map)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Conv2d(32, 1000, 1)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.amax(self.head(self.body(batch)), dim=(2, 3))


class Untraceable(GlobalMaxHead):
    """The same, with Python branching on a value, which torch.fx can't trace."""

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        features = self.head(self.body(batch))
        if features.detach().abs().sum().item() > 0:
            features = features * 1.0
        return torch.amax(features, dim=(2, 3))


@pytest.mark.parametrize("model_class", [GlobalMaxHead, Untraceable])
def test_a_small_model_of_ones_own_gets_grad_cam_on_its_last_spatial_map(model_class, labels, photos):
    torch.manual_seed(0)
    model = model_class().eval()
    classifier = Classifier(model, labels, device="cpu")
    assert classifier.cam_layers is None and classifier.gradcam_layer.features == "head"
    assert classifier.methods == ("Grad-CAM", "Grad-CAM++", "Layer-CAM", "Score-CAM")
    assert (classifier.gradcam_layer.tail is None) == (model_class is Untraceable)  # the whole model again
    wide = photos[0].convert("RGB").resize((600, 300))
    maps = classifier.explain(wide)
    assert list(maps) == list(classifier.predict(wide)) and maps.method == "Grad-CAM"
    for heatmap in maps.values():
        assert heatmap.shape == (300, 600) and heatmap.max() == pytest.approx(1.0, abs=1e-6)
    other = classifier.explain(wide, labels=["goldfish"], method="Grad-CAM++")
    assert other["goldfish"].shape == (300, 600) and other["goldfish"].max() > 0
    with pytest.raises(ValueError, match="CAM needs a head of global average pooling"):
        classifier.explain(wide, method="CAM")


def test_the_traced_tail_finishes_the_models_forward_pass():
    torch.manual_seed(0)
    model = GlobalMaxHead().eval()
    layer = found_gradcam_layer(model, (3, 224, 224))
    with torch.inference_mode():
        batch = torch.randn(2, 3, 224, 224)
        logits, features = WithFeatureMap(model, layer.features)(batch)
        torch.testing.assert_close(layer.tail(model)(features), logits)
    assert traced_tail(Untraceable(), "head") is None


# --- Any class, any method -----------------------------------------------------------------------------


def test_any_label_costs_no_second_pass_and_reports_its_probability(oracle, composite, monkeypatch):
    runs = []
    run = oracle._run
    monkeypatch.setattr(oracle, "_run", lambda batch: runs.append(batch.shape) or run(batch))
    analysis = oracle.analyse(composite)
    assert len(analysis.probabilities) == 1000 and "goldfish" not in analysis.predictions
    cams = analysis.heatmaps.cams(["goldfish", "espresso"])
    assert len(runs) == 1 and cams["goldfish"].shape == (7, 7)
    full = oracle.predict(composite, top_k=1000)
    assert analysis.probabilities["goldfish"] == pytest.approx(full["goldfish"], abs=1e-6)
    explained = oracle.explain(composite, labels=["goldfish"])
    assert explained.probabilities == {"goldfish": pytest.approx(full["goldfish"], abs=1e-6)}


def test_every_labels_probability_reads_as_the_full_softmax(oracle, composite):
    """A page session keeps every class's probability (for "Show where it sees…") in one float32 array,
    not a dict of 1,000 Python floats: reading it gives what predict gives for each label."""
    analysis = oracle.analyse(composite)
    full = oracle.predict(composite, top_k=len(oracle.labels))
    assert set(analysis.probabilities) == set(full) and len(analysis.probabilities) == len(full)
    assert all(analysis.probabilities[label] == pytest.approx(p, abs=1e-6) for label, p in full.items())
    assert sum(analysis.probabilities.values()) == pytest.approx(1, abs=1e-4)
    with pytest.raises(KeyError):
        analysis.probabilities["no such class"]


LOCALISING = ["CAM", "Grad-CAM", "Score-CAM"]  # Grad-CAM++ and Layer-CAM: BENCHMARKS.md section 8 says why


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_puts_each_class_on_its_own_photo(oracle, composite, method):
    """The localisation test for every method. Score-CAM scores 1,280 masked photos per class on the engine:
    about a minute on 2 busy cores for the two maps."""
    maps = oracle.explain(composite, labels=[CAT, COFFEE], method=method)
    cat, coffee = left_share(maps[CAT]), 1 - left_share(maps[COFFEE])
    if method in LOCALISING:
        assert cat >= 0.8 and coffee >= 0.8, (cat, coffee)
    else:  # they keep the positive gradient only, so each map spreads onto the other photo too
        assert cat >= 0.6 and coffee >= 0.6, (cat, coffee)


def test_layer_cam_on_a_linear_head_is_the_map_of_the_positive_weights(oracle, composite):
    """Why Layer-CAM misses the 80 % on a pooling + linear head: the gradient at every position is the
    class's weight, and Layer-CAM keeps only its positive part, so evidence against the class no longer
    subtracts."""
    batch = oracle.preprocess(composite).unsqueeze(0)
    features = oracle.forward_with_features(batch)[1][0]
    classes = [oracle.label_index[CAT], oracle.label_index[COFFEE]]
    positive = class_activation_maps(features, oracle._explainer.class_weights.clamp(min=0), classes)
    analysis = oracle.analyse(composite)
    layer_cam = analysis.heatmaps.cams([CAT, COFFEE], "Layer-CAM")
    for cam, expected in zip(layer_cam.values(), positive, strict=True):
        np.testing.assert_allclose(cam, expected, atol=1e-4)
