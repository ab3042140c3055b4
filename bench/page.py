"""Photo chosen -> five bars on screen in Chromium: the page against a plain gr.Interface around the seed's
pipeline, side by side in one run; and over a phone's uplink.

    python bench/page.py            # about 5 minutes on 2 cores
    python bench/page.py --quick    # tiny smoke run (the test suite uses it)
    python bench/page.py --sides 1024 --no-fidelity --before ../before   # beside an earlier checkout
    python bench/page.py --sides 1024 --no-fidelity --floor   # and a plain Interface that does no work

Servers on 127.0.0.1, each its own process and Gradio cache, all answering with the EfficientNet-Lite0
oracle: bench/plain_app.py (the plain Interface: Gradio's defaults, PIL's full decode, an eager forward;
with --floor also the same Interface answering at once without reading the photo: Gradio's own floor)
and the page (tests/serve.py) once per --sides value of --upload-max-side (the long side the browser
shrinks photos to before sending them). Debian's Chromium (tests/browser.py) chooses each photo through the
file input, in a fresh browser context per round, rounds alternating the contenders' order:
- a 640×480 JPEG and a detailed 12 MP phone JPEG (coffee: a real photo upscaled with grain, quality 95,
  EXIF orientation and GPS: tests/photos.py), over loopback: chosen -> bars, the page's ratio to the plain
  app, and chosen -> heatmap picture on the page;
- the 12 MP photo over a phone's uplink (DevTools: 1.5 Mbit/s up, 50 ms round trip): the page only (the
  plain app sends the whole 4 MB: bench/upload.py measured it, 22 s), with the upload's body in bytes.
Each time is broken down (medians): before the upload starts (the page's shrink step), the upload, upload ->
event sent (Gradio's front end), event -> answer (the server), answer -> bars drawn. Then fidelity per side,
as bench/upload.py measures it (the oracle's answer for the file the browser sends against its answer for
the original, largest top-5 probability change). Writes OUT/page.json.
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
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from playwright.sync_api import sync_playwright  # noqa: E402
from upload import BARS_SHOWN, DROP_ZONE, WATCH_CHOICE, fidelity  # noqa: E402

from browser import launch_chromium  # noqa: E402
from photos import PHONE_SIZE, phone_jpeg, real_photo, upscaled  # noqa: E402
from servers import free_port, wait_until_serving  # noqa: E402

PHASES = """() => {
    const first = pattern => performance.getEntriesByType("resource")
        .find(entry => pattern.test(new URL(entry.name).pathname));
    const [upload, join, data] = [/\\/upload$/, /\\/queue\\/join$/, /\\/queue\\/data$/].map(first);
    return upload && join && data
        && {upload: [upload.startTime, upload.responseEnd], join: join.startTime, answered: data.responseEnd};
}"""
"""When the photo's upload started and ended, when its event was sent and when its answer had come (the
first event's stream closed), from the page's resource timings."""
HEATMAP_SHOWN = (
    """() => !!document.querySelector('img[alt^="Where the model looked for"]') && performance.now()"""
)


def start(command: list[str], name: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = workdir / f"{name}.log"
    env = dict(os.environ, GRADIO_TEMP_DIR=str(workdir / f"cache-{name}"), PYTHONUNBUFFERED="1")
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, *command, str(port)], cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}/"
    wait_until_serving(url, process, log=log)
    return process, url


def one_round(browser, url: str, photo: Path, throttle: dict | None, heatmap: bool) -> dict:
    """Open the page, (throttle it,) choose `photo`: ms to the bars (and to the heatmap), body bytes."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        bodies = []
        page.on(
            "requestfinished",
            lambda r: "/upload" in r.url and bodies.append(int(r.all_headers().get("content-length", 0))),
        )
        page.goto(url)
        page.locator(DROP_ZONE).first.wait_for()
        page.wait_for_timeout(500)  # the page settles (its load event has run), as a person's would
        page.evaluate(WATCH_CHOICE)
        # Playwright's first wait_for_function on a page evaluates a script there: 12 ms of the page's main
        # thread in a Chromium trace, which landed while the page was shrinking the photo. Done now instead.
        page.wait_for_function("() => true")
        if throttle:
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.emulateNetworkConditions", throttle)
        page.set_input_files('input[type="file"]', photo)
        bars_at = page.wait_for_function(BARS_SHOWN, polling=5, timeout=300_000).json_value()
        chosen_at = page.evaluate("window.benchChosenAt")
        row = {"bars_ms": bars_at - chosen_at, "body_bytes": sum(bodies)}
        phases = page.evaluate(PHASES)
        if phases:
            (upload_start, upload_end), join, answered = phases["upload"], phases["join"], phases["answered"]
            row["phases_ms"] = {
                "before upload": upload_start - chosen_at,  # the page's shrink step (none in the plain app)
                "upload": upload_end - upload_start,
                "upload -> event": join - upload_end,  # Gradio's front end
                "event -> answer": answered - join,  # the server: queue, pre/postprocess, model
                "answer -> bars": bars_at - answered,  # the front end draws the outputs
            }
        if heatmap:
            row["heatmap_ms"] = page.wait_for_function(HEATMAP_SHOWN, polling=5).json_value() - chosen_at
        return row
    finally:
        context.close()


def photos(workdir: Path) -> dict[str, Path]:
    small = workdir / "640x480.jpg"
    upscaled(real_photo("coffee"), (640, 480), grain=0).save(small, quality=95)
    big = workdir / "IMG_0001.jpg"
    big.write_bytes(phone_jpeg(upscaled(real_photo("coffee"), PHONE_SIZE)))
    return {"640×480": small, f"12 MP ({big.stat().st_size / 1e6:.1f} MB)": big}


def side_by_side(browser, urls: dict[str, str], pictures: dict, throttle: dict, rounds: int) -> dict:
    """Each contender chooses each photo over loopback, then the page (as shipped: "page, N px") the 12 MP
    photo over the phone's uplink, round after round, the order reversed every other round."""
    results: dict = {}
    shipped = [name for name in urls if name.startswith("page, ")]  # heatmap and uplink: this page's
    for url in urls.values():  # warm-up: first page load, first answer
        one_round(browser, url, next(iter(pictures.values())), None, False)
    for round_ in range(rounds):
        order = list(urls) if round_ % 2 == 0 else list(reversed(urls))
        for label, photo in pictures.items():
            for name in order:
                row = one_round(browser, urls[name], photo, None, name in shipped)
                results.setdefault(f"loopback, {label}", {}).setdefault(name, []).append(row)
        big = list(pictures.values())[-1]
        for name in order[::-1]:
            if name in shipped:
                row = one_round(browser, urls[name], big, throttle, False)
                results.setdefault("1.5 Mbit/s up, 50 ms RTT, 12 MP", {}).setdefault(name, []).append(row)
    return results


def report(results: dict) -> None:
    print("\nChosen -> bars (median, min–max, ms; ratio to the plain app) and chosen -> heatmap (median ms)")
    for case, contenders in results.items():
        print(f"  {case}")
        plain = contenders.get("plain")
        for name, rows in contenders.items():
            bars = [row["bars_ms"] for row in rows]
            line = f"    {name:<16} {statistics.median(bars):7.0f} ({min(bars):.0f}–{max(bars):.0f})"
            if plain and name != "plain":
                line += f"  {statistics.median(bars) / statistics.median(r['bars_ms'] for r in plain):.2f}×"
            if "heatmap_ms" in rows[0]:
                line += f"  heatmap {statistics.median(row['heatmap_ms'] for row in rows):.0f}"
            line += f"  sent {statistics.median(row['body_bytes'] for row in rows) / 1e3:.0f} KB"
            print(line)
            if all("phases_ms" in row for row in rows):
                phases = {
                    name: statistics.median(row["phases_ms"][name] for row in rows)
                    for name in rows[0]["phases_ms"]
                }
                print("      " + ", ".join(f"{name} {ms:.0f}" for name, ms in phases.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sides", default="1024,768", help="the page's --upload-max-side values to measure")
    parser.add_argument("--seeds", type=int, default=3, help="grain seeds per photo for the fidelity check")
    parser.add_argument("--quick", action="store_true", help="one round, no fidelity")
    parser.add_argument("--no-fidelity", action="store_true", help="the timings only")
    parser.add_argument(
        "--floor", action="store_true", help="also the plain Interface answering at once, the photo unread"
    )
    parser.add_argument(
        "--before",
        type=Path,
        metavar="CHECKOUT",
        help="another checkout of this repository (git worktree add): its page measured beside the rest",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    throttle = {
        "offline": False,
        "latency": 50,
        "uploadThroughput": 1.5e6 / 8,
        "downloadThroughput": 10e6 / 8,
    }
    sides = [int(side) for side in args.sides.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-page-") as tmp:
        workdir = Path(tmp)
        pictures = photos(workdir)
        servers = {"plain": start([str(ROOT / "bench" / "plain_app.py")], "plain", workdir)}
        if args.floor:
            command = [str(ROOT / "bench" / "plain_app.py"), "--no-work"]
            servers["Gradio, no work"] = start(command, "no-work", workdir)
        for side in sides:
            command = [str(ROOT / "tests" / "serve.py"), "--upload-max-side", str(side)]
            servers[f"page, {side} px"] = start(command, f"page-{side}", workdir)
        if args.before:
            before = args.before.resolve()
            servers[f"page at {before.name}"] = start([str(before / "tests" / "serve.py")], "before", workdir)
        try:
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                urls = {name: url for name, (_, url) in servers.items()}
                results = side_by_side(browser, urls, pictures, throttle, 1 if args.quick else args.rounds)
                report(results)
                fidelities = {}
                for side in [] if args.quick or args.no_fidelity else sides:
                    page = browser.new_page()
                    page.goto(urls[f"page, {side} px"])
                    page.wait_for_function("window.imageClassifierUploads")
                    print(f"\n  upload side {side} px:")
                    fidelities[side] = fidelity(
                        page,
                        ["chelsea", "coffee", "rocket", "astronaut", "motorcycle"],
                        PHONE_SIZE,
                        args.seeds,
                    )
                    page.close()
                browser.close()
        finally:
            for process, _ in servers.values():
                process.terminate()
                process.wait(timeout=30)
    (args.out / "page.json").write_text(json.dumps({"timings": results, "fidelity": fidelities}, indent=1))
    print(f"\nwrote {args.out / 'page.json'}")


if __name__ == "__main__":
    main()
