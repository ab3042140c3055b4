"""Gradio 6.31's image input sends "change" twice when a photo replaces another: two requests, in the same
tick, with the same file (the second comes from the component's own effect that sees the new value as a
new object; the first photo of a page, an example and Clear send it once). Both would run the
model. `Repeats` lets the tab's event run once: the second request, with the same inputs for the same
session, waits for the first and answers with what it answered (the Photo tab: the same bars and state,
so that the heatmap event chained after either finds this photo) or with nothing (the Compare tab).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

Answer = TypeVar("Answer")

REPEAT_WINDOW_S = 3.0
"""How long after the first has finished its twin still counts as a repeat. The twin joins the queue right
behind it: it starts with it (two requests run at once) and waits, or starts once a request ahead has ended.
Short, so that the same photo chosen again more than 3 s later (after an error, say) runs again."""


@dataclass
class _Run:
    inputs: Hashable
    done: threading.Event = field(default_factory=threading.Event)
    finished_at: float | None = None
    answer: Any = None
    failed: bool = False


class Repeats:
    """Each session's latest inputs to one event: a request with the same inputs, while that run is going
    or within `window_s` of its end, is a repeat. Only the latest inputs count, so a photo chosen again
    after another one (or after Clear) is shown again."""

    def __init__(self, window_s: float = REPEAT_WINDOW_S):
        self.window_s = window_s
        self._lock = threading.Lock()
        self._latest: dict[str, _Run] = {}

    def run(
        self,
        session: str | None,
        inputs: Hashable,
        work: Callable[[], Answer],
        twin: Callable[[Answer | None], Answer],
        keep_answer: bool = True,
    ) -> Answer:
        """`work()`; but for the twin of a request going or just ended (the same session and inputs), once
        that one has ended, `twin(its answer)`, or `twin(None)` where it failed (or `keep_answer` is False:
        the answer isn't kept for the twin). No session: `work()`."""
        if session is None:
            return work()
        with self._lock:
            self._forget_finished(time.monotonic() - self.window_s)
            run = self._latest.get(session)
            repeat = run is not None and run.inputs == inputs
            if not repeat:
                run = self._latest[session] = _Run(inputs)
        if repeat:
            run.done.wait()
            return twin(None if run.failed else run.answer)
        try:
            answer = work()
            if keep_answer:
                run.answer = answer
            return answer
        except BaseException:
            run.failed = True
            raise
        finally:
            run.finished_at = time.monotonic()
            run.done.set()

    def __len__(self) -> int:
        """Sessions remembered (those whose latest run is going or ended within the window)."""
        with self._lock:
            self._forget_finished(time.monotonic() - self.window_s)
            return len(self._latest)

    def _forget_finished(self, before: float) -> None:
        gone = [
            key
            for key, run in self._latest.items()
            if run.finished_at is not None and run.finished_at < before
        ]
        for key in gone:
            del self._latest[key]
