"""What OpenVINO's own compiled-model cache (its CACHE_DIR) saves at a start, beside this project's conversion
cache: each start is a fresh process that loads a model whose conversion and engine decision are cached
already, without and with a compiled blob of it in CACHE_DIR, alternately, round after round.

    python bench/openvino_cache.py            # four models of the default set, 5 rounds: about 10 minutes
    python bench/openvino_cache.py --quick    # one small model, one round (the test suite runs this)

Weights are random (the same compute as the pretrained ones) in a temporary TORCH_HOME; the caches are
temporary too. Prints, per model, the median compile time and time to the first answer of both, and their
ratio; writes docs/openvino_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from models import machine  # noqa: E402  (bench/models.py: the CPU's name and the load average)

from torch_home import write_random_weights  # noqa: E402

ONE_START = """
import json, sys, time
started = time.perf_counter()
sys.path[:0] = [{root!r}]
from classifier import load_classifier
from image_classifier import engines

compiles = []
compiled_for = engines.OpenVINORunner.compiled_for


def timed(self, batch_size, threads=None):
    if {compiled_cache!r}:
        self.config["CACHE_DIR"] = {compiled_cache!r}
    before = time.perf_counter()
    try:
        return compiled_for(self, batch_size, threads)
    finally:
        compiles.append(time.perf_counter() - before)


engines.OpenVINORunner.compiled_for = timed
imported = time.perf_counter()
model = load_classifier({name!r}, device="cpu")
loaded = time.perf_counter()
model.predict({photo!r})
answered = time.perf_counter()
print(json.dumps({{
    "engine": model.engine,
    "compile_s": sum(compiles),
    "load_s": loaded - imported,
    "first_answer_s": answered - imported,
    "process_s": answered - started,
}}))
"""


def start(name: str, env: dict[str, str], compiled_cache: str | None) -> dict:
    """A fresh process loading `name`, with OpenVINO's CACHE_DIR at `compiled_cache` or without."""
    code = ONE_START.format(
        root=str(ROOT), name=name, compiled_cache=compiled_cache, photo=str(ROOT / "examples" / "cat.jpg")
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"starting {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 2**20


def one_model(name: str, env: dict[str, str], work: Path, rounds: int) -> dict:
    compiled_cache = work / "compiled" / name
    start(name, env, None)  # the first start: converts, tunes, caches both
    start(name, env, str(compiled_cache))  # writes the compiled blob
    runs: dict[str, list[dict]] = {"without": [], "with CACHE_DIR": []}
    for round_ in range(rounds):  # alternate, so that the machine's noise falls on both alike
        order = ["without", "with CACHE_DIR"] if round_ % 2 == 0 else ["with CACHE_DIR", "without"]
        for variant in order:
            runs[variant].append(start(name, env, str(compiled_cache) if variant != "without" else None))
    row = {
        variant: {
            key: statistics.median(run[key] for run in results)
            for key in ("compile_s", "load_s", "first_answer_s", "process_s")
        }
        | {"engine": results[0]["engine"]}
        for variant, results in runs.items()
    }
    row["compiled_blob_mb"] = folder_mb(compiled_cache)
    without, cached = row["without"], row["with CACHE_DIR"]

    def change(key: str) -> str:
        return f"{without[key]:5.2f} s -> {cached[key]:5.2f} s ({cached[key] / without[key]:.2f}x)"

    print(
        f"{name:<16} {without['engine']:<14} compile {change('compile_s')}, "
        f"first answer {change('first_answer_s')}, blob {row['compiled_blob_mb']:.0f} MB",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small model, one round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where openvino_cache.json goes")
    args = parser.parse_args()
    names = ["shufflenet_v2_x0_5"]
    if not args.quick:
        names = ["densenet121", "resnet50", "efficientnet_b0", "vit_b_16"]
    rounds = 1 if args.quick else args.rounds
    work = Path(tempfile.mkdtemp(prefix="bench-openvino-cache-"))
    write_random_weights(work / "torch", names)
    env = dict(os.environ, TORCH_HOME=str(work / "torch"), IMAGE_CLASSIFIER_CACHE=str(work / "cache"))
    results = {"machine": machine(), "rounds": rounds}
    cpu = results["machine"]
    print(f"{cpu['cpu']}, {cpu['cpus']} CPUs, load average {cpu['load_average']}; medians of {rounds} starts")
    results["models"] = {name: one_model(name, env, work, rounds) for name in names}
    results["machine_after"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "openvino_cache.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
