"""Throughput and latency under load through the real server, against a naive seed server.

    python bench/load.py            # 16 concurrent clients, 320 requests per server: a few minutes
    python bench/load.py --quick    # tiny smoke run (the test suite uses it)

Both servers run DenseNet-121 with the same random weights (same compute as the pretrained ones) on
127.0.0.1: the baseline is bench/seed_app.py (the seed's function in a plain gr.Interface, Gradio's
defaults), ours is `python app.py` in its default configuration. Also reports our cold start (process
start -> first prediction served, model conversion included) and our resident memory after the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402
import torchvision  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from servers import free_port, rss_mb, wait_until_serving  # noqa: E402


def start(command: list[str], env: dict[str, str], port: int, photo: Path) -> tuple[subprocess.Popen, float]:
    """Start a server; return it and the seconds until it served its first prediction."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_until_serving(f"http://127.0.0.1:{port}/", process, timeout=300, photo=photo)
    return process, time.monotonic() - started


def load(url: str, photo: Path, clients: int, requests_per_client: int) -> dict:
    def one_client(_: int) -> list[float]:
        client = Client(url, verbose=False)
        latencies = []
        for _ in range(requests_per_client):
            begin = time.monotonic()
            client.predict(handle_file(str(photo)), api_name="/predict")
            latencies.append((time.monotonic() - begin) * 1000)
        return latencies

    begin = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        latencies = [ms for per_client in pool.map(one_client, range(clients)) for ms in per_client]
    wall = time.monotonic() - begin
    latencies.sort()
    return {
        "requests": len(latencies),
        "seconds": wall,
        "throughput": len(latencies) / wall,
        "p50_ms": statistics.median(latencies),
        "p95_ms": latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=20, help="requests per client (default 20)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where load.json goes")
    args = parser.parse_args()
    clients, per_client = (2, 2) if args.quick else (args.clients, args.requests)

    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    weights = work / "densenet121.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.densenet121().state_dict(), weights)
    photo = work / "photo-640x480.jpg"
    Image.open(ROOT / "examples" / "coffee.jpg").convert("RGB").resize((640, 480)).save(photo, quality=90)
    env = dict(os.environ, IMAGE_CLASSIFIER_CACHE=str(work / "cache"), GRADIO_TEMP_DIR=str(work / "gradio"))

    results = {}
    servers = {
        "seed (naive gr.Interface)": [sys.executable, "bench/seed_app.py", str(weights)],
        "this project (python app.py)": [sys.executable, "app.py", "--weights", str(weights), "--port"],
    }
    for name, command in servers.items():
        port = free_port()
        process, cold_start = start([*command, str(port)], env, port, photo)
        try:
            url = f"http://127.0.0.1:{port}/"
            load(url, photo, clients=2, requests_per_client=2)  # warm-up
            results[name] = load(url, photo, clients, per_client) | {
                "cold_start_s": cold_start,
                "rss_mb": rss_mb(process.pid),
            }
        finally:
            process.terminate()
            process.wait(timeout=30)

    seed, ours = results.values()
    print(f"{clients} concurrent clients × {per_client} requests, 640×480 JPEG, DenseNet-121, CPU")
    print(f"{'server':<30} {'req/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'cold start':>11} {'RSS':>8}")
    for name, r in results.items():
        print(
            f"{name:<30} {r['throughput']:7.1f} {r['p50_ms']:8.0f} {r['p95_ms']:8.0f} "
            f"{r['cold_start_s']:9.1f} s {r['rss_mb']:5.0f} MB"
        )
    print(f"throughput ratio (ours / seed): {ours['throughput'] / seed['throughput']:.2f}×")
    print(f"p95 ratio (ours / seed): {ours['p95_ms'] / seed['p95_ms']:.2f}×")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
