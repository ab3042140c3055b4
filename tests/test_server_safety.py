"""A public demo under load and under probing: no failures, no leak, no busy pile-up, no file leaks."""

import http.client
import json
import threading
import time

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from classifier import Classifier
from conftest import EXAMPLES, EXPECTED, ROOT
from servers import free_port, serve_oracle
from soak import soak, targets

PHOTOS = sorted(EXAMPLES.glob("*.jpg"))
DELETE_CACHE = (2, 10)
"""The test server's cleanup: every 2 s, uploads and results older than 10 s (the app's: an hour)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """tests/serve.py in its own process, its working directory and Gradio cache in a temp folder."""
    options = ("--delete-cache", *map(str, DELETE_CACHE))
    with serve_oracle(tmp_path_factory.mktemp("served"), *options) as app_process:
        yield app_process


def test_uploads_stay_in_gradios_cache_and_out_of_the_logs(served, tmp_path):
    secret = tmp_path / "secret-holiday-photo.jpg"
    secret.write_bytes((EXAMPLES / "coffee.jpg").read_bytes())
    client = Client(served.url, verbose=False)
    assert client.predict(handle_file(str(secret)), api_name="/predict")["label"] in EXPECTED["coffee.jpg"]
    bad = tmp_path / "secret-not-a-photo.jpg"
    bad.write_text("private notes")
    with pytest.raises(AppError):
        client.predict(handle_file(str(bad)), api_name="/predict")

    written = [p for p in served.workdir.rglob("*") if p.is_file()]
    outside_cache = [p for p in written if served.cache not in p.parents and p != served.log]
    assert outside_cache == []  # no flagged/ folder, no copies of uploads
    assert any(p.name == "secret-holiday-photo.jpg" for p in written)  # it lives in the cache, to be deleted
    log = served.log.read_text()
    assert "secret" not in log and "private notes" not in log and "Traceback" not in log, log


def test_soak_sixteen_clients_mixed_requests_right_answers_no_leaks(served, oracle, tmp_path):
    """A bounded soak (bench/soak.py runs 3,000): good photos of three sizes, the hostile corpus, heatmaps
    (and /classify's models, once it exists) from 16 concurrent clients."""
    report = soak(
        served,
        oracle,
        requests=400,
        clients=16,
        warmup=120,
        delete_cache=DELETE_CACHE,
        scratch=tmp_path,
    )
    print(f"\nsoak: {json.dumps({k: v for k, v in report.items() if k != 'problems'})}")
    assert report["requests"] == 400 and {"/predict", "/explain"} <= set(report["endpoints_used"])
    assert report["verdicts"].get("expected error", 0) > 0 and report["verdicts"].get("ok", 0) > 200
    missed = [target for target, met in targets(report).items() if not met]
    assert not missed, (missed, report["problems"], report)


PROBES = [
    "/file=/etc/passwd",
    "/gradio_api/file=/etc/passwd",
    "/gradio_api/file=%2fetc%2fpasswd",
    "/gradio_api/file=../../../../../../etc/passwd",
    "/gradio_api/file=..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/file=..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/gradio_api/file=/proc/self/environ",
    f"/gradio_api/file={ROOT}/.git/config",
    f"/gradio_api/file={ROOT}/app.py",
    "/gradio_api/file=.git/config",
    "/gradio_api/file=app.py",
    "/gradio_api/file=classifier.py",
    "/file=app.py",
    "/static/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/assets/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/gradio_api/file=examples/../app.py",
]
SECRETS = [
    b"root:x:0:0",
    b"[core]",
    b"import gradio",
    b"def build_demo",
    b"PATH=",
    b"repositoryformatversion",
]


@pytest.mark.parametrize("path", PROBES)
def test_path_traversal_probes_get_nothing(server, path):
    host, port = server.removeprefix("http://").rstrip("/").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("GET", path)  # sent verbatim, no client-side normalisation
    response = connection.getresponse()
    body = response.read()
    connection.close()
    assert response.status in (403, 404), (path, response.status, body[:200])
    assert not any(secret in body for secret in SECRETS), path


class SlowModel(torch.nn.Module):
    """Stands in for an overloaded CPU: every forward pass takes a second."""

    def forward(self, batch):
        time.sleep(1.0)
        return torch.zeros(batch.shape[0], 1000)


def test_full_queue_turns_requests_away_at_once_and_recovers(oracle):
    slow = Classifier(SlowModel(), oracle.labels, precision="exact")  # PyTorch runs the sleep every time
    demo = app.build_demo(slow, queue_size=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        outcomes, lock = [], threading.Lock()

        def send():
            client = Client(url, verbose=False)
            started = time.monotonic()
            try:
                client.predict(handle_file(str(PHOTOS[0])), api_name="/predict")
                outcome = "answered"
            except Exception as e:
                outcome = str(e)
            with lock:
                outcomes.append((outcome, time.monotonic() - started))

        threads = [threading.Thread(target=send) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        answered = [t for outcome, t in outcomes if outcome == "answered"]
        busy = [t for outcome, t in outcomes if "Queue is full" in outcome and "try again" in outcome]
        assert len(outcomes) == 8 and len(answered) + len(busy) == 8, outcomes
        assert (
            1 <= len(answered) <= 4 and busy
        )  # one running, two waiting (plus stragglers); the rest turned away
        assert max(busy) < 1.5 * min(answered), outcomes  # "busy" comes at once, not after waiting its turn
        assert (
            len(
                Client(url, verbose=False).predict(handle_file(str(PHOTOS[1])), api_name="/predict")[
                    "confidences"
                ]
            )
            == 5
        )
    finally:
        demo.close()


def test_share_link_only_when_asked():
    assert app.parse_args([]).share is False
    assert app.parse_args(["--share"]).share is True
