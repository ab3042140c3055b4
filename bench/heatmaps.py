"""What heatmaps cost: photo -> bars against photo -> bars + all five heatmaps, side by side in one run.

    python bench/heatmaps.py            # a minute or two on 2 cores
    python bench/heatmaps.py --quick    # tiny smoke run (the test suite uses it)

DenseNet-121 on the CPU in the app's default configuration (random weights: same compute as the pretrained
ones, which can't be downloaded here), JPEG bytes in. Three contenders, timed round-robin:
- bars: `Classifier.predict` (what /predict does);
- page: `Classifier.analyse` + the five classes' maps + the top class's overlay picture at the page's
  display size (what the Photo tab does when a photo lands);
- explain: `Classifier.explain`, five float32 heatmaps at the photo's full size (the Python API).
Prints medians with min–max and the ratios to bars; writes OUT/heatmaps.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from app import DISPLAY_SIDE  # noqa: E402
from classifier import Classifier, load_labels  # noqa: E402
from latency import jpeg_of_size, side_by_side, summary  # noqa: E402


def page_work(classifier: Classifier, data: bytes) -> Image.Image:
    """What the Photo tab computes when a photo lands (app.py's `analyse` and `heatmap_picture`)."""
    analysis = classifier.analyse(data)
    maps = {label: analysis.heatmaps.cam(label) for label in analysis.predictions}
    display = analysis.image.copy()
    display.thumbnail((DISPLAY_SIDE, DISPLAY_SIDE), Image.Resampling.LANCZOS)
    return analysis.heatmaps.overlay(display, next(iter(maps)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where heatmaps.json goes")
    args = parser.parse_args()
    rounds = 2 if args.quick else 30
    sizes = [(640, 480)] if args.quick else [(640, 480), (4032, 3024)]

    torch.manual_seed(0)
    model = torchvision.models.resnet18() if args.quick else torchvision.models.densenet121()
    classifier = Classifier(model, load_labels(), device="cpu")
    print(f"{type(model).__name__}, engine {classifier.engine}, {torch.get_num_threads()} threads")
    print("photo -> bars (predict) vs bars + five heatmaps (median, min–max)")
    rows = []
    for width, height in sizes:
        data = jpeg_of_size(width, height)
        times = side_by_side(
            {
                "bars": lambda d=data: classifier.predict(d),
                "page": lambda d=data: page_work(classifier, d),
                "explain": lambda d=data: classifier.explain(d),
            },
            rounds,
        )
        medians = {name: sorted(samples)[len(samples) // 2] for name, samples in times.items()}
        row = {"image": f"{width}×{height}", "median_ms": medians}
        row["page_ratio"] = medians["page"] / medians["bars"]
        row["explain_ratio"] = medians["explain"] / medians["bars"]
        rows.append(row)
        print(f"  {width}×{height}")
        for name, samples in times.items():
            ratio = medians[name] / medians["bars"]
            print(f"    {name:<8} {summary(samples)}  {ratio:5.2f}× bars")
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "heatmaps.json"
    target.write_text(json.dumps({"model": type(model).__name__, "engine": classifier.engine, "rows": rows}))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
