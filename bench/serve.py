"""The page with its models on Ray Serve replicas, against one replica and against the plain app, in one run.

    python bench/serve.py            # a few minutes on 2 cores
    python bench/serve.py --quick    # a tiny run: checks the script works

DenseNet-121 (random weights: the same compute as the pretrained ones) with --precision exact (fp32
PyTorch: the model's work dominates, as for big models on a real cluster), on 127.0.0.1, started one after
the other:

- the plain `python app.py` on one inference thread (OMP_NUM_THREADS=1), for the overhead of Serve;
- `--serve --replicas 1 --replica-threads 1`;
- `--serve --replicas 2 --replica-threads 1`, then one of its replicas killed (SIGKILL) while 8 clients send
  200 requests: failed requests, and the time until two replicas serve again (Serve's own status).

Each: start-up to /readyz, p50 of one client's requests, throughput of 8 concurrent clients, memory of each
model replica. Prints ratios measured side by side; writes docs/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402
import torchvision  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from ray_serving import ServedApp, replica_processes, serve_app, session_processes  # noqa: E402
from servers import rss_mb  # noqa: E402


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


def latencies(url: str, photo: Path, clients: int, per_client: int) -> tuple[list[float], float, int]:
    """(each answered request's ms, wall seconds, failed requests) for `clients` sending `per_client` each."""

    def one_client(_: int) -> tuple[list[float], int]:
        client = Client(url, verbose=False)
        times, failed = [], 0
        for _ in range(per_client):
            begin = time.monotonic()
            try:
                client.predict(handle_file(str(photo)), api_name="/predict")
                times.append((time.monotonic() - begin) * 1000)
            except Exception:  # noqa: BLE001 (counted: the figure is how many failed)
                failed += 1
        return times, failed

    begin = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one_client, range(clients)))
    wall = time.monotonic() - begin
    return [ms for times, _ in results for ms in times], wall, sum(failed for _, failed in results)


def measure(served: ServedApp, photo: Path, clients: int, per_client: int, sequential: int) -> dict:
    latencies(served.url, photo, 2, 2)  # warm-up
    one, _, _ = latencies(served.url, photo, 1, sequential)
    times, wall, failed = latencies(served.url, photo, clients, per_client)
    replicas = replica_processes(served)
    return {
        "ready_after_s": served.ready_after_s,
        "p50_one_client_ms": statistics.median(one),
        "throughput": len(times) / wall,
        "p50_loaded_ms": statistics.median(times),
        "failed": failed,
        "replica_rss_mb": [rss_mb(pid) for pid in replicas],
        "page_rss_mb": [rss_mb(pid) for pid in replica_processes(served, "page")]
        or [rss_mb(served.process.pid)],
    }


def gcs_address(served: ServedApp) -> str:
    """The address of the Ray that `served` started (its raylet's command line names it)."""
    for pid in session_processes(served.process.pid):
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        for argument in arguments:
            if argument.startswith("--gcs-address="):
                return argument.removeprefix("--gcs-address=")
    raise RuntimeError("no raylet among the app's processes")


def running_replicas(serve) -> int:
    status = serve.status().applications["image-classifier"].deployments["models"]
    return status.replica_states.get("RUNNING", 0)


def kill_one(served: ServedApp, photo: Path, clients: int, total: int) -> dict:
    """One replica SIGKILLed after the first answers, while `clients` send `total` requests."""
    # The app's local Ray made a token (~/.ray/auth_token): a second driver connects with it.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray
    from ray import serve

    ray.init(address=gcs_address(served), logging_level="ERROR")
    try:
        with ThreadPoolExecutor(1) as side:
            load = side.submit(latencies, served.url, photo, clients, total // clients)
            time.sleep(3)  # the clients' first requests in flight on both replicas
            victim = replica_processes(served)[0]
            os.kill(victim, signal.SIGKILL)
            killed = time.monotonic()
            while running_replicas(serve) >= 2 and time.monotonic() - killed < 30:
                time.sleep(0.1)  # Serve notices the death
            while running_replicas(serve) < 2 and time.monotonic() - killed < 300:
                time.sleep(0.25)
            back_after = time.monotonic() - killed
            times, wall, failed = load.result(timeout=600)
    finally:
        ray.shutdown()
    return {"requests": len(times) + failed, "failed": failed, "two_replicas_again_after_s": back_after}


def interleaved_scaling(
    model: list[str], env: dict, work: Path, photo: Path, rounds: int, clients: int
) -> dict:
    """Both Serve configurations running at once, measured in alternating bursts (1 replica, 2 replicas,
    1, 2, ...): on a machine whose load drifts, each pair of bursts sees about the same contention."""
    options = {
        "1 replica": ["--serve", "--replicas", "1", "--replica-threads", "1"],
        "2 replicas": ["--serve", "--replicas", "2", "--replica-threads", "1"],
    }
    with ExitStack() as stack:
        served = {
            name: stack.enter_context(serve_app([*model, *flags], work / f"{name}.log", env=env, timeout=900))
            for name, flags in options.items()
        }
        for app in served.values():
            latencies(app.url, photo, 2, 2)  # warm-up
        answered = {name: 0 for name in served}
        seconds = {name: 0.0 for name in served}
        ratios = []
        for _ in range(rounds):
            rate = {}
            for name, app in served.items():
                times, wall, _ = latencies(app.url, photo, clients, 2)
                answered[name] += len(times)
                seconds[name] += wall
                rate[name] = len(times) / wall
            ratios.append(rate["2 replicas"] / rate["1 replica"])
            print(
                "round", len(ratios), json.dumps(rate), f"ratio {ratios[-1]:.2f}", os.getloadavg(), flush=True
            )
    throughput = {name: answered[name] / seconds[name] for name in served}
    return {
        "throughput": throughput,
        "ratio": throughput["2 replicas"] / throughput["1 replica"],
        "rounds": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where serve.json goes")
    parser.add_argument(
        "--interleaved",
        type=int,
        metavar="ROUNDS",
        help="only the scaling: both Serve configurations at once, in alternating bursts (a noisy machine)",
    )
    args = parser.parse_args()
    clients, per_client, sequential, kill_total = (2, 2, 3, 8) if args.quick else (8, 8, 15, 200)

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    weights = work / "densenet121.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.densenet121().state_dict(), weights)
    photo = work / "photo-640x480.jpg"
    Image.open(ROOT / "examples" / "coffee.jpg").convert("RGB").resize((640, 480)).save(photo, quality=90)
    env = dict(os.environ, IMAGE_CLASSIFIER_CACHE=str(work / "cache"), GRADIO_TEMP_DIR=str(work / "gradio"))
    model = [
        "--model",
        "densenet121",
        "--models",
        "densenet121",
        "--weights",
        str(weights),
        "--precision",
        "exact",
    ]
    runs = {
        "plain app, 1 thread": ([], dict(env, OMP_NUM_THREADS="1")),
        "serve, 1 replica": (["--serve", "--replicas", "1", "--replica-threads", "1"], env),
        "serve, 2 replicas": (["--serve", "--replicas", "2", "--replica-threads", "1"], env),
    }
    if args.interleaved:
        result = {"machine": machine()} | interleaved_scaling(
            model, env, work, photo, args.interleaved, clients
        )
        result["machine"]["load_average_after"] = os.getloadavg()
        print(f"throughput, 2 replicas / 1 replica, interleaved: {result['ratio']:.2f}× (target ≥ 1.7×)")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "serve-interleaved.json").write_text(json.dumps(result, indent=1))
        return
    results: dict = {"machine": machine()}
    for name, (options, environment) in runs.items():
        with serve_app(
            [*model, *options], work / f"{len(results)}.log", env=environment, timeout=600
        ) as served:
            results[name] = measure(served, photo, clients, per_client, sequential)
            print(name, json.dumps(results[name]), flush=True)
            if name == "serve, 2 replicas":
                results["one replica killed"] = kill_one(served, photo, clients, kill_total)
                print("one replica killed", json.dumps(results["one replica killed"]), flush=True)
    results["machine"]["load_average_after"] = os.getloadavg()

    plain, one, two = (
        results["plain app, 1 thread"],
        results["serve, 1 replica"],
        results["serve, 2 replicas"],
    )
    killed = results["one replica killed"]
    print(
        f"\n{results['machine']['cpu']}, {os.cpu_count()} CPUs; "
        f"load average before {results['machine']['load_average']}"
    )
    print(f"DenseNet-121 fp32 exact, 640×480 JPEG; {clients} clients × {per_client} requests")
    print(f"{'':<22} {'ready s':>8} {'p50 1 client':>13} {'req/s':>7} {'p50 loaded':>11} {'replica MB':>11}")
    for name in runs:
        r = results[name]
        memory = "/".join(f"{mb:.0f}" for mb in r["replica_rss_mb"]) or "-"
        print(
            f"{name:<22} {r['ready_after_s']:8.1f} {r['p50_one_client_ms']:11.0f} ms {r['throughput']:7.2f} "
            f"{r['p50_loaded_ms']:8.0f} ms {memory:>11}"
        )
    print(f"throughput, 2 replicas / 1 replica: {two['throughput'] / one['throughput']:.2f}× (target ≥ 1.7×)")
    overhead = one["p50_one_client_ms"] - plain["p50_one_client_ms"]
    ratio = one["p50_one_client_ms"] / plain["p50_one_client_ms"]
    print(f"Serve's overhead, p50 of one client: {overhead:+.0f} ms ({ratio:.2f}×)")
    print(
        f"one replica killed: {killed['failed']} of {killed['requests']} requests failed; two replicas serve "
        f"again {killed['two_replicas_again_after_s']:.1f} s after the kill"
    )
    print(f"load average after: {results['machine']['load_average_after']}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / ("serve-quick.json" if args.quick else "serve.json")).write_text(
        json.dumps(results, indent=1)
    )


if __name__ == "__main__":
    main()
