"""Serve the app with the EfficientNet-Lite0 oracle model in its own process (for load tests, benchmarks and
the soak).

python tests/serve.py PORT [--upload-max-side N] [--delete-cache EVERY OLDER_THAN]
"""

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import app  # noqa: E402
from oracle import load_oracle  # noqa: E402

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
    args = parser.parse_args()
    demo = app.build_demo(
        load_oracle(), model_name="EfficientNet-Lite0", upload_max_side=args.upload_max_side
    )
    options = app.launch_options(delete_cache=tuple(args.delete_cache))
    demo.launch(server_name="127.0.0.1", server_port=args.port, **options)
