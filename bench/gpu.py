"""On a GPU: many photos, one photo, concurrent callers and the tuner's choices, side by side in one run.

    python bench/gpu.py                          # on a CUDA machine: about 3 minutes, writes docs/gpu.json
    python bench/gpu.py --device cpu --quick     # tiny run of the script itself (the test suite uses it)

DenseNet-121 with random weights (the same compute as the pretrained ones, which can't be downloaded here);
JPEG files made here from skimage's real photos (640×480, and 12 MP with sensor grain).

1. Many photos: `image_classifier.batch.run` (the tensor pipeline on CUDA) against the reference pipeline of
   issue 19 (files read on 8 threads, `decode_jpeg(list, device="cuda")`, resize + centre crop + normalise on
   the GPU, fp16 channels_last, batch 128, top 5 copied back), in alternating rounds.
2. One photo, JPEG bytes -> top 5 (`Classifier.predict`), fast and exact, against the seed pipeline on the
   GPU; fast with the GPU decoder on and off; medians of 15, round robin.
3. 32 threads calling `Classifier.predict` (what the page's classify function does), with and without
   sharing forward passes.
4. The tuner's choice at batch 1 and at the runner's batch, with every candidate's time.
5. Fidelity on the GPU (only where the EfficientNet-Lite0 oracle is importable): the fast tensor pipeline
   against `exact` (PIL decode, torchvision's transform, fp32), both on the GPU, on real photos.
"""

from __future__ import annotations

import argparse
import copy
import functools
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
import torchvision.transforms.v2.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from classifier import Classifier, load_labels, resolve_device  # noqa: E402
from image_classifier import batch  # noqa: E402
from photos import REAL_PHOTOS, phone_jpeg, upscaled  # noqa: E402
from seed import SeedPipeline  # noqa: E402

RESULTS: dict[str, object] = {}


def say(text: str = "") -> None:
    print(text, flush=True)


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples):7.2f} ms ({min(samples):.2f}–{max(samples):.2f})"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- the photos ---------------------------------------------------------------------------------------------


@functools.cache
def real_photo(name: str) -> Image.Image:
    return Image.fromarray(REAL_PHOTOS[name]()).convert("RGB")


def web_jpeg(index: int) -> bytes:
    """A 640×480 JPEG from one of the real photos: a random crop, flip and exposure, quality 90."""
    rng = np.random.default_rng(index)
    image = real_photo(list(REAL_PHOTOS)[index % len(REAL_PHOTOS)])
    width, height = image.size
    crop_w, crop_h = int(width * rng.uniform(0.6, 1.0)), int(height * rng.uniform(0.6, 1.0))
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    image = image.crop((left, top, left + crop_w, top + crop_h)).resize((640, 480), Image.BICUBIC)
    pixels = np.asarray(image, dtype=np.float32) * rng.uniform(0.8, 1.2) + rng.normal(0, 3, (480, 640, 3))
    if rng.random() < 0.5:
        pixels = pixels[:, ::-1]
    buffer = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_folder(count: int) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for index, data in enumerate(pool.map(web_jpeg, range(count))):
            (folder / f"{index:05d}.jpg").write_bytes(data)
    return folder


def large_jpeg(quick: bool) -> bytes:
    size = (640, 480) if quick else (4032, 3024)
    return phone_jpeg(upscaled(Image.fromarray(REAL_PHOTOS["coffee"]()), size), orientation=1)


# --- 1. many photos -----------------------------------------------------------------------------------------


class ReferencePipeline:
    """Issue 19's reference: 8 reading threads, nvJPEG batched, tensor resize/crop/normalise on the GPU,
    fp16 channels_last, batch 128, top 5 back."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int) -> None:
        self.device, self.batch_size = device, batch_size
        half = device.type == "cuda"
        self.dtype = torch.float16 if half else torch.float32
        self.model = copy.deepcopy(model).to(device, self.dtype, memory_format=torch.channels_last).eval()
        preset = torchvision.models.DenseNet121_Weights.IMAGENET1K_V1.transforms()
        self.mean = torch.tensor(preset.mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(preset.std, device=device).view(1, 3, 1, 1) * 255

    def run(self, files: list[Path]) -> int:
        done = 0
        with ThreadPoolExecutor(8) as pool, torch.inference_mode():
            for start in range(0, len(files), self.batch_size):
                chunk = files[start : start + self.batch_size]
                datas = list(pool.map(torchvision.io.read_file, map(str, chunk)))
                images = torchvision.io.decode_jpeg(datas, device=self.device)
                crops = [F.center_crop(F.resize(image, [256], antialias=True), [224]) for image in images]
                batch = (torch.stack(crops).float() - self.mean) / self.std
                batch = batch.to(self.dtype).contiguous(memory_format=torch.channels_last)
                top = self.model(batch).float().softmax(-1).topk(5)
                done += len(top.values.cpu())
        return done


def many_photos(fast: Classifier, model, device, files: list[Path], folder: Path, rounds: int, size: int):
    reference = ReferencePipeline(model, device, size)
    out = Path(tempfile.mkdtemp()) / "rows.csv"
    started = time.perf_counter()
    choice = fast.use_batch_size(size)
    tuning_s = time.perf_counter() - started
    reference.run(files)  # a whole pass each first: every batch shape (the last one's too) is warm
    batch.run(fast, [folder], out, batch_size=size)
    rates: dict[str, list[float]] = {"this project (batch.run)": [], "reference pipeline": []}
    for _ in range(rounds):
        for name, job in (
            ("reference pipeline", lambda: reference.run(files)),
            ("this project (batch.run)", lambda: batch.run(fast, [folder], out, batch_size=size)),
        ):
            synchronize(device)
            started = time.perf_counter()
            job()
            synchronize(device)
            rates[name].append(len(files) / (time.perf_counter() - started))
    ours, theirs = (statistics.median(rates[k]) for k in rates)
    rows = batch.read_rows(out)
    say(f"\n1. Many photos: {len(files)} JPEG files of 640×480, batch {size}, {rounds} rounds alternating")
    for name, samples in rates.items():
        spread = f"({min(samples):.0f}–{max(samples):.0f})"
        say(f"   {name:<26} {statistics.median(samples):8.0f} images/s {spread}")
    failed = sum(row.error is not None for row in rows)
    say(f"   ratio: {ours / theirs:.2f}× the reference; rows {len(rows)}, failed {failed}")
    say(f"   engine at batch {size}: {choice.engine} ({choice.how}; chosen in {tuning_s:.1f} s)")
    RESULTS["many_photos"] = {
        "files": len(files),
        "batch_size": size,
        "images_per_s": rates,
        "ratio_to_reference": ours / theirs,
        "engine": choice.engine,
        "tuning_s": tuning_s,
    }


# --- 2. one photo ------------------------------------------------------------------------------------------


def one_photo(fast: Classifier, exact: Classifier, seed: SeedPipeline, device, photos: dict, rounds: int):
    def seed_predict(data: bytes):
        return seed.predict_on(data, device)

    RESULTS["one_photo"] = {}
    for label, data in photos.items():
        contenders = {
            "seed": lambda data=data: seed_predict(data),
            "fast": lambda data=data: fast.predict(data),
            "fast, CPU decoder": lambda data=data: predict_with_decoder(fast, data, None),
            "fast, GPU decoder": lambda data=data: predict_with_decoder(fast, data, 0),
            "exact": lambda data=data: exact.predict(data),
        }
        times = round_robin(contenders, rounds, device)
        seed_ms = statistics.median(times["seed"])
        say(f"\n2. One photo, {label}: JPEG bytes -> top 5, medians of {rounds}")
        for name, samples in times.items():
            say(f"   {name:<18} {median_ms(samples)}   {statistics.median(samples) / seed_ms:.2f}× the seed")
        RESULTS["one_photo"][label] = {
            "ms": times,
            "ratio_to_seed": {name: statistics.median(s) / seed_ms for name, s in times.items()},
        }


def predict_with_decoder(classifier: Classifier, data: bytes, min_pixels: int | None):
    kept = classifier.device_decode_min_pixels
    classifier.device_decode_min_pixels = min_pixels if kept is not None else None
    try:
        return classifier.predict(data)
    finally:
        classifier.device_decode_min_pixels = kept


def round_robin(contenders: dict, rounds: int, device) -> dict[str, list[float]]:
    for fn in contenders.values():
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            synchronize(device)
            started = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - started) * 1000)
    return times


class SeedOnDevice(SeedPipeline):
    def predict_on(self, data: bytes, device) -> str:
        _, index = self.forward(self.tensor(data).to(device)).max(1)
        return self.labels[index.item()]


# --- 3. concurrent callers ---------------------------------------------------------------------------------


def concurrent(fast: Classifier, data: bytes, callers: int, requests: int):
    RESULTS["concurrent"] = {"callers": callers, "requests": requests}
    say(f"\n3. {callers} threads calling Classifier.predict (the page's classify), {requests} requests")
    expected = fast.predict(data)
    wrong = 0
    for shared in (False, True, False, True):
        fast.share_forward_passes = shared
        passes, rows = fast._shared.passes, fast._shared.rows
        with ThreadPoolExecutor(callers) as pool:
            list(pool.map(lambda _: fast.predict(data), range(2 * callers)))  # warm-up
            started = time.perf_counter()
            answers = list(pool.map(lambda _: fast.predict(data), range(requests)))
            rate = requests / (time.perf_counter() - started)
        wrong += sum(_differs(answer, expected) for answer in answers)
        name = "shared passes" if shared else "one pass each"
        mean_rows = (fast._shared.rows - rows) / max(1, fast._shared.passes - passes)
        say(f"   {name:<14} {rate:7.0f} images/s" + (f" (mean batch {mean_rows:.1f})" if shared else ""))
        RESULTS["concurrent"].setdefault(name, []).append(rate)
    fast.share_forward_passes = False
    one = statistics.median(RESULTS["concurrent"]["one pass each"])
    both = statistics.median(RESULTS["concurrent"]["shared passes"])
    say(f"   sharing: {both / one:.2f}× the throughput; answers unlike the lone call's: {wrong}")
    RESULTS["concurrent"]["answers_unlike_a_lone_call"] = wrong


def _differs(answer: dict[str, float], expected: dict[str, float]) -> bool:
    """Another top 5, or a probability off by more than fp16's rounding between batch sizes."""
    return list(answer) != list(expected) or any(abs(answer[k] - expected[k]) > 1e-3 for k in expected)


# --- 4. the tuner ------------------------------------------------------------------------------------------


def tuner_choices(fast: Classifier):
    RESULTS["tuner"] = {}
    for size, choice in sorted(fast.engine_choices.items()):
        say(f"\n4. The tuner at batch {size}: {choice.engine} ({choice.how})")
        fastest = min(choice.timings_ms.values(), default=0.0) or 1.0
        for engine, ms in sorted(choice.timings_ms.items(), key=lambda item: item[1]):
            mark = "  <- chosen" if engine == choice.engine else ""
            say(f"   {engine:<34} {ms:8.2f} ms  {ms / fastest:5.2f}× the fastest{mark}")
        dropped = [engine for engine, report in choice.drift.items() if not report["kept"]]
        if dropped:
            say(f"   changed the answers (not timed): {', '.join(dropped)}")
        RESULTS["tuner"][str(size)] = {
            "engine": choice.engine,
            "how": choice.how,
            "timings_ms": choice.timings_ms,
            "drift": choice.drift,
            "tuning_s": choice.tuning_s,
        }


# --- 5. fidelity -------------------------------------------------------------------------------------------


def fidelity(device: torch.device, quick: bool):
    try:
        from oracle import load_oracle
    except ImportError as e:
        say(f"\n5. Fidelity: skipped (the oracle is not importable here: {e})")
        return
    exact = load_oracle(str(device), precision="exact")
    forced = "torch-fp32" if quick and device.type == "cpu" else None  # as for DenseNet above
    fast = load_oracle(str(device), precision="fast", engine=forced)
    fast.use_batch_size(8)
    sizes = [(640, 480)] if quick else [(640, 480), (4032, 3024)]
    files = []
    folder = Path(tempfile.mkdtemp())
    for name, photo in REAL_PHOTOS.items():
        for width, height in sizes:
            path = folder / f"{name}-{width}.jpg"
            path.write_bytes(phone_jpeg(upscaled(Image.fromarray(photo()), (width, height)), orientation=6))
            files.append(path)
    rows = list(batch.classify_images(fast, [str(f) for f in files], batch_size=8))
    worst, same = 0.0, 0
    for row, path in zip(rows, files, strict=True):
        reference = exact.predict(str(path))
        same += next(iter(row.predictions)) == next(iter(reference))
        worst = max(worst, *(abs(row.predictions.get(label, 0.0) - p) for label, p in reference.items()))
    say(f"\n5. Fidelity, EfficientNet-Lite0 on {len(files)} real photos (EXIF-rotated), tensor pipeline")
    engine = fast.use_batch_size(8).engine
    say(f"   engine {engine}: top-1 the same on {same}/{len(files)}, largest top-5 Δp {worst:.4f}")
    RESULTS["fidelity"] = {
        "photos": len(files),
        "same_top1": same,
        "max_top5_difference": worst,
        "engine": fast.use_batch_size(8).engine,
    }


# --- main --------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a dry run (default cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where gpu.json goes")
    args = parser.parse_args()
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        parser.error(str(e))
    quick = args.quick
    started = time.perf_counter()
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    say(
        f"DenseNet-121 (random weights) on {card}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}"
    )
    RESULTS.update(
        card=card, cpus=os.cpu_count(), torch=torch.__version__, torchvision=torchvision.__version__
    )

    torch.manual_seed(0)
    labels = load_labels()
    model = torchvision.models.densenet121().eval()
    # A quick run on the CPU forces an engine: OpenVINO's conversions would take most of its time.
    forced = "torch-fp32" if quick and device.type == "cpu" else None
    fast = Classifier(copy.deepcopy(model), labels, device=device, precision="fast", engine=forced)
    exact = Classifier(copy.deepcopy(model), labels, device=device, precision="exact")
    seed = SeedOnDevice(copy.deepcopy(model).to(device), labels)
    say(f"classifiers ready in {time.perf_counter() - started:.1f} s; fast at batch 1: {fast.engine}")

    folder = write_folder(24 if quick else 3000)
    files = sorted(folder.glob("*.jpg"))
    say(f"{len(files)} files written in {time.perf_counter() - started:.1f} s")
    size = 8 if quick else batch.CUDA_BATCH_SIZE
    photos = {"640×480": files[0].read_bytes(), "12 MP" if not quick else "large": large_jpeg(quick)}
    sections = [
        lambda: many_photos(fast, model, device, files, folder, 1 if quick else 3, size),
        lambda: one_photo(fast, exact, seed, device, photos, 2 if quick else 15),
        lambda: concurrent(fast, photos["640×480"], 4 if quick else 32, 16 if quick else 1280),
        lambda: tuner_choices(fast),
        lambda: fidelity(device, quick),
    ]
    failed = []
    for number, section in enumerate(sections, 1):
        try:
            section()
        except Exception:  # noqa: BLE001 (one section's failure must not cost the others' figures)
            traceback.print_exc()
            failed.append(number)
    RESULTS["failed_sections"] = failed

    RESULTS["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(RESULTS, indent=1, ensure_ascii=False))
    say(f"\nwrote {args.out / 'gpu.json'} after {RESULTS['seconds']:.0f} s")


if __name__ == "__main__":
    main()
