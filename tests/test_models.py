"""Many models in one server: the catalogue from torchvision, the memory-bounded set of loaded models, and
the API that names a model (/classify, /compare), refusing any name it doesn't offer."""

import functools
import json
import re
import subprocess
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torchvision
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import classifier
from classifier import ModelLoadError, ModelNotOffered, ModelSet, load_classifier
from conftest import EXAMPLES, OFFLINE_MODEL, ROOT
from image_classifier import catalogue, model_set
from image_classifier.page.models import model_card
from servers import free_port, rss_mb, wait_until_serving
from torch_home import SMALL_MODELS

PHOTOS = sorted(EXAMPLES.glob("*.jpg"))
CAT = EXAMPLES / "cat.jpg"

# --- the catalogue ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet50", "vit_b_16", "efficientnet_b1", "inception_v3", "swin_t"])
def test_catalogue_figures_come_from_the_weights_meta(name):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    meta, preset = weights.meta, weights.transforms()
    facts = catalogue.model_facts(name)
    assert facts.weights == str(weights)
    assert facts.top1 == meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert facts.top5 == meta["_metrics"]["ImageNet-1K"]["acc@5"]
    assert facts.gflops == meta["_ops"] and facts.parameters == meta["num_params"]
    assert facts.file_mb == meta["_file_size"]
    assert [facts.crop] == preset.crop_size and [facts.resize] == preset.resize_size
    assert facts.interpolation == preset.interpolation.value


def test_the_card_shows_the_catalogue_figures_then_what_this_machine_measured(torch_home):
    loaders = {
        name: functools.partial(load_classifier, name, device="cpu") for name in ("resnet18", "vit_b_16")
    }
    models = ModelSet(loaders, memory_mb_of=lambda model: model.memory_mb, timed=classifier.time_one_photo)
    card = model_card(models, "resnet18")
    meta = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta
    assert "**resnet18**" in card and "ResNet18_Weights.IMAGENET1K_V1" in card
    assert f"**{meta['_metrics']['ImageNet-1K']['acc@1']:.1f} %** top-1" in card
    assert f"{meta['_metrics']['ImageNet-1K']['acc@5']:.1f} % top-5" in card
    assert f"{meta['_ops']:.2f} GFLOPs" in card and f"{meta['_file_size']:.1f} MB of weights" in card
    assert "224 × 224 crop of the photo resized to 256 px (bilinear)" in card
    assert card.endswith("- On this machine: measured once it has loaded.")  # its weights are in the cache
    assert model_card(models, "vit_b_16").endswith("measured once it has loaded (first, a 330 MB download).")
    models.get("resnet18")
    card = model_card(models, "resnet18")
    engine = models.get("resnet18").engine_choice.describe()  # e.g. "OpenVINO fp32, the fastest engine..."
    assert engine.startswith("OpenVINO") and "keeps the answers" in engine
    assert re.search(rf"- On this machine: \*\*\d+ ms per photo\*\* on {re.escape(engine)}$", card), card


def test_offered_models_from_a_list_or_all():
    assert catalogue.offered_models("all") == catalogue.classification_models()
    assert catalogue.offered_models(" resnet18, vit_b_16,resnet18 ,") == ["resnet18", "vit_b_16"]
    assert catalogue.offered_models(catalogue.DEFAULT_MODELS) == list(catalogue.DEFAULT_MODELS)
    with pytest.raises(ValueError, match="Unknown models 'resnet9', '../x.pth'"):
        catalogue.offered_models("resnet18,resnet9,../x.pth")
    with pytest.raises(ValueError, match="No models named"):
        catalogue.offered_models(" , ")


def test_a_server_offers_the_models_named_all_of_them_or_the_default_set():
    everything = classifier.classifier_set("all", device="cpu")
    assert everything.names == catalogue.classification_models() and everything.loaded() == []
    chosen = classifier.classifier_set("resnet18,vit_b_16", default="swin_t", device="cpu")
    assert chosen.names == ["swin_t", "resnet18", "vit_b_16"] and chosen.default == "swin_t"
    assert classifier.classifier_set(device="cpu").names == list(catalogue.DEFAULT_MODELS)


def test_the_default_models_all_fit_in_the_default_memory_at_once():
    expected = sum(catalogue.expected_memory_mb(name, "openvino-fp32") for name in catalogue.DEFAULT_MODELS)
    assert expected <= classifier.DEFAULT_MODEL_MEMORY_MB, expected


def test_the_default_set_fits_a_16_gb_space_as_measured():
    """The README's "the default set fits a free 2-vCPU / 16 GB Space", against resident memory measured
    by bench/models.py (docs/models.json: each default model in a fresh process, its RSS after loading and
    its peak while converting) rather than against the estimate the model set budgets with."""
    measured = json.loads((ROOT / "docs" / "models.json").read_text())
    models = measured["models"]
    assert sorted(models) == sorted(catalogue.DEFAULT_MODELS)  # re-measure when the default set changes
    for name, figures in models.items():  # the estimate is near the truth, so the budget means something
        assert figures["rss_mb"] <= 1.25 * catalogue.expected_memory_mb(name, "openvino-fp32"), name
    all_loaded = sum(figures["peak_mb"] for figures in models.values())
    assert all_loaded <= classifier.DEFAULT_MODEL_MEMORY_MB, all_loaded
    server = measured["eviction"]["before_mb"]  # the server itself, with its default model and runtimes
    converting = max(figures["first_load_peak_mb"] for figures in models.values())
    assert server + classifier.DEFAULT_MODEL_MEMORY_MB + converting < 16 * 1024 * 0.9  # headroom left


# --- each model's own preprocessing ----------------------------------------------------------------


def distinct_presets():
    """One model per distinct evaluation preset in the catalogue (sizes, interpolation, normalisation)."""
    seen = {}
    for name in catalogue.classification_models():
        preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        sizes = (*preset.resize_size, "crop", *preset.crop_size, preset.interpolation)
        seen.setdefault((*sizes, *preset.mean, *preset.std), name)
    return sorted(seen.values())


@pytest.mark.parametrize("name", distinct_presets())
def test_fused_preprocessing_stays_within_a_grey_level_of_each_models_preset(name):
    """Within one grey level, but for a handful of values: Pillow takes the crop box as float32, so the fused
    resize samples a few millionths of a pixel off torchvision's and an 8-bit pass can round the other way
    (inception_v3, 299 of 342: 3 of 268,203 values off by 2)."""
    preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    assert classifier.FusedEvalTransform.fits(preset)
    grey_levels = torch.tensor(preset.std).view(3, 1, 1) * 255
    for size in [(640, 480), (333, 500), (1000, 700)]:
        image = Image.open(CAT).convert("RGB").resize(size, Image.BICUBIC)
        difference = (classifier.FusedEvalTransform(preset)(image) - preset(image)).abs() * grey_levels
        assert difference.max() <= 2.01 and difference.mean() < 0.1, (name, size)
        assert (difference > 1.01).float().mean() < 1e-4, (name, size)


@pytest.mark.parametrize("name", SMALL_MODELS)
def test_loaded_models_preprocess_with_their_own_transforms(torch_home, name):
    """Loaded by name (torchvision's loading code): exact mode applies the weights' own transforms(),
    fast mode the same preset fused."""
    preset = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    image = Image.open(CAT).convert("RGB")
    exact = load_classifier(name, device="cpu", precision="exact")
    assert torch.equal(exact.preprocess(image), preset(image))
    fast = load_classifier(name, device="cpu")
    assert fast.transform.resize_size == preset.resize_size and fast.transform.crop_size == preset.crop_size
    grey_levels = torch.tensor(preset.std).view(3, 1, 1) * 255
    assert ((fast.preprocess(image) - preset(image)).abs() * grey_levels).max() <= 1.01


# --- the set of loaded models ----------------------------------------------------------------------


class Recorder:
    """Fake models: each loader records its calls; a model is its name."""

    def __init__(self, names, sizes=None):
        self.calls = []
        self.sizes = sizes or {}
        self.loaders = {name: (lambda name=name: self.load(name)) for name in names}

    def load(self, name):
        self.calls.append(name)
        return name

    def set(self, memory_mb=1000, **options):
        size = lambda name: self.sizes.get(name, 10)  # noqa: E731
        return ModelSet(self.loaders, memory_mb=memory_mb, expected_mb=size, memory_mb_of=size, **options)


@pytest.mark.parametrize(
    "name", ["densenet9000", "resnet50", "../../etc/passwd", "/tmp/resnet18.pth", "", " ", None, 3, ["a"]]
)
def test_names_not_offered_are_refused_in_words_before_any_loader_runs(name):
    recorder = Recorder(["a", "b"])
    models = recorder.set()
    with pytest.raises(ModelNotOffered) as refused:
        models.get(name)
    assert recorder.calls == []
    message = str(refused.value)
    assert message.endswith("a, b.") and "Traceback" not in message


def test_models_load_lazily_once_and_the_least_recently_used_goes_first():
    recorder = Recorder(["default", "a", "b", "c"], sizes={"default": 10, "a": 40, "b": 40, "c": 40})
    models = recorder.set(memory_mb=100, default="default")
    assert recorder.calls == [] and models.loaded() == []
    models.load_default()
    models.get("a"), models.get("b"), models.get("a")  # b is now the least recently used
    assert recorder.calls == ["default", "a", "b"] and models.memory_used_mb() == 90
    models.get("c")  # 130 MB would not fit: b goes, never the default
    assert models.loaded() == ["default", "a", "c"] and models.memory_used_mb() == 90
    models.get("b")
    assert models.loaded() == ["default", "c", "b"] and recorder.calls == ["default", "a", "b", "c", "b"]


def test_a_model_bigger_than_the_memory_is_refused_without_evicting_others():
    recorder = Recorder(["default", "small", "huge"], sizes={"default": 30, "small": 30, "huge": 80})
    models = recorder.set(memory_mb=100, default="default")
    models.load_default(), models.get("small")
    with pytest.raises(ModelLoadError, match="huge needs about 80 MB of memory"):
        models.get("huge")
    assert models.loaded() == ["default", "small"] and "huge" not in recorder.calls


def test_concurrent_first_requests_load_a_model_once():
    loads = []

    def slow_load():
        loads.append(1)
        time.sleep(0.3)
        return object()

    models = ModelSet({"m": slow_load})
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: models.get("m"), range(8)))
    assert len(loads) == 1 and all(model is got[0] for model in got)


def test_a_load_in_progress_does_not_hold_up_models_already_loaded():
    loading, release = threading.Event(), threading.Event()

    def load_big():
        loading.set()
        release.wait(60)
        return "big"

    models = ModelSet({"loaded": lambda: "loaded", "big": load_big})
    models.get("loaded")
    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(models.get, "big")
        assert loading.wait(30)  # "big" is loading now, and stays so until released
        # Answered while "big" is still loading: were it held up behind that load, this would time out.
        assert pool.submit(models.get, "loaded").result(timeout=30) == "loaded"
        assert not big.done()
        release.set()
        assert big.result(timeout=30) == "big"


def test_the_load_time_measurement_is_the_median_of_three_after_a_warm_up(monkeypatch):
    """A clock the timed photo moves: the warm-up (900 ms) is left out, the median of 40, 10, 25 is 25."""
    clock = [0.0]
    durations = iter([0.9, 0.040, 0.010, 0.025])
    monkeypatch.setattr(model_set, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    calls = []

    def timed(model):
        calls.append(model)
        clock[0] += next(durations)

    loaded = ModelSet({"m": lambda: "m"}, timed=timed).entry("m")
    assert calls == ["m"] * 4 and loaded.ms_per_photo == pytest.approx(25.0)


# --- the server: python app.py --models ... ----------------------------------------------------------


@pytest.fixture(scope="module")
def api(app_server):
    return Client(app_server["url"], verbose=False)


def assert_same_top5(served, expected):
    labels = [entry["label"] for entry in served["confidences"]]
    assert labels == list(expected), (labels, list(expected))
    for entry in served["confidences"]:
        assert entry["confidence"] == pytest.approx(expected[entry["label"]], rel=1e-4, abs=1e-6)


@pytest.fixture(scope="module")
def in_process(torch_home):
    """The same models loaded here with load_classifier, the way the server loads them."""
    return {name: load_classifier(name, device="cpu") for name in SMALL_MODELS}


def test_classify_answers_equal_load_classifier_in_process(api, in_process):
    for name, local in in_process.items():
        for photo in PHOTOS[:2]:
            assert_same_top5(client_classify(api, photo, name), local.predict(photo))


def client_classify(client, photo, name):
    return client.predict(handle_file(str(photo)), name, api_name="/classify")


def test_predict_is_the_default_model_and_compare_answers_as_each_model_in_process(api, in_process):
    assert_same_top5(
        api.predict(handle_file(str(CAT)), api_name="/predict"), in_process["resnet18"].predict(CAT)
    )
    first, second = api.predict(handle_file(str(CAT)), "squeezenet1_0", "resnet18", api_name="/compare")
    assert_same_top5(first, in_process["squeezenet1_0"].predict(CAT))
    assert_same_top5(second, in_process["resnet18"].predict(CAT))


def test_the_api_describes_classify_and_compare(api):
    endpoints = api.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert [p["component"] for p in endpoints["/classify"]["parameters"]] == ["Image", "Dropdown"]
    assert [r["component"] for r in endpoints["/classify"]["returns"]] == ["Label"]
    assert [p["component"] for p in endpoints["/compare"]["parameters"]] == ["Image", "Dropdown", "Dropdown"]
    assert [r["component"] for r in endpoints["/compare"]["returns"]] == ["Label", "Label"]
    assert [p["component"] for p in endpoints["/predict"]["parameters"]] == ["Image"]


@pytest.mark.parametrize(
    "name", ["densenet9000", "resnet50", "../../../etc/passwd", "/tmp/resnet18.pth", "", None, "x" * 5000]
)
def test_the_server_refuses_names_it_does_not_offer_and_downloads_nothing(api, app_server, torch_home, name):
    """resnet50 is a torchvision model, but not offered: refused in words, not downloaded (the server is
    offline: a download attempt would say "Could not download")."""
    checkpoints = sorted((torch_home / "hub" / "checkpoints").iterdir())
    for call in (
        lambda: client_classify(api, CAT, name),
        lambda: api.predict(handle_file(str(CAT)), "resnet18", name, api_name="/compare"),
    ):
        with pytest.raises(AppError) as refused:
            call()
        message = str(refused.value)
        assert "doesn't offer the model" in message or "Choose a model" in message, message
        assert "Traceback" not in message and "Could not download" not in message and len(message) < 400
    assert sorted((torch_home / "hub" / "checkpoints").iterdir()) == checkpoints
    assert "Traceback" not in app_server["log"].read_text()


def test_an_offered_model_that_cannot_be_downloaded_says_why_and_the_ways_out(api, in_process):
    with pytest.raises(AppError) as failed:
        client_classify(api, CAT, OFFLINE_MODEL)
    message = str(failed.value)
    assert message.startswith(f"Could not download the pretrained weights for {OFFLINE_MODEL}")
    assert "Ways out" in message and "Traceback" not in message
    assert_same_top5(client_classify(api, CAT, "resnet18"), in_process["resnet18"].predict(CAT))


def test_concurrent_requests_for_three_models_each_get_their_own_models_answer(app_server, in_process):
    """24 requests at once, spread over three models and three photos: none crosses to another model."""
    names = ["mobilenet_v3_small", "resnet18", "shufflenet_v2_x0_5"]
    expected = {(name, photo): in_process[name].predict(photo) for name in names for photo in PHOTOS}
    jobs = [(names[i % 3], PHOTOS[(i // 3) % len(PHOTOS)]) for i in range(24)]
    clients = [Client(app_server["url"], verbose=False) for _ in range(8)]
    submitted = [
        (name, photo, clients[i % 8].submit(handle_file(str(photo)), name, api_name="/classify"))
        for i, (name, photo) in enumerate(jobs)
    ]
    for name, photo, job in submitted:
        assert_same_top5(job.result(timeout=300), expected[name, photo])


# --- memory -----------------------------------------------------------------------------------------


def test_eviction_gives_the_memory_back(torch_home, offline_env, tmp_path):
    """A server with room for its default model and one more: choosing a third evicts the second, and the
    process's resident memory comes back down (measured from outside, in /proc)."""
    default, big, small = "squeezenet1_0", "resnet18", "shufflenet_v2_x0_5"
    budget = sum(catalogue.expected_memory_mb(name, "openvino-fp32") for name in (default, big)) + 5
    port = free_port()
    command = [
        sys.executable,
        "app.py",
        "--port",
        str(port),
        "--model",
        default,
        "--models",
        f"{big},{small}",
    ]
    command += ["--model-memory", str(budget)]
    log = tmp_path / "app.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(offline_env, TORCH_HOME=str(torch_home)), stdout=output, stderr=output
        )
    try:
        client = wait_until_serving(f"http://127.0.0.1:{port}/", process, timeout=300, log=log)
        for name in (small, default):  # first-time allocations (Gradio, OpenVINO's runtime) out of the way
            client_classify(client, CAT, name)
        client_classify(client, CAT, default)
        before = rss_mb(process.pid)
        client_classify(client, CAT, big)
        with_big = rss_mb(process.pid)
        client_classify(client, CAT, small)  # evicts big
        after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(f"\nRSS: {before:.0f} MB -> {with_big:.0f} MB with {big} -> {after:.0f} MB after its eviction")
    grown = with_big - before
    assert grown > 50, (before, with_big)  # resnet18 really took memory
    assert after < with_big - 0.6 * grown, (before, with_big, after)
