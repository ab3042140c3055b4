"""Web demo: drop, paste or snap a photo and see an ImageNet model's top-5 guesses as a bar chart.

python app.py                      # http://127.0.0.1:7860
python app.py --share              # plus a temporary public link
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from classifier import (
    DEFAULT_MAX_PIXELS,
    Classifier,
    ImageError,
    ModelLoadError,
    add_model_arguments,
    load_classifier,
)

EXAMPLES = sorted(str(path) for path in Path(__file__).with_name("examples").glob("*.jpg"))
MAX_FILE_SIZE = "20mb"
"""Uploads above this are refused by Gradio before they reach the classifier."""
QUEUE_SIZE = 32
"""Requests waiting beyond this are turned away at once with "Queue is full! Please try again."."""
TITLE = "What's in this picture?"
DESCRIPTION = (
    "Drop in a photo, paste one from the clipboard or take one with your webcam, and {model}, "
    "a neural network trained on the 1,000 everyday categories of ImageNet, shows its five best "
    "guesses with how sure it is of each. Uploads are used only to answer, and deleted within two hours."
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


def build_demo(
    classifier: Classifier,
    *,
    model_name: str = "an ImageNet model",
    examples: Sequence[str] = EXAMPLES,
    top_k: int = 5,
    queue_size: int = QUEUE_SIZE,
) -> gr.Interface:
    """The Gradio interface around `classifier`, queued; its API endpoint is `/predict`."""

    def classify(image: str | None) -> dict[str, float]:
        if image is None:
            raise gr.Error("Add a photo first: upload, paste or take one with the webcam.")
        try:
            return classifier.predict(image, top_k=top_k)
        except ImageError as e:
            raise gr.Error(str(e), title="Can't classify this file", print_exception=False) from None

    demo = gr.Interface(
        fn=classify,
        inputs=ImageFile(
            type="filepath", image_mode=None, sources=["upload", "webcam", "clipboard"], label="Photo"
        ),
        outputs=gr.Label(num_top_classes=top_k, label=f"Top {top_k}"),
        examples=list(examples) or None,
        title=TITLE,
        description=DESCRIPTION.format(model=model_name),
        flagging_mode="never",
        api_name="predict",
        delete_cache=(3600, 3600),  # hourly, remove cached uploads older than an hour
    )
    return demo.queue(max_size=queue_size)


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
        "--queue-size", type=int, default=QUEUE_SIZE, help=f"requests allowed to wait (default {QUEUE_SIZE})"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        classifier = load_classifier(
            args.model,
            weights=args.weights,
            device=args.device,
            max_pixels=round(args.max_megapixels * 1e6),
            precision=args.precision,
        )
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    demo = build_demo(classifier, model_name=args.model, queue_size=args.queue_size)
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share or None,  # None: Gradio's own default, a link only where GRADIO_SHARE asks
        max_file_size=args.max_file_size,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
