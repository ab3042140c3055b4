"""Serve the app with the EfficientNet-Lite0 oracle model in its own process (for load tests, benchmarks and
the soak).

python tests/serve.py PORT [--upload-max-side N] [--delete-cache EVERY OLDER_THAN] [--sessions IDLE CLOSED]
    [--also MODEL]
"""

import argparse
import os
import sys
import tempfile
from functools import partial
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from image_classifier.allocator import restart_with_malloc, tune_malloc  # noqa: E402

if __name__ == "__main__":
    restart_with_malloc()  # as app.py does, before the heavy imports

import app  # noqa: E402
from classifier import ModelSet, load_classifier, time_one_photo  # noqa: E402
from image_classifier.live import PhotosFirst  # noqa: E402
from image_classifier.sessions import SESSION_CLOSED_S, SESSION_IDLE_S  # noqa: E402
from oracle import load_oracle  # noqa: E402
from torch_home import write_random_weights  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--upload-max-side", type=int, default=app.UPLOAD_MAX_SIDE)
    parser.add_argument(
        "--delete-cache",
        nargs=2,
        type=int,
        default=app.DELETE_CACHE,
        metavar=("EVERY", "OLDER_THAN"),
        help="how often uploads and results are deleted, and from what age, in seconds (default: the app's)",
    )
    parser.add_argument(
        "--sessions",
        nargs=2,
        type=float,
        default=(SESSION_IDLE_S, SESSION_CLOSED_S),
        metavar=("IDLE", "CLOSED"),
        help="seconds unused before a session is forgotten, and one whose tab closed (default: the app's)",
    )
    parser.add_argument(
        "--also",
        metavar="MODEL",
        help="a second model on offer for /classify and /compare: torchvision's, with random weights",
    )
    args = parser.parse_args()
    tune_malloc()  # as app.py does, before the model loads
    oracle = load_oracle()
    served = oracle
    if args.also:
        os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="serve-torch-home-")
        write_random_weights(Path(os.environ["TORCH_HOME"]), [args.also])
        loaders = {
            "EfficientNet-Lite0": lambda: oracle,
            args.also: partial(load_classifier, args.also, device="cpu"),
        }
        served = ModelSet(loaders, memory_mb_of=lambda model: model.memory_mb, timed=time_one_photo)
    photos_first = PhotosFirst()
    page = {"model_name": "EfficientNet-Lite0", "upload_max_side": args.upload_max_side}
    demo = app.build_demo(served, **page, photos_first=photos_first)
    options = app.launch_options(
        delete_cache=tuple(args.delete_cache), sessions=tuple(args.sessions), photos_first=photos_first
    )
    demo.launch(server_name="127.0.0.1", server_port=args.port, **options)
