"""Many images in one run: find the files, classify them in batches, write a table (CSV, JSONL, Parquet).

The runner decodes on a small thread pool (PIL releases the GIL while decoding) while the engine runs
the batch before, and keeps a bounded window of images in flight, so memory stays flat however many
images there are. Rows are flushed after every batch: a run that dies can `resume` where it stopped.
An image that can't be read, or whose result is not a number, becomes a row with its error in plain words;
the run goes on.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import sys
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from image_classifier.decoding import ImageError, ImageInput
from image_classifier.engines import NonFiniteResultError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
"""What a folder walk or a glob picks up (case-insensitive); a file named on its own is always tried."""
FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
DEFAULT_BATCH_SIZE = 16
"""Images per forward pass (bench/batch.py: the best on 2 Zen 4 cores, DenseNet-121 on OpenVINO)."""
CUDA_BATCH_SIZE = 128
"""Images per forward pass on CUDA (bench/gpu.py: DenseNet-121 on an H200 gains little past it)."""
DEFAULT_MAX_BATCH_FILES = 100
"""Most files the page's Many photos tab takes in one go."""


class Predictor(Protocol):
    """The steps of `classifier.Classifier` the runner uses (this package never imports classifier.py)."""

    labels: list[str]

    def preprocess(self, image: ImageInput) -> torch.Tensor: ...
    def forward(self, batch: torch.Tensor) -> torch.Tensor: ...
    def postprocess(self, probabilities: torch.Tensor, top_k: int) -> dict[str, float]: ...


@dataclass(frozen=True)
class Row:
    """One image's line in the output: its top-k labels, highest first, or the reason it failed."""

    image: str
    predictions: dict[str, float] = field(default_factory=dict)
    error: str | None = None


# --- finding the files -------------------------------------------------------------------------


def find_images(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Expand files, folders (walked recursively, image extensions only) and globs, each file once.

    A file named on its own is kept whatever its name, and so is a path that doesn't exist (its row
    then says so). Symbolic links are followed, but a folder is never walked twice, so loops are harmless.
    """
    found: list[str] = []
    seen: set[str] = set()

    def add(path: str, key: str | None = None) -> None:
        key = key or os.path.normpath(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for raw in map(os.fspath, paths):
        if os.path.isdir(raw):
            for path in _walk(raw):
                add(path)
        elif glob.has_magic(raw) and not os.path.exists(raw):
            matches = glob.glob(raw, recursive=True)
            if not matches:
                add(raw)  # "No such file" in its row rather than silence
            # `**` follows symbolic links, loops included: one row per real file, its shortest name.
            shortest: dict[str, str] = {}
            for match in sorted(matches, key=lambda match: (match.count(os.sep), match)):
                shortest.setdefault(os.path.realpath(match), match)
            for match in sorted(shortest.values()):
                if os.path.isdir(match):
                    for path in _walk(match):
                        add(path, os.path.realpath(path))
                elif _is_image_name(match):
                    add(match, os.path.realpath(match))
        else:
            add(raw)
    return found


def _is_image_name(path: str) -> bool:
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: str) -> Iterator[str]:
    visited: set[tuple[int, int]] = set()
    for root, folders, files in os.walk(folder, followlinks=True):
        status = os.stat(root)
        if (status.st_dev, status.st_ino) in visited:  # a symlink back to a folder already walked
            folders.clear()
            continue
        visited.add((status.st_dev, status.st_ino))
        folders.sort()
        yield from (os.path.join(root, name) for name in sorted(files) if _is_image_name(name))


# --- the pipelined runner ----------------------------------------------------------------------


def classify_images(
    classifier: Predictor,
    images: Iterable[str],
    *,
    top_k: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    pipeline: str | None = None,
) -> Iterator[Row]:
    """One `Row` per image, in order, from batched forward passes; decoding runs ahead on `workers` threads.

    At most two batches' worth of images are decoded ahead of the engine (a bounded window), so memory
    doesn't grow with the number of images. `pipeline`: see `classify_sources`.
    """
    pairs = ((image, image) for image in images)
    return classify_sources(
        classifier, pairs, top_k=top_k, batch_size=batch_size, workers=workers, pipeline=pipeline
    )


def classify_sources(
    classifier: Predictor,
    sources: Iterable[tuple[str, ImageInput]],
    *,
    top_k: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    pipeline: str | None = None,
) -> Iterator[Row]:
    """`classify_images` for (name, image) pairs, the image given as a path, bytes or a PIL image.

    `pipeline`: "pil" decodes and preprocesses on CPU threads (`classifier.preprocess`); "tensor" decodes
    JPEGs and preprocesses on the model's device (`tensor_pipeline`); None: "tensor" on CUDA where the
    classifier offers it, else "pil".
    """
    if not 1 <= top_k <= len(classifier.labels):
        raise ValueError(f"top_k must be between 1 and {len(classifier.labels)}, not {top_k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if pipeline is None:
        pipeline = "tensor" if on_cuda(classifier) else "pil"
    if pipeline == "tensor":
        return _classify_on_device(classifier, sources, top_k, batch_size, workers)
    return _classify_on_threads(classifier, sources, top_k, batch_size, workers)


def on_cuda(classifier: object) -> bool:
    """Whether `classifier` runs on CUDA and can take the tensor pipeline (`precision="fast"`)."""
    device = getattr(classifier, "device", None)
    return (
        getattr(classifier, "tensor_preprocess", None) is not None and getattr(device, "type", "") == "cuda"
    )


def _classify_on_device(
    classifier, sources, top_k: int, batch_size: int, workers: int | None
) -> Iterator[Row]:
    from image_classifier.tensor_pipeline import classify_on_device

    if classifier.tensor_preprocess is None:
        raise ValueError("The tensor pipeline needs precision 'fast' and a torchvision preset transform.")
    classifier.use_batch_size(batch_size)  # the engine for this batch size, tuned once (cached)
    for answer in classify_on_device(
        classifier, sources, top_k=top_k, batch_size=batch_size, workers=workers
    ):
        yield Row(answer.name, answer.predictions, answer.error)


def _classify_on_threads(
    classifier: Predictor,
    sources: Iterable[tuple[str, ImageInput]],
    top_k: int,
    batch_size: int,
    workers: int | None,
) -> Iterator[Row]:
    workers = workers or min(4, os.cpu_count() or 1)
    window = 2 * batch_size + workers
    queue = iter(sources)
    pending: deque[tuple[str, Future[torch.Tensor]]] = deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:

        def top_up() -> None:
            while len(pending) < window and (item := next(queue, None)) is not None:
                name, source = item
                pending.append((name, pool.submit(_decode, classifier, source)))

        try:
            top_up()
            while pending:
                chunk = [pending.popleft() for _ in range(min(batch_size, len(pending)))]
                decoded: list[tuple[str, torch.Tensor | None, str | None]] = []
                for image, future in chunk:
                    try:
                        decoded.append((image, future.result(), None))
                    except ImageError as e:
                        decoded.append((image, None, str(e)))
                top_up()  # the next images decode while the engine runs this batch
                yield from _classify_chunk(classifier, decoded, top_k, batch_size)
        finally:
            for _, future in pending:  # stopped early (an error, Ctrl-C, the consumer left): don't decode on
                future.cancel()


def _decode(classifier: Predictor, image: ImageInput) -> torch.Tensor:
    try:
        return classifier.preprocess(image)
    except PermissionError:
        raise ImageError(f"Permission denied: {image} can't be read.") from None
    except OSError as e:  # a read error the decoder doesn't name (a network share that went away...)
        raise ImageError(f"The file could not be read ({e.strerror or e}).") from None


def _classify_chunk(
    classifier: Predictor,
    decoded: list[tuple[str, torch.Tensor | None, str | None]],
    top_k: int,
    batch_size: int,
) -> Iterator[Row]:
    tensors = [tensor for _, tensor, _ in decoded if tensor is not None]
    answers = _predict(classifier, tensors, top_k, batch_size) if tensors else []
    answers.reverse()
    for image, tensor, error in decoded:
        if tensor is None:
            yield Row(image, error=error)
        else:
            answer = answers.pop()
            yield Row(image, error=answer) if isinstance(answer, str) else Row(image, answer)


def _predict(
    classifier: Predictor, tensors: list[torch.Tensor], top_k: int, batch_size: int
) -> list[dict[str, float] | str]:
    """Top-k dicts, or an error message per image (a prediction refused for one image spoils no other)."""
    # A short batch is padded to a power of two (or the batch size), so engines that compile a model
    # per batch shape (OpenVINO) see a handful of shapes, not one per leftover count.
    padded = min(1 << (len(tensors) - 1).bit_length(), batch_size)
    batch = batch_of(tensors + [tensors[-1]] * (padded - len(tensors)))
    try:
        probabilities = classifier.forward(batch)[: len(tensors)]
    except (ImageError, NonFiniteResultError) as e:  # one image's NaN: find which, one at a time
        if len(tensors) == 1:
            return [str(e)]
        return [answer for tensor in tensors for answer in _predict(classifier, [tensor], top_k, 1)]
    answers: list[dict[str, float] | str] = []
    for row in probabilities:
        try:
            answers.append(classifier.postprocess(row, top_k))
        except (ImageError, NonFiniteResultError) as e:
            answers.append(str(e))
    return answers


def batch_of(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """`torch.stack`, on the device of any tensor already off the CPU (on CUDA, large JPEGs are decoded and
    preprocessed on the GPU, the others on the CPU)."""
    devices = {tensor.device for tensor in tensors}
    if len(devices) > 1:
        device = next(device for device in devices if device.type != "cpu")
        tensors = [tensor.to(device, non_blocking=True) for tensor in tensors]
    return torch.stack(list(tensors))


# --- the output files --------------------------------------------------------------------------


def output_format(path: str | os.PathLike) -> str:
    """csv, jsonl or parquet, from the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise ValueError(f"Unknown output format {suffix or '(no suffix)'!r}: use .csv, .jsonl or .parquet.")
    return FORMATS[suffix]


def columns(top_k: int) -> list[str]:
    """image, label_1, probability_1, ..., label_K, probability_K, error."""
    pairs = [name for k in range(1, top_k + 1) for name in (f"label_{k}", f"probability_{k}")]
    return ["image", *pairs, "error"]


def arrow_schema(top_k: int):
    """`columns(top_k)` as a pyarrow schema: strings, float64 probabilities (Parquet, Ray)."""
    import pyarrow as pa

    fields = [pa.field("image", pa.string())]
    for k in range(1, top_k + 1):
        fields += [pa.field(f"label_{k}", pa.string()), pa.field(f"probability_{k}", pa.float64())]
    return pa.schema([*fields, pa.field("error", pa.string())])


def row_to_record(row: Row, top_k: int) -> dict[str, str | float | None]:
    """The flat record of `columns(top_k)`: missing labels and probabilities are None."""
    record: dict[str, str | float | None] = {"image": row.image}
    items = list(row.predictions.items())
    for k in range(top_k):
        label, probability = items[k] if k < len(items) else (None, None)
        record[f"label_{k + 1}"] = label
        record[f"probability_{k + 1}"] = probability
    record["error"] = row.error
    return record


def record_to_row(record: dict) -> Row:
    """Inverse of `row_to_record` (also takes the CSV reader's strings)."""
    predictions = {}
    k = 1
    while f"label_{k}" in record:
        label, probability = record[f"label_{k}"], record[f"probability_{k}"]
        if label not in (None, ""):
            predictions[label] = float(probability)
        k += 1
    return Row(record["image"], predictions, record.get("error") or None)


def read_rows(path: str | os.PathLike) -> list[Row]:
    """The rows of an output file written by `open_writer` (an incomplete last line is left out)."""
    kind = output_format(path)
    if kind == "parquet":
        rows = _read_parquet(path) if os.path.exists(path) else []
        journal = _journal(path)
        return rows + (_read_jsonl(journal) if journal.exists() else [])
    return _read_jsonl(path) if kind == "jsonl" else _read_csv(path)


def _complete_lines(path: str | os.PathLike) -> str:
    data = Path(path).read_bytes()
    return data[: data.rfind(b"\n") + 1].decode("utf-8")  # a line cut by a crash is not a row


def _read_csv(path: str | os.PathLike) -> list[Row]:
    return [record_to_row(record) for record in csv.DictReader(io.StringIO(_complete_lines(path)))]


def _read_jsonl(path: str | os.PathLike) -> list[Row]:
    rows = []
    for line in _complete_lines(path).splitlines():
        if line.strip():
            record = json.loads(line)
            rows.append(Row(record["image"], record.get("predictions") or {}, record.get("error")))
    return rows


def _read_parquet(path: str | os.PathLike) -> list[Row]:
    return [record_to_row(record) for record in _pyarrow_parquet().read_table(path).to_pylist()]


def _journal(path: str | os.PathLike) -> Path:
    """Parquet can't be appended to: its rows go to this JSON-lines journal until the run ends."""
    return Path(f"{os.fspath(path)}.partial.jsonl")


def _pyarrow_parquet():
    try:
        import pyarrow.parquet
    except ImportError:
        raise ValueError("Parquet output needs pyarrow: pip install pyarrow, or write .csv") from None
    return pyarrow.parquet


class RowWriter:
    """Appends rows to a CSV, JSONL or Parquet file; `close` finishes it (Parquet is written then)."""

    def __init__(self, path: str | os.PathLike, top_k: int, *, append: bool = False) -> None:
        self.path, self.top_k, self.kind = Path(path), top_k, output_format(path)
        if self.kind == "parquet":
            _pyarrow_parquet()  # fail before the work, not after it
            self._keep_previous = append and self.path.exists()
            target = _journal(path)
        else:
            target = self.path
        if append and target.exists():
            data = target.read_bytes()
            if not data.endswith(b"\n") and data:  # cut off a last line half-written by a crash
                with open(target, "r+b") as file:
                    file.truncate(data.rfind(b"\n") + 1)
        fresh = not (append and target.exists() and target.stat().st_size)
        self._file = open(target, "a" if append else "w", encoding="utf-8", newline="")  # noqa: SIM115
        if self.kind == "csv":
            self._csv = csv.writer(self._file)
            if fresh:
                self._csv.writerow(columns(top_k))

    def write(self, rows: Iterable[Row]) -> None:
        for row in rows:
            if self.kind == "csv":
                record = row_to_record(row, self.top_k)
                self._csv.writerow(["" if value is None else value for value in record.values()])
            else:
                line = {"image": row.image, "predictions": row.predictions, "error": row.error}
                # Predictions are finite (the classifier refuses NaN), so this never raises: valid JSON only.
                self._file.write(json.dumps(line, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self.kind == "parquet":
            self._write_parquet()

    def _write_parquet(self) -> None:
        import pyarrow as pa

        pq = _pyarrow_parquet()
        schema = arrow_schema(self.top_k)
        journal = _journal(self.path)
        temp = self.path.with_name(f".{self.path.name}.tmp")  # a complete file or the old one
        with pq.ParquetWriter(temp, schema) as writer:
            if self._keep_previous:
                previous = pq.ParquetFile(self.path)
                for group in range(previous.num_row_groups):
                    writer.write_table(previous.read_row_group(group).cast(schema))
            rows = _read_jsonl(journal)
            for start in range(0, len(rows), 10_000):
                records = [row_to_record(row, self.top_k) for row in rows[start : start + 10_000]]
                writer.write_table(pa.Table.from_pylist(records, schema=schema))
        os.replace(temp, self.path)
        journal.unlink()

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- a whole run -------------------------------------------------------------------------------


@dataclass
class Summary:
    """How a run went: rows in the output that hold an answer or an error, and those from an earlier run."""

    output: str
    classified: int = 0
    failed: int = 0
    earlier: int = 0

    def count(self, row: Row) -> None:
        if row.error is None:
            self.classified += 1
        else:
            self.failed += 1

    def __str__(self) -> str:
        earlier = f", {self.earlier} of them from the earlier run" if self.earlier else ""
        return f"{self.classified} classified, {self.failed} failed{earlier} -> {self.output}"


def previous_rows(output: str | os.PathLike, top_k: int) -> list[Row]:
    """Rows of an earlier run in `output` (none if it doesn't exist), checked to have `top_k` labels."""
    if not os.path.exists(output) and not (output_format(output) == "parquet" and _journal(output).exists()):
        return []
    rows = read_rows(output)
    sizes = {len(row.predictions) for row in rows if row.error is None}
    if sizes and sizes != {top_k}:
        raise ValueError(f"{output} holds top-{max(sizes)} rows: resume with --top-k {max(sizes)}.")
    return rows


def run(
    classifier: Predictor,
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    top_k: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int | None = None,
    resume: bool = False,
    progress: bool | None = None,
) -> Summary:
    """Classify every image under `paths` into `output` (.csv, .jsonl or .parquet).

    `resume` keeps the rows already in `output` and skips their images. `progress`: a tqdm bar on
    stderr (None: only when stderr is a terminal).
    """
    output_format(output)
    done = previous_rows(output, top_k) if resume else []
    summary = Summary(os.fspath(output), earlier=len(done))
    for row in done:
        summary.count(row)
    skip = {row.image for row in done}
    images = [image for image in find_images(paths) if image not in skip]
    with RowWriter(output, top_k, append=resume) as writer, progress_bar(len(images), progress) as bar:
        batch: list[Row] = []
        for row in classify_images(classifier, images, top_k=top_k, batch_size=batch_size, workers=workers):
            summary.count(row)
            batch.append(row)
            bar.update()
            if len(batch) == batch_size:
                writer.write(batch)
                batch.clear()
                bar.set_postfix(failed=summary.failed, refresh=False)
        writer.write(batch)
    return summary


def progress_bar(total: int, enabled: bool | None):
    """tqdm on stderr: images/s and ETA. None: only when stderr is a terminal."""
    from tqdm import tqdm

    disable = not enabled if enabled is not None else not sys.stderr.isatty()
    return tqdm(total=total, unit="img", file=sys.stderr, disable=disable, smoothing=0.1)


# --- the page's Many photos tab ----------------------------------------------------------------

TABLE_HEADERS = ["image", "top class", "confidence", "top 5", "error"]


def classify_uploads(
    classifier: Predictor,
    files: Sequence[str | os.PathLike],
    *,
    max_files: int = DEFAULT_MAX_BATCH_FILES,
    top_k: int = 5,
    progress: Callable[[int, int], object] | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    folder: str | os.PathLike | None = None,
) -> tuple[list[list[str]], str]:
    """Rows for the page's table (`TABLE_HEADERS`) and the path of the same results as a CSV file in
    `folder` (by default a new temporary folder, which the caller removes).

    `files` are the uploaded files' paths; more than `max_files` is refused with a `ValueError`.
    `progress(done, total)` is called after each image. Bad files get their error in their row.
    """
    if len(files) > max_files:
        raise ValueError(f"{len(files)} files is too many: at most {max_files} photos at a time, please.")
    if not files:
        raise ValueError("No photos: please upload one or more images.")
    paths = [os.fspath(file) for file in files]
    names = {path: os.path.basename(path) for path in paths}
    csv_path = os.path.join(folder or tempfile.mkdtemp(prefix="many-photos-"), "many-photos.csv")
    table = []
    with RowWriter(csv_path, top_k) as writer:
        for done, row in enumerate(classify_images(classifier, paths, top_k=top_k, batch_size=batch_size), 1):
            writer.write([Row(names[row.image], row.predictions, row.error)])
            if row.error is None:
                (label, probability), *_ = row.predictions.items()
                rest = ", ".join(f"{name} {p:.0%}" for name, p in row.predictions.items())
                table.append([names[row.image], label, f"{probability:.1%}", rest, ""])
            else:
                table.append([names[row.image], "", "", "", row.error])
            if progress is not None:
                progress(done, len(paths))
    return table, csv_path
