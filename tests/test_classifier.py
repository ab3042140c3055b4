"""Classifier plumbing on random-initialised torchvision models, weights loading, and the CLI."""

import json
import logging
import math
import re
import subprocess
import sys
import urllib.error

import openvino as ov  # a requirement: a missing OpenVINO fails here, never skips
import pytest
import torch
import torchvision
from PIL import Image

import classifier
from classifier import Classifier, ImageError, ModelLoadError, load_classifier
from conftest import EXAMPLES, ROOT
from image_classifier import engines

CAT = EXAMPLES / "cat.jpg"


def test_predict_returns_top_k_labels_highest_first(random_densenet, labels):
    for top_k in (1, 5, 17):
        top = random_densenet.predict(CAT, top_k=top_k)
        assert len(top) == top_k and set(top) <= set(labels)
        probabilities = list(top.values())
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(0 < p < 1 for p in probabilities)


def test_probabilities_are_a_softmax_over_all_classes(random_densenet):
    everything = random_densenet.predict(CAT, top_k=1000)
    assert math.isclose(sum(everything.values()), 1.0, rel_tol=1e-4)


def test_top_k_out_of_range_is_refused(random_densenet):
    for top_k in (0, 1001):
        with pytest.raises(ValueError, match="top_k"):
            random_densenet.predict(CAT, top_k=top_k)


def test_bytes_path_and_pil_give_the_same_answer(random_densenet):
    answers = [
        random_densenet.predict(source)
        for source in (CAT, str(CAT), CAT.read_bytes(), Image.open(CAT), Image.open(CAT).convert("RGB"))
    ]
    assert all(answer == answers[0] for answer in answers)


def test_batch_equals_singles(random_densenet):
    images = sorted(EXAMPLES.glob("*.jpg"))
    batch = random_densenet.predict_batch(images, top_k=5)
    for image, from_batch in zip(images, batch, strict=True):
        single = random_densenet.predict(image, top_k=5)
        assert list(single) == list(from_batch)
        assert all(math.isclose(single[k], from_batch[k], rel_tol=1e-4, abs_tol=1e-6) for k in single)
    assert random_densenet.predict_batch([]) == []


def test_preprocess_makes_the_standard_imagenet_input(random_densenet):
    tensor = random_densenet.preprocess(CAT)
    assert tensor.shape == (3, 224, 224) and tensor.dtype == torch.float32
    # ImageNet normalisation: a mid-grey image maps to about (0.5 - mean) / std per channel.
    grey = random_densenet.preprocess(Image.new("RGB", (300, 300), (128, 128, 128)))
    expected = [
        (128 / 255 - m) / s for m, s in zip([0.485, 0.456, 0.406], [0.229, 0.224, 0.225], strict=True)
    ]
    assert torch.allclose(grey.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-3)


@pytest.mark.parametrize("size", [(1, 1), (1, 20000), (20000, 1), (3, 5000)])
def test_tiny_and_extremely_thin_images_classify(random_densenet, size):
    """A 1×20000 strip would resize to 256×5,120,000 px; the aspect-ratio crop keeps it small."""
    assert len(random_densenet.predict(Image.new("RGB", size, (90, 140, 200)))) == 5


def test_bad_input_raises_image_error_naming_the_problem(random_densenet):
    with pytest.raises(ImageError, match="not an image we can read"):
        random_densenet.predict(b"<html><body>hello</body></html>")


def test_duplicate_labels_are_refused():
    with pytest.raises(ValueError, match="unique"):
        Classifier(torch.nn.Identity(), ["a", "a"], device="cpu")


def test_device_selection(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert classifier.resolve_device(None) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        classifier.resolve_device("cuda")
    with pytest.raises(ValueError, match="Unknown device"):
        classifier.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert classifier.resolve_device(None) == torch.device("cuda")
    assert classifier.resolve_device("cpu") == torch.device("cpu")


# --- weights ------------------------------------------------------------------------------------


def test_weights_file_round_trip(random_densenet, densenet_weights):
    loaded = load_classifier("densenet121", weights=densenet_weights, device="cpu")
    assert loaded.predict(CAT, top_k=5) == random_densenet.predict(CAT, top_k=5)
    assert loaded.model.training is False


def old_densenet_key(key: str) -> str:
    """The model zoo's original densenet121-a639ec97.pth names 'norm1' as 'norm.1', 'conv2' as 'conv.2'."""
    return re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", key)


def test_original_model_zoo_densenet_key_names_load(tmp_path, random_densenet):
    state = random_densenet.model.state_dict()
    # The 2017 file predates BatchNorm's num_batches_tracked buffers; PyTorch fills them in.
    old = {old_densenet_key(k): v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    assert "features.denseblock1.denselayer1.norm.1.weight" in old  # the file really has old names
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    loaded = load_classifier("densenet121", weights=tmp_path / "densenet121-a639ec97.pth", device="cpu")
    assert loaded.predict(CAT) == random_densenet.predict(CAT)


def test_checkpoint_wrapped_in_state_dict_key_loads(tmp_path, random_densenet):
    torch.save({"state_dict": random_densenet.model.state_dict(), "epoch": 90}, tmp_path / "ckpt.pth")
    loaded = load_classifier(weights=tmp_path / "ckpt.pth", device="cpu")
    assert loaded.predict(CAT) == random_densenet.predict(CAT)


def test_other_torchvision_models_load_with_their_own_transform(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    loaded = load_classifier("resnet18", weights=tmp_path / "resnet18.pth", device="cpu")
    assert loaded.transform.crop_size == [224] and len(loaded.predict(CAT)) == 5


@pytest.mark.parametrize(
    "make_file, message",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_bytes(b"not a checkpoint"), "not a PyTorch weights file"),
        (lambda p: torch.save(torchvision.models.resnet18().state_dict(), p), "does not fit the densenet121"),
        (lambda p: torch.save([1, 2, 3], p), "not a state dict"),
    ],
)
def test_bad_weights_files_raise_a_clear_error(tmp_path, make_file, message):
    path = tmp_path / "weights.pth"
    make_file(path)
    with pytest.raises(ModelLoadError, match=message):
        load_classifier("densenet121", weights=path, device="cpu")


def test_unknown_model_is_refused():
    with pytest.raises(ModelLoadError, match="Unknown model 'densenet9000'"):
        load_classifier("densenet9000")


def test_pretrained_weights_are_torchvisions_imagenet_weights():
    weights = classifier.pretrained_weights("densenet121")
    assert weights is torchvision.models.DenseNet121_Weights.IMAGENET1K_V1
    assert classifier.cached_weights_path("densenet121").name == "densenet121-a639ec97.pth"


def test_failed_download_says_what_was_tried_and_the_ways_out(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelLoadError) as error:
        load_classifier("densenet121", device="cpu")
    message = str(error.value)
    assert "https://download.pytorch.org/models/densenet121-a639ec97.pth" in message
    assert "Name or service not known" in message
    assert "--weights PATH" in message
    assert str(tmp_path / "hub" / "checkpoints" / "densenet121-a639ec97.pth") in message
    assert error.value.__suppress_context__  # no URLError traceback chained on


# --- command line -------------------------------------------------------------------------------


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "classifier.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True, env=env
    )


def test_cli_prints_a_table_and_json_lines(densenet_weights, random_densenet):
    table = run_cli(CAT, EXAMPLES / "coffee.jpg", "--weights", densenet_weights, "--top-k", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].endswith("cat.jpg") and len(lines) == 8
    expected = random_densenet.predict(CAT, top_k=3)
    for line, (label, probability) in zip(lines[1:4], expected.items(), strict=True):
        assert line.split() == [*label.split(), f"{probability:.1%}"]

    as_json = run_cli(CAT, "--weights", densenet_weights, "--json")
    record = json.loads(as_json.stdout)
    assert record["image"].endswith("cat.jpg") and list(record["predictions"]) == list(
        random_densenet.predict(CAT)
    )


def test_cli_reports_bad_images_and_exits_1(densenet_weights, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    result = run_cli(bad, CAT, "--weights", densenet_weights)
    assert result.returncode == 1
    assert f"{bad}: This file is not an image we can read" in result.stderr
    assert "cat.jpg" in result.stdout  # the good image is still classified
    assert "Traceback" not in result.stderr


def test_cli_without_reachable_weights_exits_1_with_the_message(offline_env):
    result = run_cli(CAT, env=offline_env)
    assert result.returncode == 1
    assert "Could not download the pretrained weights for densenet121" in result.stderr
    assert "Traceback" not in result.stderr


# --- engines ------------------------------------------------------------------------------------


def test_engine_selection():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert classifier.select_engine(cpu, "exact") == "torch-fp32"
    assert classifier.select_engine(cuda, "exact") == "torch-fp32"
    assert classifier.select_engine(cpu, "fast", openvino=True) == "openvino-fp32"
    assert classifier.select_engine(cpu, "fast", openvino=False) == "torch-fp32-channels-last"
    assert classifier.select_engine(cuda, "fast", openvino=True) == "torch-fp16-channels-last"
    with pytest.raises(ValueError, match="precision must be one of fast, exact"):
        classifier.select_engine(cpu, "turbo")


def test_fast_cpu_engine_is_openvino_when_installed(random_densenet):
    assert random_densenet.engine in ("openvino-fp32", "openvino-bf16")  # bf16 only where it pays
    assert random_densenet.engine_choice.how in ("tuned", "cached")


def test_a_vision_transformer_runs_on_openvino(labels):
    """Converted without autograd, as it runs: with it, torchvision's attention took another path on the
    tracer's check run, conversion failed and every ViT fell back to PyTorch."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(224, 32, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts the head at zero
    fast = Classifier(vit, labels, device="cpu")
    assert fast.engine.startswith("openvino")
    with torch.inference_mode():
        reference = vit(fast.preprocess(CAT).unsqueeze(0)).softmax(dim=-1)
    assert torch.allclose(fast.forward(fast.preprocess(CAT).unsqueeze(0)), reference, atol=1e-5)


def test_openvino_failure_falls_back_to_pytorch(monkeypatch, labels, caplog):
    def broken(*args):
        raise RuntimeError("unsupported operation")

    monkeypatch.setattr(engines, "openvino_runners", broken)
    monkeypatch.setattr(engines, "openvino_installed", lambda: True)
    with caplog.at_level("WARNING", logger="image_classifier"):
        fallback = Classifier(torchvision.models.resnet18(), labels, device="cpu")
    assert fallback.engine in ("torch-fp32", "torch-fp32-channels-last", "torch-bf16-channels-last")
    assert "OpenVINO could not take the model (unsupported operation)" in caplog.text
    assert len(fallback.predict(CAT)) == 5


def test_openvino_conversion_is_cached_on_disk(monkeypatch, tmp_path, labels):
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE", str(tmp_path))
    model = torchvision.models.resnet18()
    first = Classifier(model, labels, device="cpu")
    (entry,) = (tmp_path / "openvino").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["manifest.json", "model.bin", "model.xml"]
    assert len(list((tmp_path / "decisions").iterdir())) == 1  # the tuner's choice, beside it

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(ov, "convert_model", no_conversion)
    second = Classifier(model, labels, device="cpu")
    assert second.engine == first.engine and second.engine_choice.how == "cached"
    assert second.predict(CAT) == first.predict(CAT)


def tiny_vit() -> torch.nn.Module:
    """torchvision's ViT, small: like vit_b_16 it fails the sanity check of torch.jit.trace that OpenVINO's
    converter runs (its two traces differ in module names only)."""
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=32, mlp_dim=64
    )
    torch.nn.init.normal_(vit.heads.head.weight, std=0.02)  # torchvision starts the head at zero
    return vit.eval()


def test_models_whose_trace_fails_its_check_still_get_openvino(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE", str(tmp_path))
    vit, example = tiny_vit(), torch.zeros(1, 3, 32, 32)
    root = logging.getLogger()
    level = root.level
    with pytest.raises(Exception, match="TorchScript"):  # what OpenVINO alone does with it...
        ov.convert_model(vit, example_input=example)
    assert root.level == logging.ERROR  # ...leaving the root logger at ERROR: every warning lost
    root.setLevel(level)
    run = engines.prepare_engine(vit, "openvino-fp32", example)
    assert root.level == level
    batch = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert torch.allclose(run(batch), vit(batch), atol=1e-4)
    assert len(list((tmp_path / "openvino").glob("*/model.xml"))) == 1


def test_a_conversion_that_answers_differently_is_dropped_for_pytorch(monkeypatch, tmp_path, labels):
    monkeypatch.setenv("IMAGE_CLASSIFIER_CACHE", str(tmp_path))
    convert = engines.convert_to_openvino
    other = torchvision.models.resnet18().eval()  # another model's weights: other answers
    monkeypatch.setattr(engines, "convert_to_openvino", lambda model, example: convert(other, example))
    torch.manual_seed(1)
    checked = Classifier(torchvision.models.resnet18(), labels, device="cpu")
    assert not checked.engine.startswith("openvino")
    assert list((tmp_path / "openvino").glob("*/model.xml")) == []  # nothing wrong left in the cache


def test_cuda_fast_path_uses_half_precision_and_channels_last(labels):
    """Checked on the CPU: the engine's setup, not CUDA kernels (no GPU in CI)."""
    model = torchvision.models.resnet18()
    fast = Classifier(model, labels, device="cpu", engine="torch-fp16-channels-last")
    assert fast.engine == "torch-fp16-channels-last"
    assert next(model.parameters()).dtype == torch.float16
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["cat.jpg", "coffee.jpg", "rocket.jpg"])
def test_fast_engine_keeps_the_exact_answers(oracle, name):
    """Fidelity: the fast path's top-1 equals fp32 PyTorch's, and top-5 probabilities agree within 0.02."""
    from oracle import load_oracle

    exact = load_oracle(precision="exact")
    fast_top, exact_top = oracle.predict(EXAMPLES / name), exact.predict(EXAMPLES / name)
    assert exact.engine == "torch-fp32" and oracle.engine != "torch-fp32"
    assert next(iter(fast_top)) == next(iter(exact_top))
    full = oracle.predict(EXAMPLES / name, top_k=1000)
    assert all(abs(full[label] - p) <= 0.02 for label, p in exact_top.items())


@pytest.mark.parametrize(
    "size", [(640, 480), (451, 300), (300, 451), (257, 256), (1, 1), (5, 1000), (4000, 3000)]
)
def test_fused_transform_matches_torchvisions_preset(size):
    """The fast path's preprocessing equals the preset's to within one grey level."""
    preset = classifier.default_transform()
    image = Image.open(CAT).convert("RGB").resize(size, Image.BICUBIC)
    grey_levels = torch.tensor(preset.std).view(3, 1, 1) * 255  # normalised units -> 0..255
    difference = (classifier.FusedEvalTransform(preset)(image) - preset(image)).abs() * grey_levels
    assert difference.max() <= 1.01 and difference.mean() < 0.1


def test_fast_precision_uses_the_fused_transform_and_exact_keeps_torchvisions(labels):
    fast = Classifier(torchvision.models.resnet18(), labels, device="cpu")
    exact = Classifier(torchvision.models.resnet18(), labels, device="cpu", precision="exact")
    assert isinstance(fast.transform, classifier.FusedEvalTransform)
    assert not isinstance(exact.transform, classifier.FusedEvalTransform) and exact.engine == "torch-fp32"


# --- exact is the reference; fast stays within 0.02 of it ----------------------------------------


def photo_of_size(source, size: tuple[int, int], path, seed: int = 0):
    """A camera-sized JPEG made from a real photo: centre-cropped to the aspect, upscaled, with noise."""
    import numpy as np

    photo = Image.open(source).convert("RGB")
    width, height = size
    keep_w = min(photo.width, round(photo.height * width / height))
    keep_h = min(photo.height, round(photo.width * height / width))
    left, top = (photo.width - keep_w) // 2, (photo.height - keep_h) // 2
    big = np.asarray(photo.crop((left, top, left + keep_w, top + keep_h)).resize(size, Image.BICUBIC))
    noise = np.random.default_rng(seed).normal(0, 4, big.shape)
    Image.fromarray(np.clip(big + noise, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
    return path


@pytest.fixture(scope="module")
def photos_of_every_size(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    twelve_mp = [
        photo_of_size(EXAMPLES / "cat.jpg", (4032, 3024), folder / "cat-12mp.jpg"),
        photo_of_size(EXAMPLES / "rocket.jpg", (3024, 4032), folder / "rocket-12mp-portrait.jpg", seed=1),
        photo_of_size(EXAMPLES / "coffee.jpg", (3840, 2160), folder / "coffee-4k.jpg", seed=2),
    ]
    return sorted(EXAMPLES.glob("*.jpg")) + twelve_mp


def reference_probabilities(exact: Classifier, path) -> torch.Tensor:
    """torchvision's reference pipeline: PIL's full decode, the weights' own transform, the fp32 model."""
    with Image.open(path) as photo, torch.inference_mode():
        batch = exact.reference_transform(photo.convert("RGB")).unsqueeze(0)
        return exact.model(batch)[0].softmax(-1)


def test_exact_equals_the_reference_on_photos_of_every_size(photos_of_every_size):
    from oracle import load_oracle

    exact = load_oracle(precision="exact")
    assert exact.engine == "torch-fp32" and exact._decode_side is None
    for path in photos_of_every_size:
        ours = exact.predict(path, top_k=1000)
        reference = reference_probabilities(exact, path)
        worst = max(abs(p - reference[exact.label_index[label]].item()) for label, p in ours.items())
        assert worst <= 1e-5, (path.name, worst)


def test_fast_keeps_the_references_answers_on_photos_of_every_size(oracle, photos_of_every_size):
    """Every speed-up together: reduced-scale decoding, the fused transform, the tuned engine."""
    from oracle import load_oracle

    exact = load_oracle(precision="exact")
    for path in photos_of_every_size:
        reference = reference_probabilities(exact, path)
        fast = oracle.predict(path, top_k=1000)
        top5 = reference.topk(5).indices.tolist()
        assert next(iter(fast)) == exact.labels[top5[0]], path.name
        worst = max(abs(fast[exact.labels[i]] - reference[i].item()) for i in top5)
        assert worst <= 0.02, (path.name, worst)


def test_fast_decodes_12_megapixel_jpegs_at_half_scale_and_exact_whole(oracle, photos_of_every_size):
    twelve_mp = photos_of_every_size[3]
    assert oracle.decode(twelve_mp).size == (2016, 1512)
    from oracle import load_oracle

    assert load_oracle(precision="exact").decode(twelve_mp).size == (4032, 3024)


def test_cli_engine_forces_one_engine(densenet_weights, monkeypatch, capsys):
    """In process, so that the test sees the classifier the command line built and the passes it ran: the
    engine asked for, not the tuned one (whose answers would agree within its tolerance anyway)."""
    built, passes = [], []

    def load_and_watch(*args, **kwargs):
        model = load_classifier(*args, **kwargs)
        run = model._run
        model._run = lambda batch, **options: passes.append(batch.shape) or run(batch, **options)
        built.append(model)
        return model

    monkeypatch.setattr(classifier, "load_classifier", load_and_watch)
    argv = [str(CAT), "--weights", str(densenet_weights), "--engine", "torch-fp32-channels-last", "--json"]
    assert classifier.main(argv) == 0
    (model,) = built
    assert model.engine == "torch-fp32-channels-last" and model.engine_choice.how == "forced"
    assert len(passes) == 1 and model.model.features.conv0.weight.is_contiguous(
        memory_format=torch.channels_last
    )
    predictions = json.loads(capsys.readouterr().out)["predictions"]
    fp32 = load_classifier("densenet121", weights=densenet_weights, device="cpu", engine="torch-fp32")
    expected = fp32.predict(CAT)  # the same preprocessing (fast), the reference's engine
    assert list(predictions) == list(expected)
    assert all(math.isclose(predictions[k], expected[k], rel_tol=1e-4) for k in expected)
    refused = ["--weights", str(densenet_weights), "--precision", "exact", "--engine", "openvino-fp32"]
    assert classifier.main([str(CAT), *refused]) == 1
    assert "'exact' always runs torch-fp32" in capsys.readouterr().err


def strict_json(line: str):
    """json.loads that refuses NaN and Infinity, which Python's json writes by default but JSON forbids."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_cli_never_prints_nan_a_nan_model_gets_the_plain_error(tmp_path):
    model = torchvision.models.resnet18()
    with torch.no_grad():
        model.fc.bias[0] = float("nan")  # weights damaged: every answer would be NaN
    weights = tmp_path / "resnet18-nan.pth"
    torch.save(model.state_dict(), weights)
    result = run_cli(CAT, EXAMPLES / "coffee.jpg", "--model", "resnet18", "--weights", weights, "--json")
    assert result.returncode == 1
    assert [strict_json(line) for line in result.stdout.splitlines()] == []  # nothing made up
    assert result.stderr.count(engines.NON_FINITE_MESSAGE) == 2 and "Traceback" not in result.stderr
    assert "resnet18 on torch-fp32 gave a non-finite result" in result.stderr  # the log line

    output = tmp_path / "results.jsonl"
    table = run_cli(CAT, "--model", "resnet18", "--weights", weights, "--output", output)
    assert table.returncode == 1
    (row,) = [strict_json(line) for line in output.read_text().splitlines()]
    assert row["predictions"] == {} and row["error"] == engines.NON_FINITE_MESSAGE
