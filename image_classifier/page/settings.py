"""The page's limits and the browser-facing settings, with why each is what it is.

`Limits` is what `build_demo` hands every tab; the rest are the defaults `app.py`'s options start from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from image_classifier.batch import DEFAULT_MAX_BATCH_FILES

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = sorted(str(path) for path in (ROOT / "examples").glob("*.jpg"))
MAX_FILE_SIZE = "20mb"
"""Uploads above this are refused by Gradio before they reach the classifier."""
QUEUE_SIZE = 32
"""Requests waiting beyond this are turned away at once with "Queue is full! Please try again."."""
PAGE_ONLY = {"api_visibility": "private"}
"""Options of the page's own events: not API endpoints, nor MCP tools (those are in api.py)."""
MODEL_CONCURRENCY = 2
"""How many requests each event that names a model runs at once: one may be loading a model (downloading,
converting) while the other answers with a model already loaded."""
DELETE_CACHE = (3600, 3600)
"""Every hour, the uploads and results older than an hour are deleted (`server.clean_cache`)."""
MAX_SESSIONS = 2000
"""Most sessions Gradio remembers at once, the least recently used forgotten first (Gradio's default: 10,000).
Each takes about 125 KB of copied page configuration and its photo (80 KB): a bound of 400 MB for bursts
of visitors or API clients faster than `image_classifier.sessions` forgets them."""
DISPLAY_SIDE = 768
"""Longest side of the heatmap picture: sharp on a phone or a laptop, light to send."""
UPLOAD_MAX_SIDE = 1024
"""The browser shrinks photos to this long side before sending them: plenty for the model (256 px) and for
a sharp heatmap, and a 4 MB phone photo becomes ~150 KB (at JPEG quality 0.93: shrink_uploads.js)."""
LIVE_TIME_LIMIT = 60
"""Seconds a live stream holds its place: then Gradio puts it back in the queue (the page rejoins by itself),
so that people waiting for a free stream get their turn."""
MAX_STREAMS = 2
"""Live streams served at once; more wait their turn."""
LIVE_STREAM_EVERY = 0.05
"""Seconds between the frames the browser sends: up to 20 a second, and no more than the server handles
(`LIVE_IN_FLIGHT`): every frame sent costs the browser about 30 ms of CPU (measured in Chromium: capture,
encode, Gradio's front end, the request) whether it is answered or not. The server answers the newest frame
it has, so answers never queue up."""
LIVE_IN_FLIGHT = 2
"""Frames the page has sent and the server not yet handled before it captures another: two keep the server
busy (the next frame is there when one is done) without sending frames it would drop."""
LIVE_STALLED_MS = 1000
"""After this long without an answer the page starts afresh, up to `LIVE_IN_FLIGHT` frames again (a frame
lost, or held while photos go first): a stream never stalls for good."""
LIVE_CAMERA = {"video": {"width": {"ideal": 320}, "height": {"ideal": 240}}}
"""What the browser asks of the webcam: a small picture (the model sees 224×224 anyway), cheap to encode,
send and decode. Gradio's default asks for 1920×1440, which takes 60 ms a frame to encode alone."""


@dataclass(frozen=True)
class Limits:
    """What the tabs are allowed to take and give: handed to each tab by `build_demo`."""

    top_k: int = 5
    max_batch_files: int = DEFAULT_MAX_BATCH_FILES
    upload_max_side: int | None = UPLOAD_MAX_SIDE
    """The browser shrinks photos to this long side before uploading them; None or 0: as they are."""
    live_time_limit: float = LIVE_TIME_LIMIT
    max_streams: int = MAX_STREAMS
