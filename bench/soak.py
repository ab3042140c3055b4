"""A soak through the real server: thousands of mixed requests from concurrent clients, and the server
watched throughout.

    python bench/soak.py                  # 10,000 requests from 8 clients after 1,000 (about an hour here)
    python bench/soak.py --requests 3000 --warmup 500    # a shorter run
    python bench/soak.py --quick          # a small run to check the script works

The server is tests/serve.py (the app with the EfficientNet-Lite0 oracle, so answers can be checked, and
a second model, random-weights ResNet-18 by default) in its own process on 127.0.0.1. The mix
(tests/soak.py's `request_mix`): good photos of three sizes and the hostile corpus to /predict, heatmaps
from /explain, each model of /classify, /compare of the two, and the page's own events as a browser sends
them (tests/page_visit.py): a Photo-tab visit (a photo lands, its heatmap follows, a bar is clicked, another
class is picked, the tab closes) and a Many photos upload with a broken file beside the photo. Every answer
is checked against the oracle run in this process (the random model's: five classes, well formed).

Prints: failures and wrong answers, latency, the server's RSS growth after the warm-up, its open file
descriptors and threads, and Gradio's upload cache over the run. The cache is cleaned with a short
--delete-cache (the app's is an hour) so that the cleanup can be seen keeping it bounded under load; the
bytes each request leaves there say how large the app's hour-long cache gets at a given rate.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from oracle import load_oracle  # noqa: E402
from servers import serve_oracle  # noqa: E402
from soak import soak, targets  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1000, help="requests before measuring (default 1000)")
    parser.add_argument("--also", default="resnet18", help="the second model (torchvision's, random weights)")
    parser.add_argument(
        "--delete-cache", nargs=2, type=int, default=(5, 20), metavar=("EVERY", "OLDER_THAN"), help="seconds"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="60 requests from 3 clients")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where soak.json goes")
    args = parser.parse_args()
    requests, clients, warmup = (60, 3, 20) if args.quick else (args.requests, args.clients, args.warmup)
    delete_cache = tuple(args.delete_cache)

    oracle = load_oracle()
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as folder:
        work = Path(folder)
        (work / "scratch").mkdir()
        (work / "server").mkdir()
        print(f"soak: {requests} requests from {clients} clients after {warmup} to warm up", flush=True)
        options = ("--delete-cache", *map(str, delete_cache), "--also", args.also)
        with serve_oracle(work / "server", *options) as served:
            report = soak(
                served,
                oracle,
                requests=requests,
                clients=clients,
                warmup=warmup,
                delete_cache=delete_cache,
                scratch=work / "scratch",
                seed=args.seed,
            )
    report["targets"] = targets(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    print_report(report)
    # A quick run is too short for steady memory and thread figures: it checks the script, not the server.
    return 0 if args.quick or all(report["targets"].values()) else 1


def print_report(report: dict) -> None:
    cache, warm, end, latency = report["cache"], report["warm"], report["end"], report["latency_s"]
    quarters = ", ".join(f"{q['files']} files {q['bytes'] / 1e6:.1f} MB" for q in cache["by_quarter"])
    after = cache["after_cleanup"]
    print(
        f"requests:      {report['requests']} in {report['seconds']:.0f} s "
        f"({report['requests_per_second']:.1f}/s), {report['clients']} clients, "
        f"{report['kinds_of_request']} kinds of request\n"
        f"endpoints:     {', '.join(report['endpoints_used'])} (offered: {', '.join(report['endpoints'])})\n"
        f"verdicts:      {report['verdicts']} (warm-up: {report['warmup_verdicts']})\n"
        f"Live stream:   {report['live'] or 'none (not this page)'}\n"
        f"latency:       p50 {latency['p50']:.2f} s, p95 {latency['p95']:.2f} s, max {latency['max']:.2f} s\n"
        f"RSS:           {warm['rss_mb']:.0f} MB after warm-up -> {end['rss_mb']:.0f} MB at the end "
        f"({report['rss_growth_percent']:+.1f} %; first half "
        f"{report['rss_growth_first_half_percent']:+.1f} %, last half "
        f"{report['rss_growth_last_half_percent']:+.1f} %), peak {report['rss_peak_mb']:.0f} MB\n"
        f"RSS at each tenth (under load): {report['rss_mb_by_tenth']} MB\n"
        f"open files:    {warm['open_fds']} -> {end['open_fds']} (during: {report['open_fds_during']})\n"
        f"threads:       {warm['threads']} -> {end['threads']} (during: {report['threads_during']})\n"
        f"upload cache:  delete_cache={tuple(cache['delete_cache'])}, "
        f"{cache['bytes_per_request'] / 1e3:.0f} kB "
        f"left per request; at each quarter of the run: {quarters}; oldest file "
        f"{cache['oldest_file_during_s']:.0f} s; after cleanup {after['files']} files, "
        f"{after['folders']} folders"
    )
    for problem in report["problems"]:
        print(f"  {problem['verdict']}: {problem['request']}: {problem['detail'][:200]}")
    for target, met in report["targets"].items():
        print(f"{'met   ' if met else 'MISSED'}  {target}")


if __name__ == "__main__":
    sys.exit(main())
