"""Web demo: drop, paste or snap a photo and see an ImageNet model's top-5 guesses as a bar chart, with a
heatmap of where the model looked. The page itself is image_classifier/page/, one module per tab; this file
reads the command line and launches it (Hugging Face Spaces runs `app.py`).

python app.py                      # http://127.0.0.1:7860
python app.py --share              # plus a temporary public link
python app.py --models resnet50,vit_b_16 --model resnet50   # the models on offer, and the first one shown
python app.py --serve --replicas 2  # the models on Ray Serve replicas: a local Ray, or $RAY_ADDRESS's cluster
"""

from __future__ import annotations

if __name__ == "__main__":  # first of all: a setting that counts only from a process's start
    from image_classifier.allocator import restart_with_malloc

    restart_with_malloc()

import argparse
import functools
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import gradio as gr

from classifier import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MODEL_MEMORY_MB,
    DEFAULT_MODELS,
    ModelLoadError,
    add_model_arguments,
    classifier_set,
    offered_models,
)
from image_classifier import batch
from image_classifier.allocator import tune_malloc
from image_classifier.live import PhotosFirst
from image_classifier.metrics import PageMetrics, health_routes, loaded_models, model_set_readiness
from image_classifier.page import build_demo, launch_options
from image_classifier.page.settings import (
    DELETE_CACHE,
    LIVE_TIME_LIMIT,
    MAX_FILE_SIZE,
    MAX_STREAMS,
    QUEUE_SIZE,
    UPLOAD_MAX_SIDE,
)
from image_classifier.serve_options import ServeOptions, add_serve_arguments, serve_options

ROOT = Path(__file__).resolve().parent
SERVE_APP = "image-classifier"
"""The Serve application's name (`serve status` shows it)."""

__all__ = [
    "DELETE_CACHE",
    "MAX_FILE_SIZE",
    "UPLOAD_MAX_SIDE",
    "build_demo",
    "launch_options",
    "main",
    "parse_args",
    "serve_application",
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the image classifier demo in the browser.")
    parser.add_argument("--share", action="store_true", help="also serve on a temporary public link")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, or $GRADIO_SERVER_NAME)")
    parser.add_argument("--port", type=int, help="port (default 7860, or $GRADIO_SERVER_PORT)")
    parser.add_argument(
        "--mcp",
        action="store_true",
        help="also serve the API as MCP tools at /gradio_api/mcp/ (or $GRADIO_MCP_SERVER=True)",
    )
    add_model_arguments(parser)
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        metavar="A,B,...",
        help="the torchvision models on offer, or 'all' (default: a set that fits a 2-vCPU / 16 GB machine: "
        f"{', '.join(DEFAULT_MODELS)}); --model is the one shown first",
    )
    parser.add_argument(
        "--model-memory",
        type=float,
        default=DEFAULT_MODEL_MEMORY_MB,
        metavar="MB",
        help=f"memory the loaded models may take together; least recently used out first "
        f"(default {DEFAULT_MODEL_MEMORY_MB})",
    )
    add_limit_arguments(parser)
    add_serve_arguments(parser)
    args = parser.parse_args(argv)
    args.serve_options = serve_options(parser, args)
    if args.upload_max_side < 0:
        parser.error("--upload-max-side takes a number of pixels, or 0 to send photos as they are")
    if args.max_streams < 1 or args.live_time_limit <= 0:
        parser.error("--max-streams must be at least 1 and --live-time-limit more than 0")
    return args


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """What the page takes and serves at once: uploads, streams, the queue."""
    parser.add_argument(
        "--max-file-size", default=MAX_FILE_SIZE, help=f"largest upload, e.g. 5mb (default {MAX_FILE_SIZE})"
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_PIXELS / 1e6,
        help=f"largest image in megapixels (default {DEFAULT_MAX_PIXELS / 1e6:g})",
    )
    parser.add_argument(
        "--max-batch-files",
        type=int,
        default=batch.DEFAULT_MAX_BATCH_FILES,
        help=f"most photos the Many photos tab takes at once (default {batch.DEFAULT_MAX_BATCH_FILES})",
    )
    parser.add_argument(
        "--upload-max-side",
        type=int,
        default=UPLOAD_MAX_SIDE,
        help="the browser shrinks photos to this many pixels on their long side, upright and without "
        f"metadata, before uploading them; 0 sends them as they are (default {UPLOAD_MAX_SIDE})",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=MAX_STREAMS,
        help=f"live webcam streams served at once; more wait their turn (default {MAX_STREAMS})",
    )
    parser.add_argument(
        "--live-time-limit",
        type=float,
        default=LIVE_TIME_LIMIT,
        metavar="SECONDS",
        help=f"seconds a live stream runs before it lets a waiting one go first (default {LIVE_TIME_LIMIT})",
    )
    parser.add_argument(
        "--queue-size", type=int, default=QUEUE_SIZE, help=f"requests allowed to wait (default {QUEUE_SIZE})"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tune_malloc()  # before any model loads: glibc ignores an arena cap set later
    log = logging.getLogger("image_classifier")  # the engine choice, cache repairs: one line each
    log.setLevel(logging.INFO)
    log.addHandler(logging.StreamHandler())
    if args.serve_options:
        return serve_main(args)
    try:
        models = classifier_set(
            args.models,
            default=args.model,
            weights=args.weights,
            device=args.device,
            max_pixels=round(args.max_megapixels * 1e6),
            precision=args.precision,
            memory_mb=args.model_memory,
            engine=args.engine,
        )
        models.load_default()  # fail now, in words, rather than on the first request
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    metrics = PageMetrics(models.names, models=loaded_models(models), refusals=(gr.Error,))
    photos_first = PhotosFirst()  # live frames give way to photos from their upload on
    demo = build_demo(models, metrics=metrics, photos_first=photos_first, **page_options(args))
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        share=args.share or None,  # None: Gradio's own default, a link only where GRADIO_SHARE asks
        mcp_server=args.mcp or None,  # None: Gradio reads GRADIO_MCP_SERVER
        **launch_options(
            args.max_file_size,
            routes=health_routes(metrics, model_set_readiness(models)),
            photos_first=photos_first,
        ),
    )
    return 0


def page_options(args: argparse.Namespace) -> dict:
    """`build_demo`'s options from the command line."""
    return {
        "queue_size": args.queue_size,
        "max_batch_files": args.max_batch_files,
        "upload_max_side": args.upload_max_side,
        "live_time_limit": args.live_time_limit,
        "max_streams": args.max_streams,
    }


# --- the models on Ray Serve -----------------------------------------------------------------------


def serve_main(args: argparse.Namespace) -> int:
    """`--serve`: Ray (local, or a cluster), Serve's HTTP proxy on --host/--port, the page and the model
    replicas deployed; until stopped (Ctrl-C, SIGTERM), then Serve is shut down."""
    try:
        from ray import serve

        from image_classifier import ray_serve
    except ImportError:
        print("error: --serve needs Ray Serve: pip install -r requirements-ray.txt", file=sys.stderr)
        return 1
    try:
        application = serve_application_of(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    host = args.host or os.environ.get("GRADIO_SERVER_NAME") or "127.0.0.1"
    port = args.port or int(os.environ.get("GRADIO_SERVER_PORT") or 7860)
    ray_serve.start(args.ray_address, host, port, str(ROOT))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # after Ray's own: to `finally`, like Ctrl-C
    try:
        print(f"* Running on http://{host}:{port}/ (the page; its models on Ray Serve replicas)", flush=True)
        serve.run(application, name=SERVE_APP, route_prefix="/", blocking=False)
        print(f"* Ready: {describe_replicas(args.serve_options)}", flush=True)
        signal.pause()
    except RuntimeError as e:  # a deployment that could not start: its replicas' errors are logged above
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0


def describe_replicas(options: ServeOptions) -> str:
    if options.autoscale:
        return f"{options.autoscale[0]} to {options.autoscale[1]} model replicas, scaled on load"
    return f"{options.replicas} model replica{'s' if options.replicas > 1 else ''}"


def serve_application_of(args: argparse.Namespace):
    """The Serve application (the page and the model replicas) that the command line describes; the model
    set is built on each replica, as `classifier_set` builds it for the plain app."""
    from image_classifier import ray_serve
    from image_classifier.page.serving import serve_page

    names = offered_models(args.models)  # a ValueError, in words, for a name torchvision lacks
    if args.model not in names:
        names = [*offered_models([args.model]), *names]
    max_pixels = round(args.max_megapixels * 1e6)
    load = functools.partial(
        classifier_set,
        names,
        default=args.model,
        weights=os.path.abspath(args.weights) if args.weights else None,  # replicas run in other folders
        device=args.device,
        max_pixels=max_pixels,
        precision=args.precision,
        engine=args.engine,
        memory_mb=args.model_memory,
    )
    options = args.serve_options or ServeOptions(max_queued=args.queue_size)
    replicas = options.autoscale[1] if options.autoscale else options.replicas
    per_replica = ray_serve.MAX_BATCH_SIZE if options.replica_gpus else 2
    build = functools.partial(
        serve_page,
        max_file_size=args.max_file_size,
        concurrency=replicas * per_replica,  # enough requests in flight for every replica (and batch)
        max_pixels=max_pixels,
        **page_options(args),
    )
    return ray_serve.page_application(load, build, names, args.model, args.model_memory, options)


def serve_application(args: dict):
    """Serve's application builder (`import_path: app:serve_application`, as in deploy/rayservice.yaml):
    `args` holds app.py's options by name, e.g. {"models": "densenet121,resnet50", "replicas": 2}."""
    argv = ["--serve"]
    for name, value in args.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value not in (False, None):
            argv += [flag, str(value)]
    return serve_application_of(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
