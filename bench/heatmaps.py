"""What heatmaps cost: photo -> bars against photo -> bars + all five heatmaps, side by side in one run.

    python bench/heatmaps.py            # a few minutes on 2 cores
    python bench/heatmaps.py --quick    # tiny smoke run (the test suite uses it)
    python bench/heatmaps.py --sections 3   # the methods only (about 20 minutes on 2 busy cores)

1. DenseNet-121 on the CPU in the app's default configuration (random weights: same compute as the
pretrained ones, which can't be downloaded here), JPEG bytes in. Three contenders, timed round-robin:
- bars: `Classifier.predict` (what /predict does);
- page: `Classifier.analyse` + the five classes' maps + the top class's overlay picture at the page's
  display size (what the Photo tab does when a photo lands);
- explain: `Classifier.explain`, five float32 heatmaps at the photo's full size (the Python API).

2. Models whose head needs Grad-CAM (and Swin, whose maps are exact): bars against page, 640×480, in the
app's default configuration. "map" is page minus bars: what the heatmap costs per photo, paid after the
bars are on the page. "max |Δp|" compares the engine's probabilities (the bars) with those of the PyTorch
pass that Grad-CAM differentiates (the maps): how far apart the two can be.

3. Per method (CAM, Grad-CAM, Grad-CAM++, Layer-CAM, Score-CAM) and model (DenseNet-121, ConvNeXt-T,
ViT-B/16 with random weights, and the oracle, EfficientNet-Lite0 with real ones), 640×480, in the app's
default configuration: bars against bars + the top class's map by that method + its overlay picture, side
by side (Score-CAM, which takes seconds to minutes, once per model). And for the oracle, how well each
method finds the object: on skimage's cat and espresso side by side (and swapped), the share of each
class's heat on its own photo's half (the tests ask ≥ 80 %). Random weights can't localise anything, so
only the oracle's localisation means something.

Prints medians with min–max and the ratios to bars; writes OUT/heatmaps.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402

from classifier import METHODS, Classifier, load_labels  # noqa: E402
from image_classifier.page.answers import display_size  # noqa: E402
from latency import jpeg_of_size, side_by_side, summary, timed  # noqa: E402

FALLBACK_MODELS = "convnext_tiny,vit_b_16,swin_t,mobilenet_v3_large,vgg16"
METHOD_MODELS = "densenet121,convnext_tiny,vit_b_16,oracle"


def page_work(classifier: Classifier, data: bytes) -> Image.Image:
    """What the Photo tab computes when a photo lands (the page's `analyse`,
    `ShownPhoto.make_maps` and `heatmap_picture`, image_classifier/page/answers.py)."""
    analysis = classifier.analyse(data)
    labels = list(analysis.predictions)
    analysis.heatmaps.cams(labels)
    return analysis.heatmaps.overlay(display_size(analysis.image), labels[0])


def random_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(name)
    if isinstance(model, torchvision.models.VisionTransformer):  # its head starts at zero: no gradient
        torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


def engine_against_pytorch(classifier: Classifier, data: bytes) -> float:
    """Largest probability difference between the engine and the fp32 PyTorch model, on one photo."""
    batch = classifier.preprocess(data).unsqueeze(0)
    with torch.inference_mode():
        reference = classifier.model(batch).float().softmax(dim=-1)
    return float((classifier.forward(batch) - reference).abs().max())


def fallback_costs(names: list[str], rounds: int) -> list[dict]:
    print("\n2. Per photo, 640×480: bars vs bars + five heatmaps (median, min–max)")
    data = jpeg_of_size(640, 480)
    rows = []
    for name in names:
        classifier = Classifier(random_model(name), load_labels(), device="cpu")
        method = classifier.analyse(data).heatmaps.method
        times = side_by_side(
            {
                "bars": lambda c=classifier: c.predict(data),
                "page": lambda c=classifier: page_work(c, data),
            },
            rounds,
        )
        medians = {kind: statistics.median(samples) for kind, samples in times.items()}
        map_ms, ratio = medians["page"] - medians["bars"], medians["page"] / medians["bars"]
        gap = engine_against_pytorch(classifier, data)
        rows.append(
            {
                "model": name,
                "method": method,
                "engine": classifier.engine,
                "median_ms": medians,
                "map_ms": map_ms,
                "page_ratio": ratio,
                "max_probability_gap": gap,
            }
        )
        print(
            f"  {name:<20} {method:<21} {classifier.engine:<14}"
            f" bars {summary(times['bars'])}  page {summary(times['page'])}"
            f"  map {map_ms:7.1f} ms  {ratio:5.2f}× bars  max |Δp| {gap:.1e}",
            flush=True,
        )
    return rows


def method_work(classifier: Classifier, data: bytes, method: str) -> Image.Image:
    """The Photo tab's work for a photo with `method` chosen: the bars, then the top class's map by it."""
    analysis = classifier.analyse(data)
    top = next(iter(analysis.predictions))
    return analysis.heatmaps.overlay(display_size(analysis.image), top, method=method)


def named_classifier(name: str) -> Classifier:
    if name == "oracle":
        sys.path.insert(0, str(ROOT / "tests"))
        from oracle import load_oracle

        return load_oracle()
    return Classifier(random_model(name), load_labels(), device="cpu")


def method_costs(names: list[str], rounds: int, slow_models: set[str] | None = None) -> list[dict]:
    print("\n3. Per method, 640×480: bars vs bars + the top class's map by that method (median, min–max)")
    data = jpeg_of_size(640, 480)
    rows = []
    for name in names:
        classifier = named_classifier(name)
        quick = {method: METHODS[method] for method in classifier.methods if not METHODS[method].slow}
        contenders = {"bars": lambda c=classifier: c.predict(data)}
        for method in quick:
            contenders[method] = lambda c=classifier, m=method: method_work(c, data, m)
        times = side_by_side(contenders, rounds)
        slow = [
            m for m in classifier.methods if m not in quick and (slow_models is None or name in slow_models)
        ]
        for method in slow:  # seconds to minutes: once, beside one more time for the bars
            times[method] = [timed(lambda c=classifier, m=method: method_work(c, data, m))]
            times["bars"].append(timed(lambda c=classifier: c.predict(data)))
        bars = statistics.median(times["bars"])
        print(f"  {name:<14} {classifier.engine:<14} bars {summary(times['bars'])}", flush=True)
        for method in [*quick, *slow]:
            extra = statistics.median(times[method]) - bars
            rows.append(
                {
                    "model": name,
                    "method": method,
                    "engine": classifier.engine,
                    "bars_ms": bars,
                    "median_ms": statistics.median(times[method]),
                    "map_ms": extra,
                    "samples": len(times[method]),
                }
            )
            print(
                f"    {method:<11} {summary(times[method])}  map +{extra:8.1f} ms  "
                f"{statistics.median(times[method]) / bars:6.2f}× bars",
                flush=True,
            )
    return rows


def localisation(methods: list[str]) -> dict[str, dict[str, float]]:
    """The oracle's share of each class's heat on its own photo, per method, on the two composites."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_heatmaps import CAT, COFFEE, left_share, side_by_side

    from oracle import load_oracle
    from photos import real_photo

    oracle = load_oracle()
    cat, coffee = real_photo("chelsea"), real_photo("coffee")
    print("\n   The oracle's localisation: each class's share of its heat on its own photo")
    scores = {}
    for method in methods:
        left = oracle.explain(side_by_side(cat, coffee), labels=[CAT, COFFEE], method=method)
        right = oracle.explain(side_by_side(coffee, cat), labels=[CAT, COFFEE], method=method)
        shares = {
            "cat left": left_share(left[CAT]),
            "espresso right": 1 - left_share(left[COFFEE]),
            "cat right": 1 - left_share(right[CAT]),
            "espresso left": left_share(right[COFFEE]),
        }
        scores[method] = shares
        print(
            f"    {method:<11} "
            + "  ".join(f"{k} {v:.0%}" for k, v in shares.items())
            + f"  (lowest {min(shares.values()):.0%})",
            flush=True,
        )
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where heatmaps.json goes")
    parser.add_argument(
        "--fallback-models", default=FALLBACK_MODELS, help=f"section 2's models (default {FALLBACK_MODELS})"
    )
    parser.add_argument("--sections", default="1,2,3", help="which sections to run (default 1,2,3)")
    parser.add_argument(
        "--method-models", default=METHOD_MODELS, help=f"section 3's models (default {METHOD_MODELS})"
    )
    parser.add_argument("--slow-models", help="section 3's models timed with Score-CAM too (default all)")
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    results: dict[str, object] = {}
    if "1" in sections:
        results.update(bars_costs(args.quick))
    if "2" in sections:
        fallback_models = ["mobilenet_v3_small"] if args.quick else args.fallback_models.split(",")
        results["fallback"] = fallback_costs(fallback_models, 1 if args.quick else 5)
    if "3" in sections:
        method_models = ["mobilenet_v3_small"] if args.quick else args.method_models.split(",")
        slow_models = None if args.slow_models is None else set(args.slow_models.split(","))
        results["methods"] = method_costs(method_models, 1 if args.quick else 5, slow_models)
        results["localisation"] = localisation(["CAM"] if args.quick else list(METHODS))
    args.out.mkdir(parents=True, exist_ok=True)
    target = args.out / "heatmaps.json"
    if target.exists():  # the sections not run this time keep their last figures
        results = {**json.loads(target.read_text()), **results}
    target.write_text(json.dumps(results))
    print(f"wrote {target}")


def bars_costs(quick: bool) -> dict[str, object]:
    """Section 1: DenseNet-121 (ResNet-18 when quick), bars against page and explain."""
    rounds = 2 if quick else 30
    sizes = [(640, 480)] if quick else [(640, 480), (4032, 3024)]
    torch.manual_seed(0)
    model = torchvision.models.resnet18() if quick else torchvision.models.densenet121()
    classifier = Classifier(model, load_labels(), device="cpu")
    print(f"1. {type(model).__name__}, engine {classifier.engine}, {torch.get_num_threads()} threads")
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
    return {"model": type(model).__name__, "engine": classifier.engine, "rows": rows}


if __name__ == "__main__":
    main()
