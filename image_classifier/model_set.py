"""The models a server offers: each loaded on first use, kept while memory allows, least recently used
out first.

A name is checked against the offered names before anything else happens, so a client can never make the
server download or build a model it does not offer. Loads run one at a time (each model is loaded once, and
two big downloads never add up), outside the lock that lookups take: requests for models already loaded
never wait for a load. A request holds its own reference to the model it got, so an eviction never pulls a
model from under a running request; the memory comes back when the last such request ends.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from image_classifier.allocator import release_memory
from image_classifier.catalogue import ModelLoadError

M = TypeVar("M")

DEFAULT_MODEL_MEMORY_MB = 6000
"""Memory the loaded models may take together, in MB: on a 16 GB machine this leaves room for Python,
PyTorch, OpenVINO and Gradio (about 1 GB), the requests in flight, and the passing peak while a model is
converted for the fast engine."""

logger = logging.getLogger(__name__)


class ModelNotOffered(ValueError):
    """A model name this server does not offer: refused before anything is looked up or loaded."""


def refusal(name: object, offered: list[str]) -> str:
    """Why `name` is refused, in words, with the names that would work."""
    choices = ", ".join(offered)
    if name is None or (isinstance(name, str) and not name.strip()):
        return f"Choose a model: this server offers {choices}."
    if not isinstance(name, str):
        return f"A model is chosen by its name, not by a {type(name).__name__}: choose one of {choices}."
    shown = repr(name) if len(name) <= 60 else repr(name[:57] + "...")
    return f"This server doesn't offer the model {shown}. Choose one of: {choices}."


@dataclass
class LoadedModel(Generic[M]):
    model: M
    memory_mb: float
    """What this model is counted for against the memory budget."""
    ms_per_photo: float | None
    """Measured on this machine when it was loaded; None where no measurement was asked for."""


class ModelSet(Generic[M]):
    """Named models, loaded by their `loaders` on first use and kept within `memory_mb`.

    `expected_mb(name)` is a model's memory before it is loaded (to make room first), `memory_mb_of(model)`
    once loaded. `timed(model)` is run once to warm the model up and three times more to measure it (its
    median wall time is the model's ms per photo). The `default` model is loaded by `load_default()` and
    never evicted: it answers the API's `/predict`.
    """

    def __init__(
        self,
        loaders: Mapping[str, Callable[[], M]],
        *,
        default: str | None = None,
        memory_mb: float = DEFAULT_MODEL_MEMORY_MB,
        expected_mb: Callable[[str], float] = lambda name: 0.0,
        memory_mb_of: Callable[[M], float] = lambda model: 0.0,
        timed: Callable[[M], object] | None = None,
    ) -> None:
        if not loaders:
            raise ValueError("a ModelSet needs at least one model")
        self.names = list(loaders)
        self.default = self.names[0] if default is None else default
        if self.default not in loaders:
            raise ValueError(f"the default model {self.default!r} is not among {self.names}")
        if memory_mb <= 0:
            raise ValueError(f"memory_mb must be positive, not {memory_mb}")
        self.memory_mb = memory_mb
        self._loaders = dict(loaders)
        self._expected_mb = expected_mb
        self._memory_mb_of = memory_mb_of
        self._timed = timed
        self._loaded: OrderedDict[str, LoadedModel[M]] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()  # guards _loaded; held for lookups, never during a load
        self._load_lock = threading.Lock()  # one load at a time

    @classmethod
    def of(cls, models: Mapping[str, M], **options) -> ModelSet[M]:
        """A set of models that are already loaded (each loader hands back the same object)."""
        return cls({name: (lambda model=model: model) for name, model in models.items()}, **options)

    def check(self, name: object) -> str:
        """`name` itself if this set offers it; otherwise `ModelNotOffered`, saying which are offered."""
        if isinstance(name, str) and name in self._loaders:
            return name
        raise ModelNotOffered(refusal(name, self.names))

    def get(self, name: object) -> M:
        """The model called `name`, loaded now if it isn't yet (`ModelLoadError` if that fails)."""
        return self.entry(name).model

    def entry(self, name: object) -> LoadedModel[M]:
        """`get`, with what was measured when the model was loaded."""
        name = self.check(name)
        with self._lock:
            if name in self._loaded:
                self._loaded.move_to_end(name)
                return self._loaded[name]
        with self._load_lock:
            with self._lock:  # loaded by the request this one waited for?
                if name in self._loaded:
                    self._loaded.move_to_end(name)
                    return self._loaded[name]
            self._make_room(name, self._expected_mb(name))
            model = self._loaders[name]()
            loaded = LoadedModel(model, self._memory_mb_of(model), self._measure(name, model))
            with self._lock:
                self._loaded[name] = loaded
            self._make_room(name, 0.0)  # the estimate before loading may have been low
            return loaded

    def load_default(self) -> M:
        """Load the default model now (a server does this before it starts listening)."""
        return self.get(self.default)

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return name in self._loaded

    def loaded(self) -> list[str]:
        """Names of the loaded models, least recently used first."""
        with self._lock:
            return list(self._loaded)

    def measured(self, name: str) -> LoadedModel[M] | None:
        """What was measured of `name` when it was loaded, without loading it or counting it as used."""
        with self._lock:
            return self._loaded.get(name)

    def memory_used_mb(self) -> float:
        with self._lock:
            return sum(entry.memory_mb for entry in self._loaded.values())

    def _make_room(self, name: str, incoming_mb: float) -> None:
        """Evict the least recently used models (never `name`, never the default) until `incoming_mb` more
        fits; refuse `name` if it cannot fit even then."""
        evicted: list[LoadedModel[M]] = []
        with self._lock:
            pinned = {self.default, name}
            kept_mb = sum(e.memory_mb for n, e in self._loaded.items() if n in pinned)
            if incoming_mb and kept_mb + incoming_mb > self.memory_mb:
                raise ModelLoadError(
                    f"{name} needs about {incoming_mb:,.0f} MB of memory: more than this server keeps for "
                    f"models ({self.memory_mb:,.0f} MB, of which the default model {self.default} holds "
                    f"{kept_mb:,.0f} MB). Choose a smaller model, or start the server with more "
                    "--model-memory."
                )
            used = sum(e.memory_mb for e in self._loaded.values())
            for victim in [n for n in self._loaded if n not in pinned]:
                if used + incoming_mb <= self.memory_mb:
                    break
                used -= self._loaded[victim].memory_mb
                evicted.append(self._loaded.pop(victim))
        if evicted:
            del evicted
            release_memory()

    def _measure(self, name: str, model: M) -> float | None:
        """The median milliseconds of `timed(model)`, or None where it fails: a model whose timing photo
        gives an error (a NaN answer, say) still loads, and each request gets that error in words."""
        if self._timed is None:
            return None
        times = []
        try:
            self._timed(model)  # warm-up: first-call allocations, lazy compilation
            for _ in range(3):
                started = time.perf_counter()
                self._timed(model)
                times.append((time.perf_counter() - started) * 1000)
        except Exception as e:  # noqa: BLE001 (any model's failure: reported per request, in words)
            logger.warning("Could not time %s on the timing photo (%s): its card shows no time.", name, e)
            return None
        return statistics.median(times)
