"""Many photos on the model's device: JPEGs decoded there (nvJPEG, batched), resized, cropped and normalised
as tensor ops, while the model runs the batch before.

The same code runs on the CPU (torchvision's `decode_jpeg` is libjpeg-turbo there), which is how the tests
check it. What the GPU decoder can't take (PNG, WebP, GIF, CMYK, grayscale or 12-bit JPEGs, files it
rejects) is decoded on the CPU by the project's own decoder (`Classifier.decode`), whose errors say what is
wrong in plain words; the EXIF orientation is read from the header on the CPU (`jpeg_header`) and applied to
the decoded tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torchvision
from PIL import Image

from image_classifier.decoding import ImageError, ImageInput, aspect_crop_box, limit_aspect_ratio
from image_classifier.engines import NON_FINITE_MESSAGE
from image_classifier.jpeg_header import JpegHeader, read_jpeg_header

logger = logging.getLogger(__name__)

DECODE_PIXEL_BUDGET = 256_000_000
"""Most pixels decoded on the device at once (about 770 MB of RGB): a batch of large photos is decoded and
resized in groups under this, so memory stays bounded whatever the photos' size."""
_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic"}


class TensorPreprocess:
    """torchvision's ImageClassification preset (resize with antialiasing, centre crop, normalise) on uint8
    CHW tensors, batched: images of one size are resized by one call. Matches the preset applied to the same
    pixels to rounding (the resized pixels are rounded to integers as the preset's uint8 path rounds them)."""

    def __init__(self, preset: torch.nn.Module) -> None:
        self.resize = int(preset.resize_size[0])
        self.crop = int(preset.crop_size[0])
        self.mode = _INTERPOLATION[preset.interpolation.value]
        self.antialias = bool(preset.antialias)
        std = torch.tensor(preset.std, dtype=torch.float32)
        self._scale = (1 / (255 * std)).view(1, 3, 1, 1)
        self._bias = (-torch.tensor(preset.mean, dtype=torch.float32) / std).view(1, 3, 1, 1)
        self._constants: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @staticmethod
    def fits(transform: object) -> bool:
        """Whether `transform` is a preset this class reproduces (one resize size, one crop no larger)."""
        return (
            isinstance(transform, torchvision.transforms._presets.ImageClassification)
            and len(transform.resize_size) == 1
            and len(transform.crop_size) == 1
            and transform.crop_size[0] <= transform.resize_size[0]
            and transform.interpolation.value in _INTERPOLATION
        )

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) after the preset's resize: the shorter side to `resize`, the longer truncated."""
        if width <= height:
            return int(self.resize * height / width), self.resize
        return self.resize, int(self.resize * width / height)

    def into(self, out: torch.Tensor, rows: Sequence[int], images: Sequence[torch.Tensor]) -> None:
        """Resize and crop `images` (uint8 CHW, on `out`'s device) into `out[rows]`, still in 0..255."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for position, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(position)
        for shape, positions in groups.items():
            stacked = (
                images[positions[0]][None]
                if len(positions) == 1
                else torch.stack([images[p] for p in positions])
            )
            size = self.resized_size(shape[1], shape[2])
            resized = torch.nn.functional.interpolate(
                stacked.float(), size=size, mode=self.mode, antialias=self.antialias, align_corners=False
            )
            top, left = int(round((size[0] - self.crop) / 2)), int(round((size[1] - self.crop) / 2))
            cropped = resized[:, :, top : top + self.crop, left : left + self.crop].round_().clamp_(0, 255)
            targets = [rows[p] for p in positions]
            if len(targets) == 1:
                out[targets[0]] = cropped[0]
            else:
                out[torch.tensor(targets, device=out.device)] = cropped

    def normalise_(self, out: torch.Tensor) -> torch.Tensor:
        """0..255 pixels -> the preset's normalised values, in place."""
        if out.device not in self._constants:
            self._constants[out.device] = (self._scale.to(out.device), self._bias.to(out.device))
        scale, bias = self._constants[out.device]
        return out.mul_(scale).add_(bias)

    def __call__(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """A normalised float32 batch (N, 3, crop, crop) of `images` (uint8 CHW, all on one device)."""
        out = torch.empty((len(images), 3, self.crop, self.crop), device=images[0].device)
        self.into(out, range(len(images)), images)
        return self.normalise_(out)


def upright(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """A CHW image as PIL's `exif_transpose` turns it for EXIF `orientation` (1-8)."""
    if orientation == 2:
        return image.flip(2)
    if orientation == 3:
        return image.flip(1, 2)
    if orientation == 4:
        return image.flip(1)
    if orientation == 5:
        return image.transpose(1, 2)
    if orientation == 6:
        return image.rot90(-1, (1, 2))
    if orientation == 7:
        return image.transpose(1, 2).flip(1, 2)
    if orientation == 8:
        return image.rot90(1, (1, 2))
    return image


def limit_aspect(image: torch.Tensor) -> torch.Tensor:
    """`decoding.limit_aspect_ratio` for a CHW tensor (a view)."""
    left, top, right, bottom = aspect_crop_box((image.shape[2], image.shape[1]))
    return image[:, top:bottom, left:right]


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 CHW tensor (a view of a copy of its pixels)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


# --- loading a file: bytes for the device's decoder, or pixels from the CPU's ------------------------------


class DevicePredictor(Protocol):
    """What the runner needs of `classifier.Classifier`."""

    labels: list[str]
    device: torch.device
    max_pixels: int
    tensor_preprocess: TensorPreprocess

    def decode(self, image: ImageInput) -> Image.Image: ...
    def forward_top_k(self, batch: torch.Tensor, top_k: int) -> torch.Tensor: ...
    def report_non_finite(self, count: int, total: int) -> None: ...


@dataclass
class Loaded:
    """One image as read by a loading thread: JPEG bytes and header for the device's decoder, or upright
    pixels from the CPU's, or the error in words."""

    name: str
    source: ImageInput
    data: torch.Tensor | None = None
    header: JpegHeader | None = None
    pixels: torch.Tensor | None = None
    error: str | None = None


def read_bytes(source: ImageInput) -> bytearray | None:
    """The file's or upload's bytes, or None where it can't be read here (the CPU decoder then says why)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytearray(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            with open(source, "rb") as file:
                size = os.fstat(file.fileno()).st_size
                buffer = bytearray(size)
                if file.readinto(buffer) != size:
                    return None
                return buffer
        except OSError:
            return None
    return None


def load(
    predictor: DevicePredictor, name: str, source: ImageInput, min_pixels: int = 0, *, cpu: bool = True
) -> Loaded:
    """Read one image for the device: JPEGs of at least `min_pixels` that nvJPEG takes stay bytes; every
    other image is decoded on the CPU here (this runs on a loading thread), or with `cpu=False` left as it
    is (no data, no pixels)."""
    data = None if isinstance(source, Image.Image) else read_bytes(source)
    if data is not None:
        header = read_jpeg_header(data)
        if (
            header is not None
            and header.gpu_decodable
            and min_pixels <= header.width * header.height <= predictor.max_pixels
        ):
            return Loaded(name, source, torch.frombuffer(data, dtype=torch.uint8), header)
    return cpu_load(predictor, name, source) if cpu else Loaded(name, source)


def cpu_load(predictor: DevicePredictor, name: str, source: ImageInput) -> Loaded:
    """The CPU decoder's upright pixels, or its error in words."""
    try:
        rgb = source if isinstance(source, Image.Image) and source.mode == "RGB" else predictor.decode(source)
        return Loaded(name, source, pixels=pil_to_tensor(limit_aspect_ratio(rgb)))
    except ImageError as e:
        return Loaded(name, source, error=str(e))
    except PermissionError:
        return Loaded(name, source, error=f"Permission denied: {source} can't be read.")
    except OSError as e:
        return Loaded(name, source, error=f"The file could not be read ({e.strerror or e}).")


_DECODE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def decode_jpegs(datas: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """torchvision's `decode_jpeg` of a list, safe on CUDA from any thread and stream.

    nvJPEG writes on a stream of its own into tensors allocated on the caller's current stream: memory that
    the caching allocator may just have taken back from a tensor that kernels still queued on that stream
    read or write (seen as NaN answers with 32 threads decoding at once). So the outputs are allocated on a
    stream that only decoding uses, and handed to the caller's stream with `record_stream`."""
    mode = torchvision.io.ImageReadMode.RGB
    if device.type != "cuda":
        return torchvision.io.decode_jpeg(datas, mode=mode, device=device)
    decoding = _DECODE_STREAMS.setdefault(device, torch.cuda.Stream(device))
    consumer = torch.cuda.current_stream(device)
    with torch.cuda.stream(decoding):
        images = torchvision.io.decode_jpeg(datas, mode=mode, device=device)
    consumer.wait_stream(decoding)
    for image in images:
        image.record_stream(consumer)
    return images


def decode_on(device: torch.device, items: Sequence[Loaded]) -> list[torch.Tensor | None]:
    """`items`' JPEGs decoded on `device` in one batched call, upright; None for those it rejects."""
    try:
        decoded = decode_jpegs([item.data for item in items], device)
    except RuntimeError:  # one bad file fails the batch: find which, one at a time
        decoded = []
        for item in items:
            try:
                decoded.append(decode_jpegs([item.data], device)[0])
            except RuntimeError:
                decoded.append(None)
    return [
        None
        if image is None or image.shape[0] != 3
        else limit_aspect(upright(image, item.header.orientation))
        for item, image in zip(items, decoded, strict=True)
    ]


def prepare_batch(
    predictor: DevicePredictor, items: list[Loaded], padded: int, stream: torch.cuda.Stream | None
) -> torch.Tensor | None:
    """The model's input for the items without an error: (padded, 3, crop, crop) on the device, rows in the
    items' order, the last repeated to `padded`. Items the device's decoder rejects are decoded on the CPU
    (and get its error where it fails too)."""
    device, preprocess = predictor.device, predictor.tensor_preprocess
    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
        on_device = [i for i, item in enumerate(items) if item.data is not None]
        for group in _groups(items, on_device):
            for i, image in zip(group, decode_on(device, [items[i] for i in group]), strict=True):
                if image is None:
                    items[i] = cpu_load(predictor, items[i].name, items[i].source)
                else:
                    items[i].pixels = image
                items[i].data = None
        rows = [i for i, item in enumerate(items) if item.error is None]
        if not rows:
            return None
        out = torch.empty((padded, 3, preprocess.crop, preprocess.crop), device=device)
        row_of = {i: row for row, i in enumerate(rows)}
        for group in _groups(items, rows):
            images = [items[i].pixels.to(device, non_blocking=True) for i in group]
            preprocess.into(out, [row_of[i] for i in group], images)
            for i in group:
                items[i].pixels = None  # decoded pixels go as soon as they are resized: memory stays bounded
        if padded > len(rows):
            out[len(rows) :] = out[len(rows) - 1]
        preprocess.normalise_(out)
    if stream is not None:
        torch.cuda.current_stream(device).wait_stream(stream)
        out.record_stream(torch.cuda.current_stream(device))
    return out


def _groups(items: Sequence[Loaded], indices: Sequence[int]) -> Iterator[list[int]]:
    """`indices` in order, in groups of at most DECODE_PIXEL_BUDGET pixels (at least one image each)."""
    group: list[int] = []
    pixels = 0
    for i in indices:
        item = items[i]
        size = item.header.width * item.header.height if item.data is not None else item.pixels[0].numel()
        if group and pixels + size > DECODE_PIXEL_BUDGET:
            yield group
            group, pixels = [], 0
        group.append(i)
        pixels += size
    if group:
        yield group


# --- the runner ---------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """One image's top-k (label -> probability, highest first) or its error."""

    name: str
    predictions: dict[str, float]
    error: str | None


def classify_on_device(
    predictor: DevicePredictor,
    sources: Iterable[tuple[str, ImageInput]],
    *,
    top_k: int,
    batch_size: int,
    workers: int | None = None,
) -> Iterator[Answer]:
    """One `Answer` per source, in order. Loading threads read files and parse headers (and decode on the CPU
    what the device's decoder can't take) a bounded window ahead; this thread decodes each batch on the
    device on a side stream, then starts the model on it, and only then waits for the batch before's answers,
    so reading, decoding, the model and the copy back overlap."""
    workers = workers or min(8, os.cpu_count() or 1)
    window = 2 * batch_size + workers
    queue = iter(sources)
    pending: deque[Future[Loaded]] = deque()
    stream = torch.cuda.Stream(predictor.device) if predictor.device.type == "cuda" else None
    with ThreadPoolExecutor(workers, thread_name_prefix="load") as pool:

        def top_up() -> None:
            while len(pending) < window and (item := next(queue, None)) is not None:
                pending.append(pool.submit(load, predictor, *item))

        try:
            top_up()
            previous: Callable[[], list[Answer]] | None = None
            while pending:
                items = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
                top_up()
                started = _start(predictor, items, top_k, batch_size, stream)
                if previous is not None:
                    yield from previous()
                previous = started
            if previous is not None:
                yield from previous()
        finally:
            for future in pending:
                future.cancel()


def _start(
    predictor: DevicePredictor, items: list[Loaded], top_k: int, batch_size: int, stream
) -> Callable[[], list[Answer]]:
    """Decode and run one batch without waiting for it; the returned function waits and gives the answers."""
    count = sum(1 for item in items if item.error is None)
    padded = min(1 << max(count - 1, 0).bit_length(), batch_size) if count else 0
    batch = prepare_batch(predictor, items, max(padded, count), stream)
    packed = (
        None
        if batch is None
        else predictor.forward_top_k(batch, top_k)[: sum(i.error is None for i in items)]
    )

    def finish() -> list[Answer]:
        results = packed.cpu() if packed is not None else None
        answers, row = [], 0
        bad = 0
        for item in items:
            if item.error is not None:
                answers.append(Answer(item.name, {}, item.error))
                continue
            values = results[row]
            row += 1
            if not values[-1]:
                bad += 1
                answers.append(Answer(item.name, {}, NON_FINITE_MESSAGE))
                continue
            labels = [predictor.labels[int(i)] for i in values[top_k : 2 * top_k]]
            answers.append(Answer(item.name, dict(zip(labels, values[:top_k].tolist(), strict=True)), None))
        if bad:
            predictor.report_non_finite(bad, row)
        return answers

    return finish
