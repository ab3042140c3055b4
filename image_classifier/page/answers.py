"""From a classifier's answer to what the page shows: the bars, and the heatmap picture with its caption.

`Answers` is what every tab and the API answer photos through: the models on offer (one `ModelSource`),
how many classes to show, and the rule that photos go ahead of live webcam frames.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field

import gradio as gr
import numpy as np
from PIL import Image

from classifier import Classifier, ImageError, NonFiniteResultError
from image_classifier.heatmaps import Heatmaps
from image_classifier.heatmaps import overlay as overlay_heatmap
from image_classifier.live import PhotosFirst
from image_classifier.metrics import Busy, PageMetrics

from .models import ModelSource, classifier_named
from .settings import DISPLAY_SIDE, MODEL_CONCURRENCY

NO_PHOTO = "Add a photo first: upload, paste or take one with the webcam."


@dataclass
class ShownPhoto:
    """What a session keeps of its current photo, so a click on a bar needs no second forward pass.

    Every open tab keeps one: the photo is kept as a JPEG (about 80 KB at 768 px, against 1.8 MB of decoded
    pixels), decoded again for each picture (3 ms)."""

    jpeg: bytes
    """The upright photo, at most DISPLAY_SIDE pixels on its longest side, as a JPEG (`as_jpeg`)."""
    region: tuple[float, float, float, float]
    """The part of the photo the model saw (fractions)."""
    label: str
    """The class whose map is shown."""
    labels: list[str]
    """The top classes, whose maps the bars can switch to."""
    source: Heatmaps | None
    """Where the top classes' maps come from, until `make_maps` has made them."""
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    """The top classes' maps on the model's grid, by the model's default method."""
    heatmaps: Heatmaps | None = None
    """Every class's map by every method, from this photo's feature map and input (about 0.55 MB kept per
    session for EfficientNet-Lite0: the feature map, and the input at half precision for Score-CAM), so
    that "Show where it sees…" and the method choice need no second forward pass."""
    probabilities: Mapping[str, float] = field(default_factory=dict)
    """Every class's probability (one small array: `ClassProbabilities`)."""
    method: str | None = None
    """The method chosen on the page; None: the model's default."""
    request: int = 0
    """Which of the session's `HeatmapRequests` this photo's picture answers."""

    @property
    def image(self) -> Image.Image:
        """The photo, decoded."""
        with Image.open(io.BytesIO(self.jpeg)) as picture:
            return picture.convert("RGB")

    def make_maps(self) -> None:
        """The top classes' maps, all at once (for Grad-CAM: one forward pass of the tail for them all)."""
        if self.source is not None:
            self.maps.update(self.source.cams(self.labels))
            self.source = None

    def map_of(self, label: str) -> np.ndarray | None:
        """The map of `label` by the chosen method, kept or made now (a top class's, while `make_maps` is
        making them: once it has); None where the photo has no maps."""
        if self.method is None and label in self.maps:
            return self.maps[label]
        return None if self.heatmaps is None else self.heatmaps.cam(label, self.method)


class HeatmapRequests:
    """Numbers a session's requests for what the heatmap's place shows (a photo, a bar, a class, a method), so
    that an answer overtaken by a newer request is dropped instead of drawn over it: a slow map for the
    previous photo, or the top class's map once another class has been picked. One per session: a gr.State,
    which gives each session a copy of its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._newest = 0
        self._shown = 0

    def __deepcopy__(self, memo: dict) -> HeatmapRequests:
        return HeatmapRequests()  # a new session's: numbered from the start (a lock can't be copied)

    def new(self) -> int:
        """The number of a request made now: newer than every one before it."""
        with self._lock:
            self._newest += 1
            return self._newest

    def is_newest(self, request: int) -> bool:
        """Whether no request has been made since `request`."""
        with self._lock:
            return request == self._newest

    def to_show(self, request: int) -> bool:
        """Whether to show the answer to `request` now: it is the newest, and no answer to it has been shown
        (the heatmap event chained after a repeated "change" runs twice: repeats.py). Says yes once."""
        with self._lock:
            if request != self._newest or request == self._shown:
                return False
            self._shown = request
            return True


def display_size(image: Image.Image) -> Image.Image:
    """`image` at most DISPLAY_SIDE on its longest side, without first copying the whole decoded photo.

    Halved by box averaging while over twice the size, then Lanczos (`reducing_gap=1`): 15 ms instead of
    36 ms for a 12 MP photo (decoded at half size), with no difference to see in a 768-pixel picture."""
    scale = DISPLAY_SIDE / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS, reducing_gap=1.0)


def as_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """`image` as JPEG bytes, as a session keeps its photo."""
    stream = io.BytesIO()
    image.convert("RGB").save(stream, "JPEG", quality=quality)
    return stream.getvalue()


def heatmap_caption(label: str, model: str = "the model") -> str:
    return f"Where {model} looked for “{label}”"


def pending_caption(label: str, model: str = "the model") -> str:
    return f"Working out where {model} looked for “{label}”…"


def no_heatmap() -> gr.Image:
    """The empty heatmap picture, before a photo or after Clear."""
    return gr.Image(value=None, label="Heatmap", alt_text=None, visible=True)


def own_file(picture: Image.Image) -> Image.Image:
    """Give a result picture a cache file of its own. Gradio 6.31 keeps a result under the hash of its bytes
    and rewrites that file in place every time: when two requests make the same heatmap at once (the same
    example photo, say), a client downloading the first can get it truncated. A JPEG comment unique to the
    request makes the bytes, and so the file, unique."""
    picture.info["comment"] = uuid.uuid4().hex.encode()
    return picture


def heatmap_picture(
    shown: ShownPhoto | None,
    label: str,
    opacity: float,
    no_heatmap_reason: str | None,
    model: str = "the model",
):
    """The heatmap of `label` over the photo and its caption; where the model has none, why, in words.
    A class outside the top ones gets its probability in the caption, a chosen method its name."""
    if shown is None:  # the words say it; no empty picture beside them
        return gr.Image(value=None, visible=False), no_heatmap_reason
    cam = shown.map_of(label)
    if cam is None:  # no maps kept for this photo
        return no_heatmap(), no_heatmap_reason
    picture = own_file(overlay_heatmap(shown.image, cam, shown.region, opacity))
    caption = heatmap_caption(label, model)  # said once, under the picture; the picture's text alternative
    if label not in shown.labels and label in shown.probabilities:
        caption += f" (probability {shown.probabilities[label]:.1%})"
    if shown.method is not None:
        caption += f", by {shown.method}"
    return gr.Image(value=picture, label="Heatmap", alt_text=caption, visible=True), caption


def top_heatmap(shown: ShownPhoto, label: str | None = None) -> Image.Image:
    """The heatmap of `label` (default: the top class) over the photo at full strength, as `/explain`
    gives it."""
    label = label or shown.label
    cam = shown.maps[label] if label in shown.maps else shown.heatmaps.cam(label)  # Grad-CAM: one
    return own_file(overlay_heatmap(shown.image, cam, shown.region))


@contextmanager
def refusals_in_words() -> Iterator[None]:
    """A bad file, a non-finite answer or full replicas (--serve) as the page's error, in words."""
    try:
        yield
    except ImageError as e:
        raise gr.Error(str(e), title="Can't classify this file", print_exception=False) from None
    except NonFiniteResultError as e:  # logged with the model and engine where it was raised
        raise gr.Error(str(e), title="No answer", print_exception=False) from None
    except Busy as e:  # the model replicas are full (--serve)
        raise gr.Error(str(e), title="Busy", print_exception=False) from None


def analyse(
    classifier: Classifier, image: str, top_k: int, threads: int | None = None
) -> tuple[dict[str, float], ShownPhoto | None]:
    """The top classes of a photo and, where the model has heatmaps, what the page keeps to show them."""
    with refusals_in_words():
        analysis = classifier.analyse(image, top_k=top_k, threads=threads)
    if analysis.heatmaps is None:
        return analysis.predictions, None
    display = display_size(analysis.image)
    labels = list(analysis.predictions)
    heatmaps = analysis.heatmaps
    shown = ShownPhoto(as_jpeg(display), heatmaps.region, labels[0], labels, heatmaps, heatmaps=heatmaps)
    shown.probabilities = analysis.probabilities
    if not analysis.heatmaps.needs_gradient:
        shown.make_maps()  # class activation maps: a matrix product, shown with the bars
    return analysis.predictions, shown


@dataclass(frozen=True)
class Answers:
    """How the page answers photos: through `models`, `top_k` classes, photos ahead of live frames;
    `concurrency` requests at once per event that runs a model, each counted in `metrics`."""

    models: ModelSource
    top_k: int = 5
    photos_first: PhotosFirst = field(default_factory=PhotosFirst)
    concurrency: int = MODEL_CONCURRENCY
    metrics: PageMetrics | None = None

    def metered(self, endpoint: str, model: object) -> AbstractContextManager:
        """Count and time the request run inside, under `endpoint` and `model` (see PageMetrics)."""
        return nullcontext() if self.metrics is None else self.metrics.request(endpoint, model)

    def classifier(self, name: object) -> Classifier:
        """The model called `name`, loaded if need be; refusals and failed loads in plain words."""
        return classifier_named(self.models, name)

    def classify(self, image: str | None, name: str) -> dict[str, float]:
        """The top classes of a photo by the model called `name`."""
        if image is None:
            raise gr.Error(NO_PHOTO)
        classifier = self.classifier(name)
        with refusals_in_words(), self.photos_first.photo() as threads:
            return classifier.predict(image, top_k=self.top_k, threads=threads)

    def analyse(self, classifier: Classifier, image: str) -> tuple[dict[str, float], ShownPhoto | None]:
        """`analyse`, ahead of any live frames."""
        with self.photos_first.photo() as threads:
            return analyse(classifier, image, self.top_k, threads)

    def show(self, classifier: Classifier, image: str, request: int = 0):
        """The bars at once, with what the session keeps of the photo (answering `request`, one of its
        `HeatmapRequests`); the heatmap picture follows (`finish_heatmap`): here an empty one, its caption
        saying it is on its way. A model without heatmaps: no picture, and why in its place."""
        predictions, shown = self.analyse(classifier, image)
        if shown is None:
            picture, caption = heatmap_picture(None, "", 0, classifier.no_heatmaps_reason)
        else:
            shown.request = request
            picture, caption = no_heatmap(), pending_caption(shown.label)
        return predictions, picture, caption, shown


def finish_heatmap(shown: ShownPhoto | None, opacity: float, requests: HeatmapRequests):
    """After the bars: the maps that need a gradient (Grad-CAM), and the shown class's picture; nothing where
    the page has asked for another picture since the photo was shown (a bar, a class, a method, a photo)."""
    if shown is None or not requests.is_newest(shown.request):
        return gr.skip(), gr.skip()
    shown.make_maps()
    if not requests.to_show(shown.request):
        return gr.skip(), gr.skip()
    return heatmap_picture(shown, shown.label, opacity, None)
