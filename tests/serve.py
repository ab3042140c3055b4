"""Serve the app with the EfficientNet-Lite0 oracle model in its own process (for load tests).

python tests/serve.py PORT
"""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import app  # noqa: E402
from oracle import load_oracle  # noqa: E402

if __name__ == "__main__":
    demo = app.build_demo(load_oracle(), model_name="EfficientNet-Lite0")
    demo.launch(server_name="127.0.0.1", server_port=int(sys.argv[1]), **app.launch_options())
