"""`Repeats`: the twin of a repeated "change" waits for the first run and does nothing; other inputs run."""

import threading
import time

import gradio as gr

import image_classifier.page.answers as answers
from image_classifier.page.answers import ShownPhoto, finish_heatmap
from image_classifier.page.repeats import Repeats


def run_in_thread(repeats: Repeats, session: str, inputs, hold: threading.Event | None = None) -> dict:
    """Start a run; the dict gets "first" once it has its answer, and "ended" when it returns."""
    outcome: dict = {}

    def run() -> None:
        with repeats.first(session, inputs) as first:
            outcome["first"] = first
            if hold is not None:
                hold.wait(10)
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    outcome["thread"] = thread
    return outcome


def test_a_twin_waits_for_the_first_run_and_is_told_it_is_a_repeat():
    repeats, hold = Repeats(), threading.Event()
    first = run_in_thread(repeats, "session", ("cat.jpg", "model"), hold)
    time.sleep(0.05)
    twin = run_in_thread(repeats, "session", ("cat.jpg", "model"))
    time.sleep(0.2)
    assert first["first"] is True and "first" not in twin  # the twin waits while the first runs
    released = time.monotonic()
    hold.set()
    for outcome in (first, twin):
        outcome["thread"].join(5)
    assert twin["first"] is False and twin["ended"] >= released


def test_other_sessions_and_other_inputs_run_at_once():
    repeats, hold = Repeats(), threading.Event()
    first = run_in_thread(repeats, "session", ("cat.jpg", "model"), hold)
    others = [
        run_in_thread(repeats, "another session", ("cat.jpg", "model")),
        run_in_thread(repeats, "session", ("cat.jpg", "another model")),
    ]
    for outcome in others:
        outcome["thread"].join(5)
        assert outcome["first"] is True
    hold.set()
    first["thread"].join(5)


def test_only_the_latest_inputs_count_and_only_for_a_while():
    repeats = Repeats(window_s=0.3)
    for photo, expected in [("cat", True), ("cat", False), ("coffee", True), ("cat", True), (None, True)]:
        with repeats.first("session", photo) as first:
            assert first is expected, photo
    with repeats.first("session", None) as first:
        assert first is False  # Clear twice: nothing to do
    assert len(repeats) == 1
    time.sleep(0.4)
    assert len(repeats) == 0  # nothing is kept for a session gone quiet
    with repeats.first("session", None) as first:
        assert first is True


def test_without_a_session_every_run_is_a_first():
    repeats = Repeats()
    for _ in range(2):
        with repeats.first(None, "cat") as first:
            assert first is True


def test_a_failed_run_still_lets_its_twin_go():
    repeats = Repeats()
    try:
        with repeats.first("session", "broken.jpg"):
            raise ValueError("not an image")
    except ValueError:
        pass
    with repeats.first("session", "broken.jpg") as first:
        assert first is False  # the page already shows the first run's error


def test_the_heatmap_picture_is_made_once_per_photo(monkeypatch):
    """The twin's chained heatmap event finds the picture made (or the previous photo's): it sends none."""
    shown = ShownPhoto(b"", (0, 0, 1, 1), "cat", ["cat"], None)
    made = []
    monkeypatch.setattr(answers, "heatmap_picture", lambda *args: made.append(args) or ("picture", "caption"))
    assert finish_heatmap(shown, 0.5) == ("picture", "caption")
    assert finish_heatmap(shown, 0.5) == (gr.skip(), gr.skip()) and len(made) == 1
