"""The API, which is also the MCP server's tools (`launch(mcp_server=True)`): each endpoint's name is its
function's, its description and argument docs are the function's docstring and type hints.

`/predict` (photo -> the default model's top classes, unchanged for clients since the first version),
`/explain` (photo, optionally a label -> top classes and the top class's heatmap, or that label's heatmap with
the label and its probability in place of the last class), `/classify` (photo, model -> top classes),
`/compare` (photo, model A, model B -> two top-class lists) and `/models` (the models on offer, with their
figures). The page's own events are private: neither endpoints nor tools.
"""

from __future__ import annotations

import gradio as gr
from PIL import Image

from classifier import classification_models, model_facts

from .answers import NO_PHOTO, Answers, top_heatmap
from .compare import CompareTab
from .photo import PhotoTab


def model_figures(answers: Answers) -> list[dict]:
    """Each offered model: torchvision's published figures where it has them, and this machine's
    milliseconds per photo once it has loaded."""
    known = set(classification_models())
    rows = []
    for name in answers.models.names:
        row: dict = {"name": name, "default": name == answers.models.default}
        if name in known:
            facts = model_facts(name)
            row |= {
                "imagenet_top1_percent": facts.top1,
                "imagenet_top5_percent": facts.top5,
                "gflops": facts.gflops,
                "parameters_millions": round(facts.parameters / 1e6, 1),
                "weights_mb": round(facts.file_mb, 1),
            }
        loaded = answers.models.measured(name)
        if loaded is not None and loaded.ms_per_photo is not None:
            row["ms_per_photo_here"] = round(loaded.ms_per_photo, 1)
        rows.append(row)
    return rows


def api_endpoints(answers: Answers, photo: PhotoTab, compared: CompareTab) -> None:
    """The endpoints, on hidden buttons, taking and giving the components the page shows them with."""
    predict, classify, compare = _classifying(answers)
    explain = _explaining(answers)

    def models() -> list[dict]:
        """The image classification models on offer, the default first: for each, its name, its ImageNet
        accuracy (top-1 and top-5, %), its cost (GFLOPs per photo, millions of parameters, MB of weights)
        and, once it has loaded, the milliseconds per photo it takes on this server."""
        return model_figures(answers)

    # As many photos at once as the page's own events (README: "up to two photos are classified at once").
    gr.Button(visible=False).click(
        predict, photo.photo, photo.bars, api_name="predict", concurrency_limit=answers.concurrency
    )
    gr.Button(visible=False).click(
        explain,
        [photo.photo, photo.see],
        [photo.bars, photo.overlay],
        api_name="explain",
        concurrency_limit=answers.concurrency,
    )
    classify_inputs = [photo.photo, photo.picker]
    gr.Button(visible=False).click(
        classify,
        classify_inputs,
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
    gr.Button(visible=False).click(models, None, gr.JSON(visible=False), api_name="models")


def _classifying(answers: Answers):
    """/predict, /classify and /compare: top classes."""
    default = answers.models.default

    def predict(image: str | None) -> dict[str, float]:
        """The default model's five best guesses for what is in a photo, each with its probability.

        Args:
            image: the photo (a URL, or a file): JPEG, PNG, WebP, GIF, BMP or TIFF.
        """
        with answers.metered("predict", default):
            return answers.classify(image, default)

    def classify(image: str | None, model: str) -> dict[str, float]:
        """A named model's five best guesses for what is in a photo (ImageNet's 1,000 everyday classes), each
        with its probability. The `models` tool lists the names on offer.

        Args:
            image: the photo (a URL, or a file): JPEG, PNG, WebP, GIF, BMP or TIFF.
            model: the model's name, one of those the `models` tool lists, e.g. "resnet50".
        """
        with answers.metered("classify", model):
            return answers.classify(image, model)

    def compare(image: str | None, model_a: str, model_b: str) -> tuple[dict[str, float], dict[str, float]]:
        """Two named models' five best guesses for the same photo, side by side.

        Args:
            image: the photo (a URL, or a file): JPEG, PNG, WebP, GIF, BMP or TIFF.
            model_a: the first model's name (the `models` tool lists them).
            model_b: the second model's name.
        """
        with answers.metered("compare", model_a), answers.metered("compare", model_b):
            return answers.classify(image, model_a), answers.classify(image, model_b)

    return predict, classify, compare


def _explaining(answers: Answers):
    """/explain: top classes and a heatmap picture."""
    default = answers.models.default

    def explain(image: str | None, label: str | None = None) -> tuple[dict[str, float], Image.Image | None]:
        """The default model's five best guesses for a photo, and a heatmap picture of where in the photo it
        looked for the top one, or for `label` (none where the model has no heatmaps). A label outside the
        five takes the fifth one's place, with its probability: as many classes as ever.

        Args:
            image: the photo (a URL, or a file): JPEG, PNG, WebP, GIF, BMP or TIFF.
            label: optional, one of ImageNet's 1,000 class names, e.g. "tabby"; default the top class.
        """
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

    return explain
