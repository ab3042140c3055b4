"""A public demo under load and under probing: no failures, no leak, no busy pile-up, no file leaks."""

import contextlib
import http.client
import json
import threading
import time

import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from classifier import Classifier
from conftest import EXAMPLES, EXPECTED, ROOT
from image_classifier.page.settings import MODEL_CONCURRENCY
from queue_protocol import QueueSession
from servers import free_port, serve_oracle
from soak import FLAT, settled_figures, soak, targets

PHOTOS = sorted(EXAMPLES.glob("*.jpg"))
DELETE_CACHE = (2, 10)
"""The test server's cleanup: every 2 s, uploads and results older than 10 s (the app's: an hour)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """tests/serve.py in its own process, its working directory and Gradio cache in a temp folder; a closed
    tab's session is forgotten after 5 s (not 120), so that the soak's page visits are gone before its end."""
    options = ("--delete-cache", *map(str, DELETE_CACHE), "--sessions", "3600", "5")
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
    """A bounded soak (bench/soak.py runs 10,000): good photos of three sizes, the hostile corpus, heatmaps
    from 16 concurrent clients. Memory must level off: at most +3 % after the warm-up, and at most +1 % over
    the last half (read with the clients quiet, between the halves)."""
    report = soak(
        served,
        oracle,
        requests=400,
        clients=16,
        warmup=280,  # memory settles after a few hundred requests from 16 clients (arenas, pools)
        delete_cache=DELETE_CACHE,
        scratch=tmp_path,
    )
    print(f"\nsoak: {json.dumps({k: v for k, v in report.items() if k != 'problems'})}")
    assert report["requests"] == 400 and {"/predict", "/explain"} <= set(report["endpoints_used"])
    assert report["verdicts"].get("expected error", 0) > 0 and report["verdicts"].get("ok", 0) > 200
    assert "RSS grows at most 1 % over the last half" in targets(report)  # the slope, not only the total
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


class GatedModel(torch.nn.Module):
    """Stands in for an overloaded CPU: every forward pass waits for `release`, and the passes in flight
    are counted (now and at most), so the test sees the server's state instead of timing it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # a model has parameters: the Classifier looks
        self.release = threading.Event()
        self.release.set()  # open while the Classifier and the page are built (they run probing passes)
        self.changed = threading.Condition()
        self.in_flight = self.most_in_flight = 0

    def close_gate(self) -> None:
        self.release.clear()

    def forward(self, batch):
        if self.release.is_set():
            return torch.zeros(batch.shape[0], 1000) * self.weight
        with self.changed:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.changed.notify_all()
        try:
            self.release.wait(120)
            return torch.zeros(batch.shape[0], 1000) * self.weight
        finally:
            with self.changed:
                self.in_flight -= 1
                self.changed.notify_all()


def test_two_photos_at_once_a_full_queue_turns_requests_away_at_once_and_recovers(oracle):
    """README: "up to two photos are classified at once; up to N requests may wait ... Beyond that a request
    is turned away at once". Eight requests against a model that answers nobody until released: two
    reach it, at most two wait in the queue, every other one is refused while the model still holds."""
    gated = GatedModel()
    demo = app.build_demo(Classifier(gated, oracle.labels, precision="exact"), queue_size=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    gated.close_gate()
    try:
        outcomes, lock = [], threading.Lock()

        def send():
            try:
                Client(url, verbose=False).predict(handle_file(str(PHOTOS[0])), api_name="/predict")
                outcome = "answered"
            except Exception as e:
                outcome = str(e)
            with lock:
                outcomes.append((outcome, gated.release.is_set()))

        threads = [threading.Thread(target=send, daemon=True) for _ in range(8)]
        for thread in threads:
            thread.start()

        def every_request_is_placed() -> bool:  # answered (refused), in the model, or waiting in the queue
            return len(outcomes) + gated.in_flight + len(demo._queue) == 8

        with gated.changed:  # polls: the queue and the outcomes change outside this condition
            assert gated.changed.wait_for(every_request_is_placed, timeout=120), (outcomes, gated.in_flight)
        assert gated.in_flight == gated.most_in_flight == MODEL_CONCURRENCY == 2  # two photos at once
        assert len(demo._queue) <= 2 and len(outcomes) >= 4
        refused = [(outcome, late) for outcome, late in outcomes]
        assert all("Queue is full" in outcome and "try again" in outcome for outcome, _ in refused), refused
        assert not any(late for _, late in refused)  # all while the model still held: at once
        accepted = 8 - len(refused)
        gated.release.set()
        for thread in threads:
            thread.join(timeout=120)
        assert [outcome for outcome, _ in outcomes].count("answered") == accepted
        assert gated.most_in_flight == 2  # never more, queue drained included
        again = Client(url, verbose=False).predict(handle_file(str(PHOTOS[1])), api_name="/predict")
        assert len(again["confidences"]) == 5
    finally:
        gated.release.set()
        demo.close()


def test_share_link_only_when_asked():
    assert app.parse_args([]).share is False
    assert app.parse_args(["--share"]).share is True


# --- clients that hang up ---------------------------------------------------------------------------


class CountedSlowModel(torch.nn.Module):
    """Every forward pass takes `seconds` and is counted: who reached the model, and who never did."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds, self.calls = seconds, 0

    def forward(self, batch):
        self.calls += 1
        time.sleep(self.seconds)
        return torch.zeros(batch.shape[0], 1000)


@pytest.fixture
def slow_app(oracle):
    """The app around a 2-second model, one request at a time, two allowed to wait."""
    model = CountedSlowModel(2.0)
    demo = app.build_demo(Classifier(model, oracle.labels, precision="exact"), queue_size=2, concurrency=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    model.calls = 0
    try:
        yield demo, model, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


def running(url: str, photo=PHOTOS[0]) -> QueueSession:
    """A session whose request is on the model now."""
    session = QueueSession(url)
    assert session.join("/predict", [session.upload(photo)])[0] == 200
    session.listen()
    session.wait_for("process_starts")
    return session


def until(condition, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def leftovers(demo, sessions: list[QueueSession]) -> dict:
    """What Gradio's queue still holds for these sessions."""
    queue = demo._queue
    hashes = {session.session_hash for session in sessions}
    return {
        "waiting": [e.session_hash for q in queue.event_queue_per_concurrency_id.values() for e in q.queue],
        "events": [e.session_hash for e in queue.event_ids_to_events.values() if e.session_hash in hashes],
        "running": [job for job in queue.active_jobs if job],
    }


def test_clients_that_hang_up_while_queued_leave_no_slot_and_never_reach_the_model(slow_app):
    demo, model, url = slow_app
    ghosts = []
    for _ in range(3):  # each time, fill both waiting places and hang up
        blocker = running(url)
        waiting = [QueueSession(url) for _ in range(2)]
        for place, session in enumerate(waiting):
            assert session.join("/predict", [session.upload(PHOTOS[1])])[0] == 200
            session.listen()
            assert session.wait_for("estimation")["rank"] == place
        assert QueueSession(url).join("/predict", [None])[0] == 503  # full: the places are taken
        for session in waiting:
            session.hang_up()
        ghosts += waiting
        assert until(lambda: len(demo._queue) == 0), leftovers(demo, ghosts)  # Gradio noticed, dropped them
        assert "label" in blocker.result()["output"]["data"][0]
    # The places are free again: two more wait behind a running request, and all three are answered.
    sessions = [running(url)] + [QueueSession(url) for _ in range(2)]
    for session in sessions[1:]:
        assert session.join("/predict", [session.upload(PHOTOS[2])])[0] == 200
        session.listen()
    for session in sessions:
        assert session.result()["success"]
    assert model.calls == 3 + 3  # the three blockers and the last three: no hung-up request ran
    assert until(lambda: leftovers(demo, ghosts + sessions) == {"waiting": [], "events": [], "running": []})


def test_a_client_that_hangs_up_mid_request_frees_its_slot(slow_app):
    demo, model, url = slow_app
    gone = running(url)
    gone.hang_up()  # the model keeps going (a forward pass can't be interrupted), nobody listens
    follow_up = QueueSession(url)
    assert follow_up.join("/predict", [follow_up.upload(PHOTOS[1])])[0] == 200
    follow_up.listen()
    assert follow_up.wait_for("estimation")["rank"] == 0  # next in line: nothing stuck ahead of it
    assert follow_up.result()["success"]
    assert model.calls == 2
    assert until(lambda: leftovers(demo, [gone, follow_up]) == {"waiting": [], "events": [], "running": []})


def test_hang_ups_leave_the_real_server_serving_without_growing(served, tmp_path):
    """Dozens of clients hang up mid-request and while queued (heatmaps of a large photo, so each request
    holds real memory); the server's memory, open files and threads stay flat, the next answers right."""
    photo = tmp_path / "large-cat.jpg"
    image = Image.open(EXAMPLES / "cat.jpg")
    image.resize((image.width * 5, image.height * 5)).save(photo, quality=90)

    def wave(hang_up_after: str) -> None:
        sessions = [QueueSession(served.url) for _ in range(4)]
        for session in sessions:
            assert session.join("/explain", [session.upload(photo), None])[0] == 200  # no label
            session.listen()
        for session in sessions:
            with contextlib.suppress(ConnectionError):
                session.wait_for(hang_up_after, "process_completed")
            session.hang_up()

    def served_right() -> None:
        for path in PHOTOS:
            session = QueueSession(served.url)
            assert session.join("/predict", [session.upload(path)])[0] == 200
            session.listen()
            assert session.result()["output"]["data"][0]["label"] in EXPECTED[path.name]

    for _ in range(3):
        wave("estimation")
        wave("process_starts")
    served_right()
    before = settled_figures(served.pid)
    for _ in range(10):  # 80 hang-ups
        wave("estimation")
        wave("process_starts")
    served_right()
    after = settled_figures(served.pid)
    print(f"\nhang-ups: {before} -> {after}")
    assert after["rss_mb"] <= before["rss_mb"] * 1.05, (before, after)
    assert after["open_fds"] <= before["open_fds"] + FLAT and after["threads"] <= before["threads"] + FLAT
