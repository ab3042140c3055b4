"""The page as a Gradio Blocks: a title and a description, then the tabs, then the API; each tab is a module
of its own that builds its components and wires its events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace

import gradio as gr

from classifier import Classifier
from image_classifier.allocator import tune_malloc
from image_classifier.batch import DEFAULT_MAX_BATCH_FILES
from image_classifier.live import PhotosFirst
from image_classifier.metrics import PageMetrics

from .answers import Answers
from .api import api_endpoints
from .compare import compare_tab
from .components import page_accessibility_fixes
from .live import live_tab
from .many import many_tab
from .models import ModelSource, as_model_set
from .photo import photo_tab
from .settings import EXAMPLES, LIVE_TIME_LIMIT, MAX_STREAMS, QUEUE_SIZE, ROOT, UPLOAD_MAX_SIDE, Limits

TITLE = "What's in this picture?"
DESCRIPTION = (
    "Drop in a photo, paste one from the clipboard or take one with your webcam, and {model}, "
    "a neural network trained on the 1,000 everyday categories of ImageNet, shows its five best "
    "guesses with how sure it is of each, and where in the photo it looked. Click a bar to see where it "
    "looked for that class. Uploads are used only to answer, and deleted within two hours."
)
MANY_MODELS = (
    " Choose another of {count} models to see what each costs and how accurate it is, or put two side by "
    "side in the Compare tab."
)
SHRINK_UPLOADS = ROOT / "image_classifier" / "shrink_uploads.js"


def build_demo(
    classifier: Classifier | ModelSource,
    *,
    model_name: str = "an ImageNet model",
    examples: Sequence[str] = EXAMPLES,
    top_k: int = 5,
    queue_size: int = QUEUE_SIZE,
    max_batch_files: int = DEFAULT_MAX_BATCH_FILES,
    upload_max_side: int | None = UPLOAD_MAX_SIDE,
    live_time_limit: float = LIVE_TIME_LIMIT,
    max_streams: int = MAX_STREAMS,
    metrics: PageMetrics | None = None,
    concurrency: int | None = None,
    max_pixels: int | None = None,
    photos_first: PhotosFirst | None = None,
) -> gr.Blocks:
    """The page around one classifier (called `model_name`) or a set of models, queued; launch it with
    `launch_options()`.

    API endpoints: `/predict` (photo -> top-k of the default model, as always), `/explain` (photo -> top-k
    and the heatmap of the top class), `/classify` (photo, model -> top-k) and `/compare` (photo, model A,
    model B -> two top-k). The browser shrinks photos to `upload_max_side` pixels before uploading them
    (None or 0: it sends them as they are).

    `metrics` counts the requests (and is told the queue's length); `concurrency` is how many requests each
    event that runs a model takes at once (default: two, `MODEL_CONCURRENCY`; models on Serve replicas take
    more, so that batches form). `max_pixels` is the default model's limit,
    for the browser's shrinking (default: asked of the model, which remote models answer only once loaded).
    `photos_first` is how live frames give way to photos (a new one by default); hand the same one to
    `launch_options` for frames to give way from the moment a photo's upload begins.
    """
    tune_malloc()  # where the caller has not (image_classifier/allocator.py): flat memory under load
    models = as_model_set(classifier, model_name)
    models.load_default()
    limits = Limits(top_k, max_batch_files, upload_max_side, live_time_limit, max_streams)
    # One per page: live streams give way to its photos.
    answers = Answers(models, top_k, photos_first=photos_first or PhotosFirst(), metrics=metrics)
    if concurrency is not None:
        answers = replace(answers, concurrency=concurrency)
    # Uploads and results are deleted by `server.clean_cache` (see launch_options), not Gradio's delete_cache.
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n\n{description(models, model_name)}")
        page_accessibility_fixes()
        chosen = gr.State(models.default)  # the session's model, once it has loaded
        photo = photo_tab(answers, chosen, examples, limits)
        live_tab(answers, chosen, limits)
        many_tab(answers, chosen, limits)
        compared = compare_tab(answers, examples, limits)
        if upload_max_side:  # in the browser only: API clients send what they like
            max_pixels = max_pixels or answers.classifier(models.default).max_pixels
            demo.load(None, js=shrink_uploads_js(upload_max_side, max_pixels))
        api_endpoints(answers, photo, compared)
    if metrics is not None:
        metrics.queue_length = lambda: len(demo._queue)  # Gradio's queue: requests not yet started
    return demo.queue(max_size=queue_size, default_concurrency_limit=concurrency or "not_set")


def description(models: ModelSource, model_name: str) -> str:
    """What the page says under its title: the model, and with several, that there is a choice."""
    if len(models.names) == 1:
        return DESCRIPTION.format(model=model_name)
    return DESCRIPTION.format(model=models.default) + MANY_MODELS.format(count=len(models.names))


def shrink_uploads_js(max_side: int, max_pixels: int) -> str:
    """The page-load script that makes the browser send photos upright, at most `max_side` pixels on their
    long side and without metadata (see image_classifier/shrink_uploads.js); photos over `max_pixels` go
    as they are, for the server to refuse with its own message."""
    settings = json.dumps({"maxSide": max_side, "maxPixels": max_pixels})
    return f"() => ({SHRINK_UPLOADS.read_text()})({settings})"
