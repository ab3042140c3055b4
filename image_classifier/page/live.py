"""The Live tab: the webcam's frames classified as they come, the bars following, with the frames per
second answered and the model's milliseconds per frame, by the model chosen on the Photo tab."""

from __future__ import annotations

import gradio as gr

from classifier import NonFiniteResultError
from image_classifier.live import LiveFigures, answer_frame

from .answers import Answers
from .components import WebcamFrames
from .settings import (
    LIVE_CAMERA,
    LIVE_IN_FLIGHT,
    LIVE_STALLED_MS,
    LIVE_STREAM_EVERY,
    PAGE_ONLY,
    Limits,
)

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

LIVE_PACING = """{
const panel = element.closest('[role="tabpanel"]') || document.body;
const IN_FLIGHT = {in_flight}, STALLED_MS = {stalled_ms};
const pacing = (window.livePacing ??= {sent: 0, lastAnswer: 0, asking: false, handledBefore: 0});
if (!pacing.installed) {
  pacing.installed = true;
  const toDataURL = HTMLCanvasElement.prototype.toDataURL;
  HTMLCanvasElement.prototype.toDataURL = function (...args) {
    if (pacing.asking && args[0] === "image/jpeg") {  // Gradio's streaming capture, sending a frame
      pacing.asking = false;
      pacing.sent += 1;
    }
    return toDataURL.apply(this, args);
  };
}
const videoWidth = Object.getOwnPropertyDescriptor(HTMLVideoElement.prototype, "videoWidth").get;
const pace = (video) => {
  if (video.livePaced) return;
  video.livePaced = true;
  Object.defineProperty(video, "videoWidth", {configurable: true, get() {
    const width = videoWidth.call(this);
    if (width && !pacing.asking) {  // the first read in a task: Gradio's capture asking whether it may go
      if (pacing.sent >= IN_FLIGHT) {
        if (performance.now() - pacing.lastAnswer < STALLED_MS) return 0;
        pacing.sent = 0;  // no answer for too long: start afresh
        pacing.lastAnswer = performance.now();
      }
      pacing.asking = true;
      queueMicrotask(() => { pacing.asking = false; });
    }
    return width;
  }});
};
const answered = (handled) => {  // the count of frames the server handled, its status tracker aside
  const count = parseInt(handled.querySelector(".html-container")?.textContent, 10);
  if (!(count > 0) || count === pacing.handledBefore) return;
  const more = count > pacing.handledBefore ? count - pacing.handledBefore : 1;  // or a new session's count
  pacing.sent = Math.max(0, pacing.sent - more);
  pacing.handledBefore = count;
  pacing.lastAnswer = performance.now();
};
const watch = () => {
  for (const video of panel.querySelectorAll("#live-camera video")) pace(video);
  const handled = panel.querySelector("#live-handled");
  if (handled && !handled.livePaced) {
    handled.livePaced = true;
    const changes = {subtree: true, childList: true, characterData: true};
    new MutationObserver(() => answered(handled)).observe(handled, changes);
  }
};
new MutationObserver(watch).observe(panel, {subtree: true, childList: true});
watch();
}""".replace("{in_flight}", str(LIVE_IN_FLIGHT)).replace("{stalled_ms}", str(LIVE_STALLED_MS))
"""Frames sent as fast as the server answers them: Gradio's streaming webcam captures, encodes and sends a
frame every `stream_every` whatever becomes of it (about 30 ms of the browser's CPU each), and the server
keeps only the newest. Here a capture waits while `LIVE_IN_FLIGHT` frames are sent and not yet handled (or
`LIVE_STALLED_MS`, after which it starts afresh): the server's answer to each frame, even one it skipped,
changes a hidden count (#live-handled). Gradio's capture asks the video's width first and skips a video
without one, so the video answers 0 while the page waits; a frame counts as sent when Gradio encodes it
(its canvas's `toDataURL("image/jpeg")` right after asking), not when it merely asks (it also asks, and
sends nothing, while its stream waits for its turn)."""


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
        handled = gr.HTML("0", visible="hidden", elem_id="live-handled", container=False, padding=False)
        gr.HTML("", js_on_load=LIVE_ACCESSIBILITY + LIVE_PACING, container=False, padding=False)
        figures = gr.State(LiveFigures())  # one per browser tab

    def classify_frame(frame: bytes | None, figures: LiveFigures, name: str, request: gr.Request = None):
        if answers.metrics is not None and request is not None:
            answers.metrics.live_frame(request.session_hash)  # a running stream, never shown
        figures.handled += 1
        try:
            answer = answer_frame(
                answers.classifier(name),
                frame,
                top_k=answers.top_k,
                photos_first=answers.photos_first,
                stream=request and request.session_hash,
            )
        except NonFiniteResultError as e:  # the stream stops with the reason, once, not a NaN per frame
            raise gr.Error(str(e), title="No answer", print_exception=False) from None
        if answer is None:
            return gr.skip(), gr.skip(), str(figures.handled)
        figures.record(answer)
        text = figures.readout()
        return answer.predictions, gr.skip() if text is None else text, str(figures.handled)

    camera.stream(
        classify_frame,
        [camera, figures, chosen],
        [bars, readout, handled],
        stream_every=LIVE_STREAM_EVERY,
        time_limit=limits.live_time_limit,
        concurrency_limit=limits.max_streams,
        concurrency_id="live",
        show_progress="hidden",
        **PAGE_ONLY,
    )
