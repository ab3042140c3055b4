"""The page with its models on Ray Serve replicas (`python app.py --serve`), and the health checks and
metrics the page has with or without it.

One server for the module: a local Ray of its own, two model replicas of one thread each, the page in front
(Ray's start-up is slow on 2 cores; every wait is bounded). Ray is optional: without it the Serve tests
skip, except in CI (CI=true), where .ci/run installs it.
"""

from __future__ import annotations

import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from playwright.sync_api import expect

from browser import sent_by_page, shown_predictions
from classifier import load_classifier
from conftest import optional_import
from photos import real_photo
from ray_serving import get, replica_processes, serve_app
from torch_home import SMALL_MODELS

DEFAULT, OTHER = "resnet18", "shufflenet_v2_x0_5"
assert {DEFAULT, OTHER} <= set(SMALL_MODELS)
SERVE_OPTIONS = ["--serve", "--replicas", "2", "--replica-threads", "1", "--replica-cpus", "0.5"]
SERVE_OPTIONS += ["--models", f"{DEFAULT},{OTHER}", "--model", DEFAULT, "--precision", "exact"]


def requests_total(metrics: str, endpoint: str, model: str, outcome: str) -> float:
    pattern = (
        rf'image_classifier_requests_total{{endpoint="{endpoint}",model="{model}",outcome="{outcome}"}} (\S+)'
    )
    found = re.search(pattern, metrics)
    return float(found.group(1)) if found else 0.0


def need_ray() -> None:
    optional_import("ray.serve", "pip install -r requirements-ray.txt")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "chelsea.jpg"
    real_photo("chelsea").save(path, quality=90)
    return path


@pytest.fixture(scope="module")
def served(torch_home, offline_env, tmp_path_factory):
    need_ray()
    log = tmp_path_factory.mktemp("serve") / "app.log"
    env = dict(offline_env, TORCH_HOME=str(torch_home))
    with serve_app(SERVE_OPTIONS, log, env=env, timeout=420) as app:
        yield app


@pytest.fixture(scope="module")
def serve_client(served) -> Client:
    return Client(served.url, verbose=False)


def local(name: str):
    return load_classifier(name, device="cpu", precision="exact")


def test_readyz_says_why_until_the_default_model_answers(served):
    statuses = [status for status, _ in served.readiness]
    assert statuses[-1] == 200, served.readiness
    # Before, if the page came up before the replicas had loaded the default model, it said so.
    assert all(DEFAULT in text for status, text in served.readiness if status == 503), served.readiness
    assert get(served.url + "healthz") == (200, "ok\n")


def test_readyz_is_503_with_the_reason_until_a_replica_has_answered(torch_home):
    """The page's side alone, its replicas held back: /readyz says why it isn't ready, then that it is."""
    need_ray()
    import threading

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from image_classifier.metrics import PageMetrics, health_routes
    from image_classifier.ray_serve import RemoteModels

    answered = threading.Event()

    class HeldReplicas:
        def call(self, method: str, name: str):
            if not answered.wait(timeout=60):
                raise TimeoutError("the test never let the replicas answer")
            return replica_info(name)

    models = RemoteModels(HeldReplicas(), [DEFAULT, OTHER], DEFAULT, 1000)
    client = TestClient(FastAPI(routes=health_routes(PageMetrics(models.names), models.not_ready)))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.text == f"not ready: the default model {DEFAULT} is loading on the model replicas\n"
    answered.set()
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/readyz").text == "ready\n"
    assert models.is_loaded(DEFAULT) and not models.is_loaded(OTHER)


def replica_info(name: str):
    """What a replica says of a model it loaded (as `ModelReplica.describe` does)."""
    from classifier import time_one_photo
    from image_classifier.model_set import LoadedModel
    from image_classifier.ray_serve import describe

    model = local(name)
    return describe(name, LoadedModel(model, model.memory_mb, time_one_photo(model) and 1.0))


def test_a_real_photo_gets_the_local_classifiers_top_5(served, serve_client, photo, torch_home):
    answer = serve_client.predict(handle_file(str(photo)), api_name="/predict")
    expected = local(DEFAULT).predict(str(photo))
    got = {entry["label"]: entry["confidence"] for entry in answer["confidences"]}
    # The same labels and probabilities; the order too, but for probabilities too close to tell apart (random
    # weights: near-uniform), where one thread or two may sum in another order.
    assert got == pytest.approx(expected, abs=1e-5)


def test_classify_and_compare_answer_with_the_models_they_name(serve_client, photo, torch_home):
    expected = {name: local(name).predict(str(photo)) for name in (DEFAULT, OTHER)}

    def probabilities(answer: dict) -> dict[str, float]:
        return {entry["label"]: entry["confidence"] for entry in answer["confidences"]}

    classified = serve_client.predict(handle_file(str(photo)), OTHER, api_name="/classify")
    assert probabilities(classified) == pytest.approx(expected[OTHER], abs=1e-5)
    a, b = serve_client.predict(handle_file(str(photo)), OTHER, DEFAULT, api_name="/compare")
    assert probabilities(a) == pytest.approx(expected[OTHER], abs=1e-5)
    assert probabilities(b) == pytest.approx(expected[DEFAULT], abs=1e-5)
    # The analysis (bars and heatmaps, as the Photo tab shows them) runs on a replica: the same bars.
    bars, heatmap = serve_client.predict(handle_file(str(photo)), api_name="/explain")
    assert probabilities(bars) == pytest.approx(expected[DEFAULT], abs=1e-5)
    assert Path(heatmap).stat().st_size > 0
    # Any class ("Show where it sees…"): its map made on a replica, its probability the local one's.
    bars, heatmap = serve_client.predict(handle_file(str(photo)), "goldfish", api_name="/explain")
    everything = local(DEFAULT).analyse(str(photo)).probabilities
    assert probabilities(bars)["goldfish"] == pytest.approx(everything["goldfish"], abs=1e-5)
    assert Path(heatmap).stat().st_size > 0


def test_the_page_in_chromium_shows_the_bars_and_heatmap(browser, served, photo, torch_home):
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(served.url)
        zone = page.locator('[aria-label^="Drop an image file here to upload"]')
        with page.expect_file_chooser(timeout=60_000) as chooser:
            zone.click()
        chooser.value.set_files(photo)
        page.locator('[data-testid="label"] .confidence-set').nth(4).wait_for(timeout=120_000)
        expect(page.locator('img[alt^="Where the model looked for"]')).to_have_count(1, timeout=60_000)
        shown = [label for label, _ in shown_predictions(page)]
        sent = sent_by_page(page, photo.read_bytes())  # the page shrinks and re-encodes the photo first
    finally:
        page.close()
    assert set(shown) == set(local(DEFAULT).predict(sent))


def test_a_bad_file_gets_its_plain_error(serve_client, tmp_path):
    from gradio_client.exceptions import AppError

    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo at all")
    with pytest.raises(AppError, match="This file is not an image we can read"):
        serve_client.predict(handle_file(str(bad)), api_name="/predict")


def test_metrics_count_requests(served, serve_client, photo):
    before = get(served.url + "metrics")[1]
    serve_client.predict(handle_file(str(photo)), api_name="/predict")
    status, after = get(served.url + "metrics")
    assert status == 200
    ok = requests_total(after, "predict", DEFAULT, "ok")
    assert ok == requests_total(before, "predict", DEFAULT, "ok") + 1
    assert re.search(r"image_classifier_models_loaded \d", after)
    assert "image_classifier_request_duration_seconds_bucket" in after
    assert "chelsea" not in after and "127.0.0.1" not in after  # no file name, no client address


def test_a_replica_killed_mid_load_loses_no_request(served, photo):
    replicas = replica_processes(served)
    assert len(replicas) == 2, replicas
    clients = [Client(served.url, verbose=False) for _ in range(4)]

    def send(i: int) -> dict:
        return clients[i % 4].predict(handle_file(str(photo)), api_name="/predict")

    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(send, i) for i in range(16)]
        deadline = time.monotonic() + 120
        while not any(answer.done() for answer in answers) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(replicas[0], signal.SIGKILL)  # requests are in flight on both replicas
        results = [answer.result(timeout=240) for answer in answers]
    assert all(result["label"] == results[0]["label"] for result in results)


def test_the_plain_app_has_health_and_metrics_and_no_ray(app_server):
    url = app_server["url"]
    assert get(url + "healthz") == (200, "ok\n")
    assert get(url + "readyz") == (200, "ready\n")
    status, metrics = get(url + "metrics")
    loaded = re.search(r"^image_classifier_models_loaded (\d+)\.0$", metrics, re.MULTILINE)
    assert status == 200 and loaded, metrics  # the server is shared: other tests may have loaded more models
    assert int(loaded[1]) >= 1
    maps = Path(f"/proc/{app_server['process'].pid}/maps").read_text()
    assert "_raylet" not in maps and "/ray/" not in maps


def test_a_full_deployment_turns_requests_away_in_words(photo, torch_home):
    """Serve's back-pressure (every replica's queue full) becomes `Busy`, and the page says it in words."""
    need_ray()
    import gradio as gr
    from ray.serve.exceptions import BackPressureError

    from image_classifier.metrics import PageMetrics
    from image_classifier.page.answers import Answers
    from image_classifier.ray_serve import BUSY, RemoteClassifier, Replicas

    class FullDeployment:
        def __getattr__(self, method: str):
            return self

        def remote(self, *args):
            return self

        def result(self, timeout_s: float):
            raise BackPressureError(num_queued_requests=32, max_queued_requests=32)

    replicas = Replicas(FullDeployment())
    model = RemoteClassifier(replica_info(DEFAULT), replicas)
    metrics = PageMetrics([DEFAULT])

    class OneModel:
        names, default = [DEFAULT], DEFAULT

        def get(self, name):
            return model

    answers = Answers(OneModel(), metrics=metrics)
    with pytest.raises(gr.Error, match="The server is busy") as refused, answers.metered("predict", DEFAULT):
        answers.classify(str(photo), DEFAULT)
    assert refused.value.title == "Busy" and refused.value.message == BUSY
    assert requests_total(metrics.text().decode(), "predict", DEFAULT, "busy") == 1


def test_a_gpu_replicas_batch_answers_each_request_as_alone(photo, torch_home):
    """`@serve.batch`'s step (`_forward_many`), run here: requests of two models, one of them two photos,
    and one broken, in one call; each gets what its own forward pass gives, the broken one its error."""
    need_ray()
    import functools

    import torch

    from classifier import classifier_set
    from image_classifier.ray_serve import ModelReplica

    replica = ModelReplica(
        functools.partial(classifier_set, [DEFAULT, OTHER], default=DEFAULT, device="cpu", precision="exact"),
        threads=1,
        batching=True,
    )
    default, other = replica.models.get(DEFAULT), replica.models.get(OTHER)
    one = default.preprocess(str(photo)).unsqueeze(0)
    two = torch.cat([one, one.flip(-1)])
    broken = torch.zeros(1, 1, 224, 224)  # one channel: the first convolution refuses it
    answers = replica._forward_many([(DEFAULT, one), (OTHER, one), (DEFAULT, two), (DEFAULT, broken)])
    assert torch.allclose(answers[0], default.forward(one), atol=1e-6)
    assert torch.allclose(answers[1], other.forward(one), atol=1e-6)
    assert torch.allclose(answers[2], default.forward(two), atol=1e-6)
    assert isinstance(answers[3], Exception)


def test_the_kuberay_builder_makes_the_same_application_from_options_by_name():
    need_ray()
    from ray.serve import Application

    import app

    built = app.serve_application({"models": f"{DEFAULT},{OTHER}", "model": DEFAULT, "autoscale": "1,4"})
    assert isinstance(built, Application)
    with pytest.raises(ValueError, match="not_a_model"):
        app.serve_application({"models": "not_a_model"})
