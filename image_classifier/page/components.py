"""The page's own Gradio components: subclasses that keep Gradio's front end but hand the functions what
the classifier wants (Gradio writes a type stub, components.pyi, beside this module; .gitignore skips it)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from image_classifier.model_set import refusal


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


def photo_examples(examples: Sequence[str], photo: ImageFile) -> None:
    """The example photos under a photo input, each named in words; nothing where there are none."""
    if examples:
        gr.Examples(list(examples), inputs=photo, example_labels=example_labels(examples))


def heatmap_image(**options) -> gr.Image:
    """An output picture for a heatmap, sent as JPEG (light), its caption set with each answer."""
    return gr.Image(label="Heatmap", type="pil", interactive=False, format="jpeg", **options)
