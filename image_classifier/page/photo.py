"""The Photo tab: one photo, the chosen model's five best guesses as bars, and where it looked (a heatmap,
switched by clicking a bar, its opacity on a slider); "Show where it sees…" any of the model's classes,
by the method chosen (the slow ones say how slow here); a model picker with each model's card."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import gradio as gr

from classifier import METHODS, Classifier
from image_classifier.sessions import SESSION_IDLE_S

from .answers import Answers, HeatmapRequests, ShownPhoto, finish_heatmap, heatmap_picture, no_heatmap
from .components import ImageFile, ModelChoice, heatmap_image, photo_examples, photo_input
from .models import ModelSource, load_with_progress, model_card, model_picker
from .repeats import Repeats
from .settings import PAGE_ONLY, Limits


@dataclass(frozen=True)
class PhotoTab:
    """The Photo tab's components that the API endpoints share."""

    photo: ImageFile
    picker: ModelChoice
    bars: gr.Label
    overlay: gr.Image
    see: gr.Dropdown
    """"Show where it sees…": any of the model's classes."""


@dataclass(frozen=True)
class _Parts:
    tab: PhotoTab
    card: gr.Markdown
    caption: gr.Markdown
    opacity: gr.Slider
    method: gr.Dropdown
    """How the maps are made: the model's methods, its default first."""
    shown: gr.State
    """The session's `ShownPhoto`: the photo and its maps, so a click on a bar needs no forward pass."""
    requests: gr.State
    """The session's `HeatmapRequests`: an answer overtaken by a newer request is not drawn."""


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
                default = answers.classifier(answers.models.default)
                with gr.Row():
                    see = gr.Dropdown(
                        sorted(default.labels, key=str.casefold),
                        value=None,
                        label="Show where it sees…",
                        info="Any of the model's classes: type to search",
                        filterable=True,
                    )
                    method = method_picker(answers.models, answers.models.default)
    # The photo and its maps go an hour after they were last shown (image_classifier/sessions.py forgets the
    # rest of a session once its visitor has gone).
    shown = gr.State(time_to_live=SESSION_IDLE_S)
    requests = gr.State(HeatmapRequests())  # each session gets a copy of its own
    tab = PhotoTab(photo, picker, bars, overlay, see)
    parts = _Parts(tab, card, caption, opacity, method, shown, requests)
    _wire_photo(answers, chosen, parts)
    _wire_picker(answers, chosen, parts)
    _wire_choices(answers, chosen, parts)
    return parts.tab


def method_choices(classifier: Classifier, ms_per_photo: float | None) -> list[tuple[str, str]]:
    """The model's heatmap methods as the page names them: the exact one says so, the slow ones how slow
    they are on this machine (as measured, or estimated from the model's time per photo)."""
    choices = []
    for name in classifier.methods:
        words = name
        if name == "CAM":
            words += " (exact, free)"
        elif METHODS[name].slow:
            seconds = classifier.method_seconds(name, ms_per_photo)
            words += f" (slow: about {seconds:.0f} s a class here)" if seconds else " (slow)"
        choices.append((words, name))
    return choices


def method_picker(models: ModelSource, name: str, **update) -> gr.Dropdown:
    """The method choice for the model called `name`, set to its default (or as `update` says)."""
    classifier, measured = models.get(name), models.measured(name)
    choices = method_choices(classifier, measured.ms_per_photo if measured else None)
    value = update.pop("value", classifier.methods[0] if classifier.methods else None)
    return gr.Dropdown(
        choices,
        value=value,
        label="Heatmap method",
        interactive=bool(choices),
        **update,
    )


def show_instead(shown: ShownPhoto, opacity: float, requests: HeatmapRequests):
    """The picture of `shown` (another class or method of the session's photo), its caption and the state
    that says so; nothing where the page asked for another picture while this one was being made (a
    Score-CAM map takes seconds: a new photo may have come)."""
    asked = requests.new()
    picture, caption = heatmap_picture(shown, shown.label, opacity, None)
    if not requests.to_show(asked):
        return gr.skip(), gr.skip(), gr.skip()
    return picture, caption, replace(shown, request=asked)


def switch_heatmap(
    shown: ShownPhoto | None, opacity: float, requests: HeatmapRequests, selected: gr.SelectData
):
    """A bar was clicked: that class's heatmap, from the maps kept for this photo (or, while they are being
    made, once they are)."""
    if shown is None or shown.heatmaps is None:
        return gr.skip(), gr.skip(), gr.skip()
    return show_instead(replace(shown, label=selected.value), opacity, requests)


def see_class(shown: ShownPhoto | None, label: str | None, opacity: float, requests: HeatmapRequests):
    """A class was picked in "Show where it sees…": its heatmap and probability, from the kept feature map."""
    if shown is None or label is None:
        return gr.skip(), gr.skip(), gr.skip()
    return show_instead(replace(shown, label=label), opacity, requests)


def change_method(shown: ShownPhoto | None, method: str | None, opacity: float, requests: HeatmapRequests):
    """Another method: the shown class's map by it, from the kept feature map (Score-CAM: the engine scores
    the photo masked by each channel)."""
    if shown is None or shown.heatmaps is None or method in (None, shown.method or shown.heatmaps.method):
        return gr.skip(), gr.skip(), gr.skip()  # no method, or the one shown (a new photo, a new model)
    chosen = replace(shown, method=None if method == shown.heatmaps.method else method)
    return show_instead(chosen, opacity, requests)


def change_opacity(shown: ShownPhoto | None, opacity: float):
    return gr.skip() if shown is None else heatmap_picture(shown, shown.label, opacity, None)[0]


def _wire_photo(answers: Answers, chosen: gr.State, parts: _Parts) -> None:
    """A photo lands: bars and heatmap; a click on a bar or the slider: another picture, no forward pass."""
    tab, shown, opacity, requests = parts.tab, parts.shown, parts.opacity, parts.requests
    outputs = [tab.bars, tab.overlay, parts.caption, shown, parts.method]
    nothing = (gr.skip(),) * len(outputs)
    repeats = Repeats()  # a photo replacing another sends "change" twice (repeats.py)

    def show_photo(image: str | None, name: str, heatmap_requests: HeatmapRequests, request: gr.Request):
        """A photo landed (or was cleared): the bars and the session's state at once; the heatmap follows.
        The twin of a repeated "change" answers as the first did, so either's heatmap event finds it."""
        work = partial(photo_answer, image, name, heatmap_requests)
        return repeats.run(request.session_hash, (image, name), work, lambda first: first or nothing)

    def photo_answer(image: str | None, name: str, heatmap_requests: HeatmapRequests) -> tuple:
        method = method_picker(answers.models, name)  # each photo starts with the model's default method
        asked = heatmap_requests.new()  # any picture still being made for the last photo is no longer wanted
        if image is None:
            return None, no_heatmap(), "", None, method
        with answers.metered("photo", name):
            answer = answers.show(answers.classifier(name), image, asked)
        if not heatmap_requests.is_newest(asked):  # another photo, or Clear, came while this one was analysed
            return nothing
        return *answer, method

    landed = tab.photo.change(
        show_photo,
        [tab.photo, chosen, requests],
        outputs,
        concurrency_limit=answers.concurrency,  # the session's model may need loading again
        **PAGE_ONLY,
    )
    # The heatmap picture comes after the bars (Grad-CAM's maps too): the bars never wait for its making,
    # encoding, file or download. It is drawn only if nothing else was asked for meanwhile (HeatmapRequests).
    # "always_last": a new photo's is sent once the last photo's has ended (Gradio's default, "once", would
    # drop it), and that one draws nothing.
    landed.success(
        finish_heatmap,
        [shown, opacity, requests],
        [tab.overlay, parts.caption],
        trigger_mode="always_last",
        **PAGE_ONLY,
    )
    tab.bars.select(
        switch_heatmap, [shown, opacity, requests], [tab.overlay, parts.caption, shown], **PAGE_ONLY
    )
    opacity.release(change_opacity, [shown, opacity], tab.overlay, **PAGE_ONLY)


def _wire_picker(answers: Answers, chosen: gr.State, parts: _Parts) -> None:
    """Another model picked: its card at once, then (once loaded) the photo again by it."""
    tab, models = parts.tab, answers.models

    def choose_model(
        name: str,
        current: str,
        image: str | None,
        heatmap_requests: HeatmapRequests,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """Another model was picked: load it (download progress on the page), show its card, and classify
        the photo again. On failure the page puts the previous model back (`.failure` below). A photo that
        came while the model loaded keeps its answer: then only the card and the session's model change."""
        if name == current:  # put back after a failure, or picked again: nothing to do
            return (gr.skip(),) * 7
        asked = heatmap_requests.new()
        with answers.metered("choose_model", name):
            classifier = load_with_progress(models, name, progress)
            card, method = model_card(models, name), method_picker(models, name)
            if image is None:
                return card, gr.skip(), gr.skip(), gr.skip(), gr.skip(), method, name
            answer = answers.show(classifier, image, asked)
        if not heatmap_requests.is_newest(asked):
            return card, *(gr.skip(),) * 5, name
        return card, *answer, method, name

    # .change, not .input: a dropdown sends "input" again when it loses focus; this fires once per choice.
    # The card shows torchvision's figures at once, what this machine measured once the model has loaded.
    switched = tab.picker.change(
        lambda name: model_card(models, name), tab.picker, parts.card, show_progress="hidden", **PAGE_ONLY
    ).then(
        choose_model,
        [tab.picker, chosen, tab.photo, parts.requests],
        [parts.card, tab.bars, tab.overlay, parts.caption, parts.shown, parts.method, chosen],
        show_progress_on=[tab.bars, tab.overlay],  # the card stays readable while a model loads
        concurrency_limit=answers.concurrency,
        **PAGE_ONLY,
    )
    switched.failure(lambda name: name, chosen, tab.picker, **PAGE_ONLY)  # a failed load: the previous stays
    heatmap_inputs = [parts.shown, parts.opacity, parts.requests]
    switched.success(
        finish_heatmap, heatmap_inputs, [tab.overlay, parts.caption], trigger_mode="always_last", **PAGE_ONLY
    )


def _wire_choices(answers: Answers, chosen: gr.State, parts: _Parts) -> None:
    """ "Show where it sees…" and the method: another map from the kept feature map, no forward pass; once a
    slow method has run, its time as measured here in the method's name."""
    tab, shown, opacity, requests = parts.tab, parts.shown, parts.opacity, parts.requests
    outputs = [tab.overlay, parts.caption, shown]
    tab.see.change(see_class, [shown, tab.see, opacity, requests], outputs, **PAGE_ONLY)
    # .change, not .input (sent again when the dropdown loses focus, a second map while the first shows). The
    # caption keeps describing the picture shown until the new one comes: progress shows on the picture.
    changed = parts.method.change(
        change_method,
        [shown, parts.method, opacity, requests],
        outputs,
        show_progress_on=tab.overlay,
        **PAGE_ONLY,
    )
    changed.success(
        lambda name, method: method_picker(answers.models, name, value=method),
        [chosen, parts.method],
        parts.method,
        show_progress="hidden",
        **PAGE_ONLY,
    )
