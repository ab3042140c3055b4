"""Latency of one image, this project against the seed pipeline, and fidelity against the real reference.

    python bench/latency.py            # full run: 15-30 minutes on 2 cores
    python bench/latency.py --quick    # tiny smoke run (the test suite uses it)

Everything timed is timed side by side in one run (round robin), so drift on a shared machine hits all alike.

1. End to end (JPEG bytes -> top-5), DenseNet-121 on the CPU: the seed, `--precision fast` (the app's default:
   the tuned engine) and `--precision exact`, over image sizes from 0.3 to 24 MP. Random weights (same
   compute as the pretrained ones, which can't be downloaded here).
2. Forward pass alone (batch 1, 224x224) on every engine installed, each forced by name, and the tuned one.
3. Start-up: what the tuner adds to the first start (empty cache: tuned against the engine forced by name,
   which only converts) and to later starts (cache filled).
4. Fidelity against the real reference (PIL's full decode, the weights' transform, fp32 PyTorch), with
   EfficientNet-Lite0 (real ImageNet weights) on real photos and camera-sized JPEGs made from them: exact
   (must be within 1e-5) and fast (every speed-up together; top-1 identical, top-5 within 0.02), plus fast
   with OpenVINO bf16 forced, which the tuner picks only where bf16 pays.
5. Decode scale (full run only): 12 MP and 4K JPEGs decoded at each JPEG scale, time and fidelity: the
   measurement behind image_classifier.preprocessing.DRAFT_OVERSAMPLING.

Prints medians with min-max and the ratios; writes OUT/latency.json and OUT/latency.png.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from classifier import Classifier, load_labels  # noqa: E402
from image_classifier import engines, tuner  # noqa: E402
from image_classifier.preprocessing import FusedEvalTransform  # noqa: E402
from seed import SeedPipeline  # noqa: E402

SIZES = [(640, 480), (1280, 960), (2048, 1536), (3264, 2448), (3840, 2160), (4032, 3024), (5712, 4284)]
CAMERA_SIZES = [(4032, 3024), (3024, 4032), (3840, 2160), (5712, 4284)]
"""The fidelity section's camera-sized JPEGs: 12 MP landscape and portrait, 4K UHD, 24 MP."""


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def side_by_side(contenders: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Round-robin timing (each contender once per round) so drift on a shared machine hits all alike."""
    for fn in contenders.values():  # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            time.sleep(0.05)  # let the last contender's spinning worker threads go idle first
            times[name].append(timed(fn))
    return times


def summary(samples: list[float]) -> str:
    return f"{statistics.median(samples):7.1f} ms ({min(samples):.1f}–{max(samples):.1f})"


def ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(times[a]) / statistics.median(times[b])


def jpeg_of_size(width: int, height: int) -> bytes:
    photo = Image.open(ROOT / "examples" / "coffee.jpg").convert("RGB").resize((width, height), Image.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def camera_jpeg(photo: Image.Image, size: tuple[int, int], seed: int = 0) -> bytes:
    """A camera-sized JPEG from a real photo: centre-cropped to the aspect, upscaled, with noise (sigma 4)."""
    width, height = size
    keep_w = min(photo.width, round(photo.height * width / height))
    keep_h = min(photo.height, round(photo.width * height / width))
    left, top = (photo.width - keep_w) // 2, (photo.height - keep_h) // 2
    big = np.asarray(
        photo.convert("RGB").crop((left, top, left + keep_w, top + keep_h)).resize(size, Image.BICUBIC)
    )
    noisy = np.clip(big + np.random.default_rng(seed).normal(0, 4, big.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def end_to_end(fast: Classifier, exact: Classifier, seed: SeedPipeline, sizes, rounds: int) -> list[dict]:
    """Seed, fast and exact, plus fast's forward pass alone: its ratio to the seed is the best any decoding
    and preprocessing could reach with this engine (the "floor" column)."""
    rows = []
    ready = torch.randn(1, 3, 224, 224)
    print(f"\n1. End to end, JPEG bytes -> top-5 (median, min–max); fast runs {fast.engine}")
    header = f"   {'image':>18} {'seed':>26} {'fast':>26} {'exact':>26} {'fast/seed':>9} {'exact/seed':>10}"
    print(header + f" {'floor':>6}")
    for width, height in sizes:
        data = jpeg_of_size(width, height)
        contenders = {
            "seed": lambda d=data: seed.predict(d),
            "fast": lambda d=data: fast.predict(d),
            "exact": lambda d=data: exact.predict(d),
            "forward": lambda: fast.forward(ready),
        }
        times = side_by_side(contenders, rounds)
        fast_ratio, exact_ratio = ratio(times, "fast", "seed"), ratio(times, "exact", "seed")
        floor = ratio(times, "forward", "seed")
        megapixels = width * height / 1e6
        image = f"{width}×{height} {megapixels:4.1f}MP"
        print(
            f"   {image:>18} {summary(times['seed'])} {summary(times['fast'])} {summary(times['exact'])} "
            f"{fast_ratio:8.2f}× {exact_ratio:9.2f}× {floor:5.2f}×"
        )
        rows.append(
            {"width": width, "height": height, "megapixels": megapixels, "ratio": fast_ratio, **times}
            | {"exact_ratio": exact_ratio, "floor": floor}
        )
    return rows


def forward_engines(model: torch.nn.Module, labels: list[str], tuned: Classifier) -> dict[str, Callable]:
    """Batch-1 forward passes: the seed's, PyTorch eager, every engine forced by name, and the tuned one."""
    x = torch.randn(1, 3, 224, 224)
    contenders: dict[str, Callable[[], object]] = {"seed: eager fp32, autograd on": lambda: model(x)}

    def no_grad(fn):
        def run():
            with torch.inference_mode():
                return fn()

        return run

    contenders["torch eager fp32, inference_mode"] = no_grad(lambda: model(x))
    names = ["torch-fp32-channels-last", "openvino-fp32"]
    if engines.cpu_has_bf16():
        names += ["torch-bf16-channels-last", "openvino-bf16"]
    for name in names:
        if name.startswith("openvino") and not engines.openvino_installed():
            continue
        forced = Classifier(copy.deepcopy(model), labels, device="cpu", engine=name)
        contenders[f"engine {name}"] = lambda forced=forced: forced.forward(x)
    try:
        import onnxruntime

        path = Path(tempfile.mkdtemp()) / "densenet121.onnx"
        torch.onnx.export(model, x, str(path), input_names=["x"], dynamo=False)
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # don't slow the others
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        contenders["ONNX Runtime fp32"] = lambda: session.run(None, {"x": x.numpy()})
    except ImportError:
        print("   (ONNX Runtime not installed: not measured; pip install onnxruntime onnx to add it)")
    except Exception as e:  # export problems: report, don't stop the benchmark
        print(f"   (ONNX Runtime export failed: {e})")
    contenders[f"this project, tuned ({tuned.engine})"] = lambda: tuned.forward(x)
    return contenders


def start_up(model: torch.nn.Module, labels: list[str], rounds: int) -> dict:
    """Seconds to build the Classifier: tuned vs the default engine forced by name (conversion only), each
    on an empty cache and then on the cache it filled."""
    forced = engines.select_engine(torch.device("cpu"))
    results: dict[str, list[float]] = {"tuned, empty cache": [], "forced, empty cache": []}
    results |= {"tuned, cache filled": [], "forced, cache filled": []}
    saved = os.environ.get("IMAGE_CLASSIFIER_CACHE")
    try:
        for _ in range(rounds):
            for how, engine in (("tuned", None), ("forced", forced)):
                os.environ["IMAGE_CLASSIFIER_CACHE"] = tempfile.mkdtemp(prefix="bench-cache-")
                for state in ("empty cache", "cache filled"):
                    started = time.perf_counter()
                    Classifier(copy.deepcopy(model), labels, device="cpu", engine=engine)
                    results[f"{how}, {state}"].append(time.perf_counter() - started)
    finally:
        if saved is None:
            os.environ.pop("IMAGE_CLASSIFIER_CACHE", None)
        else:
            os.environ["IMAGE_CLASSIFIER_CACHE"] = saved
    print(f"\n3. Start-up: building the classifier, seconds (median of {rounds}); forced = {forced}")
    for name, samples in results.items():
        print(f"   {name:<22} {statistics.median(samples):5.2f} s ({min(samples):.2f}–{max(samples):.2f})")
    medians = {name: statistics.median(samples) for name, samples in results.items()}
    first = medians["tuned, empty cache"] - medians["forced, empty cache"]
    later = medians["tuned, cache filled"] - medians["forced, cache filled"]
    print(f"   the tuner adds {first:.2f} s to the first start and {later:.2f} s to later ones")
    return {"seconds": results, "tuning_first_start": first, "tuning_later_starts": later}


def fidelity_photos(quick: bool) -> dict[str, bytes | Image.Image]:
    photos: dict[str, bytes | Image.Image] = {
        p.name: p.read_bytes() for p in sorted((ROOT / "examples").glob("*.jpg"))
    }
    if quick:
        return photos
    from skimage import data

    for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera"):
        photos[f"skimage {name}"] = Image.fromarray(getattr(data, name)())
    for name in ("cat.jpg", "coffee.jpg", "rocket.jpg"):
        for number, (width, height) in enumerate(CAMERA_SIZES):
            source = Image.open(ROOT / "examples" / name)
            photos[f"{name} {width}×{height}"] = camera_jpeg(source, (width, height), seed=number)
    return photos


def reference_probabilities(reference: Classifier, photo: bytes | Image.Image) -> torch.Tensor:
    """torchvision's reference: PIL's full decode, the weights' own transform, the fp32 model."""
    image = Image.open(io.BytesIO(photo)) if isinstance(photo, bytes) else photo
    with torch.inference_mode():
        return reference.model(reference.reference_transform(image.convert("RGB")).unsqueeze(0))[0].softmax(
            -1
        )


def compare(classifier: Classifier, photo, reference: torch.Tensor) -> tuple[bool, float, float]:
    """(top-1 identical, largest top-5 difference, largest difference over all classes)."""
    ours = classifier.predict(photo, top_k=len(classifier.labels))
    probabilities = torch.tensor([ours[label] for label in classifier.labels])
    top5 = reference.topk(5).indices
    top1_same = classifier.labels[int(reference.argmax())] == next(iter(ours))
    return (
        top1_same,
        (probabilities - reference)[top5].abs().max().item(),
        (probabilities - reference).abs().max().item(),
    )


def fidelity(quick: bool) -> dict:
    from oracle import load_oracle

    photos = fidelity_photos(quick)
    contenders = {"exact": load_oracle(precision="exact"), "fast": load_oracle(precision="fast")}
    if not quick and engines.openvino_installed():
        oracle = load_oracle(precision="exact")  # a fresh model, set up with bf16 forced
        contenders["fast with openvino-bf16"] = Classifier(
            oracle.model,
            oracle.labels,
            transform=oracle.reference_transform,
            device="cpu",
            cam_layers=oracle.cam_layers,
            engine="openvino-bf16",
        )
    reference = contenders["exact"]
    rows = {name: {"same_top1": 0, "max_top5_difference": 0.0, "max_difference": 0.0} for name in contenders}
    worst: dict[str, str] = {}
    for photo_name, photo in photos.items():
        expected = reference_probabilities(reference, photo)
        for name, classifier in contenders.items():
            same, top5, everything = compare(classifier, photo, expected)
            row = rows[name]
            row["same_top1"] += same
            if top5 > row["max_top5_difference"]:
                worst[name] = photo_name
            row["max_top5_difference"] = max(row["max_top5_difference"], top5)
            row["max_difference"] = max(row["max_difference"], everything)
    print(f"\n4. Fidelity against the reference, EfficientNet-Lite0 on {len(photos)} photos:")
    for name, row in rows.items():
        engine = contenders[name].engine
        print(
            f"   {name:<24} ({engine:<15}) top-1 identical {row['same_top1']}/{len(photos)}; largest top-5 "
            f"difference {row['max_top5_difference']:.2e} ({worst.get(name, '-')}); any class "
            f"{row['max_difference']:.2e}"
        )
        row |= {"engine": engine, "worst_photo": worst.get(name)}
    return {"photos": len(photos), **rows}


def decode_scales(rounds: int) -> list[dict]:
    """Each JPEG scale on 12 MP and 4K photos: decode + fused preprocessing time, and the fidelity of fast
    (its tuned engine) with that scale forced, against the reference."""
    from oracle import load_oracle

    exact, fast = load_oracle(precision="exact"), load_oracle(precision="fast")
    fused = FusedEvalTransform(exact.reference_transform)
    rows = []
    print("\n5. Decode scale: decode + preprocess (median) and fidelity of fast at each JPEG scale")
    for width, height in [(4032, 3024), (3840, 2160)]:
        photos = [
            camera_jpeg(Image.open(p), size, seed=i)
            for i, p in enumerate(sorted((ROOT / "examples").glob("*.jpg")))
            for size in ((width, height), (height, width))
        ]

        def decode(data: bytes, scale: int):
            image = Image.open(io.BytesIO(data))
            if scale > 1:
                image.draft("RGB", (image.width // scale, image.height // scale))
            return image.convert("RGB")

        first = photos[0]
        times = side_by_side({s: lambda s=s, d=first: fused(decode(d, s)) for s in (8, 4, 2, 1)}, rounds)
        references = [reference_probabilities(exact, data) for data in photos]
        for scale in (8, 4, 2, 1):
            worst = 0.0
            for data, expected in zip(photos, references, strict=True):
                with torch.inference_mode():
                    probabilities = fast.forward(fused(decode(data, scale)).unsqueeze(0))[0]
                worst = max(worst, (probabilities - expected)[expected.topk(5).indices].abs().max().item())
            side = min(width, height) // scale
            print(
                f"   {width}×{height} at 1/{scale} ({side} px short side, {side / 256:.1f}× the resize): "
                f"{summary(times[scale])}, largest top-5 difference {worst:.4f} over {len(photos)} photos"
            )
            rows.append(
                {"size": [width, height], "scale": scale, "ms": times[scale], "max_top5_difference": worst}
            )
    return rows


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    megapixels = [row["megapixels"] for row in rows]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in (
        ("seed", "seed pipeline"),
        ("exact", "--precision exact"),
        ("fast", "--precision fast"),
    ):
        medians = [statistics.median(row[key]) for row in rows]
        low = [m - min(row[key]) for m, row in zip(medians, rows, strict=True)]
        high = [max(row[key]) - m for m, row in zip(medians, rows, strict=True)]
        axes.errorbar(megapixels, medians, yerr=[low, high], marker="o", capsize=3, label=label)
    axes.set_xlabel("JPEG size (megapixels)")
    axes.set_ylabel("bytes → top-5 (ms, median, min–max)")
    axes.set_title(f"End-to-end latency, DenseNet-121, {os.cpu_count()}-core CPU")
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--rounds", type=int, default=9, help="timed rounds per contender (default 9)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where latency.json/.png go")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    sizes = [(320, 240)] if args.quick else SIZES

    torch.manual_seed(0)
    labels = load_labels()
    model = torchvision.models.densenet121().eval()
    seed = SeedPipeline(model, labels)
    started = time.perf_counter()
    fast = Classifier(copy.deepcopy(model), labels, device="cpu", name="densenet121")  # the app's default
    setup_s = time.perf_counter() - started
    exact = Classifier(copy.deepcopy(model), labels, device="cpu", precision="exact")
    machine, _ = tuner.machine_identity(torch.device("cpu"))
    threads = torch.get_num_threads()
    print(f"DenseNet-121 on {machine} ({os.cpu_count()} CPUs), {threads} threads, torch {torch.__version__}")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"fast: {fast.engine_choice.log_line('densenet121')} (set up in {setup_s:.1f} s)")

    rows = end_to_end(fast, exact, seed, sizes, rounds)

    print("\n2. Forward pass, batch 1 (median, min–max)")
    forward = side_by_side(forward_engines(model, labels, fast), 3 if args.quick else max(rounds, 15))
    for name, samples in forward.items():
        print(f"   {name:<42} {summary(samples)}")
    ours_name = next(name for name in forward if name.startswith("this project"))
    others = [n for n in forward if n != ours_name and not n.startswith("engine ")]
    fastest = min(others, key=lambda n: statistics.median(forward[n]))
    forward_ratio = ratio(forward, ours_name, fastest)
    print(f"   tuned / fastest engine outside this project ({fastest}): {forward_ratio:.2f}×")

    small = torchvision.models.resnet18().eval()  # the smoke run's start-up: a smaller model, same steps
    startup = start_up(small if args.quick else model, labels, 1 if args.quick else 3)
    quality = fidelity(args.quick)
    scales = [] if args.quick else decode_scales(rounds)

    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {
            "cpu": machine,
            "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load_average": os.getloadavg(),
        },
        "engine": fast.engine,
        "engine_choice": {"how": fast.engine_choice.how, "timings_ms": fast.engine_choice.timings_ms},
        "setup_seconds": setup_s,
        "end_to_end": rows,
        "forward": forward,
        "forward_ratio_to_fastest": forward_ratio,
        "fastest_other_engine": fastest,
        "start_up": startup,
        "fidelity": quality,
        "decode_scales": scales,
    }
    (args.out / "latency.json").write_text(json.dumps(results, indent=1))
    chart(rows, args.out / "latency.png")
    print(f"\nwrote {args.out / 'latency.json'} and {args.out / 'latency.png'}")


if __name__ == "__main__":
    main()
