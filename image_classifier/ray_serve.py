"""The page's models on Ray Serve replicas: the same calls, answered on other processes or machines.

`ModelReplica` is a Serve deployment: each replica loads the model set once (the default model at start,
the others on first use, within the memory budget) and runs forward passes; where it has a GPU, passes from
concurrent requests are batched (`@serve.batch`). `RemoteModels` is the page's side: it offers what a
`ModelSet` of classifiers offers (`check`, `get`, `measured`...) and each model it hands out, a
`RemoteClassifier`, answers like a `Classifier` (`predict`, `analyse`, `preprocess`/`forward`/`postprocess`
for the Live and Many photos tabs), so no tab knows which it has. Photos are decoded and preprocessed in the
page's process, exactly as `Classifier` does; only tensors travel to the replicas and probabilities back.
The analysis with heatmaps sends the photo's bytes instead: the replica runs `Classifier.analyse` and sends
back the maps of the top classes, made there (Grad-CAM's too).

A request whose replica dies under it is sent again, once, to another replica; a full deployment
(`max_queued_requests`) turns requests away at once with `Busy`, in words. Ray is optional
(requirements-ray.txt) and imported only by the --serve path: this module imports it at the top.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

from classifier import Analysis, Classifier, ClassProbabilities, ModelSet
from image_classifier.decoding import ImageInput, decode_image
from image_classifier.heatmaps import Heatmaps
from image_classifier.metrics import Busy
from image_classifier.model_set import LoadedModel, ModelNotOffered, refusal
from image_classifier.serve_options import ServeOptions
from image_classifier.tuner import EngineChoice

logger = logging.getLogger(__name__)

MAX_BATCH_SIZE = 8
"""Forward passes a GPU replica runs as one batch."""
BATCH_WAIT_S = 0.01
"""How long a GPU replica waits for a batch to fill."""
CALL_TIMEOUT_S = 300.0
"""Longest wait for one replica call: a model's first load on a replica (download, conversion) included."""
QUIET_SERVE = {"enable_access_log": False, "log_level": "WARNING"}
"""Serve's logs: warnings and errors only, and no access log (its lines name the files a page serves, and
so an upload's name)."""
QUIET_WORKERS = {"GRPC_VERBOSITY": "ERROR"}
"""gRPC's informational lines about fork() in every Ray worker."""
BUSY = (
    "The server is busy: every model replica has as many photos waiting as it takes. Please try again in a "
    "moment."
)


@dataclass(frozen=True)
class ModelInfo:
    """What the page needs of a model loaded on the replicas: its preprocessing (so photos are decoded and
    transformed in the page's process exactly as a local `Classifier` does), labels and figures."""

    name: str
    labels: list[str]
    transform: Callable
    decode_side: int | None
    max_pixels: int
    engine_choice: EngineChoice
    no_heatmaps_reason: str | None
    memory_mb: float
    ms_per_photo: float | None
    methods: tuple[str, ...]
    """The heatmap methods, the default first (`Classifier.methods`)."""
    method_seconds: dict[str, float | None]
    """About how long each method takes for one class on a replica, where known."""


@dataclass(frozen=True)
class RemoteAnalysis:
    """`Classifier.analyse`'s answer without the photo: top classes, every class's probability, and the
    maps of the top classes by the default method."""

    predictions: dict[str, float]
    probabilities: np.ndarray
    maps: dict[str, np.ndarray] | None
    method: str


def describe(name: str, loaded: LoadedModel[Classifier]) -> ModelInfo:
    model = loaded.model
    return ModelInfo(
        name,
        model.labels,
        model.transform,
        model._decode_side,
        model.max_pixels,
        model.engine_choice,
        model.no_heatmaps_reason,
        loaded.memory_mb,
        loaded.ms_per_photo,
        model.methods,
        {method: model.method_seconds(method, loaded.ms_per_photo) for method in model.methods},
    )


class ModelReplica:
    """One replica: the model set, loaded once. `load()` builds the set (it must pickle: a module-level
    function or a functools.partial of one); `threads` caps the forward passes' CPU threads; `batching`
    (default: where the replica has a GPU) groups concurrent forward passes into one."""

    def __init__(
        self,
        load: Callable[[], ModelSet[Classifier]],
        threads: int | None = None,
        batching: bool | None = None,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.threads = threads
        self.models = load()
        self.models.load_default()  # a failed load fails the replica's start: it never gets traffic
        self.unhealthy = self._default_fault()
        if self.unhealthy:
            raise RuntimeError(self.unhealthy)
        self.batching = torch.cuda.is_available() if batching is None else batching
        self._one_at_a_time = asyncio.Lock()  # on CPU the threads cap means something only one pass at a time

    def _default_fault(self) -> str | None:
        loaded = self.models.measured(self.models.default)
        if loaded is None:
            return f"the default model {self.models.default} is not loaded"
        if loaded.ms_per_photo is None:
            return f"the default model {self.models.default} loaded but could not answer a photo"
        return None

    def check_health(self) -> None:
        """Serve's health check: a replica whose default model can't answer is replaced."""
        fault = self._default_fault()
        if fault:
            raise RuntimeError(fault)

    async def describe(self, name: str) -> ModelInfo:
        """The model's preprocessing and figures, loading it here first if need be."""
        loaded = await asyncio.to_thread(self.models.entry, name)
        return describe(name, loaded)

    async def loaded(self) -> list[tuple[str, float]]:
        """(name, memory in MB) of the models this replica holds."""
        return [
            (name, entry.memory_mb) for name in self.models.loaded() if (entry := self.models.measured(name))
        ]

    async def forward(self, name: str, batch: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a preprocessed batch, as `Classifier.forward`."""
        if self.batching:
            return await self._batched((name, batch))
        async with self._one_at_a_time:
            return await asyncio.to_thread(self._forward, name, batch)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, requests: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor | Exception]:
        return await asyncio.to_thread(self._forward_many, requests)

    def _forward(self, name: str, batch: torch.Tensor) -> torch.Tensor:
        return self.models.get(name).forward(batch, threads=self.threads)

    def _forward_many(self, requests: list[tuple[str, torch.Tensor]]) -> list[torch.Tensor | Exception]:
        """Each model's requests in one pass where their shapes agree; a failure fails only its own."""
        answers: list[torch.Tensor | Exception | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, (name, batch) in enumerate(requests):
            groups.setdefault((name, tuple(batch.shape[1:])), []).append(i)
        for (name, _), members in groups.items():
            try:
                joined = torch.cat([requests[i][1] for i in members])
                probabilities = self._forward(name, joined)
            except Exception:  # noqa: BLE001 (one at a time: only the bad request gets its error)
                for i in members:
                    try:
                        answers[i] = self._forward(name, requests[i][1])
                    except Exception as e:  # noqa: BLE001 (handed back to that request)
                        answers[i] = e
                continue
            start = 0
            for i in members:
                size = requests[i][1].shape[0]
                answers[i], start = probabilities[start : start + size], start + size
        return answers

    async def analyse(self, name: str, image: bytes, top_k: int) -> RemoteAnalysis:
        """`Classifier.analyse` of the photo's bytes, with the maps of its top classes made here."""
        async with self._one_at_a_time:
            return await asyncio.to_thread(self._analyse, name, image, top_k)

    def _analyse(self, name: str, image: bytes, top_k: int) -> RemoteAnalysis:
        analysis = self.models.get(name).analyse(image, top_k=top_k, threads=self.threads)
        probabilities = analysis.probabilities.array
        if analysis.heatmaps is None:
            return RemoteAnalysis(analysis.predictions, probabilities, None, "")
        maps = analysis.heatmaps.cams(list(analysis.predictions))
        return RemoteAnalysis(analysis.predictions, probabilities, maps, analysis.heatmaps.method)

    async def maps(self, name: str, image: bytes, method: str, labels: list[str]) -> dict[str, np.ndarray]:
        """The maps of any of the model's classes by any of its methods (the photo analysed again here)."""
        async with self._one_at_a_time:
            return await asyncio.to_thread(self._maps, name, image, method, labels)

    def _maps(self, name: str, image: bytes, method: str, labels: list[str]) -> dict[str, np.ndarray]:
        analysis = self.models.get(name).analyse(image, top_k=1, threads=self.threads)
        return analysis.heatmaps.cams(labels, method)


class RemoteMaps:
    """A `Heatmaps` source for a photo analysed on a replica: the top classes' maps by the default method
    as the analysis brought them, any other class or method asked of a replica (which analyses the photo
    again: it keeps no photos). Holds the photo's bytes for that, as long as the page keeps the maps."""

    def __init__(self, classifier: RemoteClassifier, photo: bytes, analysis: RemoteAnalysis) -> None:
        self.classifier, self.photo, self.method = classifier, photo, analysis.method
        self.known = {classifier.label_index[label]: cam for label, cam in (analysis.maps or {}).items()}

    def __call__(self, method: str, indices: list[int]) -> np.ndarray:
        if method == self.method and all(i in self.known for i in indices):
            return np.stack([self.known[i] for i in indices])
        labels = [self.classifier.labels[i] for i in indices]
        maps = self.classifier.replicas.call("maps", self.classifier.name, self.photo, method, labels)
        return np.stack([maps[label] for label in labels])


class Replicas:
    """Calls to the model deployment, from any thread of the page: unwrapped errors, a retry on another
    replica when the one answering dies, and `Busy` when the deployment is full."""

    def __init__(self, handle, timeout_s: float = CALL_TIMEOUT_S) -> None:
        self.handle = handle
        self.timeout_s = timeout_s

    def call(self, method: str, *args) -> Any:
        for attempt in (1, 2):
            try:
                return getattr(self.handle, method).remote(*args).result(timeout_s=self.timeout_s)
            except BackPressureError:
                raise Busy(BUSY) from None
            except (RayActorError, ReplicaUnavailableError) as e:
                if attempt == 2:
                    raise RuntimeError(
                        "The model replica answering this request stopped; so did a second."
                    ) from e
                logger.warning(
                    "A model replica stopped while answering (%s); asking another.", type(e).__name__
                )
            except RayTaskError as e:  # the replica's own exception (a bad photo, a failed load), as raised
                cause = e.cause if isinstance(e.cause, BaseException) else None
                if isinstance(cause, RayActorError) and attempt == 1:
                    continue
                raise (cause or e) from None
        raise AssertionError("unreachable")


class RemoteClassifier:
    """A `Classifier` whose forward passes run on the model replicas.

    Preprocessing and postprocessing are `Classifier`'s own methods, run here on the attributes they read
    (the transform, the decoding side, the labels), so a photo becomes the same tensor as it would locally.
    `threads` is accepted and left to the replicas (`--replica-threads`).
    """

    decode = Classifier.decode
    preprocess = Classifier.preprocess
    postprocess = Classifier.postprocess
    predict = Classifier.predict
    predict_batch = Classifier.predict_batch
    seen_region = Classifier.seen_region
    _check_top_k = Classifier._check_top_k

    device_decode_min_pixels = None
    """Photos are decoded on this process's CPU (`Classifier.preprocess`); only tensors travel."""

    def __init__(self, info: ModelInfo, replicas: Replicas) -> None:
        self.name, self.labels = info.name, info.labels
        self.transform, self._decode_side, self.max_pixels = info.transform, info.decode_side, info.max_pixels
        self.engine_choice = info.engine_choice
        self.engine = info.engine_choice.engine
        self.no_heatmaps_reason = info.no_heatmaps_reason
        self.memory_mb = info.memory_mb
        self.methods, self._method_seconds = info.methods, info.method_seconds
        self.label_index = {label: i for i, label in enumerate(self.labels)}
        self.replicas = replicas

    def method_seconds(self, method: str, ms_per_photo: float | None = None) -> float | None:
        """`Classifier.method_seconds`, as the replica reckoned it when it described the model."""
        return self._method_seconds.get(method)

    def forward(self, batch: torch.Tensor, *, threads: int | None = None) -> torch.Tensor:
        return self.replicas.call("forward", self.name, batch.contiguous())

    def analyse(self, image: ImageInput, top_k: int = 5, *, threads: int | None = None) -> Analysis:
        """`Classifier.analyse`: the photo decoded here (the page shows it), analysed on a replica."""
        self._check_top_k(top_k)
        rgb, full_size = decode_image(image, max_pixels=self.max_pixels, min_side=self._decode_side)
        photo = photo_bytes(image)
        answer = self.replicas.call("analyse", self.name, photo, top_k)
        probabilities = ClassProbabilities(self.label_index, answer.probabilities)
        if answer.maps is None:
            return Analysis(answer.predictions, rgb, None, probabilities)
        region = self.seen_region(rgb.size)
        maps_of = RemoteMaps(self, photo, answer)
        heatmaps = Heatmaps(
            maps_of, self.label_index, region, full_size, method=answer.method, methods=self.methods
        )
        return Analysis(answer.predictions, rgb, heatmaps, probabilities)


def photo_bytes(image: ImageInput) -> bytes:
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        return Path(image).read_bytes()
    raise TypeError("the analysis on a replica takes a photo's bytes or its file, not a decoded image")


class RemoteModels:
    """The page's model set when the models run on Serve replicas: `ModelSet`'s interface, with each model
    described by a replica once (its first description loads it there) and kept here."""

    def __init__(self, replicas: Replicas, names: Sequence[str], default: str, memory_mb: float) -> None:
        self.replicas = replicas
        self.names, self.default, self.memory_mb = list(names), default, memory_mb
        self._known: dict[str, LoadedModel[RemoteClassifier]] = {}
        self._lock = threading.Lock()
        self._default_error: str | None = None
        self._waiting_for_default = threading.Thread(target=self._ask_for_default, daemon=True)
        self._waiting_for_default.start()

    def _ask_for_default(self) -> None:
        while self.default not in self._known:
            try:
                self.get(self.default)
            except Exception as e:  # noqa: BLE001 (said by /readyz; asked again)
                self._default_error = str(e) or type(e).__name__
                threading.Event().wait(1.0)

    def not_ready(self) -> str | None:
        """Why the page can't answer photos yet (for /readyz), or None."""
        loaded = self.measured(self.default)
        if loaded is None:
            why = f": {self._default_error}" if self._default_error else ""
            return f"the default model {self.default} is loading on the model replicas{why}"
        if loaded.ms_per_photo is None:
            return f"the default model {self.default} loaded but could not answer a photo"
        return None

    def check(self, name: object) -> str:
        if isinstance(name, str) and name in self.names:
            return name
        raise ModelNotOffered(refusal(name, self.names))

    def entry(self, name: object) -> LoadedModel[RemoteClassifier]:
        name = self.check(name)
        with self._lock:
            if name in self._known:
                return self._known[name]
        info: ModelInfo = self.replicas.call("describe", name)
        entry = LoadedModel(RemoteClassifier(info, self.replicas), info.memory_mb, info.ms_per_photo)
        with self._lock:
            return self._known.setdefault(name, entry)

    def get(self, name: object) -> RemoteClassifier:
        return self.entry(name).model

    def load_default(self) -> None:
        """Nothing to wait for: the replicas load the default model as they start, and the page answers
        meanwhile (/readyz says when the model can)."""

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._known

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._known)

    def measured(self, name: str) -> LoadedModel[RemoteClassifier] | None:
        with self._lock:
            return self._known.get(name)

    def memory_used_mb(self) -> float:
        with self._lock:
            return sum(entry.memory_mb for entry in self._known.values())


# --- deployments ---------------------------------------------------------------------------------


def model_deployment(load: Callable[[], ModelSet[Classifier]], options: ServeOptions):
    """The model replicas as a bound Serve deployment (a health check every 5 s)."""
    batching = options.replica_gpus > 0
    # On CPU a replica runs one pass at a time: one more waiting in it keeps it busy between passes.
    ongoing = 2 * MAX_BATCH_SIZE if batching else 2
    config: dict[str, Any] = {
        "name": "models",
        "ray_actor_options": {"num_cpus": options.replica_cpus, "num_gpus": options.replica_gpus},
        "max_ongoing_requests": ongoing,
        "max_queued_requests": options.max_queued,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
        "logging_config": QUIET_SERVE,
    }
    if options.autoscale:
        low, high = options.autoscale
        config["autoscaling_config"] = {
            "min_replicas": low,
            "max_replicas": high,
            "target_ongoing_requests": options.target_ongoing,
        }
    else:
        config["num_replicas"] = options.replicas
    return serve.deployment(ModelReplica, **config).bind(load, options.replica_threads, batching)


@serve.ingress()
class PageIngress:
    """The page, built around `RemoteModels` and mounted on a FastAPI app (`gr.mount_gradio_app`) that
    Serve's HTTP proxy sends every request to. One replica: Gradio's queue and sessions live in its memory.

    `build(models)` returns that FastAPI app (it must pickle: a module-level function or a partial of one).
    """

    async def __init__(
        self,
        models_handle,
        build: Callable[[RemoteModels], Any],
        names: list[str],
        default: str,
        memory_mb: float,
    ) -> None:
        models = RemoteModels(Replicas(models_handle), names, default, memory_mb)
        # In a thread: building the page may ask a replica about a model, which this event loop serves.
        self.asgi_app = await asyncio.to_thread(build, models)

    def __serve_build_asgi_app__(self):
        return self.asgi_app


def page_application(
    load: Callable[[], ModelSet[Classifier]],
    build: Callable[[RemoteModels], Any],
    names: list[str],
    default: str,
    memory_mb: float,
    options: ServeOptions,
):
    """The whole Serve application: one page replica in front of the model replicas."""
    page = serve.deployment(
        PageIngress,
        name="page",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=1000,  # Gradio queues and limits the page's own requests
        logging_config=QUIET_SERVE,
    )
    return page.bind(model_deployment(load, options), build, names, default, memory_mb)


def start(address: str | None, host: str, port: int, root: str) -> bool:
    """Connect to `address` (or $RAY_ADDRESS), else start a local Ray on this machine's cores, with `root`
    (this project) on its workers' Python path; then Serve, its HTTP proxy on host:port. On a cluster the
    project comes with the job (`ray job submit --working-dir .`) or the nodes' image. True where Ray was
    started here."""
    import ray

    from image_classifier.ray_batch import QUIET_RAY

    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        # Ray's processes, started from here, inherit this environment (a runtime_env would need Ray's
        # runtime-env agent, which takes tens of seconds to start on a busy small machine).
        for name, value in QUIET_WORKERS.items():
            os.environ.setdefault(name, value)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port}, logging_config=QUIET_SERVE)
    return address is None
