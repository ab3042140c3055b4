"""The plain baseline page for bench/page.py: a gr.Interface with Gradio's defaults around the seed's
pipeline (PIL's full decode, the seed's transform, an eager float32 forward), the top five as bars, on the
EfficientNet-Lite0 oracle so that it answers with the same model as the page it is measured against.

python bench/plain_app.py PORT
python bench/plain_app.py --no-work PORT   # Gradio's floor: the same Interface, a fixed answer, no decode
"""

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from oracle import load_oracle  # noqa: E402
from seed import SEED_TRANSFORM  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--no-work", action="store_true", help="answer five fixed classes, the photo unread")
    args = parser.parse_args()
    oracle = load_oracle(precision="exact")
    model, labels = oracle.model.eval(), oracle.labels

    def predict(image):
        probabilities = model.forward(SEED_TRANSFORM(image.convert("RGB")).unsqueeze(0)).softmax(1)[0]
        top = torch.topk(probabilities, 5)
        return {labels[i]: p.item() for p, i in zip(top.values, top.indices, strict=True)}

    def no_work(path):
        return {label: 0.5**rank for rank, label in enumerate(labels[:5], start=1)}

    # live: classified as soon as the photo lands, as the page does (no Submit click to time)
    photo = gr.Image(type="filepath" if args.no_work else "pil")  # a path: Gradio decodes nothing
    gr.Interface(no_work if args.no_work else predict, photo, gr.Label(num_top_classes=5), live=True).launch(
        server_name="127.0.0.1", server_port=args.port
    )
