"""What many models cost on this machine: each one's load time, ms per photo and memory (against the
estimate the model cache uses), the memory an eviction gives back, and what a first load costs requests
for a model already loaded.

    python bench/models.py            # the default set (8 models), then a server: about 15 minutes on 2 cores
    python bench/models.py --quick    # two small models (the test suite runs this)

Weights are random (the same compute as the pretrained ones), saved in a temporary TORCH_HOME under
torchvision's own file names, so every load runs torchvision's real loading code; converted models go to a
temporary cache, so the first load of each model includes its OpenVINO conversion.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from gradio_client import Client, handle_file  # noqa: E402

from classifier import DEFAULT_MODELS, expected_memory_mb  # noqa: E402
from servers import free_port, rss_mb, wait_until_serving  # noqa: E402
from torch_home import write_random_weights  # noqa: E402

PRIMER = "squeezenet1_1"
"""Loaded first in every measuring process, so that OpenVINO's runtime (about 100 MB, once per process) is
not counted as the measured model's memory."""

ONE_MODEL = """
import json, os, statistics, sys, time
sys.path[:0] = [{root!r}, {tests!r}]
from classifier import expected_memory_mb, load_classifier, time_one_photo
from image_classifier.allocator import release_memory
from servers import rss_mb

primer = load_classifier({primer!r}, device="cpu")
time_one_photo(primer)
del primer
release_memory()
before = rss_mb(os.getpid())
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # the peak resident size starts again from here
started = time.perf_counter()
model = load_classifier({name!r}, device="cpu")
load_s = time.perf_counter() - started
time_one_photo(model)
times = []
for _ in range(5):
    started = time.perf_counter()
    time_one_photo(model)
    times.append(time.perf_counter() - started)
release_memory()
after = rss_mb(os.getpid())
peak = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({{
    "engine": model.engine,
    "load_s": load_s,
    "ms_per_photo": 1000 * statistics.median(times),
    "rss_mb": after - before,
    "peak_mb": peak - before,
    "estimate_mb": model.memory_mb,
    "expected_before_loading_mb": expected_memory_mb({name!r}, "openvino-fp32"),
}}))
"""


def measure_one(name: str, env: dict[str, str]) -> dict:
    """Load `name` in a fresh process: its engine, load time, ms per photo (median of 5 after a warm-up) and
    resident memory."""
    code = ONE_MODEL.format(root=str(ROOT), tests=str(ROOT / "tests"), primer=PRIMER, name=name)
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"measuring {name} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def each_model(names: list[str], env: dict[str, str]) -> dict[str, dict]:
    """Per model: a first load (conversion included) and a second one from the conversion cache."""
    rows = {}
    for name in names:
        first = measure_one(name, env)
        again = measure_one(name, env)
        rows[name] = again | {"first_load_s": first["load_s"], "first_load_peak_mb": first["peak_mb"]}
        print(
            f"{name:<20} {again['engine']:<26} first load {first['load_s']:5.1f} s, "
            f"again {again['load_s']:5.1f} s, "
            f"{again['ms_per_photo']:6.0f} ms/photo, RSS +{again['rss_mb']:5.0f} MB "
            f"(estimate {again['estimate_mb']:5.0f} MB), peak while converting +{first['peak_mb']:5.0f} MB",
            flush=True,
        )
    return rows


def start_server(args: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, Client, str]:
    port = free_port()
    with open(log, "w") as output:
        process = subprocess.Popen(
            [sys.executable, "app.py", "--port", str(port), *args],
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    return process, wait_until_serving(url, process, timeout=600, log=log), url


def classify(client: Client, photo: Path, model: str) -> float:
    """Seconds for one /classify of `photo` by `model`."""
    started = time.perf_counter()
    client.predict(handle_file(str(photo)), model, api_name="/classify")
    return time.perf_counter() - started


def eviction(default: str, big: str, small: str, env: dict[str, str], work: Path) -> dict:
    """A server with memory for its default model and `big`: RSS with `big` loaded, then after `small`
    evicts it."""
    budget = expected_memory_mb(default, "openvino-fp32") + expected_memory_mb(big, "openvino-fp32") + 10
    process, client, _ = start_server(
        ["--model", default, "--models", f"{big},{small}", "--model-memory", f"{budget:.0f}"],
        env,
        work / "eviction.log",
    )
    photo = ROOT / "examples" / "cat.jpg"
    try:
        for name in (small, default, default):  # first-time allocations out of the way
            classify(client, photo, name)
        before = rss_mb(process.pid)
        classify(client, photo, big)
        with_big = rss_mb(process.pid)
        classify(client, photo, small)
        after = rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=30)
    print(
        f"eviction: RSS {before:.0f} MB -> {with_big:.0f} MB with {big} -> {after:.0f} MB once {small} "
        f"evicted it (budget {budget:.0f} MB)",
        flush=True,
    )
    return {"budget_mb": budget, "before_mb": before, "with_big_mb": with_big, "after_eviction_mb": after}


def latencies_summary(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    return {
        "requests": len(ms),
        "p50_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(0.95 * len(ms)))],
    }


def stall(loaded: str, first_load: str, env: dict[str, str], work: Path, idle_requests: int) -> dict:
    """Latency of back-to-back /classify requests for `loaded` while idle, and while another client's
    request makes the server load `first_load` for the first time (download-free, conversion included)."""
    process, client, url = start_server(["--model", loaded, "--models", first_load], env, work / "stall.log")
    photo = ROOT / "examples" / "coffee.jpg"
    try:
        for _ in range(3):
            classify(client, photo, loaded)
        idle = [classify(client, photo, loaded) for _ in range(idle_requests)]
        done = threading.Event()
        took: list[float] = []

        def load_other() -> None:
            took.append(classify(Client(url, verbose=False), photo, first_load))
            done.set()

        threading.Thread(target=load_other, daemon=True).start()
        during = [classify(client, photo, loaded)]
        while not done.is_set():
            during.append(classify(client, photo, loaded))
    finally:
        process.terminate()
        process.wait(timeout=30)
    result = {
        "loaded_model": loaded,
        "loading_model": first_load,
        "load_s": took[0],
        "idle": latencies_summary(idle),
        "during_load": latencies_summary(during),
    }
    print(
        f"{loaded} while idle: p50 {result['idle']['p50_ms']:.0f} ms, p95 {result['idle']['p95_ms']:.0f} ms; "
        f"while {first_load} loads ({took[0]:.1f} s): {len(during)} requests, "
        f"p50 {result['during_load']['p50_ms']:.0f} ms, p95 {result['during_load']['p95_ms']:.0f} ms",
        flush=True,
    )
    return result


def machine() -> dict:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cpu": model, "cpus": os.cpu_count(), "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two small models: check the script runs")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where models.json goes")
    args = parser.parse_args()
    if args.quick:
        names, (default, big, small), (loaded, loading), idle = (
            ["shufflenet_v2_x0_5", "resnet18"],
            ("shufflenet_v2_x0_5", "resnet18", "squeezenet1_1"),
            ("shufflenet_v2_x0_5", "resnet18"),
            3,
        )
    else:
        names, (default, big, small), (loaded, loading), idle = (
            list(DEFAULT_MODELS),
            ("densenet121", "vit_b_16", "efficientnet_b0"),
            ("densenet121", "convnext_tiny"),
            20,
        )
    work = Path(tempfile.mkdtemp(prefix="bench-models-"))
    write_random_weights(work / "torch", {*names, default, big, small, loaded, loading, PRIMER})
    env = dict(os.environ, TORCH_HOME=str(work / "torch"), IMAGE_CLASSIFIER_CACHE=str(work / "cache"))
    env["GRADIO_TEMP_DIR"] = str(work / "gradio")
    results = {"machine": machine()}
    cpu = results["machine"]
    print(f"{cpu['cpu']}, {cpu['cpus']} CPUs, load average {cpu['load_average']}")
    results["models"] = each_model(names, env)
    results["eviction"] = eviction(default, big, small, env, work)
    # A cache of its own: the loading model's first load includes its conversion, the worst case.
    results["first_load_cost"] = stall(
        loaded, loading, dict(env, IMAGE_CLASSIFIER_CACHE=str(work / "cold")), work, idle
    )
    results["machine_after"] = machine()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
