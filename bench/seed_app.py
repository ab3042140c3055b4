"""The naive baseline server: the seed's function in a gr.Interface with Gradio's defaults.

python bench/seed_app.py WEIGHTS PORT
"""

import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import gradio as gr  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from classifier import load_labels  # noqa: E402
from seed import SEED_TRANSFORM  # noqa: E402

if __name__ == "__main__":
    model = torchvision.models.densenet121()
    model.load_state_dict(torch.load(sys.argv[1], weights_only=True))
    model.eval()
    labels = load_labels()

    def predict(image):
        outputs = model.forward(SEED_TRANSFORM(image).unsqueeze(0))
        _, index = outputs.max(1)
        return labels[index.item()]

    gr.Interface(fn=predict, inputs=gr.Image(type="pil"), outputs="label").launch(
        server_name="127.0.0.1", server_port=int(sys.argv[2])
    )
