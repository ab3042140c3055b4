"""The Live tab: the webcam's frames classified as they come, the bars following, with the frames per
second answered and the model's milliseconds per frame, by the model chosen on the Photo tab."""

from __future__ import annotations

import gradio as gr

from classifier import NonFiniteResultError
from image_classifier.live import LiveFigures, answer_frame

from .answers import Answers
from .components import WebcamFrames
from .settings import LIVE_CAMERA, LIVE_STREAM_EVERY, PAGE_ONLY, Limits

LIVE_ACCESSIBILITY = """
const panel = element.closest('[role="tabpanel"]') || document.body;
const fix = () => {
  for (const button of panel.querySelectorAll("#live-camera .capture-button")) {
    const shown = button.textContent.trim();
    if (shown && button.getAttribute("aria-label") !== shown) button.setAttribute("aria-label", shown);
  }
};
new MutationObserver(fix).observe(panel, {subtree: true, childList: true, characterData: true});
fix();
"""
"""A fix to Gradio's markup in the Live tab (WCAG 2.1): the streaming webcam's Record/Stop button is named
"capture photo" whatever it shows (2.5.3, label in name)."""


def live_tab(answers: Answers, chosen: gr.State, limits: Limits) -> None:
    """The Live tab, its stream wired. Gradio's own streaming: `limits.max_streams` streams run at once and
    others wait; a stream rejoins the queue after `limits.live_time_limit` seconds, so they take turns."""
    with gr.Tab("Live"):
        gr.Markdown(
            "Allow the webcam, then press Record: the bars follow what the camera sees until you press Stop. "
            "When more people stream than the server takes at once, streams take turns of "
            f"{limits.live_time_limit:g} s."
            + (" The model is the one chosen on the Photo tab." if len(answers.models.names) > 1 else "")
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
                bars = gr.Label(
                    num_top_classes=limits.top_k, label=f"Top {limits.top_k}, live", elem_id="live-bars"
                )
                readout = gr.Markdown(elem_id="live-readout")
        gr.HTML("", js_on_load=LIVE_ACCESSIBILITY, container=False, padding=False)
        figures = gr.State(LiveFigures())  # one per browser tab

    def classify_frame(frame: bytes | None, figures: LiveFigures, name: str, request: gr.Request = None):
        if answers.metrics is not None and request is not None:
            answers.metrics.live_frame(request.session_hash)  # a running stream, never shown
        try:
            answer = answer_frame(
                answers.classifier(name), frame, top_k=answers.top_k, photos_first=answers.photos_first
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
        time_limit=limits.live_time_limit,
        concurrency_limit=limits.max_streams,
        concurrency_id="live",
        show_progress="hidden",
        **PAGE_ONLY,
    )
