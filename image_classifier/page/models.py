"""What the page needs of the models it shows, and what it says about them.

The page reaches the classifiers through one object, handed to `build_demo` and from there to every tab:
a `ModelSource` (a `ModelSet` of `Classifier`s in this repository). Another object with the same methods,
a set of remote models say, serves the same page.
"""

from __future__ import annotations

from typing import Protocol

import gradio as gr

from classifier import (
    Classifier,
    ModelLoadError,
    ModelNotOffered,
    ModelSet,
    cached_weights_path,
    classification_models,
    model_facts,
    time_one_photo,
)
from image_classifier.metrics import Busy
from image_classifier.model_set import LoadedModel

from .components import ModelChoice


class ModelSource(Protocol):
    """The models a page offers by name: what the page calls, and all it calls, on a `ModelSet`."""

    @property
    def names(self) -> list[str]: ...
    @property
    def default(self) -> str: ...
    def check(self, name: object) -> str:
        """`name` if it is offered, else `ModelNotOffered`."""

    def get(self, name: object) -> Classifier:
        """The model, loaded if need be (`ModelNotOffered`, `ModelLoadError`)."""

    def is_loaded(self, name: str) -> bool: ...
    def measured(self, name: str) -> LoadedModel[Classifier] | None:
        """The loaded model with what this machine measured of it, None until it has loaded."""

    def load_default(self) -> Classifier | None:
        """Load the default model now; remote models load it as their replicas start (None)."""


def as_model_set(classifier: Classifier | ModelSource, name: str) -> ModelSource:
    """A model set as it is, or one classifier as a set of one called `name`."""
    if isinstance(classifier, Classifier):
        return ModelSet.of({name: classifier}, memory_mb_of=lambda c: c.memory_mb, timed=time_one_photo)
    return classifier


def classifier_named(models: ModelSource, name: object) -> Classifier:
    """The model a request named, loaded if need be; a refusal or a failed load in plain words."""
    try:
        return models.get(name)
    except ModelNotOffered as e:
        raise gr.Error(str(e), title="Unknown model", print_exception=False) from None
    except ModelLoadError as e:
        raise gr.Error(str(e), title=f"Can't load {name}", print_exception=False) from None
    except Busy as e:  # the model replicas are full (--serve)
        raise gr.Error(str(e), title="Busy", print_exception=False) from None


def load_with_progress(models: ModelSource, name: object, progress: gr.Progress) -> Classifier:
    """`classifier_named`, telling the page when a model is being loaded (a download's tqdm bar shows too)."""
    try:
        name = models.check(name)
    except ModelNotOffered as e:
        raise gr.Error(str(e), title="Unknown model", print_exception=False) from None
    if not models.is_loaded(name):
        progress(None, desc=f"Loading {name}")  # no bar until a download (tqdm) gives one
    return classifier_named(models, name)


def model_card(models: ModelSource, name: str) -> str:
    """Markdown: what `name` costs and knows (torchvision's published figures) and what this machine
    measured once it was loaded."""
    lines = [f"**{name}**"]
    from_torchvision = name in set(classification_models())
    if from_torchvision:
        facts = model_facts(name)
        crop = f"a {facts.crop} × {facts.crop} crop"
        seen = f"{crop} of the photo resized to {facts.resize} px" if facts.resize else crop
        lines += [
            f"- ImageNet accuracy: **{facts.top1:.1f} %** top-1, {facts.top5:.1f} % top-5",
            f"- Cost: {facts.gflops:.2f} GFLOPs per photo; {facts.parameters / 1e6:.1f} million parameters, "
            f"{facts.file_mb:.1f} MB of weights",
            f"- Sees: {seen} ({facts.interpolation})",
            f"- Figures: torchvision's, for `{facts.weights}`",
        ]
    else:
        lines.append("- Not one of torchvision's models: no published figures.")
    loaded = models.measured(name)
    if loaded is None:
        download = ""
        if from_torchvision and not cached_weights_path(name).exists():
            download = f" (first, a {model_facts(name).file_mb:.0f} MB download)"
        lines.append(f"- On this machine: measured once it has loaded{download}.")
    elif loaded.ms_per_photo is not None:
        engine = loaded.model.engine_choice.describe()
        lines.append(f"- On this machine: **{loaded.ms_per_photo:.0f} ms per photo** on {engine}")
    return "\n".join(lines)


def model_choices(models: ModelSource) -> list[tuple[str, str]]:
    """(shown, value) for each offered model: its name and, for torchvision's, its top-1 accuracy."""
    known = set(classification_models())
    return [
        (f"{name} ({model_facts(name).top1:.1f} % top-1)" if name in known else name, name)
        for name in models.names
    ]


def model_picker(models: ModelSource) -> tuple[ModelChoice, gr.Markdown]:
    """The model picker and, beside it, the chosen model's card; hidden where there is one model only."""
    with gr.Row(equal_height=False, visible=len(models.names) > 1):
        picker = ModelChoice(
            model_choices(models), value=models.default, label="Model", scale=1, min_width=240
        )
        card = gr.Markdown(model_card(models, models.default), elem_id="model-card")
    return picker, card
