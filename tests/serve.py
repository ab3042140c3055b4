"""Serve the app with the EfficientNet-Lite0 oracle model in its own process (for load tests and benchmarks).

python tests/serve.py PORT [--upload-max-side N]
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
    args = parser.parse_args()
    demo = app.build_demo(
        load_oracle(), model_name="EfficientNet-Lite0", upload_max_side=args.upload_max_side
    )
    demo.launch(server_name="127.0.0.1", server_port=args.port, **app.launch_options())
