"""Web demo: drop, paste or snap a photo and see an ImageNet model's top-5 guesses as a bar chart, with a
heatmap of where the model looked.

python app.py                      # http://127.0.0.1:7860
python app.py --share              # plus a temporary public link
"""

from __future__ import annotations

import argparse
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

EXAMPLES = sorted(str(path) for path in Path(__file__).with_name("examples").glob("*.jpg"))
MAX_FILE_SIZE = "20mb"
"""Uploads above this are refused by Gradio before they reach the classifier."""
QUEUE_SIZE = 32
"""Requests waiting beyond this are turned away at once with "Queue is full! Please try again."."""
DISPLAY_SIDE = 768
"""Longest side of the heatmap picture: sharp on a phone or a laptop, light to send."""
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


def build_demo(
    classifier: Classifier,
    *,
    model_name: str = "an ImageNet model",
    examples: Sequence[str] = EXAMPLES,
    top_k: int = 5,
    queue_size: int = QUEUE_SIZE,
    max_batch_files: int = batch.DEFAULT_MAX_BATCH_FILES,
) -> gr.Blocks:
    """The page around `classifier`, queued. API endpoints: `/predict` (photo -> top-k, as always) and
    `/explain` (photo -> top-k and the heatmap of the top class)."""

    def classify(image: str | None) -> dict[str, float]:
        """The top classes of a photo: the label value of `/predict`."""
        if image is None:
            raise gr.Error(NO_PHOTO)
        try:
            return classifier.predict(image, top_k=top_k)
        except ImageError as e:
            raise gr.Error(str(e), title="Can't classify this file", print_exception=False) from None
        except NonFiniteResultError as e:  # logged with the model and engine where it was raised
            raise gr.Error(str(e), title="No answer", print_exception=False) from None

    def analyse(image: str) -> tuple[dict[str, float], ShownPhoto | None]:
        try:
            analysis = classifier.analyse(image, top_k=top_k)
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
        "--queue-size", type=int, default=QUEUE_SIZE, help=f"requests allowed to wait (default {QUEUE_SIZE})"
    )
    return parser.parse_args(argv)


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
        classifier, model_name=args.model, queue_size=args.queue_size, max_batch_files=args.max_batch_files
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
