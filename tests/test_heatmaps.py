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

from classifier import Classifier, HeatmapsUnavailable
from conftest import EXAMPLES, ROOT
from image_classifier.heatmaps import WithFeatureMap, cam_layers_for, class_activation_maps

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

    if engine.startswith("openvino"):
        pytest.importorskip("openvino")
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
        logits, features = WithFeatureMap(model, layers)(batch)
        assert torch.equal(logits, model(batch))
        linear = model.get_submodule(layers.classifier)
        pooled = features.mean(dim=(2, 3)) @ linear.weight.T + linear.bias
        assert torch.allclose(pooled, logits, atol=1e-4, rtol=1e-4)
    maps = class_activation_maps(features[0], linear.weight, [0, 1, 2])
    assert maps.shape[0] == 3 and maps.min() >= 0 and maps.max() <= 1


def test_a_model_without_a_cam_head_says_so_in_words(labels):
    model = torchvision.models.mobilenet_v3_small()
    assert cam_layers_for(model) is None
    classifier = Classifier(model, labels, device="cpu")
    assert "No heatmap for MobileNetV3" in classifier.no_heatmaps_reason
    assert classifier.analyse(EXAMPLES / "cat.jpg").heatmaps is None
    with pytest.raises(HeatmapsUnavailable, match="No heatmap for MobileNetV3"):
        classifier.explain(EXAMPLES / "cat.jpg")


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
