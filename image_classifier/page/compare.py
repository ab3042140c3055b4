"""The Compare tab: one photo, two models side by side: their bars, the time each took for this photo on
this machine, and where each looked for its top class."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import gradio as gr

from .answers import Answers, heatmap_picture, no_heatmap
from .components import ImageFile, ModelChoice, heatmap_image, photo_examples, photo_input
from .models import load_with_progress, model_choices
from .repeats import Repeats
from .settings import PAGE_ONLY, Limits


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


def compare_tab(answers: Answers, examples: Sequence[str], limits: Limits) -> CompareTab:
    """The Compare tab, its events wired; hidden where there is one model only."""
    models = answers.models
    second = next((name for name in models.names if name != models.default), models.default)
    with gr.Tab("Compare", visible=len(models.names) > 1):
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
                photo_examples(examples, photo)
        sides = []
        with gr.Row(equal_height=False):
            for side, choice in zip("AB", choices, strict=True):
                with gr.Column():
                    bars = gr.Label(num_top_classes=limits.top_k, label=f"Top {limits.top_k}, model {side}")
                    timing = gr.Markdown(elem_id=f"compare-time-{side.lower()}")
                    picture = heatmap_image()
                    caption = gr.Markdown(elem_id=f"compare-caption-{side.lower()}")
                sides.append((choice, bars, [bars, timing, picture, caption]))
    (model_a, bars_a, outputs_a), (model_b, bars_b, outputs_b) = sides
    compared = CompareTab(
        photo,
        model_a,
        model_b,
        bars_a,
        bars_b,
        outputs=outputs_a + outputs_b,
        progress_on=[outputs_a[0], outputs_a[2], outputs_b[0], outputs_b[2]],
        last_models=gr.State((models.default, second)),
    )
    _wire(answers, compared)
    return compared


def side_by_side(answers: Answers, image: str | None, names: tuple[str, str], progress: gr.Progress) -> list:
    """For each model: its bars, its time for this photo, its top class's heatmap picture and caption."""
    classifiers = [load_with_progress(answers.models, name, progress) for name in names]
    outputs: list = []
    for name, classifier in zip(names, classifiers, strict=True):
        if image is None:
            outputs += [None, "", no_heatmap(), ""]
            continue
        started = time.perf_counter()
        predictions, shown = answers.analyse(classifier, image)
        if shown is not None:
            shown.make_maps()  # Grad-CAM's too: the time shown is the whole answer's
        took = (time.perf_counter() - started) * 1000
        top = next(iter(predictions))
        picture, caption = heatmap_picture(shown, top, 0.5, classifier.no_heatmaps_reason, name)
        outputs += [predictions, f"**{name}**: {took:.0f} ms for this photo", picture, caption]
    return outputs


def _wire(answers: Answers, compared: CompareTab) -> None:
    """A photo lands or a model changes: both sides again; a model that fails to load is put back."""
    repeats = Repeats()  # a photo replacing another sends "change" twice (repeats.py)

    def compare_on_page(
        image: str | None,
        name_a: str,
        name_b: str,
        last: tuple[str, str] | None = None,
        request: gr.Request = None,
        progress=gr.Progress(track_tqdm=True),  # noqa: B008 (Gradio's idiom)
    ):
        """`last` (the models shown) is given when a model was changed: the same two again need no work."""
        nothing = (gr.skip(),) * (len(compared.outputs) + 1)
        if last is not None and (name_a, name_b) == tuple(last):
            return nothing
        session = request and request.session_hash
        work = partial(compare_answer, image, (name_a, name_b), progress)
        inputs = (image, name_a, name_b)
        return repeats.run(session, inputs, work, lambda first: nothing, keep_answer=False)  # shown already

    def compare_answer(image: str | None, names: tuple[str, str], progress: gr.Progress) -> tuple:
        with answers.metered("compare_tab", names[0]), answers.metered("compare_tab", names[1]):
            return *side_by_side(answers, image, names, progress), names

    inputs = [compared.photo, compared.model_a, compared.model_b]
    outputs = [*compared.outputs, compared.last_models]
    options = {
        "show_progress_on": compared.progress_on,
        "concurrency_limit": answers.concurrency,
        **PAGE_ONLY,
    }
    put_back = (lambda last: last, compared.last_models, [compared.model_a, compared.model_b])
    compared.photo.change(compare_on_page, inputs, outputs, **options).failure(*put_back, **PAGE_ONLY)
    gr.on(
        [compared.model_a.change, compared.model_b.change],
        compare_on_page,
        [*inputs, compared.last_models],
        outputs,
        **options,
    ).failure(*put_back, **PAGE_ONLY)
