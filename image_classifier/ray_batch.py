"""The batch job on Ray Data: a local Ray on this machine's cores, or an existing cluster, same output.

Ray reads the files (`read_binary_files`, so anything its filesystems read: local, s3://, gs://...);
an actor pool classifies their bytes with the project's own decoding and errors, loading the classifier
once per actor; the driver writes the rows with the same writers as the local run. Ray is optional
(requirements-ray.txt) and imported only when a run asks for it.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence

from image_classifier.batch import (
    DEFAULT_BATCH_SIZE,
    IMAGE_EXTENSIONS,
    Predictor,
    Row,
    RowWriter,
    Summary,
    arrow_schema,
    classify_sources,
    find_images,
    output_format,
    previous_rows,
    progress_bar,
    record_to_row,
    row_to_record,
)
from image_classifier.decoding import ImageError, load_image

QUIET_RAY = {
    # No usage report, and so none of its cloud metadata probes (169.254.169.254, metadata.google.internal)
    # that wait for their timeouts on a machine without internet.
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray Data's execution plan and timings at INFO; the run has its own progress bar and summary.
    "RAY_DATA_LOG_LEVEL": "WARNING",
}
"""Set for a run unless already set (a user's own value wins)."""
READ_CPUS = 0.25
"""CPUs a read task asks for. Actors take the rest; reads asking a whole CPU could find none left on
a small machine (ray.init(num_cpus=2) with two 1-CPU actors hangs without a word)."""


class ClassifyBatch:
    """Ray Data's callable class: loads the classifier once per actor, then classifies batches of bytes."""

    def __init__(self, load: Callable[[], Predictor], top_k: int, batch_size: int) -> None:
        self.classifier = load()
        self.top_k, self.batch_size = top_k, batch_size
        self.schema = arrow_schema(top_k)

    def __call__(self, batch: dict):
        import pyarrow as pa

        sources = zip(batch["path"], batch["bytes"], strict=True)
        rows = classify_sources(self.classifier, sources, top_k=self.top_k, batch_size=self.batch_size)
        records = [row_to_record(_as_file(row), self.top_k) for row in rows]
        return pa.Table.from_pylist(records, schema=self.schema)


def _as_file(row: Row) -> Row:
    """Decoding bytes speaks of "the upload"; these bytes are a file, as in the local run's errors."""
    if row.error and row.error.startswith("The upload "):
        return Row(row.image, row.predictions, "The file " + row.error.removeprefix("The upload "))
    return row


def run(
    load: Callable[[], Predictor],
    paths: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    top_k: int = 5,
    batch_size: int = DEFAULT_BATCH_SIZE,
    resume: bool = False,
    address: str | None = None,
    actors: int | None = None,
    progress: bool | None = None,
) -> Summary:
    """`batch.run` on Ray: `load()` builds the classifier in each actor (it must pickle: a module-level
    function or a functools.partial of one). `address`: an existing cluster (default $RAY_ADDRESS);
    without one, a local Ray on this machine's cores, started and stopped here.
    """
    output_format(output)
    ray = _import_ray()
    done = previous_rows(output, top_k) if resume else []
    summary = Summary(os.fspath(output), earlier=len(done))
    for row in done:
        summary.count(row)
    skip = {row.image for row in done}

    remote = [os.fspath(path) for path in paths if "://" in os.fspath(path)]
    local = find_images(path for path in paths if "://" not in os.fspath(path))
    local = [image for image in local if image not in skip]
    missing = [image for image in local if not os.path.isfile(image)]
    names = {os.path.abspath(image): image for image in local if os.path.isfile(image)}

    initialised_here = not ray.is_initialized()
    own_ray = _init(ray, address) if initialised_here else False
    try:
        with RowWriter(output, top_k, append=resume) as writer, progress_bar(len(local), progress) as bar:
            for image in missing:  # Ray would fail the whole read on them; the row says what is wrong
                row = Row(image, error=_read_error(image))
                summary.count(row)
                writer.write([row])
                bar.update()
            if names or remote:
                dataset = _dataset(ray, [*names, *remote], load, top_k, batch_size, actors, own_ray)
                for table in dataset.iter_batches(batch_format="pyarrow", batch_size=batch_size):
                    rows = [record_to_row(record) for record in table.to_pylist()]
                    rows = [Row(names.get(row.image, row.image), row.predictions, row.error) for row in rows]
                    rows = [row for row in rows if row.image not in skip]  # remote paths: known after reading
                    for row in rows:
                        summary.count(row)
                    writer.write(rows)
                    bar.update(len(rows))
    finally:
        if initialised_here:
            ray.shutdown()
    return summary


def _import_ray():
    for name, value in QUIET_RAY.items():
        os.environ.setdefault(name, value)
    # Ray 2.59+ turns token authentication on for a local cluster (a token made here, no network): keep
    # it, without a warning on every run. An existing cluster's token comes from RAY_AUTH_TOKEN(_PATH).
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "progress bars disabled"
    try:
        import ray
        import ray.data
    except ImportError:
        raise ValueError("--ray needs Ray: pip install -r requirements-ray.txt") from None
    return ray


def _init(ray, address: str | None) -> bool:
    """Connect to `address` or $RAY_ADDRESS, else start a local Ray on this machine's cores.

    True when the run has Ray to itself (started here on this machine), False on a shared cluster.
    """
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the run has its own bar
    context.print_on_execution_start = False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return address is None


def actor_resources(cpus: float, gpus: float, actors: int | None) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor) for a cluster of `cpus` and `gpus`.

    With GPUs, one actor per GPU unless `actors` says otherwise (more actors share them); each then decodes
    and preprocesses its JPEGs on its GPU (the tensor pipeline). Without, one actor per 4 CPUs. Actors share
    three quarters of the CPUs, the reads the rest: neither can starve the other."""
    if gpus >= 1:
        actors = actors or int(gpus)
        gpus_per_actor = min(1.0, gpus / actors)
    else:
        actors = actors or max(1, int(cpus // 4))
        gpus_per_actor = 0
    return actors, max(0.25, round(cpus * 0.75 / actors, 2)), gpus_per_actor


def _dataset(ray, paths: list[str], load, top_k: int, batch_size: int, actors: int | None, own_ray: bool):
    resources = ray.cluster_resources()
    actors, actor_cpus, actor_gpus = actor_resources(
        resources.get("CPU", 1.0), resources.get("GPU", 0.0), actors
    )
    extensions = sorted({case(ext[1:]) for ext in IMAGE_EXTENSIONS for case in (str.lower, str.upper)})
    files = ray.data.read_binary_files(
        paths,
        include_paths=True,
        file_extensions=extensions if any("://" in path for path in paths) else None,
        num_cpus=READ_CPUS,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")  # max_restarts
        return files.map_batches(
            ClassifyBatch,
            fn_constructor_kwargs={"load": load, "top_k": top_k, "batch_size": batch_size},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=actor_cpus,
            **({"num_gpus": actor_gpus} if actor_gpus else {}),
            # Restarting a dead actor matters on a cluster (a lost node); on a Ray of its own it would
            # only log an error line that its constructor lives in the object store. (An extra keyword
            # goes to Ray's actor options; Ray 2.60 warns that these are deprecated.)
            **({"max_restarts": 0} if own_ray else {}),
        )


def _read_error(image: str) -> str:
    try:
        load_image(image)
    except ImageError as e:
        return str(e)
    return f"{image} could not be read."
