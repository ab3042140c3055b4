"""Many images into one table: the batch runner against a per-image predict loop and the forward pass alone.

    python bench/batch.py                 # 640×480 JPEGs, DenseNet-121 (random weights), fast engine
    python bench/batch.py --ray           # also: the same job on a local Ray, 400 images
    python bench/batch.py --quick         # tiny run of the script itself (the test suite uses it)

Side by side in one run, on the same engine and the same files:
- loop: `Classifier.predict(path)` image after image (what the CLI did before).
- forward: `Classifier.forward` on ready tensors at each batch size: the most any runner can reach.
- runner: `image_classifier.batch.run` into a CSV at the best batch size (decoding on threads).
- RSS: peak memory of a fresh process running the runner over 1,000 and 10,000 images (MobileNet-V3
  small, so the 10,000 take a minute: the bound is the runner's, not the model's).
- Ray (--ray): the runner on a local Ray against the local runner, 400 images, start-up included.
Prints images/s and ratios and writes OUT/batch.json.
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from classifier import load_classifier  # noqa: E402
from image_classifier import batch  # noqa: E402


def make_jpegs(folder: Path, count: int, distinct: int = 200) -> list[str]:
    """`count` 640×480 JPEGs: `distinct` real files (a photo plus noise), the rest hard links to them."""
    folder.mkdir(parents=True, exist_ok=True)
    photo = np.asarray(Image.open(ROOT / "examples" / "coffee.jpg").convert("RGB").resize((640, 480)))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"{i // 1000:03d}" / f"{i:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        if i < distinct:
            noisy = np.clip(photo.astype(np.int16) + rng.integers(-20, 20, photo.shape), 0, 255)
            buffer = io.BytesIO()
            Image.fromarray(noisy.astype(np.uint8)).save(buffer, "JPEG", quality=90)
            path.write_bytes(buffer.getvalue())
        else:
            os.link(paths[i % distinct], path)
        paths.append(str(path))
    return paths


def weights_file(folder: Path, model: str) -> str:
    torch.manual_seed(0)
    path = folder / f"{model}.pth"
    torch.save(getattr(torchvision.models, model)().state_dict(), path)
    return str(path)


def rate(fn, count: int, rounds: int) -> float:
    """Best of `rounds` (images/s): the least disturbed by the other sessions on this machine."""
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        best = max(best, count / (time.perf_counter() - start))
    return best


def peak_rss_mb(weights: str, model: str, folder: Path, count: int, batch_size: int, out: Path) -> float:
    """Peak RSS of a fresh process classifying the first `count` images of `folder` into a CSV."""
    code = f"""
import resource, sys
sys.path.insert(0, {str(ROOT)!r})
from classifier import load_classifier
from image_classifier import batch
clf = load_classifier({model!r}, {weights!r})
images = batch.find_images([{str(folder)!r}])[:{count}]
batch.run(clf, images, {str(out)!r}, batch_size={batch_size})
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: check the script runs")
    parser.add_argument("--ray", action="store_true", help="also time the job on a local Ray (400 images)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    count, rounds, sizes = (32, 1, [1, 8]) if args.quick else (200, 2, [1, 8, 16, 32])
    rss_counts = (50, 200) if args.quick else (1_000, 10_000)
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        results = run_all(work, args, count, rounds, sizes, rss_counts)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch.json").write_text(json.dumps(results, indent=2))


def run_all(work: Path, args, count: int, rounds: int, sizes: list[int], rss_counts) -> dict:
    images = make_jpegs(work / "photos", max(count, *rss_counts))
    weights = weights_file(work, "densenet121")
    classifier = load_classifier("densenet121", weights, "cpu")
    subset = images[:count]
    print(f"DenseNet-121 (random weights), {classifier.engine}, {count} 640×480 JPEGs, {os.cpu_count()} CPUs")

    ready = torch.stack([classifier.preprocess(path) for path in subset[: max(sizes)]])
    forward = {}
    for size in sizes:
        chunk = ready[:size]
        classifier.forward(chunk)  # compile this shape first
        passes = max(1, count // size)
        forward[size] = rate(
            lambda c=chunk, n=passes: [classifier.forward(c) for _ in range(n)], passes * size, rounds
        )
    best = max(forward, key=forward.get)

    def loop():
        for path in subset:
            classifier.predict(path)

    csv_path = work / "results.csv"
    runner = functools.partial(batch.run, classifier, subset, csv_path, batch_size=best, progress=False)
    runner()  # warm-up: every padded shape compiled
    loop_rate = rate(loop, count, rounds)
    runner_rate = rate(runner, count, rounds)
    print("\n  forward pass alone (ready tensors), images/s by batch size:")
    for size, value in forward.items():
        print(f"    batch {size:>3}: {value:7.1f}{'   <- best' if size == best else ''}")
    print(f"  per-image predict loop: {loop_rate:7.1f} images/s")
    print(f"  batch runner (batch {best}): {runner_rate:7.1f} images/s")
    print(f"  runner / loop:    {runner_rate / loop_rate:5.2f}x  (target >= 1.25)")
    print(f"  runner / forward: {runner_rate / forward[best]:5.2f}x  (target >= 0.85: decoding hidden)")
    results = {
        "cpus": os.cpu_count(),
        "engine": classifier.engine,
        "images": count,
        "forward": forward,
        "best_batch_size": best,
        "loop": loop_rate,
        "runner": runner_rate,
        "runner_over_loop": runner_rate / loop_rate,
        "runner_over_forward": runner_rate / forward[best],
    }

    small = weights_file(work, "mobilenet_v3_small")
    rss = {
        n: peak_rss_mb(small, "mobilenet_v3_small", work / "photos", n, best, work / "rss.csv")
        for n in rss_counts
    }
    print(
        "  peak RSS, fresh process (MobileNet-V3 small):",
        ", ".join(f"{n:,}: {mb:.0f} MB" for n, mb in rss.items()),
    )
    results["rss_mb"] = rss

    if args.ray:
        from image_classifier import ray_batch

        ray_images = images[:400] if not args.quick else images[:count]
        load = functools.partial(load_classifier, "densenet121", weights, "cpu")
        start = time.perf_counter()
        batch.run(classifier, ray_images, work / "local.csv", batch_size=best, progress=False)
        local_s = time.perf_counter() - start
        start = time.perf_counter()
        ray_batch.run(load, ray_images, work / "ray.csv", batch_size=best, progress=False)
        ray_s = time.perf_counter() - start
        print(
            f"  {len(ray_images)} images: local runner {local_s:.1f} s, local Ray {ray_s:.1f} s "
            f"(start-up, actor load included): {ray_s / local_s:.2f}x the time"
        )
        results["ray"] = {"images": len(ray_images), "local_s": local_s, "ray_s": ray_s}
    print(f"  (peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB)")
    return results


if __name__ == "__main__":
    main()
