"""A public demo under load and under probing: no failures, no leak, no busy pile-up, no file leaks."""

import http.client
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

import app
from classifier import Classifier
from conftest import EXAMPLES, EXPECTED, ROOT
from servers import free_port, rss_mb, wait_until_serving

PHOTOS = sorted(EXAMPLES.glob("*.jpg"))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """tests/serve.py in its own process, its working directory and Gradio cache in a temp folder."""
    workdir = tmp_path_factory.mktemp("served")
    cache = workdir / "gradio-cache"
    port = free_port()
    env = dict(os.environ, GRADIO_TEMP_DIR=str(cache), PYTHONUNBUFFERED="1")
    with open(workdir / "server.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "serve.py"), str(port)],
            cwd=workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(url, process, log=workdir / "server.log")
    yield {"url": url, "pid": process.pid, "workdir": workdir, "cache": cache, "log": workdir / "server.log"}
    process.terminate()
    process.wait(timeout=30)


def run_clients(url: str, clients: int, requests_per_client: int, photos=PHOTOS) -> list[tuple[str, str]]:
    """`clients` concurrent gradio_client sessions; returns (photo name, top-1 label or error) per request."""

    def one_client(index: int) -> list[tuple[str, str]]:
        client = Client(url, verbose=False)
        answers = []
        for n in range(requests_per_client):
            photo = photos[(index + n) % len(photos)]
            try:
                result = client.submit(handle_file(str(photo)), api_name="/predict").result(timeout=120)
                answers.append((photo.name, result["label"]))
            except Exception as e:  # counted as failures below
                answers.append((photo.name, f"FAILED: {e}"))
        return answers

    with ThreadPoolExecutor(clients) as pool:
        return [answer for answers in pool.map(one_client, range(clients)) for answer in answers]


def test_sixteen_concurrent_clients_get_right_answers_without_leaking(served):
    run_clients(served["url"], clients=4, requests_per_client=10)  # warm-up: 40 requests
    rss_warm = rss_mb(served["pid"])
    started = time.monotonic()
    answers = run_clients(served["url"], clients=16, requests_per_client=25)  # 400 requests
    elapsed = time.monotonic() - started
    rss_after = rss_mb(served["pid"])
    print(f"\nload: 400 requests, 16 clients, {elapsed:.1f} s; RSS {rss_warm:.0f} MB -> {rss_after:.0f} MB")
    failures = [answer for answer in answers if answer[1].startswith("FAILED")]
    wrong = [(name, label) for name, label in answers if name in EXPECTED and label not in EXPECTED[name]]
    assert len(answers) == 400 and not failures and not wrong, (failures[:3], wrong[:3])
    assert rss_after <= rss_warm * 1.10, (rss_warm, rss_after)


def test_uploads_stay_in_gradios_cache_and_out_of_the_logs(served, tmp_path):
    secret = tmp_path / "secret-holiday-photo.jpg"
    secret.write_bytes((EXAMPLES / "coffee.jpg").read_bytes())
    client = Client(served["url"], verbose=False)
    assert client.predict(handle_file(str(secret)), api_name="/predict")["label"] in EXPECTED["coffee.jpg"]
    bad = tmp_path / "secret-not-a-photo.jpg"
    bad.write_text("private notes")
    with pytest.raises(AppError):
        client.predict(handle_file(str(bad)), api_name="/predict")

    written = [p for p in served["workdir"].rglob("*") if p.is_file()]
    outside_cache = [p for p in written if served["cache"] not in p.parents and p != served["log"]]
    assert outside_cache == []  # no flagged/ folder, no copies of uploads
    assert any(p.name == "secret-holiday-photo.jpg" for p in written)  # it lives in the cache, to be deleted
    log = served["log"].read_text()
    assert "secret" not in log and "private notes" not in log and "Traceback" not in log, log


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
