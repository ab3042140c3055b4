"""Concurrent requests share forward passes: when several callers' photos wait for the model, they go through
it together, in one batch.

No thread of its own and no waiting for company: a caller that finds the model idle runs its own photo at
once (a lone request is not slowed); callers that arrive while a pass runs queue up, and when it ends the
first of them runs everyone queued so far (up to `max_rows` images) in one pass. Each caller gets its own
rows back, so one photo's bad answer spoils no other's. The page, the API and any server share it by calling
the classifier (`Classifier.share_forward_passes`, CUDA only). Off by default: on an H200, 32 threads calling
`Classifier.predict` on 640×480 JPEGs got 305-324 images/s with it against 391 without (BENCHMARKS.md,
section 5): each request's own decoding, not the model, limits them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

R = TypeVar("R")

DEFAULT_MAX_ROWS = 32


@dataclass
class _Request:
    batch: torch.Tensor
    result: object = None
    error: BaseException | None = None
    done: bool = False
    lead: bool = False
    woken: threading.Event = field(default_factory=threading.Event)


class SharedForward(Generic[R]):
    """`run(batch) -> results` shared between threads. `run` takes the callers' batches concatenated (and
    padded by repeating the last row to a power of two, so a graph-captured model sees a few shapes) and
    returns a tensor or tuple of tensors whose first dimension is the batch's; each caller gets its rows.

    `passes` and `rows` count what ran (for the benchmarks and tests)."""

    def __init__(self, run: Callable[[torch.Tensor], R], max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.run, self.max_rows = run, max_rows
        self._lock = threading.Lock()
        self._queue: list[_Request] = []
        self._running = False
        self.passes = 0
        self.rows = 0

    def __call__(self, batch: torch.Tensor) -> R:
        request = _Request(batch)
        with self._lock:
            self._queue.append(request)
            leading = not self._running
            self._running = True
        if not leading:
            request.woken.wait()
            if request.done:  # run in another caller's pass
                return _outcome(request)
        self._lead()
        return _outcome(request)

    def _lead(self) -> None:
        """Run one pass for the queue's head (this caller's request and those that waited with it), then hand
        the lead to the next waiting caller, if any."""
        with self._lock:
            taken, rows = [], 0
            for request in self._queue:
                if taken and (
                    rows + len(request.batch) > self.max_rows or not _compatible(taken[0], request)
                ):
                    break
                taken.append(request)
                rows += len(request.batch)
            del self._queue[: len(taken)]
        try:
            results = self._pass([request.batch for request in taken])
            for request, result in zip(taken, results, strict=True):
                request.result = result
        except BaseException as e:  # noqa: BLE001 (every caller of the pass gets the error)
            for request in taken:
                request.error = e
        with self._lock:
            self.passes += 1
            self.rows += rows
            for request in taken:
                request.done = True
                request.woken.set()
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].woken.set()
            else:
                self._running = False

    def _pass(self, batches: list[torch.Tensor]) -> list:
        if len(batches) == 1:
            return [self.run(batches[0])]
        device = batches[0].device
        joined = torch.cat([batch.to(device) for batch in batches])
        count = len(joined)
        padded = min(1 << (count - 1).bit_length(), max(self.max_rows, count))
        if padded > count:
            joined = torch.cat([joined, joined[-1:].expand(padded - count, *joined.shape[1:])])
        outputs = self.run(joined)
        results, start = [], 0
        for batch in batches:
            end = start + len(batch)
            results.append(_rows(outputs, start, end))
            start = end
        return results


def _outcome(request: _Request):
    if request.error is not None:
        raise request.error
    return request.result


def _compatible(first: _Request, other: _Request) -> bool:
    return first.batch.shape[1:] == other.batch.shape[1:] and first.batch.dtype == other.batch.dtype


def _rows(outputs, start: int, end: int):
    if isinstance(outputs, tuple):
        return tuple(output[start:end] for output in outputs)
    return outputs[start:end]
