"""Health checks and Prometheus metrics for the page, with or without Ray Serve.

`GET /healthz` answers 200 while the server runs; `GET /readyz` answers 503 with the reason until the
default model has loaded and answered a photo, then 200; `GET /metrics` is Prometheus's text format from
`prometheus_client`. Each page has a registry of its own (`PageMetrics`), so two pages in one process (the
tests) count apart.

Labels take only values the server chose: an endpoint from the page's code, a model the server offers
(anything else is counted as "unknown") and an outcome. No photo, file name, session or client address is
ever a label or a log line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

PREFIX = "image_classifier"
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds: a live frame (tens of ms) up to a model's first load (a minute or two)."""
LIVE_WINDOW = 2.0
"""A live stream counts as running while it sent a frame within this many seconds."""
OUTCOMES = ("ok", "refused", "busy", "error")
"""ok: answered; refused: the request was at fault (a bad file, no photo, a model not offered);
busy: turned away because the servers were full; error: the server could not answer."""


class Busy(RuntimeError):
    """The servers are full: the request was turned away at once rather than queued (the message says so)."""


def outcome_of(error: BaseException | None, refusals: tuple[type[BaseException], ...] = (ValueError,)) -> str:
    """The outcome label of a request that raised `error` (None: answered). The page turns errors into
    messages `from None`, and the original is still their `__context__`: `Busy` anywhere in the chain is the
    servers' being full; a first error that is a `ValueError` (a bad file, a model not offered) or one of
    `refusals` is the request's fault; anything else an error."""
    if error is None:
        return "ok"
    chain = [error]
    while chain[-1].__context__ is not None and len(chain) < 8:
        chain.append(chain[-1].__context__)
    if any(isinstance(link, Busy) for link in chain):
        return "busy"
    return "refused" if isinstance(chain[-1], (ValueError, *refusals)) else "error"


class PageMetrics:
    """What /metrics shows for one page: requests by endpoint, model and outcome, their durations, and at
    each scrape the photos waiting, the models loaded with their memory, and the live streams running.

    `models()` gives (name, memory in MB) of the loaded models, `waiting()` the requests in the page's queue;
    `offered` are the model names that may appear as a label; `refusals` are the exceptions, besides
    `ValueError`, that say the request was at fault (the page's own refusals, in words).
    """

    def __init__(
        self,
        offered: list[str],
        *,
        models: Callable[[], list[tuple[str, float]]] = list,
        waiting: Callable[[], int] = lambda: 0,
        refusals: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.offered = set(offered)
        self.refusals = refusals
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests answered, by endpoint, model and outcome (ok, refused, busy, error).",
            ["endpoint", "model", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from a request's start to its answer, by endpoint.",
            ["endpoint"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self._models, self.queue_length = models, waiting
        self._streams: dict[str, float] = {}
        self._streams_lock = threading.Lock()
        self.registry.register(_Gauges(self))

    def model_label(self, name: object) -> str:
        return name if isinstance(name, str) and name in self.offered else "unknown"

    @contextmanager
    def request(self, endpoint: str, model: object) -> Iterator[None]:
        """Count and time the request run inside; its outcome is read from the exception it raises."""
        started = time.perf_counter()
        try:
            yield
        except BaseException as e:
            self.count(endpoint, model, outcome_of(e, self.refusals), started)
            raise
        self.count(endpoint, model, "ok", started)

    def count(self, endpoint: str, model: object, outcome: str, started: float | None = None) -> None:
        self.requests.labels(endpoint, self.model_label(model), outcome).inc()
        if started is not None:
            self.duration.labels(endpoint).observe(time.perf_counter() - started)

    def live_frame(self, stream: str) -> None:
        """A live stream (an opaque id, never shown) sent a frame now."""
        now = time.monotonic()
        with self._streams_lock:
            self._streams[stream] = now
            for old in [key for key, seen in self._streams.items() if now - seen > LIVE_WINDOW]:
                del self._streams[old]

    def live_streams(self) -> int:
        now = time.monotonic()
        with self._streams_lock:
            return sum(now - seen <= LIVE_WINDOW for seen in self._streams.values())

    def text(self) -> bytes:
        return generate_latest(self.registry)


class _Gauges:
    """The gauges read at each scrape: nothing to keep up to date between scrapes."""

    def __init__(self, metrics: PageMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []  # no fixed names to check at registration: they are all made in collect()

    def collect(self):
        waiting = GaugeMetricFamily(f"{PREFIX}_photos_waiting", "Requests waiting in the page's queue.")
        waiting.add_metric([], self.metrics.queue_length())
        loaded = self.metrics._models()
        count = GaugeMetricFamily(f"{PREFIX}_models_loaded", "Models loaded and ready to answer.")
        count.add_metric([], len(loaded))
        memory = GaugeMetricFamily(
            f"{PREFIX}_model_memory_bytes", "Memory each loaded model is counted for.", labels=["model"]
        )
        for name, memory_mb in loaded:
            memory.add_metric([self.metrics.model_label(name)], memory_mb * 2**20)
        streams = GaugeMetricFamily(f"{PREFIX}_live_streams", "Live webcam streams running.")
        streams.add_metric([], self.metrics.live_streams())
        return [waiting, count, memory, streams]


def health_routes(metrics: PageMetrics, not_ready: Callable[[], str | None]) -> list[BaseRoute]:
    """/healthz, /readyz and /metrics, for a FastAPI app's `routes` (Gradio's `app_kwargs`).

    `not_ready()` says why the server can't answer photos yet, or None once it can."""

    def healthz(request: Request) -> Response:
        return PlainTextResponse("ok\n")

    def readyz(request: Request) -> Response:
        try:
            reason = not_ready()
        except Exception as e:  # noqa: BLE001 (whatever broke: not ready, and why)
            reason = f"readiness could not be checked ({type(e).__name__})"
        if reason:
            return PlainTextResponse(f"not ready: {reason}\n", status_code=503)
        return PlainTextResponse("ready\n")

    def prometheus(request: Request) -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
    ]


def loaded_models(models) -> Callable[[], list[tuple[str, float]]]:
    """`PageMetrics`'s `models` for a model set (a `ModelSet`, or the page's remote models): the loaded
    ones, with the memory each is counted for."""

    def loaded() -> list[tuple[str, float]]:
        return [(name, entry.memory_mb) for name in models.names if (entry := models.measured(name))]

    return loaded


def model_set_readiness(models) -> Callable[[], str | None]:
    """`not_ready` for a `ModelSet` of classifiers timed on a photo when loaded (`classifier_set`): ready once
    the default model has loaded and answered its timing photo."""

    def not_ready() -> str | None:
        loaded = models.measured(models.default)
        if loaded is None:
            return f"the default model {models.default} is loading"
        if loaded.ms_per_photo is None:
            return f"the default model {models.default} loaded but could not answer a photo"
        return None

    return not_ready
