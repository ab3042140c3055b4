"""A phone photo from choosing to bars, with and without the browser's resize step, side by side in one run.

    python bench/upload.py            # 5-8 minutes on 2 cores (much of it the unresized photo crawling up)
    python bench/upload.py --quick    # tiny smoke run (the test suite uses it)

Two servers on 127.0.0.1 (tests/serve.py: the app with the EfficientNet-Lite0 oracle model, each with its
own Gradio cache): the page as shipped (--upload-max-side 1024: the browser sends photos upright, at most
1024 px, re-encoded without metadata) and the page as it was (--upload-max-side 0: the file goes as it is);
the shipped page is also timed without WebCodecs' ImageDecoder, as Safari and older browsers run it.
Debian's Chromium (tests/browser.py) chooses a 12 MP phone JPEG of about 4 MB (a real skimage photo
upscaled with grain, quality 95, EXIF orientation and GPS: tests/photos.py) through the file input, over:
- a phone's uplink, emulated with the DevTools protocol (Network.emulateNetworkConditions: 1.5 Mbit/s up,
  50 ms round trip, --down-mbps down), set once the page has loaded;
- loopback, unthrottled.
Rounds alternate between the two pages, each in a fresh browser context. Reported per page and network:
chosen -> five bars (median, min–max), where that time went (before the upload request: decoding and
resizing; the upload request; after it: the model and the page), and the upload request's body in bytes
(the Content-Length Chromium sent). Then fidelity on the oracle: for each real photo as a phone JPEG
(--seeds grain seeds each), the answer for the file the browser sends against the answer for the
original (what the server says for it through the API); as a yardstick, the server's own spread: the
same original decoded at full resolution instead of at the reduced scale the server's JPEG decoding
uses. Writes OUT/upload.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image, ImageOps  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from browser import launch_chromium, sent_by_page  # noqa: E402
from photos import PHONE_SIZE, REAL_PHOTOS, phone_jpeg, real_photo, upscaled  # noqa: E402
from servers import free_port, wait_until_serving  # noqa: E402

DROP_ZONE = '[aria-label^="Drop an image file here to upload"]'
BARS_SHOWN = """() => document.querySelectorAll('[data-testid="label"] .confidence-set').length >= 5
    && performance.now()"""
WATCH_CHOICE = """() => document.addEventListener("change", event => {
    if (event.target.matches('input[type="file"]')) window.benchChosenAt = performance.now();
}, true)"""
UPLOAD_TIMING = """() => performance.getEntriesByType("resource")
    .filter(entry => new URL(entry.name).pathname.endsWith("/gradio_api/upload"))
    .map(entry => [entry.startTime, entry.responseEnd])[0]"""
SERVERS = {"as it was": 0, "resized": 1024}
"""--upload-max-side of each server: the page as it was, the page as shipped."""
PAGES = {
    "as it was": ("as it was", None),
    "resized": ("resized", None),
    "no WebCodecs": ("resized", "delete window.ImageDecoder;"),
}
"""The contenders: a server, and a script run before the page's own. Without ImageDecoder (Safari, older
browsers, pages on plain http) JPEGs are decoded in full with createImageBitmap, then shrunk."""


def start_server(max_side: int, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = workdir / f"server-{max_side}.log"
    env = dict(os.environ, GRADIO_TEMP_DIR=str(workdir / f"cache-{max_side}"), PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests" / "serve.py"), str(port), "--upload-max-side", str(max_side)],
            cwd=workdir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(url, process, log=log)
    return process, url


def one_round(browser, url: str, before: str | None, photo: Path, throttle: dict | None) -> dict:
    """Open the page, (throttle it,) choose `photo`, wait for the bars: times in ms, body size in bytes."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    if before:
        context.add_init_script(before)
    try:
        page = context.new_page()
        bodies = []

        def count_body(request) -> None:  # the headers Chromium sent: the body's exact length
            if "/gradio_api/upload?" in request.url:
                bodies.append(int(request.all_headers()["content-length"]))

        page.on("requestfinished", count_body)
        page.goto(url)
        page.locator(DROP_ZONE).wait_for()
        page.wait_for_timeout(500)  # the page settles (its load event has run), as a person's would
        page.evaluate(WATCH_CHOICE)
        if throttle:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", throttle)
        page.set_input_files('input[type="file"]', photo)
        bars_at = page.wait_for_function(BARS_SHOWN, polling=10, timeout=300_000).json_value()
        chosen_at = page.evaluate("window.benchChosenAt")
        upload_start, upload_end = page.evaluate(UPLOAD_TIMING)
        return {
            "ms": bars_at - chosen_at,
            "before_upload_ms": upload_start - chosen_at,
            "upload_ms": upload_end - upload_start,
            "after_upload_ms": bars_at - upload_end,
            "body_bytes": sum(bodies),
        }
    finally:
        context.close()


def timings(browser, pages: dict[str, tuple], photo: Path, networks: dict, rounds: int) -> dict:
    results = {network: {name: [] for name in pages} for network in networks}
    for url, before in pages.values():  # warm-up: first page load, first prediction
        one_round(browser, url, before, photo, None)
    for round_ in range(rounds):
        for network, throttle in networks.items():
            order = list(pages) if round_ % 2 == 0 else list(reversed(pages))
            for name in order:
                results[network][name].append(one_round(browser, *pages[name], photo, throttle))
    return results


def median(rows: list[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def report_timings(results: dict, megapixels: float, photo_bytes: int) -> None:
    print(
        f"\n1. Chosen -> bars, {megapixels:.0f} MP phone JPEG of {photo_bytes / 1e6:.2f} MB"
        " (median, min–max, seconds)"
    )
    print(f"   {'network':<26}" + "".join(f"{name:>30}" for name in PAGES))
    for network, pages in results.items():
        cells = []
        for name, rows in pages.items():
            seconds = [row["ms"] / 1000 for row in rows]
            ratio = median(rows, "ms") / median(pages["as it was"], "ms")
            cells.append(
                f"{statistics.median(seconds):.2f} ({min(seconds):.2f}–{max(seconds):.2f})"
                + (f" {ratio:.2f}×" if name != "as it was" else "")
            )
        print(f"   {network:<26}" + "".join(f"{cell:>30}" for cell in cells))
    print("\n2. Where the time went (median ms: before the upload request / the upload / after it)")
    for network, pages in results.items():
        for name, rows in pages.items():
            parts = " / ".join(
                f"{median(rows, key):6.0f}" for key in ("before_upload_ms", "upload_ms", "after_upload_ms")
            )
            print(f"   {network:<26} {name:<13} {parts}")
    print("\n3. Upload request body (bytes)")
    for name in PAGES:
        sizes = {row["body_bytes"] for pages in results.values() for row in pages[name]}
        print(f"   {name:<13} {', '.join(f'{size:,}' for size in sorted(sizes))}")


def fidelity(page, names: list[str], size: tuple[int, int], seeds: int) -> list[dict]:
    """The oracle's answer for what the browser sends against its answer for the original, per photo and
    grain seed; as a yardstick, the server's answer for the same original decoded at full resolution."""
    from oracle import load_oracle

    oracle = load_oracle()
    rows = []
    print("\n4. Fidelity on the oracle (EfficientNet-Lite0): sent file vs original through the server")
    print(
        f"   {'photo':<11} {'seed':>4} {'original top-1':<22} {'lead':>6} {'sent':>8} {'same':>5}"
        f" {'max |Δp| top-5':>15} {'yardstick':>10}"
    )
    for seed in range(seeds):
        for name in names:
            original = phone_jpeg(upscaled(real_photo(name), size, seed=seed))
            sent = sent_by_page(page, original)
            full = ImageOps.exif_transpose(Image.open(io.BytesIO(original))).convert("RGB")
            reference = oracle.predict(original, top_k=1000)
            top = list(reference)[:5]
            answers = {
                "sent": oracle.predict(sent, top_k=1000),
                "full decode": oracle.predict(full, top_k=1000),
            }
            row = {
                "photo": name,
                "seed": seed,
                "original_bytes": len(original),
                "sent_bytes": len(sent),
                "top1": top[0],
                "lead": reference[top[0]] - reference[top[1]],
            }
            for kind, answer in answers.items():
                row[kind] = {
                    "same_top1": next(iter(answer)) == top[0],
                    "max_abs_diff": max(abs(reference[label] - answer[label]) for label in top),
                }
            rows.append(row)
            print(
                f"   {name:<11} {seed:4} {top[0][:22]:<22} {row['lead']:6.3f} {len(sent) / 1e3:6.0f}KB"
                f" {'yes' if row['sent']['same_top1'] else 'NO':>5} {row['sent']['max_abs_diff']:15.3f}"
                f" {row['full decode']['max_abs_diff']:10.3f}"
            )
    for kind in ("sent", "full decode"):
        diffs = [row[kind]["max_abs_diff"] for row in rows]
        kept = sum(row[kind]["same_top1"] for row in rows)
        print(
            f"   {kind:<12} top-1 kept {kept}/{len(rows)}, max |Δp| median {statistics.median(diffs):.3f},"
            f" max {max(diffs):.3f}, within 0.02: {sum(d <= 0.02 for d in diffs)}/{len(rows)}"
        )
    print("   (lead: the original's top-1 minus its runner-up; yardstick / full decode: the server decoding")
    print("   the original at full resolution instead of at its reduced JPEG scale)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3, help="grain seeds per photo for the fidelity check")
    parser.add_argument("--up-mbps", type=float, default=1.5)
    parser.add_argument("--down-mbps", type=float, default=10.0)
    parser.add_argument("--rtt-ms", type=float, default=50)
    parser.add_argument("--quick", action="store_true", help="one round, a 3 MP photo, one fidelity photo")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    size = (2016, 1512) if args.quick else PHONE_SIZE
    rounds = 1 if args.quick else args.rounds
    names = ["chelsea"] if args.quick else list(REAL_PHOTOS)
    throttle = {
        "offline": False,
        "latency": args.rtt_ms,
        "uploadThroughput": args.up_mbps * 1e6 / 8,
        "downloadThroughput": args.down_mbps * 1e6 / 8,
    }
    networks = {
        f"{args.up_mbps:g} Mbit/s up, {args.rtt_ms:g} ms RTT": throttle,
        "loopback, unthrottled": None,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-upload-") as tmp:
        workdir = Path(tmp)
        photo = workdir / "IMG_0001.jpg"
        photo.write_bytes(phone_jpeg(upscaled(real_photo("chelsea"), size)))
        photo_bytes = photo.stat().st_size
        servers = {name: start_server(max_side, workdir) for name, max_side in SERVERS.items()}
        try:
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                pages = {name: (servers[server][1], before) for name, (server, before) in PAGES.items()}
                results = timings(browser, pages, photo, networks, rounds)
                report_timings(results, size[0] * size[1] / 1e6, photo_bytes)
                page = browser.new_page()
                page.goto(servers["resized"][1])
                page.wait_for_function("window.imageClassifierUploads")
                rows = fidelity(page, names, size, 1 if args.quick else args.seeds)
                browser.close()
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    summary = {
        "photo": {"size": size, "bytes": photo_bytes},
        "networks": networks,
        "timings": results,
        "fidelity": rows,
    }
    (args.out / "upload.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {args.out / 'upload.json'}")


if __name__ == "__main__":
    main()
