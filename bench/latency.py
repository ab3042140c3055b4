"""Latency of one image, this project against the seed pipeline, measured side by side in one run.

    python bench/latency.py            # full run: a few minutes on 2 cores
    python bench/latency.py --quick    # tiny smoke run (the test suite uses it)

1. End to end (JPEG bytes -> top-5), DenseNet-121 on the CPU, the app's default configuration, over image
   sizes from 0.3 to 24 MP. The weights are random (same compute as the pretrained ones, which can't be
   downloaded here).
2. Forward pass alone (batch 1, 224×224) on every engine that is installed, against this project's.
3. Fidelity: EfficientNet-Lite0 (real ImageNet weights) on real photos, fast engine vs fp32 PyTorch.

Prints medians with min–max and the ratios; writes OUT/latency.json and OUT/latency.png.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from classifier import Classifier, load_labels  # noqa: E402
from seed import SeedPipeline  # noqa: E402

SIZES = [(640, 480), (1280, 960), (2048, 1536), (3264, 2448), (4032, 3024), (5712, 4284)]


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


def jpeg_of_size(width: int, height: int) -> bytes:
    photo = Image.open(ROOT / "examples" / "coffee.jpg").convert("RGB").resize((width, height), Image.BICUBIC)
    buffer = io.BytesIO()
    photo.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def end_to_end(ours: Classifier, seed: SeedPipeline, sizes, rounds: int) -> list[dict]:
    """Both pipelines, plus our forward pass alone: its ratio to the seed is the best any decoding and
    preprocessing could reach with this engine (the "floor" column)."""
    rows = []
    ready = torch.randn(1, 3, 224, 224)
    print("\n1. End to end, JPEG bytes -> top-5 (median, min–max)")
    print(f"   {'image':>18} {'seed':>26} {'this project':>26} {'ratio':>7} {'floor':>6}")
    for width, height in sizes:
        data = jpeg_of_size(width, height)
        contenders = {
            "seed": lambda d=data: seed.predict(d),
            "ours": lambda d=data: ours.predict(d),
            "forward": lambda: ours.forward(ready),
        }
        times = side_by_side(contenders, rounds)
        ratio = statistics.median(times["ours"]) / statistics.median(times["seed"])
        floor = statistics.median(times["forward"]) / statistics.median(times["seed"])
        megapixels = width * height / 1e6
        image = f"{width}×{height} {megapixels:4.1f}MP"
        print(f"   {image:>18} {summary(times['seed'])} {summary(times['ours'])} {ratio:6.2f}× {floor:5.2f}×")
        rows.append({"width": width, "height": height, "megapixels": megapixels, "ratio": ratio, **times})
    return rows


def forward_engines(model: torch.nn.Module, ours: Classifier) -> dict[str, Callable[[], object]]:
    x = torch.randn(1, 3, 224, 224)
    engines: dict[str, Callable[[], object]] = {"seed: eager fp32, autograd on": lambda: model(x)}

    def no_grad(fn):
        def run():
            with torch.inference_mode():
                return fn()

        return run

    engines["torch eager fp32, inference_mode"] = no_grad(lambda: model(x))
    channels_last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    engines["torch channels_last fp32"] = no_grad(lambda: channels_last(x_cl))
    try:
        import openvino as ov

        converted = ov.convert_model(model, example_input=x)
        for hint in ("f32", "bf16"):
            compiled = ov.Core().compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": hint})
            request = compiled.create_infer_request()
            engines[f"OpenVINO {hint}"] = lambda request=request: request.infer([x.numpy()])
    except ImportError:
        print("   (OpenVINO not installed: not measured)")
    try:
        import onnxruntime

        path = Path(tempfile.mkdtemp()) / "densenet121.onnx"
        torch.onnx.export(model, x, str(path), input_names=["x"], dynamo=False)
        options = onnxruntime.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # don't slow the others
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        engines["ONNX Runtime fp32"] = lambda: session.run(None, {"x": x.numpy()})
    except ImportError:
        print("   (ONNX Runtime not installed: not measured; pip install onnxruntime onnx to add it)")
    except Exception as e:  # export problems: report, don't stop the benchmark
        print(f"   (ONNX Runtime export failed: {e})")
    engines[f"this project ({ours.engine})"] = lambda: ours.forward(x)
    return engines


def fidelity(quick: bool) -> dict:
    from skimage import data

    from oracle import load_oracle

    photos = {p.name: Image.open(p) for p in sorted((ROOT / "examples").glob("*.jpg"))}
    if not quick:
        for name in ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "camera"):
            photos[f"skimage {name}"] = Image.fromarray(getattr(data, name)())
    fast, exact = load_oracle(precision="fast"), load_oracle(precision="exact")
    same_top1, worst = 0, 0.0
    for photo in photos.values():
        exact_top = exact.predict(photo)
        fast_all = fast.predict(photo, top_k=1000)
        same_top1 += next(iter(exact_top)) == next(iter(fast.predict(photo)))
        worst = max(worst, *(abs(fast_all[label] - p) for label, p in exact_top.items()))
    print(f"\n3. Fidelity, EfficientNet-Lite0 ({fast.engine} vs torch-fp32) on {len(photos)} real photos:")
    print(
        f"   top-1 identical on {same_top1}/{len(photos)}; largest top-5 probability difference {worst:.2e}"
    )
    return {
        "photos": len(photos),
        "same_top1": same_top1,
        "max_top5_difference": worst,
        "engine": fast.engine,
    }


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    megapixels = [row["megapixels"] for row in rows]
    figure, axes = plt.subplots(figsize=(7, 4), dpi=100)
    for key, label in (("seed", "seed pipeline"), ("ours", "this project")):
        medians = [statistics.median(row[key]) for row in rows]
        low = [m - min(row[key]) for m, row in zip(medians, rows, strict=True)]
        high = [max(row[key]) - m for m, row in zip(medians, rows, strict=True)]
        axes.errorbar(megapixels, medians, yerr=[low, high], marker="o", capsize=3, label=label)
    axes.set_xlabel("JPEG size (megapixels)")
    axes.set_ylabel("bytes → top-5 (ms, median, min–max)")
    axes.set_title("End-to-end latency, DenseNet-121, 2-core CPU")
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
    ours = Classifier(copy.deepcopy(model), labels, device="cpu")  # the app's default: precision="fast"
    setup_s = time.perf_counter() - started
    print(f"DenseNet-121, CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"this project's engine: {ours.engine} (set up in {setup_s:.1f} s, conversion cache included)")

    rows = end_to_end(ours, seed, sizes, rounds)

    print("\n2. Forward pass, batch 1 (median, min–max)")
    forward = side_by_side(forward_engines(model, ours), 3 if args.quick else max(rounds, 15))
    for name, samples in forward.items():
        print(f"   {name:<40} {summary(samples)}")
    ours_name = next(name for name in forward if name.startswith("this project"))
    fastest = min((n for n in forward if n != ours_name), key=lambda n: statistics.median(forward[n]))
    forward_ratio = statistics.median(forward[ours_name]) / statistics.median(forward[fastest])
    print(f"   this project / fastest other engine ({fastest}): {forward_ratio:.2f}×")

    quality = fidelity(args.quick)

    args.out.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {"threads": torch.get_num_threads(), "torch": torch.__version__},
        "engine": ours.engine,
        "setup_seconds": setup_s,
        "end_to_end": rows,
        "forward": forward,
        "forward_ratio_to_fastest": forward_ratio,
        "fastest_other_engine": fastest,
        "fidelity": quality,
    }
    (args.out / "latency.json").write_text(json.dumps(results, indent=1))
    chart(rows, args.out / "latency.png")
    print(f"\nwrote {args.out / 'latency.json'} and {args.out / 'latency.png'}")


if __name__ == "__main__":
    main()
