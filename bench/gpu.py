"""Throughput on a GPU: images/s at batch 1 and 32, this project's engine against fp32 PyTorch.

    python bench/gpu.py                          # on a CUDA machine
    python bench/gpu.py --device cpu --quick     # tiny run of the script itself (the test suite uses it)

DenseNet-121 with random weights (same compute as the pretrained ones, which can't be downloaded here),
through the Classifier itself: `precision="fast"` (the engine tuned at start: on CUDA fp32 or fp16, plain or
channels_last, the fastest that keeps the answers; printed) against `precision="exact"` (fp32, the
reference), run side by side in one process.

- forward: `Classifier.forward` on a ready batch (host -> device copy, model, softmax, copy back); the
  copy back waits for the GPU, so each timing covers finished work.
- end to end: `Classifier.predict_batch` on 640×480 JPEG bytes (decoding and preprocessing on the CPU).

Prints medians with min–max and writes OUT/gpu.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
import torchvision  # noqa: E402

from classifier import Classifier, load_labels, resolve_device  # noqa: E402
from latency import jpeg_of_size, side_by_side  # noqa: E402


def summary(rates: list[float]) -> str:
    return f"{statistics.median(rates):8.1f} images/s ({min(rates):.1f}–{max(rates):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--rounds", type=int, default=20, help="timed rounds per contender (default 20)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where gpu.json goes")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    rounds = 2 if args.quick else args.rounds
    batch_sizes = (1, 2) if args.quick else (1, 32)

    torch.manual_seed(0)
    labels = load_labels()
    model = torchvision.models.densenet121()
    classifiers = {
        precision: Classifier(copy.deepcopy(model), labels, device=device, precision=precision)
        for precision in ("exact", "fast")
    }
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"DenseNet-121 on {name}, torch {torch.__version__}")
    engines = {precision: c.engine for precision, c in classifiers.items()}
    print(f"engines: {engines}")

    photo = jpeg_of_size(640, 480)
    results: dict[str, dict] = {"device": name, "engines": engines, "forward": {}, "end_to_end": {}}
    for batch_size in batch_sizes:
        ready = torch.randn(batch_size, 3, 224, 224)
        photos = [photo] * batch_size
        for kind, method, argument in (
            ("forward", Classifier.forward, ready),
            ("end_to_end", Classifier.predict_batch, photos),
        ):
            times = side_by_side({p: partial(method, c, argument) for p, c in classifiers.items()}, rounds)
            rates = {p: [batch_size * 1000 / ms for ms in samples] for p, samples in times.items()}
            speedup = statistics.median(rates["fast"]) / statistics.median(rates["exact"])
            print(f"\n{kind}, batch {batch_size}")
            for precision, samples in rates.items():
                print(f"   {precision:>5} ({engines[precision]:<24}) {summary(samples)}")
            print(f"   fast / exact: {speedup:.2f}× the throughput")
            results[kind][str(batch_size)] = {**rates, "speedup": speedup}

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out / 'gpu.json'}")


if __name__ == "__main__":
    main()
