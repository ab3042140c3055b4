"""Web demo: drop, paste or snap a photo and see an ImageNet model's top-5 guesses as a bar chart, with a
heatmap of where the model looked.

python app.py                      # http://127.0.0.1:7860
python app.py --share              # plus a temporary public link
python app.py --models resnet50,vit_b_16 --model resnet50   # the models on offer, and the first one shown
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from classifier import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL_MEMORY_MB,
    DEFAULT_MODELS,
    Classifier,
    ImageError,
    ModelLoadError,
    ModelNotOffered,
    ModelSet,
    NonFiniteResultError,
    add_model_arguments,
    cached_weights_path,
    classification_models,
    classifier_set,
    model_facts,
    time_one_photo,
)
from image_classifier import batch
from image_classifier.heatmaps import Heatmaps
from image_classifier.heatmaps import overlay as overlay_heatmap
from image_classifier.live import LiveFigures, PhotosFirst, answer_frame
from image_classifier.model_set import limit_malloc_arenas, refusal

logger = logging.getLogger(__name__)

EXAMPLES = sorted(str(path) for path in Path(__file__).with_name("examples").glob("*.jpg"))
MAX_FILE_SIZE = "20mb"
"""Uploads above this are refused by Gradio before they reach the classifier."""
QUEUE_SIZE = 32
"""Requests waiting beyond this are turned away at once with "Queue is full! Please try again."."""
MODEL_CONCURRENCY = 2
"""How many requests each event that names a model runs at once: one may be loading a model (downloading,
converting) while the other answers with a model already loaded."""
DELETE_CACHE = (3600, 3600)
"""Every hour, the uploads and results older than an hour are deleted (`clean_cache`)."""
DISPLAY_SIDE = 768
"""Longest side of the heatmap picture: sharp on a phone or a laptop, light to send."""
UPLOAD_MAX_SIDE = 1024
"""The browser shrinks photos to this long side before sending them: plenty for the model (256 px) and for
a sharp heatmap, and a 4 MB phone photo becomes ~150 KB."""
SHRINK_UPLOADS = Path(__file__).with_name("image_classifier") / "shrink_uploads.js"
LIVE_TIME_LIMIT = 60
"""Seconds a live stream holds its place: then Gradio puts it back in the queue (the page rejoins by itself),
so that people waiting for a free stream get their turn."""
MAX_STREAMS = 2
"""Live streams served at once; more wait their turn."""
LIVE_STREAM_EVERY = 0.05
"""Seconds between the frames the browser sends: up to 20 a second. The server answers the newest frame it
has and drops the others, so answers never queue up; every frame sent costs the browser a few milliseconds
whether it is answered or not, so the page sends few more than the server can answer."""
LIVE_CAMERA = {"video": {"width": {"ideal": 320}, "height": {"ideal": 240}}}
"""What the browser asks of the webcam: a small picture (the model sees 224×224 anyway), cheap to encode,
send and decode. Gradio's default asks for 1920×1440, which takes 60 ms a frame to encode alone."""
LIVE_ACCESSIBILITY = """
const panel = element.closest('[role="tabpanel"]') || document.body;
const fix = () => {
  for (const button of panel.querySelectorAll("#live-camera .capture-button")) {
    const shown = button.textContent.trim();
    if (shown && button.getAttribute("aria-label") !== shown) button.setAttribute("aria-label", shown);
  }
  for (const empty of panel.querySelectorAll("#live-bars .empty[aria-label]")) {
    empty.removeAttribute("aria-label");
  }
};
new MutationObserver(fix).observe(panel, {subtree: true, childList: true, characterData: true});
fix();
"""
"""Two fixes to Gradio's markup in the Live tab (WCAG 2.1): the streaming webcam's Record/Stop button is
named "capture photo" whatever it shows (2.5.3, label in name), and the empty bar chart carries an
aria-label that a plain div may not have."""
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
NO_PHOTO = "Add a photo first: upload, paste or take one with the webcam."
CSS = ".toast-message-text { white-space: pre-line; }"
"""Error messages keep their line breaks (a failed load lists its ways out one per line)."""
# Gradio's default theme with a blue accent and darker secondary text: every text passes WCAG AA contrast.
THEME = gr.themes.Default(primary_hue="blue").set(
    body_text_color_subdued="*neutral_600",
    button_primary_background_fill="*primary_700",
    button_primary_background_fill_hover="*primary_800",
)


class ImageFile(gr.Image):
    """An image input that hands the function the uploaded file as it came, undecoded.

    `gr.Image` opens every upload with PIL before the function runs, so a bad file fails inside
    Gradio with a generic error. Here classifier.py does the decoding and says what is wrong.
    """

    is_template = True  # keeps gr.Image's front end

    def preprocess(self, payload):
        if payload is not None and payload.path is not None:
            return payload.path
        return super().preprocess(payload)  # nothing uploaded, or a base64 stream


class WebcamFrames(gr.Image):
    """A streaming webcam input that hands the function each frame's JPEG bytes, undecoded.

    The classifier decodes them itself (at the scale it needs); a frame that is missing or not base64
    comes as None instead of an error that would end the stream.
    """

    is_template = True  # keeps gr.Image's front end

    def preprocess(self, payload):
        if payload is None or not (payload.url or "").startswith("data:"):
            return None
        try:
            return base64.b64decode(payload.url.partition(",")[2], validate=True)
        except (binascii.Error, ValueError):
            return None


class ModelChoice(gr.Dropdown):
    """A model picker whose value the server checks: any name it doesn't offer, from the page or an API
    client, is refused in words before anything is looked up, downloaded or built."""

    is_template = True  # keeps gr.Dropdown's front end

    def preprocess(self, payload):
        offered = [value for _, value in self.choices]
        if isinstance(payload, str) and payload in offered:
            return payload
        raise gr.Error(refusal(payload, offered), title="Unknown model", print_exception=False)


@dataclass
class ShownPhoto:
    """What a session keeps of its current photo, so a click on a bar needs no second forward pass."""

    image: Image.Image
    """The upright photo, at most DISPLAY_SIDE pixels on its longest side."""
    region: tuple[float, float, float, float]
    """The part of the photo the model saw (fractions)."""
    label: str
    """The class whose map is shown."""
    labels: list[str]
    """The top classes, whose maps the bars can switch to."""
    source: Heatmaps | None
    """Where the maps come from, until `make_maps` has made them."""
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """The top classes' maps on the model's grid."""

    def make_maps(self) -> None:
        """The top classes' maps, all at once (for Grad-CAM: one forward pass of the tail for them all)."""
        if self.source is not None:
            self.maps.update(self.source.cams(self.labels))
            self.source = None  # the feature map is not kept with the session


def display_size(image: Image.Image) -> Image.Image:
    """`image` at most DISPLAY_SIDE on its longest side, without first copying the whole decoded photo.

    Halved by box averaging while over twice the size, then Lanczos (`reducing_gap=1`): 15 ms instead of
    36 ms for a 12 MP photo (decoded at half size), with no difference to see in a 768-pixel picture."""
    scale = DISPLAY_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)


def heatmap_caption(label: str, model: str = "the model") -> str:
    return f"Where {model} looked for “{label}”"


def pending_caption(label: str, model: str = "the model") -> str:
    return f"Working out where {model} looked for “{label}”…"


def no_heatmap() -> gr.Image:
    """The empty heatmap picture, before a photo or after Clear."""
    return gr.Image(value=None, label="Heatmap", alt_text=None, visible=True)


def classifier_named(models: ModelSet[Classifier], name: object) -> Classifier:
    """The model a request named, loaded if need be; a refusal or a failed load in plain words."""
    try:
        return models.get(name)
    except ModelNotOffered as e:
        raise gr.Error(str(e), title="Unknown model", print_exception=False) from None
    except ModelLoadError as e:
        raise gr.Error(str(e), title=f"Can't load {name}", print_exception=False) from None


def load_with_progress(models: ModelSet[Classifier], name: object, progress: gr.Progress) -> Classifier:
    """`classifier_named`, telling the page when a model is being loaded (a download's tqdm bar shows too)."""
    try:
        name = models.check(name)
    except ModelNotOffered as e:
        raise gr.Error(str(e), title="Unknown model", print_exception=False) from None
    if not models.is_loaded(name):
        progress(None, desc=f"Loading {name}")  # no bar until a download (tqdm) gives one
    return classifier_named(models, name)


def analyse(
    classifier: Classifier, image: str, top_k: int, threads: int | None = None
) -> tuple[dict[str, float], ShownPhoto | None]:
    """The top classes of a photo and, where the model has heatmaps, what the page keeps to show them."""
    try:
        analysis = classifier.analyse(image, top_k=top_k, threads=threads)
    except ImageError as e:
        raise gr.Error(str(e), title="Can't classify this file", print_exception=False) from None
    except NonFiniteResultError as e:  # logged with the model and engine where it was raised
        raise gr.Error(str(e), title="No answer", print_exception=False) from None
    if analysis.heatmaps is None:
        return analysis.predictions, None
    display = display_size(analysis.image)
    labels = list(analysis.predictions)
    shown = ShownPhoto(display, analysis.heatmaps.region, labels[0], labels, analysis.heatmaps)
    if not analysis.heatmaps.needs_gradient:
        shown.make_maps()  # class activation maps: a matrix product, shown with the bars
    return analysis.predictions, shown


def heatmap_picture(
    shown: ShownPhoto | None,
    label: str,
    opacity: float,
    no_heatmap_reason: str | None,
    model: str = "the model",
):
    """The heatmap of `label` over the photo and its caption; where the model has none, why, in words."""
    if shown is None:  # the words say it; no empty picture beside them
        return gr.Image(value=None, visible=False), no_heatmap_reason
    if label not in shown.maps:  # a Grad-CAM map, made after the bars are shown
        return no_heatmap(), pending_caption(label, model)
    picture = own_file(overlay_heatmap(shown.image, shown.maps[label], shown.region, opacity))
    caption = heatmap_caption(label, model)
    return gr.Image(value=picture, label=caption, alt_text=caption, visible=True), caption


def model_card(models: ModelSet[Classifier], name: str) -> str:
    """Markdown: what `name` costs and knows (torchvision's published figures) and what this machine
    measured once it was loaded."""
    lines = [f"**{name}**"]
    from_torchvision = name in set(classification_models())
    if from_torchvision:
        facts = model_facts(name)
        crop = f"a {facts.crop} × {facts.crop} crop"
        seen = f"{crop} of the photo resized to {facts.resize} px" if facts.resize else crop
        lines += [
            f"- ImageNet accuracy: **{facts.top1:.1f} %** top-1, {facts.top5:.1f} % top-5",
            f"- Cost: {facts.gflops:.2f} GFLOPs per photo; {facts.parameters / 1e6:.1f} million parameters, "
            f"{facts.file_mb:.1f} MB of weights",
            f"- Sees: {seen} ({facts.interpolation})",
            f"- Figures: torchvision's, for `{facts.weights}`",
        ]
    else:
        lines.append("- Not one of torchvision's models: no published figures.")
    loaded = models.measured(name)
    if loaded is None:
        download = ""
        if from_torchvision and not cached_weights_path(name).exists():
            download = f" (first, a {model_facts(name).file_mb:.0f} MB download)"
        lines.append(f"- On this machine: measured once it has loaded{download}.")
    elif loaded.ms_per_photo is not None:
        engine = loaded.model.engine_choice.describe()
        lines.append(f"- On this machine: **{loaded.ms_per_photo:.0f} ms per photo** on {engine}")
    return "\n".join(lines)


def model_choices(models: ModelSet[Classifier]) -> list[tuple[str, str]]:
    """(shown, value) for each offered model: its name and, for torchvision's, its top-1 accuracy."""
    known = set(classification_models())
    return [
        (f"{name} ({model_facts(name).top1:.1f} % top-1)" if name in known else name, name)
        for name in models.names
    ]


def as_model_set(classifier: Classifier | ModelSet[Classifier], name: str) -> ModelSet[Classifier]:
    if isinstance(classifier, ModelSet):
        return classifier
    return ModelSet.of({name: classifier}, memory_mb_of=lambda c: c.memory_mb, timed=time_one_photo)


def shrink_uploads_js(max_side: int, max_pixels: int) -> str:
    """The page-load script that makes the browser send photos upright, at most `max_side` pixels on their
    long side and without metadata (see image_classifier/shrink_uploads.js); photos over `max_pixels` go
    as they are, for the server to refuse with its own message."""
    settings = json.dumps({"maxSide": max_side, "maxPixels": max_pixels})
    return f"() => ({SHRINK_UPLOADS.read_text()})({settings})"


def live_tab(
    models: ModelSet[Classifier],
    chosen: gr.State,
    photos_first: PhotosFirst,
    *,
    top_k: int = 5,
    time_limit: float = LIVE_TIME_LIMIT,
    max_streams: int = MAX_STREAMS,
) -> None:
    """The Live tab: the webcam's frames classified as they come, the bars following, with the frames per
    second answered and the model's milliseconds per frame, by the model `chosen` on the Photo tab. Gradio's
    own streaming: `max_streams` streams run at once and others wait; a stream rejoins the queue after
    `time_limit` seconds, so they take turns."""
    with gr.Tab("Live"):
        gr.Markdown(
            "Allow the webcam, then press Record: the bars follow what the camera sees until you press Stop. "
            f"When more people stream than the server takes at once, streams take turns of {time_limit:g} s."
            + (" The model is the one chosen on the Photo tab." if len(models.names) > 1 else "")
        )
        with gr.Row(equal_height=False):
            camera = WebcamFrames(
                sources=["webcam"],
                streaming=True,
                label="Webcam",
                webcam_options=gr.WebcamOptions(constraints=LIVE_CAMERA),
                elem_id="live-camera",
            )
            with gr.Column():
                bars = gr.Label(num_top_classes=top_k, label=f"Top {top_k}, live", elem_id="live-bars")
                readout = gr.Markdown(elem_id="live-readout")
        gr.HTML("", js_on_load=LIVE_ACCESSIBILITY, container=False, padding=False)
        figures = gr.State(LiveFigures())  # one per browser tab

    def classify_frame(frame: bytes | None, figures: LiveFigures, name: str):
        try:
            answer = answer_frame(
                classifier_named(models, name), frame, top_k=top_k, photos_first=photos_first
            )
        except NonFiniteResultError as e:  # the stream stops with the reason, once, not a NaN per frame
            raise gr.Error(str(e), title="No answer", print_exception=False) from None
        if answer is None:
            return gr.skip(), gr.skip()
        figures.record(answer)
        text = figures.readout()
        return answer.predictions, gr.skip() if text is None else text

    camera.stream(
        classify_frame,
        [camera, figures, chosen],
        [bars, readout],
        stream_every=LIVE_STREAM_EVERY,
        time_limit=time_limit,
        concurrency_limit=max_streams,
        concurrency_id="live",
        show_progress="hidden",
        api_visibility="private",
    )


def own_file(picture: Image.Image) -> Image.Image:
    """Give a result picture a cache file of its own. Gradio 6.31 keeps a result under the hash of its bytes
    and rewrites that file in place every time: when two requests make the same heatmap at once (the same
    example photo, say), a client downloading the first can get it truncated. A JPEG comment unique to the
    request makes the bytes, and so the file, unique."""
    picture.info["comment"] = uuid.uuid4().hex.encode()
    return picture


def build_demo(
    classifier: Classifier | ModelSet[Classifier],
    *,
    model_name: str = "an ImageNet model",
    examples: Sequence[str] = EXAMPLES,
    top_k: int = 5,
    queue_size: int = QUEUE_SIZE,
    max_batch_files: int = batch.DEFAULT_MAX_BATCH_FILES,
    upload_max_side: int | None = UPLOAD_MAX_SIDE,
    live_time_limit: float = LIVE_TIME_LIMIT,
    max_streams: int = MAX_STREAMS,
) -> gr.Blocks:
    """The page around one classifier (called `model_name`) or a set of models, queued; launch it with
    `launch_options()`.

    API endpoints: `/predict` (photo -> top-k of the default model, as always), `/explain` (photo -> top-k
    and the heatmap of the top class), `/classify` (photo, model -> top-k) and `/compare` (photo, model A,
    model B -> two top-k). The browser shrinks photos to `upload_max_side` pixels before uploading them
    (None or 0: it sends them as they are).
    """
    limit_malloc_arenas()  # before the server's worker threads: its memory stays flat under load
    models = as_model_set(classifier, model_name)
    models.load_default()
    several = len(models.names) > 1
    description = DESCRIPTION.format(model=models.default if several else model_name)
    if several:
        description += MANY_MODELS.format(count=len(models.names))
    photos_first = PhotosFirst()  # live streams give way to photos

    def classify(image: str | None, name: str) -> dict[str, float]:
        """The top classes of a photo by the model called `name`: the label value of `/classify`."""
        if image is None:
            raise gr.Error(NO_PHOTO)
        classifier = classifier_named(models, name)
        try:
            with photos_first.photo() as threads:
                return classifier.predict(image, top_k=top_k, threads=threads)
        except ImageError as e:
            raise gr.Error(str(e), title="Can't classify this file", print_exception=False) from None
        except NonFiniteResultError as e:  # logged with the model and engine where it was raised
            raise gr.Error(str(e), title="No answer", print_exception=False) from None

    def predict(image: str | None) -> dict[str, float]:
        """`/predict`: the default model's top classes."""
        return classify(image, models.default)

    def compare(image: str | None, name_a: str, name_b: str) -> tuple[dict[str, float], dict[str, float]]:
        """`/compare`: two models' top classes for one photo."""
        return classify(image, name_a), classify(image, name_b)

    def analyse_first(classifier: Classifier, image: str) -> tuple[dict[str, float], ShownPhoto | None]:
        """`analyse`, ahead of any live frames."""
        with photos_first.photo() as threads:
            return analyse(classifier, image, top_k, threads)

    def show_analysis(classifier: Classifier, image: str, opacity: float):
        predictions, shown = analyse_first(classifier, image)
        top = next(iter(predictions))
        picture, caption = heatmap_picture(shown, top, opacity, classifier.no_heatmaps_reason)
        return predictions, picture, caption, shown

    def show_photo(image: str | None, opacity: float, name: str):
        """A photo landed (or was cleared): bars, the top class's heatmap and caption, session state."""
        if image is None:
            return None, no_heatmap(), "", None
        return show_analysis(classifier_named(models, name), image, opacity)

    def choose_model(
        name: str,
        current: str,
        image: str | None,
        opacity: float,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """Another model was picked: load it (download progress on the page), show its card, and classify
        the photo again. On failure the page puts the previous model back (`.failure` below)."""
        if name == current:  # put back after a failure, or picked again: nothing to do
            return (gr.skip(),) * 6
        classifier = load_with_progress(models, name, progress)
        card = model_card(models, name)
        if image is None:
            return card, gr.skip(), gr.skip(), gr.skip(), gr.skip(), name
        return card, *show_analysis(classifier, image, opacity), name

    def finish_heatmap(shown: ShownPhoto | None, opacity: float):
        """After the bars: the maps that need a gradient (Grad-CAM), and the top class's picture."""
        if shown is None or shown.source is None:
            return gr.skip(), gr.skip()
        shown.make_maps()
        return heatmap_picture(shown, shown.label, opacity, None)

    def explain(image: str | None):
        """The label value and the top class's heatmap picture (none where the model has no heatmaps):
        `/explain`."""
        if image is None:
            raise gr.Error(NO_PHOTO)
        predictions, shown = analyse_first(classifier_named(models, models.default), image)
        if shown is None:
            return predictions, None
        top_map = shown.maps[shown.label] if shown.maps else shown.source.cam(shown.label)  # Grad-CAM: one
        return predictions, own_file(overlay_heatmap(shown.image, top_map, shown.region))

    def switch_heatmap(shown: ShownPhoto | None, opacity: float, selected: gr.SelectData):
        """A bar was clicked: that class's heatmap, from the maps kept for this photo."""
        if shown is None or selected.value not in shown.maps:
            return gr.skip(), gr.skip(), gr.skip()
        picture, caption = heatmap_picture(shown, selected.value, opacity, None)
        return picture, caption, replace(shown, label=selected.value)

    def change_opacity(shown: ShownPhoto | None, opacity: float):
        return gr.skip() if shown is None else heatmap_picture(shown, shown.label, opacity, None)[0]

    def classify_many(files: list[str] | None, name: str, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """The Many photos tab: a row per file (bad ones with their error) and the same table as a CSV."""
        try:
            rows, csv_path = batch.classify_uploads(
                classifier_named(models, name),
                files or [],
                max_files=max_batch_files,
                top_k=top_k,
                progress=lambda done, total: progress((done, total), unit="photos"),
            )
        except ValueError as e:  # none, or too many: in plain words
            raise gr.Error(str(e), print_exception=False) from None
        return rows, gr.DownloadButton(value=csv_path, visible=True)

    def compare_on_page(
        image: str | None,
        name_a: str,
        name_b: str,
        last: tuple[str, str] | None = None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """The Compare tab: each model's bars, its time for this photo and its top class's heatmap.

        `last` (the models shown) is given when a model was changed: the same two again need no work."""
        if last is not None and (name_a, name_b) == tuple(last):
            return (gr.skip(),) * (len(compared.outputs) + 1)
        classifiers = [load_with_progress(models, name, progress) for name in (name_a, name_b)]
        outputs: list = []
        for name, classifier in zip((name_a, name_b), classifiers, strict=True):
            if image is None:
                outputs += [None, "", no_heatmap(), ""]
                continue
            started = time.perf_counter()
            predictions, shown = analyse_first(classifier, image)
            if shown is not None:
                shown.make_maps()  # Grad-CAM's too: the time shown is the whole answer's
            took = (time.perf_counter() - started) * 1000
            top = next(iter(predictions))
            picture, caption = heatmap_picture(shown, top, 0.5, classifier.no_heatmaps_reason, name)
            outputs += [predictions, f"**{name}**: {took:.0f} ms for this photo", picture, caption]
        return *outputs, (name_a, name_b)

    # Uploads and results are deleted by `clean_cache` (see launch_options), not by Gradio's delete_cache.
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\n\n{description}")
        shown = gr.State()
        chosen = gr.State(models.default)  # the session's model, once it has loaded
        with gr.Tab("Photo"):
            picker, card = model_picker(models)
            with gr.Row(equal_height=False):
                with gr.Column():
                    photo = photo_input("Photo", "The photo being classified")
                    gr.ClearButton(photo)  # in the browser; the photo's change then resets the rest
                    if examples:
                        gr.Examples(list(examples), inputs=photo, example_labels=example_labels(examples))
                with gr.Column():
                    bars = gr.Label(num_top_classes=top_k, label=f"Top {top_k}")
                    overlay = gr.Image(label="Heatmap", type="pil", interactive=False, format="jpeg")
                    caption = gr.Markdown(elem_id="heatmap-caption")
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity")

        live_tab(
            models, chosen, photos_first, top_k=top_k, time_limit=live_time_limit, max_streams=max_streams
        )

        with gr.Tab("Many photos"):
            gr.Markdown(
                f"Choose up to {max_batch_files} photos at once: each gets a row, and the table comes as a "
                "CSV file too." + (" The model is the one chosen on the Photo tab." if several else "")
            )
            many = gr.UploadButton(
                "Choose photos", file_count="multiple", file_types=["image"], variant="primary"
            )
            table = gr.Dataframe(
                headers=batch.TABLE_HEADERS,
                interactive=False,
                wrap=True,
                label="Results",
                max_height=600,
                column_widths=["14%", "14%", "10%", "37%", "25%"],
            )
            download = gr.DownloadButton("Download CSV", visible=False)

        compared = compare_tab(models, examples, top_k, visible=several)

        page_only = {"api_visibility": "private"}  # the page's own events; the API is below
        landed = photo.change(
            show_photo,
            [photo, opacity, chosen],
            [bars, overlay, caption, shown],
            concurrency_limit=MODEL_CONCURRENCY,  # the session's model may need loading again
            **page_only,
        )
        # Grad-CAM maps come after the bars; a new photo cancels the last one's, which is no longer wanted.
        mapped = landed.success(finish_heatmap, [shown, opacity], [overlay, caption], **page_only)
        photo.change(None, cancels=[mapped], **page_only)
        bars.select(switch_heatmap, [shown, opacity], [overlay, caption, shown], **page_only)
        opacity.release(change_opacity, [shown, opacity], overlay, **page_only)
        # .change, not .input: a dropdown sends "input" again when it loses focus; this fires once per choice.
        # The card shows torchvision's figures at once, what this machine measured once the model has loaded.
        switched = picker.change(
            lambda name: model_card(models, name), picker, card, show_progress="hidden", **page_only
        ).then(
            choose_model,
            [picker, chosen, photo, opacity],
            [card, bars, overlay, caption, shown, chosen],
            show_progress_on=[bars, overlay],  # the card stays readable while a model loads
            concurrency_limit=MODEL_CONCURRENCY,
            **page_only,
        )
        switched.failure(lambda name: name, chosen, picker, **page_only)  # a failed load: the previous stays
        switched.success(finish_heatmap, [shown, opacity], [overlay, caption], **page_only)

        many.upload(classify_many, [many, chosen], [table, download], concurrency_limit=1, **page_only)
        if upload_max_side:  # in the browser only: API clients send what they like
            max_pixels = classifier_named(models, models.default).max_pixels
            demo.load(None, js=shrink_uploads_js(upload_max_side, max_pixels))

        compare_inputs = [compared.photo, compared.model_a, compared.model_b]
        compare_outputs = [*compared.outputs, compared.last_models]
        compare_options = {
            "show_progress_on": compared.progress_on,
            "concurrency_limit": MODEL_CONCURRENCY,
            **page_only,
        }
        compared.photo.change(compare_on_page, compare_inputs, compare_outputs, **compare_options).failure(
            lambda last: last, compared.last_models, [compared.model_a, compared.model_b], **page_only
        )
        gr.on(
            [compared.model_a.change, compared.model_b.change],
            compare_on_page,
            [*compare_inputs, compared.last_models],
            compare_outputs,
            **compare_options,
        ).failure(lambda last: last, compared.last_models, [compared.model_a, compared.model_b], **page_only)

        # The API, unchanged for clients since the first version: /predict takes a photo, gives the top-k.
        gr.Button(visible=False).click(predict, photo, bars, api_name="predict")
        gr.Button(visible=False).click(explain, photo, [bars, overlay], api_name="explain")
        # Any offered model by name: /classify (photo, model) and /compare (photo, model A, model B).
        gr.Button(visible=False).click(
            classify, [photo, picker], bars, api_name="classify", concurrency_limit=MODEL_CONCURRENCY
        )
        gr.Button(visible=False).click(
            compare,
            [compared.photo, compared.model_a, compared.model_b],
            [compared.bars_a, compared.bars_b],
            api_name="compare",
            concurrency_limit=MODEL_CONCURRENCY,
        )
    return demo.queue(max_size=queue_size)


def model_picker(models: ModelSet[Classifier]) -> tuple[ModelChoice, gr.Markdown]:
    """The model picker and, beside it, the chosen model's card; hidden where there is one model only."""
    with gr.Row(equal_height=False, visible=len(models.names) > 1):
        picker = ModelChoice(
            model_choices(models), value=models.default, label="Model", scale=1, min_width=240
        )
        card = gr.Markdown(model_card(models, models.default), elem_id="model-card")
    return picker, card


def photo_input(label: str, alt_text: str, **options) -> ImageFile:
    """A photo input as the page's tabs take it: a file path (the classifier decodes it), from an upload, the
    webcam or the clipboard."""
    return ImageFile(
        type="filepath",
        image_mode=None,
        sources=["upload", "webcam", "clipboard"],
        label=label,
        alt_text=alt_text,
        **options,
    )


def example_labels(examples: Sequence[str]) -> list[str]:
    """What a screen reader says for each example thumbnail: its file name in words."""
    return [Path(path).stem.replace("_", " ").title() for path in examples]


@dataclass(frozen=True)
class CompareTab:
    photo: ImageFile
    model_a: ModelChoice
    model_b: ModelChoice
    bars_a: gr.Label
    bars_b: gr.Label
    outputs: list[gr.components.Component]
    """Per model: bars, its time for this photo, the heatmap picture and its caption."""
    progress_on: list[gr.components.Component]
    """Where a model's loading shows: the bars and heatmap pictures."""
    last_models: gr.State
    """The two models last shown, put back when a chosen one fails to load."""


def compare_tab(
    models: ModelSet[Classifier], examples: Sequence[str], top_k: int, *, visible: bool
) -> CompareTab:
    """One photo, two models side by side: their bars, time and heatmaps."""
    second = next((name for name in models.names if name != models.default), models.default)
    with gr.Tab("Compare", visible=visible):
        gr.Markdown(
            "One photo, two models: their five best guesses side by side, with the time each took for this "
            "photo on this machine and where each looked for its top class."
        )
        with gr.Row(equal_height=False):
            with gr.Column():
                photo = photo_input("Photo to compare on", "The photo both models classify", height=320)
                gr.ClearButton(photo)
            with gr.Column():
                choices = [
                    ModelChoice(model_choices(models), value=name, label=f"Model {side}")
                    for side, name in (("A", models.default), ("B", second))
                ]
                if examples:
                    gr.Examples(list(examples), inputs=photo, example_labels=example_labels(examples))
        sides = []
        with gr.Row(equal_height=False):
            for side, choice in zip("AB", choices, strict=True):
                with gr.Column():
                    bars = gr.Label(num_top_classes=top_k, label=f"Top {top_k}, model {side}")
                    timing = gr.Markdown(elem_id=f"compare-time-{side.lower()}")
                    picture = gr.Image(label="Heatmap", type="pil", interactive=False, format="jpeg")
                    caption = gr.Markdown(elem_id=f"compare-caption-{side.lower()}")
                sides.append((choice, bars, [bars, timing, picture, caption]))
    (model_a, bars_a, outputs_a), (model_b, bars_b, outputs_b) = sides
    return CompareTab(
        photo,
        model_a,
        model_b,
        bars_a,
        bars_b,
        outputs=outputs_a + outputs_b,
        progress_on=[outputs_a[0], outputs_a[2], outputs_b[0], outputs_b[2]],
        last_models=gr.State((models.default, second)),
    )


def launch_options(
    max_file_size: str = MAX_FILE_SIZE, delete_cache: tuple[float, float] = DELETE_CACHE
) -> dict:
    """What every launch of the page passes to `launch()`: the accessible theme, the page's CSS, the upload
    limit, and the cleanup of uploads and results: every `delete_cache[0]` seconds, those older than
    `delete_cache[1]`."""
    return {
        "theme": THEME,
        "css": CSS,
        "max_file_size": max_file_size,
        "app_kwargs": {"lifespan": clean_cache(*delete_cache)},
    }


def clean_cache(every: float, older_than: float):
    """A server lifespan that deletes the app's old uploads and results on a schedule, and all of them when
    the server stops: what Gradio's `delete_cache` promises. Gradio 6.31's own stops for good the first time
    an upload lands during its scan ("Set changed size during iteration" ends its task), after which the
    cache grows for the life of the server; the soak (bench/soak.py) found it."""

    @contextlib.asynccontextmanager
    async def lifespan(server):
        async def on_schedule() -> None:
            while True:
                await asyncio.sleep(every)
                try:
                    await asyncio.to_thread(delete_old_files, server.get_blocks(), older_than)
                except Exception:  # logged; the next round tries again
                    logger.exception("Could not clean Gradio's cache; trying again in %s s", every)

        task = asyncio.create_task(on_schedule())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            delete_old_files(server.get_blocks(), None)

    return lifespan


def delete_old_files(blocks: gr.Blocks, older_than: float | None) -> int:
    """Delete the files the app created (uploads, results) that are older than `older_than` seconds by
    ctime, all of them when None, and each one's folder once it is empty (Gradio keeps one folder per file);
    files Gradio keeps for the page (the examples) stay. Returns how many files went."""
    keep = set()
    for component in blocks.blocks.values():
        keep.update(getattr(component, "keep_in_cache", ()))
    cache = os.path.realpath(blocks.GRADIO_CACHE)
    now, deleted = time.time(), 0
    for files in blocks.temp_file_sets:
        for file in list(files):  # a copy: requests add files while this runs
            if file in keep:
                continue
            try:
                if older_than is not None and now - os.lstat(file).st_ctime <= older_than:
                    continue
                os.remove(file)
                deleted += 1
            except FileNotFoundError:
                pass
            files.discard(file)
            folder = os.path.dirname(os.path.realpath(file))
            if os.path.dirname(folder) == cache:
                with contextlib.suppress(OSError):  # not empty: another file with the same content
                    os.rmdir(folder)
    return deleted


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the image classifier demo in the browser.")
    parser.add_argument("--share", action="store_true", help="also serve on a temporary public link")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860, or $GRADIO_SERVER_PORT)")
    add_model_arguments(parser)
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        metavar="A,B,...",
        help="the torchvision models on offer, or 'all' (default: a set that fits a 2-vCPU / 16 GB machine: "
        f"{', '.join(DEFAULT_MODELS)}); --model is the one shown first",
    )
    parser.add_argument(
        "--model-memory",
        type=float,
        default=DEFAULT_MODEL_MEMORY_MB,
        metavar="MB",
        help=f"memory the loaded models may take together; least recently used out first "
        f"(default {DEFAULT_MODEL_MEMORY_MB})",
    )
    parser.add_argument(
        "--max-file-size", default=MAX_FILE_SIZE, help=f"largest upload, e.g. 5mb (default {MAX_FILE_SIZE})"
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_PIXELS / 1e6,
        help=f"largest image in megapixels (default {DEFAULT_MAX_PIXELS / 1e6:g})",
    )
    parser.add_argument(
        "--max-batch-files",
        type=int,
        default=batch.DEFAULT_MAX_BATCH_FILES,
        help=f"most photos the Many photos tab takes at once (default {batch.DEFAULT_MAX_BATCH_FILES})",
    )
    parser.add_argument(
        "--upload-max-side",
        type=int,
        default=UPLOAD_MAX_SIDE,
        help="the browser shrinks photos to this many pixels on their long side, upright and without "
        f"metadata, before uploading them; 0 sends them as they are (default {UPLOAD_MAX_SIDE})",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=MAX_STREAMS,
        help=f"live webcam streams served at once; more wait their turn (default {MAX_STREAMS})",
    )
    parser.add_argument(
        "--live-time-limit",
        type=float,
        default=LIVE_TIME_LIMIT,
        metavar="SECONDS",
        help=f"seconds a live stream runs before it lets a waiting one go first (default {LIVE_TIME_LIMIT})",
    )
    parser.add_argument(
        "--queue-size", type=int, default=QUEUE_SIZE, help=f"requests allowed to wait (default {QUEUE_SIZE})"
    )
    args = parser.parse_args(argv)
    if args.upload_max_side < 0:
        parser.error("--upload-max-side takes a number of pixels, or 0 to send photos as they are")
    if args.max_streams < 1 or args.live_time_limit <= 0:
        parser.error("--max-streams must be at least 1 and --live-time-limit more than 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    log = logging.getLogger("image_classifier")  # the engine choice, cache repairs: one line each
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler())
    try:
        models = classifier_set(
            args.models,
            default=args.model,
            weights=args.weights,
            device=args.device,
            max_pixels=round(args.max_megapixels * 1e6),
            precision=args.precision,
            memory_mb=args.model_memory,
            engine=args.engine,
        )
        models.load_default()  # fail now, in words, rather than on the first request
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    demo = build_demo(
        models,
        queue_size=args.queue_size,
        max_batch_files=args.max_batch_files,
        upload_max_side=args.upload_max_side,
        live_time_limit=args.live_time_limit,
        max_streams=args.max_streams,
    )
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share or None,  # None: Gradio's own default, a link only where GRADIO_SHARE asks
        **launch_options(args.max_file_size),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
