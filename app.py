"""Web demo: drop, paste or snap a photo and see an ImageNet model's top-5 guesses as a bar chart, with a
heatmap of where the model looked.

python app.py                      # http://127.0.0.1:7860
python app.py --share              # plus a temporary public link
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import gradio as gr
import numpy as np
from PIL import Image

from classifier import (
    DEFAULT_MAX_PIXELS,
    Classifier,
    ImageError,
    ModelLoadError,
    NonFiniteResultError,
    add_model_arguments,
    load_classifier,
)
from image_classifier import batch
from image_classifier.heatmaps import overlay as overlay_heatmap
from image_classifier.live import LiveFigures, PhotosFirst, answer_frame

EXAMPLES = sorted(str(path) for path in Path(__file__).with_name("examples").glob("*.jpg"))
MAX_FILE_SIZE = "20mb"
"""Uploads above this are refused by Gradio before they reach the classifier."""
QUEUE_SIZE = 32
"""Requests waiting beyond this are turned away at once with "Queue is full! Please try again."."""
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
NO_PHOTO = "Add a photo first: upload, paste or take one with the webcam."
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


@dataclass(frozen=True)
class ShownPhoto:
    """What a session keeps of its current photo, so a click on a bar needs no second forward pass."""

    image: Image.Image
    """The upright photo, at most DISPLAY_SIDE pixels on its longest side."""
    maps: dict[str, np.ndarray]
    """The top classes' maps on the model's grid."""
    region: tuple[float, float, float, float]
    """The part of the photo the model saw (fractions)."""
    label: str
    """The class whose map is shown."""


def display_size(image: Image.Image) -> Image.Image:
    """`image` at most DISPLAY_SIDE on its longest side: what `thumbnail` gives, without first copying the
    whole decoded photo (36 MB for a 12 MP one decoded whole)."""
    scale = DISPLAY_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def heatmap_caption(label: str) -> str:
    return f"Where the model looked for “{label}”"


def shrink_uploads_js(max_side: int, max_pixels: int) -> str:
    """The page-load script that makes the browser send photos upright, at most `max_side` pixels on their
    long side and without metadata (see image_classifier/shrink_uploads.js); photos over `max_pixels` go
    as they are, for the server to refuse with its own message."""
    settings = json.dumps({"maxSide": max_side, "maxPixels": max_pixels})
    return f"() => ({SHRINK_UPLOADS.read_text()})({settings})"


def live_tab(
    classifier: Classifier,
    photos_first: PhotosFirst,
    *,
    top_k: int = 5,
    time_limit: float = LIVE_TIME_LIMIT,
    max_streams: int = MAX_STREAMS,
) -> None:
    """The Live tab: the webcam's frames classified as they come, the bars following, with the frames per
    second answered and the model's milliseconds per frame. Gradio's own streaming: `max_streams` streams
    run at once and others wait; a stream rejoins the queue after `time_limit` seconds, so they take turns."""
    with gr.Tab("Live"):
        gr.Markdown(
            "Allow the webcam, then press Record: the bars follow what the camera sees until you press Stop. "
            f"When more people stream than the server takes at once, streams take turns of {time_limit:g} s."
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

    def classify_frame(frame: bytes | None, figures: LiveFigures):
        try:
            answer = answer_frame(classifier, frame, top_k=top_k, photos_first=photos_first)
        except NonFiniteResultError as e:  # the stream stops with the reason, once, not a NaN per frame
            raise gr.Error(str(e), title="No answer", print_exception=False) from None
        if answer is None:
            return gr.skip(), gr.skip()
        figures.record(answer)
        text = figures.readout()
        return answer.predictions, gr.skip() if text is None else text

    camera.stream(
        classify_frame,
        [camera, figures],
        [bars, readout],
        stream_every=LIVE_STREAM_EVERY,
        time_limit=time_limit,
        concurrency_limit=max_streams,
        concurrency_id="live",
        show_progress="hidden",
        api_visibility="private",
    )


def build_demo(
    classifier: Classifier,
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
    """The page around `classifier`, queued. API endpoints: `/predict` (photo -> top-k, as always) and
    `/explain` (photo -> top-k and the heatmap of the top class). The browser shrinks photos to
    `upload_max_side` pixels before uploading them (None or 0: it sends them as they are)."""
    photos_first = PhotosFirst()  # live streams give way to photos

    def classify(image: str | None) -> dict[str, float]:
        """The top classes of a photo: the label value of `/predict`."""
        if image is None:
            raise gr.Error(NO_PHOTO)
        try:
            with photos_first.photo() as threads:
                return classifier.predict(image, top_k=top_k, threads=threads)
        except ImageError as e:
            raise gr.Error(str(e), title="Can't classify this file", print_exception=False) from None
        except NonFiniteResultError as e:  # logged with the model and engine where it was raised
            raise gr.Error(str(e), title="No answer", print_exception=False) from None

    def analyse(image: str) -> tuple[dict[str, float], ShownPhoto | None]:
        try:
            with photos_first.photo() as threads:
                analysis = classifier.analyse(image, top_k=top_k, threads=threads)
        except ImageError as e:
            raise gr.Error(str(e), title="Can't classify this file", print_exception=False) from None
        except NonFiniteResultError as e:
            raise gr.Error(str(e), title="No answer", print_exception=False) from None
        if analysis.heatmaps is None:
            return analysis.predictions, None
        display = display_size(analysis.image)
        maps = {label: analysis.heatmaps.cam(label) for label in analysis.predictions}
        top = next(iter(analysis.predictions))
        return analysis.predictions, ShownPhoto(display, maps, analysis.heatmaps.region, top)

    def heatmap_picture(shown: ShownPhoto | None, label: str, opacity: float):
        if shown is None:  # the model has no heatmaps: say so in words
            return gr.Image(value=None, label="Heatmap", alt_text=None), classifier.no_heatmaps_reason
        picture = overlay_heatmap(shown.image, shown.maps[label], shown.region, opacity)
        caption = heatmap_caption(label)
        return gr.Image(value=picture, label=caption, alt_text=caption), caption

    def show_photo(image: str | None, opacity: float):
        """A photo landed (or was cleared): bars, the top class's heatmap and caption, session state."""
        if image is None:
            return None, gr.Image(value=None, label="Heatmap", alt_text=None), "", None
        predictions, shown = analyse(image)
        picture, caption = heatmap_picture(shown, next(iter(predictions)), opacity)
        return predictions, picture, caption, shown

    def explain(image: str | None):
        """The label value and the top class's heatmap picture (none where the model has no heatmaps):
        `/explain`."""
        if image is None:
            raise gr.Error(NO_PHOTO)
        predictions, shown = analyse(image)
        if shown is None:
            return predictions, None
        return predictions, overlay_heatmap(shown.image, shown.maps[shown.label], shown.region)

    def switch_heatmap(shown: ShownPhoto | None, opacity: float, selected: gr.SelectData):
        """A bar was clicked: that class's heatmap, from the maps kept for this photo."""
        if shown is None or selected.value not in shown.maps:
            return gr.skip(), gr.skip(), gr.skip()
        picture, caption = heatmap_picture(shown, selected.value, opacity)
        return picture, caption, replace(shown, label=selected.value)

    def change_opacity(shown: ShownPhoto | None, opacity: float):
        return gr.skip() if shown is None else heatmap_picture(shown, shown.label, opacity)[0]

    def classify_many(files: list[str] | None, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        """The Many photos tab: a row per file (bad ones with their error) and the same table as a CSV."""
        try:
            rows, csv_path = batch.classify_uploads(
                classifier,
                files or [],
                max_files=max_batch_files,
                top_k=top_k,
                progress=lambda done, total: progress((done, total), unit="photos"),
            )
        except ValueError as e:  # none, or too many: in plain words
            raise gr.Error(str(e), print_exception=False) from None
        return rows, gr.DownloadButton(value=csv_path, visible=True)

    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\n\n{DESCRIPTION.format(model=model_name)}")
        shown = gr.State()
        with gr.Tab("Photo"), gr.Row(equal_height=False):
            with gr.Column():
                photo = ImageFile(
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "webcam", "clipboard"],
                    label="Photo",
                    alt_text="The photo being classified",
                )
                gr.ClearButton(photo)  # in the browser; the photo's change then resets the rest
                if examples:
                    gr.Examples(
                        list(examples),
                        inputs=photo,
                        example_labels=[Path(path).stem.replace("_", " ").title() for path in examples],
                        label="Examples",
                    )
            with gr.Column():
                bars = gr.Label(num_top_classes=top_k, label=f"Top {top_k}")
                overlay = gr.Image(label="Heatmap", type="pil", interactive=False, format="jpeg")
                caption = gr.Markdown(elem_id="heatmap-caption")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity")

        live_tab(classifier, photos_first, top_k=top_k, time_limit=live_time_limit, max_streams=max_streams)

        with gr.Tab("Many photos"):
            gr.Markdown(
                f"Choose up to {max_batch_files} photos at once: each gets a row, and the table comes as a "
                "CSV file too."
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

        gr.Markdown(
            f"Model: {model_name}. Engine: {classifier.engine_choice.describe()}.", elem_id="model-card"
        )

        page_only = {"api_visibility": "private"}  # the page's own events; the API is below
        photo.change(show_photo, [photo, opacity], [bars, overlay, caption, shown], **page_only)
        bars.select(switch_heatmap, [shown, opacity], [overlay, caption, shown], **page_only)
        opacity.release(change_opacity, [shown, opacity], overlay, **page_only)

        many.upload(classify_many, many, [table, download], concurrency_limit=1, **page_only)
        if upload_max_side:  # in the browser only: API clients send what they like
            demo.load(None, js=shrink_uploads_js(upload_max_side, classifier.max_pixels))

        # The API, unchanged for clients since the first version: /predict takes a photo, gives the top-k.
        gr.Button(visible=False).click(classify, photo, bars, api_name="predict")
        gr.Button(visible=False).click(explain, photo, [bars, overlay], api_name="explain")
    return demo.queue(max_size=queue_size)


def launch_options(max_file_size: str = MAX_FILE_SIZE) -> dict:
    """What every launch of the page passes to `launch()`: the accessible theme and the upload limit."""
    return {"theme": THEME, "max_file_size": max_file_size}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the image classifier demo in the browser.")
    parser.add_argument("--share", action="store_true", help="also serve on a temporary public link")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860, or $GRADIO_SERVER_PORT)")
    add_model_arguments(parser)
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
        classifier = load_classifier(
            args.model,
            weights=args.weights,
            device=args.device,
            max_pixels=round(args.max_megapixels * 1e6),
            precision=args.precision,
            engine=args.engine,
        )
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    demo = build_demo(
        classifier,
        model_name=args.model,
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
