"""The Photo tab: one photo, the chosen model's five best guesses as bars, and where it looked (a heatmap,
switched by clicking a bar, its opacity on a slider); a model picker with each model's card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import gradio as gr

from image_classifier.sessions import SESSION_IDLE_S

from .answers import Answers, ShownPhoto, heatmap_picture, no_heatmap
from .components import ImageFile, ModelChoice, heatmap_image, photo_examples, photo_input
from .models import load_with_progress, model_card, model_picker
from .settings import PAGE_ONLY, Limits


@dataclass(frozen=True)
class PhotoTab:
    """The Photo tab's components that the API endpoints share."""

    photo: ImageFile
    picker: ModelChoice
    bars: gr.Label
    overlay: gr.Image


@dataclass(frozen=True)
class _Parts:
    tab: PhotoTab
    card: gr.Markdown
    caption: gr.Markdown
    opacity: gr.Slider
    shown: gr.State
    """The session's `ShownPhoto`: the photo and its maps, so a click on a bar needs no forward pass."""


def photo_tab(answers: Answers, chosen: gr.State, examples: Sequence[str], limits: Limits) -> PhotoTab:
    """The Photo tab, its events wired; `chosen` holds the session's model (the picker sets it once the
    model has loaded; the Live and Many photos tabs use it too)."""
    with gr.Tab("Photo"):
        picker, card = model_picker(answers.models)
        with gr.Row(equal_height=False):
            with gr.Column():
                photo = photo_input("Photo", "The photo being classified")
                gr.ClearButton(photo)  # in the browser; the photo's change then resets the rest
                photo_examples(examples, photo)
            with gr.Column():
                bars = gr.Label(num_top_classes=limits.top_k, label=f"Top {limits.top_k}")
                overlay = heatmap_image()
                caption = gr.Markdown(elem_id="heatmap-caption")
                opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Heatmap opacity")
    # The photo and its maps go an hour after they were last shown (image_classifier/sessions.py forgets the
    # rest of a session once its visitor has gone).
    shown = gr.State(time_to_live=SESSION_IDLE_S)
    parts = _Parts(PhotoTab(photo, picker, bars, overlay), card, caption, opacity, shown)
    _wire_photo(answers, chosen, parts)
    _wire_picker(answers, chosen, parts)
    return parts.tab


def finish_heatmap(shown: ShownPhoto | None, opacity: float):
    """After the bars: the maps that need a gradient (Grad-CAM), and the top class's picture."""
    if shown is None or shown.source is None:
        return gr.skip(), gr.skip()
    shown.make_maps()
    return heatmap_picture(shown, shown.label, opacity, None)


def switch_heatmap(shown: ShownPhoto | None, opacity: float, selected: gr.SelectData):
    """A bar was clicked: that class's heatmap, from the maps kept for this photo."""
    if shown is None or selected.value not in shown.maps:
        return gr.skip(), gr.skip(), gr.skip()
    picture, caption = heatmap_picture(shown, selected.value, opacity, None)
    return picture, caption, replace(shown, label=selected.value)


def change_opacity(shown: ShownPhoto | None, opacity: float):
    return gr.skip() if shown is None else heatmap_picture(shown, shown.label, opacity, None)[0]


def _wire_photo(answers: Answers, chosen: gr.State, parts: _Parts) -> None:
    """A photo lands: bars and heatmap; a click on a bar or the slider: another picture, no forward pass."""
    tab, shown, opacity = parts.tab, parts.shown, parts.opacity

    def show_photo(image: str | None, opacity: float, name: str):
        """A photo landed (or was cleared): bars, the top class's heatmap and caption, session state."""
        if image is None:
            return None, no_heatmap(), "", None
        with answers.metered("photo", name):
            return answers.show(answers.classifier(name), image, opacity)

    landed = tab.photo.change(
        show_photo,
        [tab.photo, opacity, chosen],
        [tab.bars, tab.overlay, parts.caption, shown],
        concurrency_limit=answers.concurrency,  # the session's model may need loading again
        **PAGE_ONLY,
    )
    # Grad-CAM maps come after the bars; a new photo cancels the last one's, which is no longer wanted.
    mapped = landed.success(finish_heatmap, [shown, opacity], [tab.overlay, parts.caption], **PAGE_ONLY)
    tab.photo.change(None, cancels=[mapped], **PAGE_ONLY)
    tab.bars.select(switch_heatmap, [shown, opacity], [tab.overlay, parts.caption, shown], **PAGE_ONLY)
    opacity.release(change_opacity, [shown, opacity], tab.overlay, **PAGE_ONLY)


def _wire_picker(answers: Answers, chosen: gr.State, parts: _Parts) -> None:
    """Another model picked: its card at once, then (once loaded) the photo again by it."""
    tab, models = parts.tab, answers.models

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
        with answers.metered("choose_model", name):
            classifier = load_with_progress(models, name, progress)
            card = model_card(models, name)
            if image is None:
                return card, gr.skip(), gr.skip(), gr.skip(), gr.skip(), name
            return card, *answers.show(classifier, image, opacity), name

    # .change, not .input: a dropdown sends "input" again when it loses focus; this fires once per choice.
    # The card shows torchvision's figures at once, what this machine measured once the model has loaded.
    switched = tab.picker.change(
        lambda name: model_card(models, name), tab.picker, parts.card, show_progress="hidden", **PAGE_ONLY
    ).then(
        choose_model,
        [tab.picker, chosen, tab.photo, parts.opacity],
        [parts.card, tab.bars, tab.overlay, parts.caption, parts.shown, chosen],
        show_progress_on=[tab.bars, tab.overlay],  # the card stays readable while a model loads
        concurrency_limit=answers.concurrency,
        **PAGE_ONLY,
    )
    switched.failure(lambda name: name, chosen, tab.picker, **PAGE_ONLY)  # a failed load: the previous stays
    switched.success(finish_heatmap, [parts.shown, parts.opacity], [tab.overlay, parts.caption], **PAGE_ONLY)
