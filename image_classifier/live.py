"""Classifying a webcam stream frame by frame: the step the page's Live tab runs on each frame.

The browser sends a JPEG frame every so often; the server answers the newest one it has and drops the
rest (Gradio keeps only the latest frame of a stream), so answers never queue up behind the camera.
Each frame goes through `answer_frame`: decode it (a frame that is missing or unreadable is skipped,
never an error that would end the stream), classify it, and keep the running figures the page shows
(`LiveFigures`). `PhotosFirst` keeps streams from starving the Photo tab: live frames use at most half the
cores and give way while a photo is being classified. Nothing here knows about Gradio.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from image_classifier.decoding import ImageError, ImageInput

if TYPE_CHECKING:  # classifier.py imports this package: no import back at run time
    from classifier import Classifier

RATE_WINDOW = 2.0
"""Seconds of answered frames the frames-per-second figure averages over."""
FRAME_THREADS = 1
"""Threads of a frame's forward pass. The page showing the stream and the server share the machine with
the model: on one thread the forward pass leaves them the other cores, and costs less CPU time per frame
than threads that wait on each other whenever one of them is preempted (bench/live.py measures both)."""
FRAMES_PER_SECOND_PER_SLOT = 20.0
"""Most live frames answered per second on each live slot while each stream has a slot of its own: as many
as the page sends (20 a second)."""
SHARED_FRAMES_PER_SECOND_PER_SLOT = 10.0
"""Most live frames answered per second on each live slot, all streams together, while more streams run
than there are slots: two streams on one slot get 5 a second each, so that streams on a small machine
leave it room for photos (and, the page pacing its frames by the answers, their browsers send fewer).
bench/live.py: with 20 here, a photo beside two streams took 1.67-1.73x its idle time; with 10, 1.32-1.54x;
with 6, 1.45x."""
READOUT_EVERY = 0.5
"""Seconds between updates of the readout: often enough to follow, slow enough to read."""


@dataclass(frozen=True)
class FrameAnswer:
    """One frame's top classes, and what the model took for it."""

    predictions: dict[str, float]
    """Label -> probability for the top classes, highest first."""
    model_ms: float
    """The forward pass, in milliseconds."""


class PhotosFirst:
    """How live frames share the machine with photos: photos first, live frames on half the cores.

    A stream would take every core it can get, and two streams would keep a small machine busy, so that a
    photo dropped into the Photo tab waits behind their frames. So live frames run one at a time per
    `live_slots` (by default half the cores, at least one: on 2 cores one frame at a time, on one thread,
    which leaves a core for the pages, the server and photos), and they give way to photos: the photo
    handlers run inside `photo()`, and a frame waits, in `frame()`, while a photo is being classified and
    `grace` seconds more (while its answer is encoded and sent). A frame that had to wait for a photo is
    stale by then, so `frame()` yields False and the stream drops it: the next one comes within a moment.
    Frames give way from the moment a photo's upload begins, too (`photo_coming()` and `photo_arrived()`,
    told by the server; any upload counts, and `max_wait` bounds what uploads can hold back): a photo waits
    for its upload, the page's event and the queue before its handler runs.
    Frames start at most `frames_per_second_per_slot` a second on each slot, and `shared_per_slot` while
    more streams run than there are slots: more streams get fewer frames each, rather than a photo getting
    less of the machine.
    While streams run, a photo's forward pass is capped to the cores the live frames leave (`photo()`
    yields the cap): the pages showing the streams keep capturing frames meanwhile, and a pass spread over
    every core stalls whenever one of its threads is preempted.
    """

    def __init__(
        self,
        live_slots: int | None = None,
        grace: float = 0.15,
        max_wait: float = 5.0,
        coming_for: float = 1.0,
        frames_per_second_per_slot: float = FRAMES_PER_SECOND_PER_SLOT,
        shared_per_slot: float = SHARED_FRAMES_PER_SECOND_PER_SLOT,
    ) -> None:
        cores = os.cpu_count() or 2
        self.live_slots = live_slots or max(1, cores // 2)
        self.frame_spacing = 1.0 / (frames_per_second_per_slot * self.live_slots)
        """Seconds between the starts of two frames, whichever streams they come from."""
        self.shared_frame_spacing = 1.0 / (shared_per_slot * self.live_slots)
        """The same while more streams run than there are slots."""
        self.photo_threads_while_streaming = max(1, cores - self.live_slots)
        self.grace = grace
        self.max_wait = max_wait
        self.coming_for = coming_for
        self._photos = 0
        self._uploads = 0
        self._photo_expected_until = -float("inf")
        self._frames = 0
        self._last_photo_end = -float("inf")
        self._last_frame_end = -float("inf")
        self._last_frame_start = -float("inf")
        self._streams: dict[Hashable, float] = {}  # stream -> when its last frame came
        self._changed = threading.Condition()

    @property
    def streaming(self) -> bool:
        """Whether a live frame ran within the last second (or runs now)."""
        return self._frames > 0 or time.monotonic() - self._last_frame_end < 1.0

    def photo_coming(self) -> None:
        """An upload has begun, a photo on its way, most likely: frames give way from now, not only once it
        is being classified. Each `photo_coming()` is followed by a `photo_arrived()`."""
        with self._changed:
            self._uploads += 1

    def photo_arrived(self) -> None:
        """An upload has ended (whatever it held): frames keep giving way until its photo has been
        classified, or for `coming_for` seconds if none comes (the page's event and the queue lie between)."""
        with self._changed:
            self._uploads = max(0, self._uploads - 1)
            self._photo_expected_until = time.monotonic() + self.coming_for

    @contextmanager
    def photo(self) -> Iterator[int | None]:
        """A photo's turn: yields the cap on its forward pass's threads (None: no stream runs, no cap)."""
        with self._changed:
            self._photos += 1
            threads = self.photo_threads_while_streaming if self.streaming else None
        try:
            yield threads
        finally:
            with self._changed:
                self._photos -= 1
                self._last_photo_end = time.monotonic()
                if not self._uploads:  # it came (or another did: a hint, not a ledger): the grace follows
                    self._photo_expected_until = -float("inf")
                self._changed.notify_all()

    def _spacing(self, stream: Hashable, now: float) -> float:
        """Seconds between frame starts now that `stream` sends one: more streams than slots share less."""
        self._streams[stream] = now
        for other, last in list(self._streams.items()):
            if now - last > 1.0:  # stopped
                del self._streams[other]
        return self.shared_frame_spacing if len(self._streams) > self.live_slots else self.frame_spacing

    @contextmanager
    def frame(self, stream: Hashable = None) -> Iterator[bool]:
        """A live frame of `stream` (its session, say) takes its turn: yields True when the frame may run,
        False when it waited for a photo, or an upload (then the stream should drop it, and it takes no turn).
        After `max_wait` seconds a frame runs anyway, so that a steady flow of photos slows the streams down
        without stopping them."""
        gave_way = False
        deadline = time.monotonic() + self.max_wait
        with self._changed:
            spacing = self._spacing(stream, time.monotonic())
            while True:
                now = time.monotonic()
                if now >= deadline:
                    gave_way = False
                    break
                if self._photos or self._uploads or now < self._photo_expected_until:
                    gave_way = True
                    until = deadline if self._photos or self._uploads else self._photo_expected_until
                elif now - self._last_photo_end < self.grace:
                    gave_way = True
                    until = self._last_photo_end + self.grace
                elif gave_way:  # stale by now: dropped at once, without taking a turn
                    self._last_frame_end = now  # the stream is still running
                    break
                elif self._frames >= self.live_slots:
                    until = deadline
                elif now < self._last_frame_start + spacing:
                    until = self._last_frame_start + spacing
                else:
                    break
                self._changed.wait(min(until, deadline) - now)
            if not gave_way:
                self._frames += 1
                self._last_frame_start = now
        if gave_way:
            yield False
            return
        try:
            yield True
        finally:
            with self._changed:
                self._frames -= 1
                self._last_frame_end = time.monotonic()
                self._changed.notify_all()


def answer_frame(
    classifier: Classifier,
    frame: ImageInput | None,
    *,
    top_k: int = 5,
    photos_first: PhotosFirst | None = None,
    stream: Hashable = None,
) -> FrameAnswer | None:
    """The top classes of one webcam frame (JPEG bytes or a PIL image), or None when there is nothing to
    answer: no frame (Gradio can send None, gradio-app/gradio#9837), an unreadable one, or one held back
    while a photo went first. Frames of any size, changing from one frame to the next, are fine. `stream`
    says whose frame it is (the rate is shared among streams)."""
    if frame is None:
        return None
    with photos_first.frame(stream) if photos_first else nullcontext(True) as fresh:
        if not fresh:
            return None
        try:
            batch = classifier.preprocess(classifier.decode(frame)).unsqueeze(0)
        except ImageError:
            return None
        start = time.perf_counter()
        probabilities = classifier.forward(batch, threads=FRAME_THREADS)
        model_ms = (time.perf_counter() - start) * 1000
    return FrameAnswer(classifier.postprocess(probabilities[0], top_k), model_ms)


class LiveFigures:
    """A stream's running figures: frames per second answered, the model's milliseconds per frame."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.frames = 0
        """Frames answered so far."""
        self.handled = 0
        """Frames the server has handled so far, answered or skipped (the page paces its frames by it)."""
        self.model_ms: float | None = None
        """The forward pass of the latest frames, smoothed."""
        self._answered: deque[float] = deque()
        self._last_readout = -float("inf")

    def record(self, answer: FrameAnswer) -> None:
        now = self.clock()
        self.frames += 1
        self._answered.append(now)
        while self._answered[0] < now - RATE_WINDOW:
            self._answered.popleft()
        ms = answer.model_ms
        self.model_ms = ms if self.model_ms is None else 0.8 * self.model_ms + 0.2 * ms

    @property
    def frames_per_second(self) -> float:
        """Answered frames per second over the last `RATE_WINDOW` seconds."""
        if len(self._answered) < 2:
            return 0.0
        span = self._answered[-1] - self._answered[0]
        return (len(self._answered) - 1) / span if span > 0 else 0.0

    def readout(self) -> str | None:
        """The figures in words, at most every `READOUT_EVERY` seconds (None in between)."""
        now = self.clock()
        if self.model_ms is None or now - self._last_readout < READOUT_EVERY:
            return None
        self._last_readout = now
        return (
            f"{self.frames_per_second:.1f} frames per second · the model takes {self.model_ms:.0f} ms "
            f"per frame · {self.frames} frames answered"
        )
