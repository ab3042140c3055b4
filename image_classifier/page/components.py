"""The page's own Gradio components: subclasses that keep Gradio's front end but hand the functions what
the classifier wants (Gradio writes a type stub, components.pyi, beside this module; .gitignore skips it)."""

from __future__ import annotations

import base64
import binascii
import json
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


PAGE_FIXES = """
const DROP = "Drop an image file here to upload";
const fix = () => {
  for (const empty of document.querySelectorAll(".empty[aria-label]")) empty.removeAttribute("aria-label");
  for (const zone of document.querySelectorAll(`[aria-label^="${DROP}"]`)) {
    const shown = zone.textContent.replace(/\\s+/g, " ").trim(); // innerText would lay the page out
    const name = shown ? `${DROP}: ${shown}` : DROP;
    if (zone.getAttribute("aria-label") !== name) zone.setAttribute("aria-label", name);
  }
};
new MutationObserver(fix).observe(document.body, {subtree: true, childList: true, characterData: true});
fix();
"""
"""Two fixes to Gradio's markup for WCAG 2.1, wherever they appear: an empty bar chart or picture is a plain
div carrying an aria-label, which ARIA doesn't allow on a div without a role (axe: aria-prohibited-attr;
the component's own label names it already); and the upload area is named "Drop an image file here to
upload" while it shows "Drop Image Here - or - Click to Upload", so a person saying what they see can't
reach it by voice (2.5.3, label in name): its name now ends with what it shows."""


def page_accessibility_fixes() -> None:
    """Fixes to Gradio's markup that every tab needs, in every state (WCAG 2.1 A/AA)."""
    gr.HTML("", js_on_load=PAGE_FIXES, container=False, padding=False)


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


EXAMPLE_ALT_TEXT = """
const panel = element.closest('[role="tabpanel"]') || document.body;
const names = %s;
const fix = () => {
  for (const image of panel.querySelectorAll(".gallery-item img")) {
    const name = names[decodeURIComponent(image.src.split("/").pop())];
    if (name && image.alt !== name) image.alt = name;
  }
};
new MutationObserver(fix).observe(panel, {subtree: true, childList: true});
fix();
"""
"""Gradio shows example photos as thumbnails with an empty text alternative, which leaves their buttons
without a name (WCAG 2.1: 1.1.1, 4.1.2): each thumbnail gets its photo's name, found by its file name."""


def photo_examples(examples: Sequence[str], photo: ImageFile) -> None:
    """The example photos under a photo input, as thumbnails each named in words (for a screen reader, or
    when the picture doesn't load); nothing where there are none."""
    if not examples:
        return
    gr.Examples(list(examples), inputs=photo, label="Examples")
    names = dict(zip((Path(path).name for path in examples), example_labels(examples), strict=True))
    gr.HTML("", js_on_load=EXAMPLE_ALT_TEXT % json.dumps(names), container=False, padding=False)


def heatmap_image(**options) -> gr.Image:
    """An output picture for a heatmap, sent as JPEG (light), its caption set with each answer."""
    return gr.Image(label="Heatmap", type="pil", interactive=False, format="jpeg", **options)
