"""The API: `/predict` (photo -> the default model's top classes, unchanged for clients since the first
version), `/explain` (photo, optionally a label -> top classes and the top class's heatmap, or that label's
heatmap, the label and its probability among the classes in place of the last one), `/classify` (photo,
model -> top classes) and `/compare` (photo, model A, model B -> two top-class lists)."""

from __future__ import annotations

import gradio as gr
from PIL import Image

from .answers import NO_PHOTO, Answers, top_heatmap
from .compare import CompareTab
from .photo import PhotoTab


def api_endpoints(answers: Answers, photo: PhotoTab, compared: CompareTab) -> None:
    """The endpoints, on hidden buttons, taking and giving the components the page shows them with."""
    default = answers.models.default

    def predict(image: str | None) -> dict[str, float]:
        """`/predict`: the default model's top classes."""
        with answers.metered("predict", default):
            return answers.classify(image, default)

    def classify(image: str | None, name: str) -> dict[str, float]:
        """The top classes of a photo by the model called `name`: the label value of `/classify`."""
        with answers.metered("classify", name):
            return answers.classify(image, name)

    def compare(image: str | None, name_a: str, name_b: str) -> tuple[dict[str, float], dict[str, float]]:
        """`/compare`: two models' top classes for one photo."""
        with answers.metered("compare", name_a), answers.metered("compare", name_b):
            return answers.classify(image, name_a), answers.classify(image, name_b)

    def explain(image: str | None, label: str | None = None) -> tuple[dict[str, float], Image.Image | None]:
        """The label value and the heatmap picture of `label` (default: the top class; none where the
        model has no heatmaps): `/explain`. A label outside the top classes takes the last one's place,
        with its probability: as many classes as ever."""
        with answers.metered("explain", default):
            if image is None:
                raise gr.Error(NO_PHOTO)
            predictions, shown = answers.analyse(answers.classifier(default), image)
            if shown is None:
                return predictions, None
            if label is not None and label not in predictions:
                kept = list(predictions.items())[: len(predictions) - 1]
                predictions = {**dict(kept), label: shown.probabilities[label]}
            return predictions, top_heatmap(shown, label)

    gr.Button(visible=False).click(predict, photo.photo, photo.bars, api_name="predict")
    gr.Button(visible=False).click(
        explain, [photo.photo, photo.see], [photo.bars, photo.overlay], api_name="explain"
    )
    gr.Button(visible=False).click(
        classify,
        [photo.photo, photo.picker],
        photo.bars,
        api_name="classify",
        concurrency_limit=answers.concurrency,
    )
    gr.Button(visible=False).click(
        compare,
        [compared.photo, compared.model_a, compared.model_b],
        [compared.bars_a, compared.bars_b],
        api_name="compare",
        concurrency_limit=answers.concurrency,
    )
