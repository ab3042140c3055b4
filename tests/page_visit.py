"""A visitor on the Photo tab, over Gradio's queue as the browser speaks it (the page's events are private:
no API client can send them): a photo lands, its heatmap follows, a bar is clicked, another class is
picked in "Show where it sees…", another model is chosen (where there is one), and the tab is closed
(its heartbeat stream ends); and a visitor on the Live tab, streaming frames. The soak (tests/soak.py)
mixes such visits in.

Each event is sent with the session's own hash; the State inputs (the session's model, photo and heatmap
requests) travel as null, as from the page, and Gradio fills them from the session.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from urllib.parse import unquote, urlsplit

from PIL import Image

from queue_protocol import QueueSession, fn_indices

OPACITY = 0.5
ANY_CLASS = "goldfish"
"""The class picked in "Show where it sees…": rarely in any photo's top five."""


NOT_A_PHOTO = b"not a photo, in a file named .jpg"


def offers_visits(url: str) -> bool:
    """Whether the server is this page (its events have these names)."""
    names = {
        "/show_photo",
        "/finish_heatmap",
        "/switch_heatmap",
        "/see_class",
        "/classify_many",
        "/classify_frame",
    }
    return names <= set(fn_indices(url))


def event(session: QueueSession, name: str, data: list, event_data: dict | None = None) -> list:
    """Send one of the page's events and wait for it: its outputs, or AssertionError with Gradio's error."""
    status, answer = session.join(f"/{name}", data, event_data)
    assert status == 200, (name, status, answer)
    session.listen()
    message = session.result()
    assert message.get("success"), (name, message.get("output"))
    return message["output"]["data"]


def shown(output: object) -> object:
    """An output's value, whether sent as itself or as an update of the component (gr.update(value=...))."""
    if isinstance(output, dict) and output.get("__type__") == "update":
        return output.get("value")
    return output


def picture_size(url: str, image: dict) -> tuple[int, int]:
    """The size of a picture the page was sent, fetched as the browser fetches it."""
    session = QueueSession(url)
    path = urlsplit(image["url"]).path if image.get("url") else "/gradio_api/file=" + image["path"]
    status, body = session._request("GET", unquote(path) if "%" in path else path)
    assert status == 200, (status, path)
    with Image.open(io.BytesIO(body)) as picture:
        return picture.size


def visit(url: str, photo: Path, switch_to: str | None = None) -> dict:
    """One visit, the tab open throughout and closed at the end; what the page showed: the bars, and the
    captions after each step; then, with `switch_to`, the bars by that model."""
    session = QueueSession(url)
    with session.tab_open():
        return _look(session, url, photo, switch_to)


def _look(session: QueueSession, url: str, photo: Path, switch_to: str | None) -> dict:
    upload = session.upload(photo)
    bars, *_ = event(session, "show_photo", [upload, None, None])  # the model: the session's (the default)
    overlay, caption = event(session, "finish_heatmap", [None, OPACITY, None])
    size = picture_size(url, shown(overlay))
    clicked = bars["confidences"][1]["label"]
    selected = {"index": 1, "value": clicked, "selected": True}
    _, clicked_caption, _ = event(session, "switch_heatmap", [None, OPACITY, None], selected)
    _, picked_caption, _ = event(session, "see_class", [None, ANY_CLASS, OPACITY, None])
    switched_bars = None
    if switch_to:  # the page sends its model card first (no work on the server), then this
        _, switched_bars, *_ = event(session, "choose_model", [switch_to, None, upload, None])
        event(session, "finish_heatmap", [None, OPACITY, None])
    return {
        "bars": bars,
        "caption": shown(caption),
        "picture_size": size,
        "clicked": clicked,
        "clicked_caption": shown(clicked_caption),
        "picked_caption": shown(picked_caption),
        "switched_bars": shown(switched_bars),
    }


def many_photos(url: str, photo: Path) -> dict:
    """The Many photos tab given `photo` and a broken file beside it: the table, a row per file."""
    session = QueueSession(url)
    broken = photo.with_name(f"broken-{photo.name}")
    broken.write_bytes(NOT_A_PHOTO)
    with session.tab_open():
        table, _ = event(session, "classify_many", [[session.upload(photo), session.upload(broken)], None])
    table = shown(table)
    return {"headers": table["headers"], "rows": table["data"]}


def live_stream(url: str, frame: bytes, frames: int, timeout: float = 120) -> dict:
    """A visitor on the Live tab: Record, `frames` frames of the webcam (`frame`, a JPEG, every time), each
    sent once the server has handled the one before (one in flight; the page keeps up to two), then Stop,
    and the tab closed.
    What the page was told: each answered frame's bars, how many frames the server handled, and whether the
    stream ended by itself first (its time limit)."""
    session = QueueSession(url, timeout=timeout)
    data = [{"url": "data:image/jpeg;base64," + base64.b64encode(frame).decode()}, None, None]
    answers, handled, ended = [], 0, False
    with session.tab_open():
        status, answer = session.join("/classify_frame", data)
        assert status == 200, (status, answer)
        stream = f"/gradio_api/stream/{answer['event_id']}"
        session.listen()
        body = json.dumps(
            {
                "data": data,
                "fn_index": fn_indices(url)["/classify_frame"],
                "session_hash": session.session_hash,
            }
        ).encode()
        while handled < frames:
            message = session.wait_for("process_streaming", "process_completed")
            if message["msg"] == "process_completed":  # its time limit, or an error
                assert message.get("success"), message.get("output")
                ended = True
                break
            bars, _, count = message["output"]["data"]
            handled = int(shown(count))
            if isinstance(shown(bars), dict):
                answers.append(shown(bars))
            if handled < frames:
                status, _ = session._request("POST", stream, body, {"Content-Type": "application/json"})
                assert status == 200, status
        if not ended:
            status, _ = session._request("POST", stream + "/close")
            assert status == 200, status
        session.hang_up()
    return {"answers": answers, "handled": handled, "ended": ended}
