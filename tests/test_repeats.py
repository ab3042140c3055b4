"""`Repeats`: the twin of a repeated "change" waits for the first run and answers as it did; other inputs,
other sessions and a photo chosen again after another run."""

import threading
import time

import pytest

from image_classifier.page.repeats import Repeats


def start(repeats: Repeats, session: str, inputs, answer, hold: threading.Event | None = None) -> dict:
    """A request in a thread; the dict gets its "answer", "ran" (whether its own work ran) and "ended"."""
    outcome: dict = {"ran": False, "working": threading.Event()}

    def work():
        outcome["ran"] = True
        outcome["working"].set()
        if hold is not None:
            hold.wait(10)
        return answer

    def request() -> None:
        outcome["answer"] = repeats.run(session, inputs, work, lambda first: ("twin of", first))
        outcome["ended"] = time.monotonic()

    outcome["thread"] = threading.Thread(target=request)
    outcome["thread"].start()
    return outcome


def test_a_twin_waits_for_the_first_run_and_answers_as_it_did():
    repeats, hold = Repeats(), threading.Event()
    first = start(repeats, "session", ("cat.jpg", "model"), "bars", hold)
    assert first["working"].wait(5)  # the first has the inputs before its twin asks
    twin = start(repeats, "session", ("cat.jpg", "model"), "bars again")
    time.sleep(0.2)
    assert "answer" not in twin  # the twin waits while the first runs
    released = time.monotonic()
    hold.set()
    for outcome in (first, twin):
        outcome["thread"].join(5)
    assert first["answer"] == "bars" and first["ran"]
    assert twin["answer"] == ("twin of", "bars") and not twin["ran"] and twin["ended"] >= released


def test_other_sessions_and_other_inputs_run_at_once():
    repeats, hold = Repeats(), threading.Event()
    first = start(repeats, "session", ("cat.jpg", "model"), "bars", hold)
    assert first["working"].wait(5)
    others = [
        start(repeats, "another session", ("cat.jpg", "model"), "theirs"),
        start(repeats, "session", ("cat.jpg", "another model"), "by another model"),
    ]
    for outcome in others:
        outcome["thread"].join(5)
        assert outcome["ran"] and outcome["answer"] in ("theirs", "by another model")
    hold.set()
    first["thread"].join(5)


def test_only_the_latest_inputs_count_and_only_for_a_while():
    repeats = Repeats(window_s=0.3)

    def answer(inputs):
        return repeats.run("session", inputs, lambda: "ran", lambda first: "twin")

    assert [answer(photo) for photo in ["cat", "cat", "coffee", "cat", None, None]] == [
        "ran",
        "twin",
        "ran",
        "ran",
        "ran",
        "twin",  # fmt: skip
    ]
    assert len(repeats) == 1
    time.sleep(0.4)
    assert len(repeats) == 0  # nothing is kept for a session gone quiet
    assert answer(None) == "ran"


def test_without_a_session_every_request_runs():
    repeats = Repeats()
    assert [repeats.run(None, "cat", lambda: "ran", lambda first: "twin") for _ in range(2)] == ["ran", "ran"]


def test_the_twin_of_a_failed_run_is_told_so_and_raises_nothing():
    repeats = Repeats()

    def broken():
        raise ValueError("not an image")

    with pytest.raises(ValueError):
        repeats.run("session", "broken.jpg", broken, lambda first: "twin")
    assert repeats.run("session", "broken.jpg", broken, lambda first: ("twin of", first)) == ("twin of", None)


def test_an_answer_not_kept_is_not_handed_to_the_twin():
    repeats = Repeats()
    assert repeats.run("session", "cat", lambda: "bars", lambda first: first, keep_answer=False) == "bars"
    assert repeats.run("session", "cat", lambda: "bars again", lambda first: ("twin of", first)) == (
        "twin of",
        None,
    )
