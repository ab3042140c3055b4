"""The Live tab's frame step on its own: whatever frames come, in whatever order, the stream goes on."""

import base64
import io
import threading
import time
import types

import gradio as gr
import pytest
from gradio.data_classes import ImageData
from PIL import Image

import app
from conftest import EXAMPLES
from image_classifier import live
from image_classifier.live import FrameAnswer, LiveFigures, PhotosFirst, answer_frame
from image_classifier.page import settings
from image_classifier.page.components import WebcamFrames
from image_classifier.page.models import as_model_set


def encoded(width: int, height: int, mode: str = "RGB", format: str = "JPEG") -> bytes:
    """A frame as the browser sends it: a crop of a real photo, encoded."""
    photo = Image.open(EXAMPLES / "cat.jpg").convert(mode).resize((width, height))
    buffer = io.BytesIO()
    photo.save(buffer, format)
    return buffer.getvalue()


def assert_answer(answer: FrameAnswer | None) -> None:
    assert answer is not None
    probabilities = list(answer.predictions.values())
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    assert 0 < probabilities[0] <= 1 and answer.model_ms > 0


def test_a_missing_frame_is_skipped(random_densenet):
    assert answer_frame(random_densenet, None) is None  # Gradio can send None (gradio-app/gradio#9837)


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (3, 1), (7, 5)], ids=lambda size: f"{size[0]}x{size[1]}")
def test_tiny_frames_are_answered(random_densenet, size):
    assert_answer(answer_frame(random_densenet, encoded(*size)))


def test_frames_change_size_and_kind_mid_stream(random_densenet):
    frames = [
        encoded(320, 240),
        encoded(640, 480),
        encoded(240, 320),  # the phone turned
        encoded(1, 1),
        encoded(1280, 720),
        encoded(320, 240, mode="L"),
        encoded(200, 150, mode="RGBA", format="PNG"),
        Image.open(EXAMPLES / "coffee.jpg"),  # a PIL image works too
    ]
    for frame in frames:
        assert_answer(answer_frame(random_densenet, frame))


@pytest.mark.parametrize("frame", [b"", b"not a jpeg", encoded(320, 240)[:300]], ids=["empty", "text", "cut"])
def test_unreadable_frames_are_skipped(random_densenet, frame):
    assert answer_frame(random_densenet, frame) is None


def test_the_figures_count_frames_per_second_and_update_the_readout_twice_a_second():
    now = [100.0]
    figures = LiveFigures(clock=lambda: now[0])
    assert figures.readout() is None  # nothing answered yet
    readouts = []
    for frame in range(60):  # 20 frames a second for 3 s, the model taking 30 then 40 ms
        now[0] = 100.0 + frame * 0.05
        figures.record(FrameAnswer({"tabby": 0.5}, 30.0 if frame < 30 else 40.0))
        readouts.append(figures.readout())
    assert figures.frames == 60
    assert figures.frames_per_second == pytest.approx(20.0)
    shown = [text for text in readouts if text is not None]
    assert len(shown) == 6  # at 0, 0.5, 1, ... 2.5 s
    assert shown[-1].startswith("20.0 frames per second")
    assert "the model takes 40 ms per frame" in shown[-1] and "51 frames answered" in shown[-1]  # at 2.5 s


def run_in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """PhotosFirst's clock, which only the test moves (`clock[0] += seconds`): no test waits for time."""
    now = [1000.0]
    monkeypatch.setattr(
        live, "time", types.SimpleNamespace(monotonic=lambda: now[0], perf_counter=time.perf_counter)
    )
    return now


class WatchedCondition(threading.Condition):
    """PhotosFirst's condition, with an Event set whenever a frame goes to wait on it: the test knows that
    the frame is held (and why) without guessing how long that takes."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waiting.set()
        return super().wait(timeout)


def watched(photos_first: PhotosFirst) -> WatchedCondition:
    photos_first._changed = WatchedCondition()
    return photos_first._changed


def frame_in_thread(photos_first: PhotosFirst, ran: list, stream: str | None = None) -> threading.Thread:
    def frame():
        with photos_first.frame(stream) as fresh:
            ran.append(fresh)

    return run_in_thread(frame)


def photo_in_thread(photos_first: PhotosFirst, done: threading.Event) -> threading.Thread:
    """A photo being classified until `done` is set."""
    started = threading.Event()

    def photo():
        with photos_first.photo():
            started.set()
            done.wait(60)

    thread = run_in_thread(photo)
    assert started.wait(30)
    return thread


def test_a_frame_gives_way_to_a_photo_and_its_grace_and_is_dropped(clock):
    photos_first = PhotosFirst(live_slots=1, grace=0.05, max_wait=5.0)
    changed = watched(photos_first)
    with photos_first.frame() as fresh:
        assert fresh  # no photo: at once
    done, ran = threading.Event(), []
    photo = photo_in_thread(photos_first, done)
    changed.waiting.clear()
    frame = frame_in_thread(photos_first, ran)
    assert changed.waiting.wait(30) and ran == []  # held while the photo is classified
    changed.waiting.clear()
    done.set()
    photo.join(30)
    assert changed.waiting.wait(30) and ran == []  # the photo is done, its grace is not (the clock stands)
    clock[0] += 1.0  # past the grace
    frame.join(30)
    assert ran == [False]  # it ran, stale: the stream drops it


def test_photos_keep_every_core_unless_streams_run(clock):
    photos_first = PhotosFirst(live_slots=1)
    with photos_first.photo() as threads:
        assert threads is None  # no stream: the photo's forward pass takes every core
    clock[0] += 1.0  # past the photo's grace
    with photos_first.frame():
        pass
    with photos_first.photo() as threads:
        assert threads == photos_first.photo_threads_while_streaming >= 1
    clock[0] += 1.0  # a second without frames: the stream has stopped
    with photos_first.photo() as threads:
        assert threads is None


def test_live_frames_take_turns_on_their_slots():
    photos_first = PhotosFirst(live_slots=1)
    changed = watched(photos_first)
    done, ran = threading.Event(), []

    def first_frame():
        with photos_first.frame() as fresh:
            ran.append(("first", fresh))
            done.wait(60)

    first = run_in_thread(first_frame)
    changed.waiting.clear()
    second = frame_in_thread(photos_first, ran)
    assert changed.waiting.wait(30)  # the second frame waits for the slot...
    assert ran == [("first", True)]
    done.set()
    first.join(30), second.join(30)
    assert ran == [("first", True), True]  # ...and runs after the first, still fresh


def test_one_stream_a_slot_gets_a_frame_every_50_ms(clock):
    photos_first = PhotosFirst(live_slots=1, frames_per_second_per_slot=20, shared_per_slot=10)
    changed = watched(photos_first)
    with photos_first.frame("alone") as fresh:
        assert fresh
    ran = []
    changed.waiting.clear()
    frame = frame_in_thread(photos_first, ran, "alone")  # the next one, at once: not before 50 ms
    assert changed.waiting.wait(30) and ran == []  # (the clock stands)
    clock[0] += 0.05
    frame.join(30)
    assert ran == [True]  # it ran, fresh: waiting for its turn is not giving way to a photo


def test_more_streams_than_slots_share_10_frames_a_second(clock):
    photos_first = PhotosFirst(live_slots=1, frames_per_second_per_slot=20, shared_per_slot=10)
    changed = watched(photos_first)
    with photos_first.frame("first"):
        pass
    ran = []
    changed.waiting.clear()
    frame = frame_in_thread(photos_first, ran, "second")  # two streams on one slot: 100 ms apart
    assert changed.waiting.wait(30)
    changed.waiting.clear()
    clock[0] += 0.05
    assert changed.waiting.wait(30) and ran == []  # 50 ms on, it still waits
    clock[0] += 0.06
    frame.join(30)
    assert ran == [True]
    two_slots = PhotosFirst(live_slots=2, frames_per_second_per_slot=20, shared_per_slot=10)
    assert two_slots.frame_spacing == pytest.approx(0.025) and two_slots.shared_frame_spacing == 0.05


def test_frames_give_way_from_the_moment_a_photos_upload_begins(clock):
    photos_first = PhotosFirst(live_slots=1, grace=0.05, coming_for=1.0)
    changed = watched(photos_first)
    photos_first.photo_coming()  # the server saw its upload begin: the photo is not being classified yet
    ran = []
    changed.waiting.clear()
    frame = frame_in_thread(photos_first, ran)
    assert changed.waiting.wait(30) and ran == []  # held while it uploads...
    changed.waiting.clear()
    clock[0] += 2.0  # (a slow uplink)
    photos_first.photo_arrived()
    assert changed.waiting.wait(30) and ran == []  # ...and after, until its photo has been classified
    done = threading.Event()
    done.set()
    photo_in_thread(photos_first, done).join(30)
    clock[0] += 0.1  # past its grace
    frame.join(30)
    assert ran == [False]  # stale: dropped

    photos_first.photo_coming()  # an upload that never becomes a photo holds frames for `coming_for` only
    photos_first.photo_arrived()
    ran.clear()
    changed.waiting.clear()
    frame = frame_in_thread(photos_first, ran)
    assert changed.waiting.wait(30) and ran == []
    clock[0] += 1.0
    frame.join(30)
    assert ran == [False]
    with photos_first.frame() as fresh:  # a dropped frame took no turn: the next one runs at once
        assert fresh


def test_a_flow_of_photos_slows_the_stream_down_without_stopping_it(clock):
    photos_first = PhotosFirst(live_slots=1, max_wait=0.2)
    changed = watched(photos_first)
    done, ran = threading.Event(), []
    photo = photo_in_thread(photos_first, done)
    changed.waiting.clear()
    frame = frame_in_thread(photos_first, ran)
    assert changed.waiting.wait(30) and ran == []  # the photo goes first...
    clock[0] += 1.0  # ...for max_wait (0.2 s), then the frame runs beside it
    frame.join(30)
    assert ran == [True] and photo.is_alive()
    done.set()
    photo.join(30)


# --- the Gradio side -------------------------------------------------------------------------------


def frame_payload(data: bytes) -> ImageData:
    return ImageData(url="data:image/jpeg;base64," + base64.b64encode(data).decode())


def test_webcam_frames_hand_the_function_the_jpeg_bytes():
    camera = WebcamFrames(sources=["webcam"], streaming=True)
    jpeg = encoded(32, 24)
    assert camera.preprocess(frame_payload(jpeg)) == jpeg
    assert camera.preprocess(None) is None
    assert camera.preprocess(ImageData(url="data:image/jpeg;base64,@@not base64@@")) is None
    assert camera.preprocess(ImageData(url="https://example.com/frame.jpg")) is None


def test_the_stream_function_takes_missing_tiny_resized_and_broken_frames(random_densenet):
    demo = app.build_demo(random_densenet, model_name="densenet121")
    (step,) = [block_fn.fn for block_fn in demo.fns.values() if block_fn.name == "classify_frame"]
    figures = LiveFigures()
    frames = [None, encoded(1, 1), encoded(320, 240), None, encoded(640, 480), b"garbage", encoded(240, 320)]
    for number, frame in enumerate(frames, start=1):
        bars, readout, handled = step(frame, figures, "densenet121")
        if frame is None or frame == b"garbage":
            assert bars == gr.skip() and readout == gr.skip()
        else:
            assert len(bars) == 5
        assert handled == str(number)  # every frame handled, answered or not: the page paces its frames by it
    assert figures.frames == 4


def test_the_live_tab_streams_the_webcam_within_its_limits(random_densenet):
    demo = app.build_demo(random_densenet, live_time_limit=30, max_streams=3)
    (camera,) = [block for block in demo.blocks.values() if isinstance(block, WebcamFrames)]
    assert camera.streaming and camera.sources == ["webcam"]
    assert camera.webcam_options.constraints == settings.LIVE_CAMERA
    (stream,) = [block_fn for block_fn in demo.fns.values() if block_fn.name == "classify_frame"]
    assert stream.connection == "stream" and stream.time_limit == 30 and stream.concurrency_limit == 3
    assert stream.stream_every == settings.LIVE_STREAM_EVERY and stream.show_progress == "hidden"
    assert (
        stream.concurrency_id != next(f for f in demo.fns.values() if f.name == "show_photo").concurrency_id
    )


def test_max_streams_and_the_time_limit_come_from_the_command_line(monkeypatch, random_densenet):
    seen = {}

    class Demo:
        def launch(self, **options):
            seen["launched"] = True

    monkeypatch.setattr(app, "classifier_set", lambda *args, **kwargs: as_model_set(random_densenet, "d"))
    monkeypatch.setattr(app, "build_demo", lambda classifier, **options: seen.update(options) or Demo())
    assert app.main(["--max-streams", "4", "--live-time-limit", "30"]) == 0
    assert seen["max_streams"] == 4 and seen["live_time_limit"] == 30 and seen["launched"]
    assert app.parse_args([]).max_streams == settings.MAX_STREAMS
    with pytest.raises(SystemExit):
        app.parse_args(["--max-streams", "0"])
