"""The soak: thousands of mixed requests through the real server from concurrent clients, and what the server
process does meanwhile (memory, open files, threads, Gradio's upload cache).

Shared by tests/test_soak.py (a bounded run) and bench/soak.py (3,000 requests). The request mix is a list of
`Request`s (`request_mix`); endpoints the server does not offer (read from its API info) are left out, so
the mix can name endpoints before they exist.
"""

from __future__ import annotations

import random
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from conftest import EXAMPLES, EXPECTED
from hostile import corpus, encode
from image_classifier.page.settings import LIVE_CAMERA
from page_visit import ANY_CLASS, live_stream, many_photos, offers_visits, visit
from servers import ServedApp, folder_files, folder_usage, process_figures

SETTLE_S = 45
"""Longest wait, after the clients leave, for the server's connections to close: uvicorn closes idle
keep-alive connections after 5 s, and notices a closed heartbeat stream at its next beat (15 s)."""
PHOTO_SIDES = {"small": 160, "large": 2400}
"""Good photos go as they are (about 450 px) and resized to these longest sides."""
LIVE_FRAME = tuple(LIVE_CAMERA["video"][side]["ideal"] for side in ("width", "height"))
"""The Live stream's webcam frame: a photo at the size the page asks of the webcam (320×240)."""
FRAMES_PER_STREAM = 100
"""Frames one Live visitor streams before pressing Stop; then another visitor starts."""


@dataclass(frozen=True)
class Request:
    """One kind of request in the mix."""

    name: str
    endpoint: str
    arguments: Callable[[int, Path], list]
    """(request number, a scratch folder) -> the endpoint's arguments."""
    check: Callable[[Any], None]
    """Raises AssertionError when the answer is wrong."""
    error: str | None = None
    """The request must fail with a message containing this."""
    weight: int = 1
    """How many times it appears in one pass over the mix."""
    visit: Callable[[str, Path], Any] | None = None
    """Instead of an API call: (server URL, the photo's file) -> a visit to the page (tests/page_visit.py)."""


@dataclass(frozen=True)
class Photo:
    """A good photo and the answer the oracle gives for it, in this process."""

    name: str
    data: bytes
    top: str
    confidence: float


@dataclass(frozen=True)
class Outcome:
    request: str
    verdict: str
    """ok, expected error, wrong answer or unexpected failure."""
    seconds: float
    detail: str = ""


def with_comment(jpeg: bytes, text: str) -> bytes:
    """The same JPEG with a comment segment: the same pixels, a new file (Gradio keeps one copy of
    identical uploads, so unique files are what make its cache grow, as real users' photos do)."""
    body = text.encode()
    return jpeg[:2] + b"\xff\xfe" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


def good_photos(oracle) -> list[Photo]:
    """The example photos as they are and resized (PHOTO_SIDES), each with the oracle's answer."""
    photos = []
    for path in sorted(EXAMPLES.glob("*.jpg")):
        original = path.read_bytes()
        variants = {path.stem: original}
        image = Image.open(path).convert("RGB")
        for size, side in PHOTO_SIDES.items():
            scale = side / max(image.size)
            resized = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
            variants[f"{path.stem}-{size}"] = encode(resized, "JPEG", quality=90)
        for name, data in variants.items():
            top, confidence = next(iter(oracle.predict(data).items()))
            if name == path.stem:
                assert top in EXPECTED[path.name], (name, top)  # the oracle itself is right
            photos.append(Photo(f"{name}.jpg", data, top, confidence))
    return photos


def _confidences(label_value: dict) -> list[tuple[str, float]]:
    """gradio_client's value of a gr.Label: [(label, confidence)], highest first."""
    return [(entry["label"], entry["confidence"]) for entry in label_value["confidences"]]


def _check_top5(label_value: dict) -> list[tuple[str, float]]:
    top = _confidences(label_value)
    assert len(top) == 5, top
    assert [c for _, c in top] == sorted((c for _, c in top), reverse=True), top
    assert all(0 <= c <= 1 for _, c in top), top
    return top


def _checks_photo(photo: Photo) -> Callable[[dict], None]:
    def check(label_value: dict) -> None:
        top = _check_top5(label_value)
        assert top[0][0] == photo.top and abs(top[0][1] - photo.confidence) < 0.01, (photo.name, top[0])

    return check


def _checks_heatmap(photo: Photo) -> Callable[[tuple], None]:
    def check(result: tuple) -> None:
        label_value, heatmap = result
        _checks_photo(photo)(label_value)
        with Image.open(heatmap) as picture:
            width, height = picture.size
        assert max(width, height) <= 768 and min(width, height) > 0, (photo.name, picture.size)

    return check


def _file(name: str, data: bytes, unique: bool) -> Callable[[int, Path], list]:
    def arguments(number: int, scratch: Path) -> list:
        path = scratch / f"{number}-{name}"
        path.write_bytes(with_comment(data, f"soak request {number}") if unique else data)
        return [handle_file(str(path))]

    return arguments


def request_mix(photos: Sequence[Photo], endpoints: dict[str, dict], served_model: str) -> list[Request]:
    """Every kind of request, for the endpoints the server offers (`endpoints`: its API info)."""
    mix = [
        Request(f"predict {p.name}", "/predict", _file(p.name, p.data, True), _checks_photo(p), weight=3)
        for p in photos
    ]
    for case in corpus():
        if case.error:
            mix.append(
                Request(
                    f"hostile {case.name}",
                    "/predict",
                    _file(case.name, case.data, False),
                    _no_answer,
                    case.error,
                )
            )
        else:
            mix.append(
                Request(
                    f"hostile {case.name}",
                    "/predict",
                    _file(case.name, case.data, False),
                    _checks_top1_in(case.expect_top),
                )
            )
    mix += [
        Request(f"explain {p.name}", "/explain", _file(p.name, p.data, True), _checks_heatmap(p), weight=2)
        for p in photos
        if "-" not in p.name  # as they are: the heatmap is the slow part, the size matters less
    ]
    for model in _choices(endpoints.get("/classify"), 1):
        for p in photos:
            if "-" in p.name:
                continue
            check = _checks_photo(p) if model == served_model else _check_top5
            mix.append(
                Request(
                    f"classify {model} {p.name}",
                    "/classify",
                    _with_argument(_file(p.name, p.data, True), model),
                    check,
                )
            )
    models = _choices(endpoints.get("/compare"), 2)
    for other in (m for m in models if m != served_model):
        for p in photos:
            if "-" in p.name:
                continue
            mix.append(
                Request(
                    f"compare {served_model} {other} {p.name}",
                    "/compare",
                    _with_argument(_with_argument(_file(p.name, p.data, True), served_model), other),
                    _checks_both(_checks_photo(p)),
                )
            )
    return [request for request in mix if request.endpoint in endpoints or request.visit]


def page_visits(photos: Sequence[Photo], url: str, switch_to: str | None = None) -> list[Request]:
    """A visit to the Photo tab per photo (its events, not the API: tests/page_visit.py), choosing the model
    `switch_to` at the end where there is one."""
    if not offers_visits(url):
        return []
    full_size = [p for p in photos if "-" not in p.name]
    look = partial(visit, switch_to=switch_to)
    return [
        *(
            Request(f"page {p.name}", "page", _file(p.name, p.data, True), _checks_visit(p), visit=look)
            for p in full_size
        ),
        *(
            Request(
                f"many photos {p.name}",
                "many",
                _file(p.name, p.data, True),
                _checks_many(p),
                visit=many_photos,
            )
            for p in full_size[:2]
        ),
    ]


def _checks_many(photo: Photo) -> Callable[[dict], None]:
    def check(table: dict) -> None:
        assert table["headers"] == ["image", "top class", "confidence", "top 5", "error"], table["headers"]
        (name, label, _, _, error), (broken, *_, broken_error) = table["rows"]
        assert label == photo.top and not error, table["rows"]
        assert broken.startswith("broken-") and broken_error, table["rows"]

    return check


def _checks_visit(photo: Photo) -> Callable[[dict], None]:
    def check(shown: dict) -> None:
        _checks_photo(photo)(shown["bars"])
        assert f"looked for “{photo.top}”" in shown["caption"], shown["caption"]
        assert max(shown["picture_size"]) <= 768, shown["picture_size"]
        assert f"“{shown['clicked']}”" in shown["clicked_caption"], shown["clicked_caption"]
        assert f"“{ANY_CLASS}” (probability" in shown["picked_caption"], shown["picked_caption"]
        if shown["switched_bars"] is not None:
            _check_top5(shown["switched_bars"])

    return check


def _checks_both(first: Callable[[dict], None]) -> Callable[[tuple], None]:
    """/compare's answer: the served model's bars checked by `first`, the other model's top 5 well formed."""

    def check(result: tuple) -> None:
        label_a, label_b = result
        first(label_a)
        _check_top5(label_b)

    return check


def _no_answer(result: Any) -> None:
    raise AssertionError(f"an answer where an error was expected: {result}")


def _checks_top1_in(allowed: frozenset[str] | None) -> Callable[[dict], None]:
    def check(label_value: dict) -> None:
        top = _check_top5(label_value)
        assert allowed is None or top[0][0] in allowed, top[0]

    return check


def _with_argument(arguments: Callable[[int, Path], list], value: Any) -> Callable[[int, Path], list]:
    return lambda number, scratch: [*arguments(number, scratch), value]


def _choices(endpoint: dict | None, position: int) -> list[str]:
    """The values the parameter at `position` of an endpoint takes, from the API info (a dropdown's choices;
    its default where it has no list)."""
    parameters = (endpoint or {}).get("parameters", [])
    if len(parameters) <= position:
        return []
    info = parameters[position]
    choices = (info.get("type") or {}).get("enum")
    if choices:
        return list(choices)
    default = info.get("parameter_default")
    return [default] if default is not None else []


def endpoints_of(url: str) -> dict[str, dict]:
    """The server's named API endpoints and their parameters, from its API info."""
    client = Client(url, verbose=False)
    try:
        return client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    finally:
        client.close()


def schedule(mix: Sequence[Request], count: int, seed: int = 0) -> list[Request]:
    """`count` requests: passes over the mix (each kind `weight` times), each pass shuffled."""
    one_pass = [request for request in mix for _ in range(request.weight)]
    rng, order = random.Random(seed), []
    while len(order) < count:
        shuffled = one_pass[:]
        rng.shuffle(shuffled)
        order += shuffled
    return order[:count]


def run(
    url: str,
    order: Sequence[Request],
    clients: int,
    scratch: Path,
    timeout: float = 120,
    done: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Send `order` from `clients` concurrent gradio_client sessions, each answer checked as it comes back
    (and passed to `done`)."""
    outcomes: list[Outcome | None] = [None] * len(order)

    def one_client(index: int) -> None:
        # gradio_client's uploads give up after 5 s by default: on a machine busy with other work that is the
        # client's clock, not the server's failure. The wait for answers is `timeout`.
        client = Client(url, verbose=False, httpx_kwargs={"timeout": timeout})
        try:
            for number in range(index, len(order), clients):
                outcomes[number] = _send(client, url, order[number], number, scratch, timeout)
                if done:
                    done(outcomes[number])
        finally:
            client.close()

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [o or Outcome("?", "unexpected failure", 0.0, "the client thread died") for o in outcomes]


def _send(client: Client, url: str, request: Request, number: int, scratch: Path, timeout: float) -> Outcome:
    arguments = request.arguments(number, scratch)
    started = time.monotonic()
    try:
        if request.visit:
            result = request.visit(url, Path(arguments[0]["path"]))
        else:
            result = client.submit(*arguments, api_name=request.endpoint).result(timeout=timeout)
    except AppError as e:
        seconds = time.monotonic() - started
        if request.error and request.error in str(e):
            return Outcome(request.name, "expected error", seconds)
        return Outcome(request.name, "unexpected failure", seconds, f"AppError: {e}")
    except Exception as e:  # a timeout, a dropped connection: all counted
        seconds = time.monotonic() - started
        return Outcome(request.name, "unexpected failure", seconds, f"{type(e).__name__}: {e}")
    finally:
        for argument in arguments:
            if isinstance(argument, dict) and "path" in argument:
                Path(argument["path"]).unlink(missing_ok=True)
    seconds = time.monotonic() - started
    if request.error:
        return Outcome(request.name, "wrong answer", seconds, f"an answer, not {request.error!r}: {result}")
    try:
        request.check(result)
    except AssertionError as e:
        return Outcome(request.name, "wrong answer", seconds, str(e))
    return Outcome(request.name, "ok", seconds)


class Monitor(threading.Thread):
    """Samples the server process and Gradio's cache every `interval` seconds, until stopped."""

    def __init__(self, served: ServedApp, ignore: set[str], interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.served, self.ignore, self.interval = served, ignore, interval
        self.samples: list[dict] = []
        self.completed = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def count(self, _: Outcome) -> None:
        with self._lock:
            self.completed += 1

    def run(self) -> None:
        while not self._stopping.is_set():
            figures = process_figures(self.served.pid)
            cache = folder_usage(self.served.cache, self.ignore)
            self.samples.append(
                {"time": time.monotonic(), "completed": self.completed, **figures, "cache": cache}
            )
            self._stopping.wait(self.interval)

    def stop(self) -> list[dict]:
        self._stopping.set()
        self.join()
        return self.samples


class LiveStreamer(threading.Thread):
    """A Live stream beside the soak's other requests: one visitor after another streams `frames` frames of
    `photo` (tests/page_visit.py), every answered frame's bars checked against the oracle's. `pause()` lets
    the current stream end and waits (the server's figures are read with no client connected)."""

    def __init__(self, url: str, photo: Photo, frames: int = FRAMES_PER_STREAM, timeout: float = 120) -> None:
        super().__init__(daemon=True)
        self.url, self.photo, self.frames, self.timeout = url, photo, frames, timeout
        self.figures = Counter()
        self.problems: list[Outcome] = []
        self._running, self._idle, self._stopping = threading.Event(), threading.Event(), threading.Event()
        self._running.set()

    def run(self) -> None:
        check = _checks_photo(self.photo)
        while not self._stopping.is_set():
            if not self._running.is_set():
                self._idle.set()
                self._running.wait(1)
                continue
            self._idle.clear()
            started = time.monotonic()
            try:
                stream = live_stream(self.url, self.photo.data, self.frames, self.timeout)
            except Exception as e:  # a refusal, a dropped connection, a timeout: counted
                self._problem("unexpected failure", started, f"{type(e).__name__}: {e}")
                continue
            try:
                for bars in stream["answers"]:
                    check(bars)
            except AssertionError as e:
                self._problem("wrong answer", started, str(e))
            else:
                self.figures.update(
                    streams=1,
                    handled=stream["handled"],
                    answered=len(stream["answers"]),
                    ended=stream["ended"],
                )

    def _problem(self, verdict: str, started: float, detail: str) -> None:
        self.figures[verdict] += 1
        self.problems.append(Outcome("live stream", verdict, time.monotonic() - started, detail))

    def pause(self) -> None:
        self._running.clear()
        if not self._idle.wait(self.timeout + 30):  # the figures read next would count a stream
            self._problem("unexpected failure", time.monotonic(), "the stream did not end when paused")

    def resume(self) -> None:
        self._idle.clear()
        self._running.set()

    def stop(self) -> dict:
        self._stopping.set()
        self._running.set()
        self.join(self.timeout + 30)
        return dict(self.figures)


def live_frame(oracle) -> Photo:
    """The Live stream's frame, with the oracle's answer for it."""
    path = EXAMPLES / "cat.jpg"
    frame = encode(Image.open(path).convert("RGB").resize(LIVE_FRAME, Image.BILINEAR), "JPEG", quality=92)
    top, confidence = next(iter(oracle.predict(frame).items()))
    return Photo("cat-webcam.jpg", frame, top, confidence)


def settled_figures(pid: int, probe: Callable[[], Any] | None = None, quiet_s: float = 16) -> dict:
    """The server's figures once its open files and threads stop changing (for `quiet_s`, at most SETTLE_S):
    connections of clients that just left take seconds to close. Worker threads idle for 10 s end only when
    the next request comes (anyio prunes them then): `probe` sends one after the quiet time."""
    figures = process_figures(pid)
    deadline, changed = time.monotonic() + SETTLE_S, time.monotonic()
    while time.monotonic() - changed < quiet_s and time.monotonic() < deadline:
        time.sleep(1)
        latest = process_figures(pid)
        if (latest["open_fds"], latest["threads"]) != (figures["open_fds"], figures["threads"]):
            changed = time.monotonic()
        figures = latest
    if probe is not None:
        probe()
        figures = settled_figures(pid, quiet_s=3)
    return figures


def _at_completed(samples: list[dict], completed: float) -> dict:
    """The first sample taken once `completed` requests had been answered (the last one if none was)."""
    return next((s for s in samples if s["completed"] >= completed), samples[-1])


def soak(
    served: ServedApp,
    oracle,
    *,
    requests: int,
    clients: int,
    warmup: int,
    delete_cache: tuple[int, int],
    scratch: Path,
    served_model: str = "EfficientNet-Lite0",
    seed: int = 0,
) -> dict:
    """Warm up, then `requests` mixed requests with the server watched, then wait for Gradio's cleanup.

    Returns the figures: outcomes by verdict and endpoint, latencies, the server's memory, open files and
    threads after the warm-up and at the end (both with no client connected), and its cache over time.
    """
    endpoints = endpoints_of(served.url)
    photos = good_photos(oracle)
    others = [model for model in _choices(endpoints.get("/classify"), 1) if model != served_model]
    visits = page_visits(photos, served.url, switch_to=next(iter(others), None))
    mix = request_mix(photos, endpoints, served_model) + visits
    kept = folder_files(served.cache)  # the example photos Gradio keeps for the page, never deleted
    # A Live stream throughout, warm-up included (its first frames set up the one-thread forward pass).
    streamer = LiveStreamer(served.url, live_frame(oracle)) if offers_visits(served.url) else None
    if streamer:
        streamer.start()
    warmup_outcomes = run(served.url, schedule(mix, warmup, seed + 1), clients, scratch)
    if streamer:
        streamer.pause()
    warm = settled_figures(served.pid, probe=lambda: run(served.url, mix[:1], 1, scratch))
    if streamer:
        streamer.resume()
    order = schedule(mix, requests, seed)
    monitor = Monitor(served, kept)
    monitor.start()
    started = time.monotonic()
    # Two halves, the server's memory read between them once its clients have gone quiet: samples taken
    # under load swing with the buffers of the requests in flight (each decode buffer is mapped on its own).
    half = len(order) // 2
    outcomes = run(served.url, order[:half], clients, scratch, done=monitor.count)
    if streamer:
        streamer.pause()
    middle = settled_figures(served.pid, quiet_s=3)
    if streamer:
        streamer.resume()
    outcomes += run(served.url, order[half:], clients, scratch, done=monitor.count)
    elapsed = time.monotonic() - started
    live = streamer.stop() if streamer else {}
    samples = monitor.stop()
    end = settled_figures(served.pid, probe=lambda: run(served.url, mix[:1], 1, scratch))
    every, older_than = delete_cache
    time.sleep(every + older_than + 2)  # every upload is now older than `older_than`, and a cleanup ran
    after_cleanup = folder_usage(served.cache, kept)

    seconds = sorted(outcome.seconds for outcome in outcomes)
    problems = [o for o in warmup_outcomes + outcomes if o.verdict in ("wrong answer", "unexpected failure")]
    problems += streamer.problems if streamer else []
    # Before the first file can be old enough to go, the cache grows by what each request leaves.
    before_cleanup = [s for s in samples if s["time"] - started < older_than]
    first_window = before_cleanup[-1] if before_cleanup else samples[0]
    quarters = [_at_completed(samples, q * len(outcomes)) for q in (0.25, 0.5, 0.75, 1)]
    tenths = [_at_completed(samples, t * len(outcomes) / 10) for t in range(1, 11)]
    return {
        "requests": len(outcomes),
        "clients": clients,
        "warmup_requests": warmup,
        "seconds": round(elapsed, 1),
        "requests_per_second": round(len(outcomes) / elapsed, 2),
        "endpoints": sorted(endpoints),
        "endpoints_used": sorted({request.endpoint for request in mix}),
        "kinds_of_request": len(mix),
        "verdicts": dict(Counter(outcome.verdict for outcome in outcomes)),
        "warmup_verdicts": dict(Counter(outcome.verdict for outcome in warmup_outcomes)),
        "by_endpoint": {
            endpoint: dict(
                Counter(o.verdict for o, r in zip(outcomes, order, strict=True) if r.endpoint == endpoint)
            )
            for endpoint in sorted({r.endpoint for r in mix})
        },
        "live": live,
        "problems": [o.__dict__ for o in problems[:20]],
        "latency_s": {
            "p50": round(statistics.median(seconds), 3),
            "p95": round(seconds[int(0.95 * (len(seconds) - 1))], 3),
            "max": round(seconds[-1], 3),
        },
        "warm": warm,
        "end": end,
        "middle": middle,
        "rss_growth_percent": round(100 * (end["rss_mb"] / warm["rss_mb"] - 1), 2),
        "rss_growth_first_half_percent": round(100 * (middle["rss_mb"] / warm["rss_mb"] - 1), 2),
        "rss_growth_last_half_percent": round(100 * (end["rss_mb"] / middle["rss_mb"] - 1), 2),
        "rss_mb_by_tenth": [round(t["rss_mb"]) for t in tenths],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "rss_mb_by_quarter": [round(q["rss_mb"]) for q in quarters],
        "open_fds_during": [min(s["open_fds"] for s in samples), max(s["open_fds"] for s in samples)],
        "threads_during": [min(s["threads"] for s in samples), max(s["threads"] for s in samples)],
        # Worker threads come and go with the load (idle ones end after 10 s): the most in each half.
        "threads_most_by_half": [
            max(s["threads"] for s in samples[: max(1, len(samples) // 2)]),
            max(s["threads"] for s in samples[len(samples) // 2 :]),
        ],
        "cache": {
            "delete_cache": list(delete_cache),
            "kept_files": len(kept),
            "bytes_per_request": round(first_window["cache"]["bytes"] / max(1, first_window["completed"])),
            "by_quarter": [{"completed": q["completed"], **q["cache"]} for q in quarters],
            "peak_bytes": max(s["cache"]["bytes"] for s in samples),
            "oldest_file_during_s": max(
                (s["cache"]["oldest_s"] for s in samples if s["cache"]["files"]), default=0
            ),
            "after_cleanup": after_cleanup,
        },
    }


RSS_GROWTH_PERCENT = 3
"""Most the server's resident memory may grow from the end of the warm-up to the end of the soak."""
RSS_LAST_HALF_PERCENT = 1
"""Most it may grow over the last half of the soak: memory that levels off, not a slope."""
FLAT = 2
"""Most open file descriptors or threads the server may gain, warm-up to end (both settled, no client)."""


def targets(report: dict) -> dict[str, bool]:
    """Each target of the soak, met or not."""
    cache = report["cache"]
    every, older_than = cache["delete_cache"]
    both_phases = (report["warmup_verdicts"], report["verdicts"])
    return {
        "no unexpected failures": all(
            v.get("unexpected failure", 0) == 0 for v in (*both_phases, report["live"])
        ),
        "every answer right": all(v.get("wrong answer", 0) == 0 for v in (*both_phases, report["live"])),
        "the Live stream answered frames": not report["live"] or report["live"].get("answered", 0) > 0,
        f"RSS grows at most {RSS_GROWTH_PERCENT} % after the warm-up": (
            report["rss_growth_percent"] <= RSS_GROWTH_PERCENT
        ),
        f"RSS grows at most {RSS_LAST_HALF_PERCENT} % over the last half": (
            report["rss_growth_last_half_percent"] <= RSS_LAST_HALF_PERCENT
        ),
        "open file descriptors flat": report["end"]["open_fds"] <= report["warm"]["open_fds"] + FLAT,
        "threads flat": report["end"]["threads"] <= report["warm"]["threads"] + FLAT,
        # The cleanup keeps up under load: no upload outlives its age by more than one cleanup period
        # (and a few seconds of sampling), and after the load every one is gone.
        "cache bounded by its cleanup": cache["oldest_file_during_s"] <= older_than + every + 3,
        "cache emptied by its cleanup": cache["after_cleanup"]["files"] == 0,
    }
