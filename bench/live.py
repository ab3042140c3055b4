"""The Live tab in Chromium with its fake camera: frames answered per second, where a frame's time goes,
how fresh the answers are, and whether two streams starve another user's photo.

    python bench/live.py              # about three minutes on 2 cores
    python bench/live.py --quick      # tiny smoke run (the test suite uses it)

Browser and server share the machine, as they do when someone runs `python app.py` on a laptop. The model
is DenseNet-121 with random weights (same compute as the pretrained ones, which can't be downloaded here)
in the app's default configuration (fast engine: OpenVINO fp32 on the CPU), served in this process.

1. A plain Live tab, as Gradio's docs suggest (`gr.Image(sources=["webcam"], streaming=True)`, numpy
   frames at the browser's default size, `stream_every=0.1`), against the app's Live tab, one stream each,
   the same seconds of measurement. Frames answered per second are counted in the page (answers received
   and bars updated), not only on the server.
2. Where an answered frame's time goes, from the page's clock and the server's (same machine): capture and
   JPEG encoding in the page, the upload, waiting, decode, preprocess, forward pass, delivery back to the
   page, the bars' update; and the CPU seconds each process spent per answered frame.
3. Freshness: the page stamps each captured frame with its number (16 black or white squares in the
   top-left corner, read back on the server), so each answer's frame is known: how many newer frames the
   page had already captured when the answer was shown, and the answer's age in milliseconds.
4. Another user's photo (Photo tab, a separate browser context) idle, then while two live streams run:
   time from choosing the file to the bars on screen, median of a few.
5. With --parts N: what each part of "photos first" is worth, section 4 again for N interleaved rounds on
   pages built without one part each: the page pacing its frames by the answers, the streams sharing a
   lower frame rate, frames giving way from a photo's upload on (not only while it is classified).

Prints everything with the CPU model and the load average, and writes OUT/live.json.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import statistics
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

import app  # noqa: E402
from browser import FAKE_WEBCAM_ARGS, launch_chromium  # noqa: E402
from classifier import Classifier, load_labels  # noqa: E402
from image_classifier import live  # noqa: E402
from servers import serving  # noqa: E402

MARK_BITS = 16
MARK_SIDE = 8
"""The frame number: MARK_BITS squares of MARK_SIDE pixels (one JPEG block each), white for a 1."""

# Runs in every page before Gradio's scripts: counts and times captures, uploads and answers.
PAGE_PROBE = """
(() => {
  const now = () => performance.timeOrigin + performance.now();
  const log = (window.__live = {captures: [], posts: [], answers: [], bars: []});
  let drawing = 0, number = 0;
  const drawImage = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const start = now();
    const result = drawImage.apply(this, args);
    drawing += now() - start;
    return result;
  };
  const toDataURL = HTMLCanvasElement.prototype.toDataURL;
  HTMLCanvasElement.prototype.toDataURL = function (...args) {
    const start = now();
    number = (number + 1) % (1 << BITS);
    const context = this.getContext("2d");
    context.save();
    context.setTransform(1, 0, 0, 1, 0, 0);
    for (let bit = 0; bit < BITS; bit++) {
      context.fillStyle = (number >> bit) & 1 ? "#fff" : "#000";
      context.fillRect(bit * SIDE, 0, SIDE, SIDE);
    }
    context.restore();
    const url = toDataURL.apply(this, args);
    const end = now();
    log.captures.push({number, start: start - drawing, end, draw_ms: drawing, encode_ms: end - start,
                       width: this.width, height: this.height, bytes: Math.round(url.length * 3 / 4)});
    drawing = 0;
    return url;
  };
  const fetch_ = window.fetch;
  window.fetch = async function (input, init) {
    const url = typeof input === "string" ? input : input.url;
    const start = now();
    const response = await fetch_.call(this, input, init);
    if (url.includes("/stream/") && !url.endsWith("/close")) {
      log.posts.push({start, end: now()});
    } else if (url.includes("/queue/data") && response.body) {
      const decoder = new TextDecoder();
      let rest = "";
      const watch = new TransformStream({
        transform(chunk, controller) {
          const lines = (rest + decoder.decode(chunk, {stream: true})).split("\\n");
          rest = lines.pop();
          const at = now();
          for (const line of lines) {
            if (!line.startsWith("data:")) continue;
            const message = JSON.parse(line.slice(5));
            if (message.msg !== "process_streaming") continue;
            const value = message.output && message.output.data && message.output.data[0];
            log.answers.push({at, answered: !!(value && value.confidences)});
          }
          controller.enqueue(chunk);
        },
      });
      return new Response(response.body.pipeThrough(watch), {
        status: response.status, statusText: response.statusText, headers: response.headers});
    }
    return response;
  };
  const watch_bars = () => {
    const bars = document.querySelector("#live-bars");
    if (!bars) return setTimeout(watch_bars, 100);
    new MutationObserver(() => log.bars.push(now())).observe(
      bars, {subtree: true, childList: true, characterData: true, attributes: true});
  };
  document.addEventListener("DOMContentLoaded", watch_bars);
})();
""".replace("BITS", str(MARK_BITS)).replace("SIDE", str(MARK_SIDE))

PHOTO_PROBE = """
() => {
  const now = () => performance.timeOrigin + performance.now();
  window.__photo = {start: null, end: null};
  document.querySelector("input[type=file]").addEventListener(
    "change", () => { window.__photo.start = now(); }, {capture: true});
  new MutationObserver(() => {
    if (window.__photo.start && !window.__photo.end &&
        document.querySelectorAll('[data-testid="label"] .confidence-set').length >= 5) {
      window.__photo.end = now();
    }
  }).observe(document.body, {subtree: true, childList: true});
}
"""


def frame_number(image: Image.Image) -> int | None:
    """The number the page stamped on a frame, or None (no stamp: frames too small)."""
    if image.width < MARK_BITS * MARK_SIDE or image.height < MARK_SIDE:
        return None
    strip = np.asarray(image.convert("L").crop((0, 0, MARK_BITS * MARK_SIDE, MARK_SIDE)), dtype=np.float32)
    squares = strip.reshape(MARK_SIDE, MARK_BITS, MARK_SIDE).mean(axis=(0, 2))
    return int(sum(1 << bit for bit, level in enumerate(squares) if level > 127))


class ServerProbe:
    """Times the classifier's steps on each frame the server answers (wraps the instance's methods)."""

    def __init__(self, classifier: Classifier) -> None:
        self.frames: list[dict] = []
        self._current = threading.local()
        for step in ("decode", "preprocess", "forward", "postprocess"):
            setattr(classifier, step, self._timed(step, getattr(classifier, step)))

    def _timed(self, step: str, method):
        def run(*args, **kwargs):
            start = time.time()
            result = method(*args, **kwargs)
            end = time.time()
            if step in ("decode", "preprocess") and not hasattr(self._current, "frame"):
                self._current.frame = {"start": start}
            frame = self._current.frame
            frame[f"{step}_ms"] = (end - start) * 1000
            if step == "preprocess":
                frame["number"] = frame_number(args[0]) if isinstance(args[0], Image.Image) else None
            if step == "postprocess":
                frame["end"] = end
                self.frames.append(frame)
                del self._current.frame
            return result

        return run


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes() -> dict[str, list[int]]:
    """This process, and its descendants by kind: the browser (Chromium) and Playwright's driver."""
    children: dict[int, list[int]] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                commands[int(entry.name)] = (entry / "cmdline").read_bytes().decode(errors="replace")
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    kinds: dict[str, list[int]] = {"server (this process)": [os.getpid()], "browser": [], "playwright": []}
    stack = list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        kinds["browser" if "chromium" in commands.get(pid, "") else "playwright"].append(pid)
        stack.extend(children.get(pid, []))
    return kinds


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine spent (all processes, all cores), from /proc/stat."""
    user, nice, system = (int(v) for v in Path("/proc/stat").read_text().split()[1:4])
    return (user + nice + system) / os.sysconf("SC_CLK_TCK")


@contextmanager
def cpu_meter():
    """CPU seconds per kind of process (and the rest of the machine) over the block."""
    kinds = processes()
    before = {kind: sum(cpu_seconds(p) for p in pids) for kind, pids in kinds.items()}
    machine = machine_cpu_seconds()
    spent: dict[str, float] = {}
    yield spent
    for kind, pids in kinds.items():
        total = 0.0
        for pid in pids:
            with suppress(OSError):  # a process that ended meanwhile
                total += cpu_seconds(pid)
        spent[kind] = total - before[kind]
    spent["rest of the machine"] = machine_cpu_seconds() - machine - sum(spent.values())


def plain_demo(classifier: Classifier) -> gr.Blocks:
    """A Live tab as Gradio's streaming guide writes it: numpy frames, the browser's default size."""

    def classify(frame):
        return gr.skip() if frame is None else classifier.predict(Image.fromarray(frame))

    with gr.Blocks() as demo:
        camera = gr.Image(sources=["webcam"], streaming=True, label="Webcam", elem_id="live-camera")
        bars = gr.Label(num_top_classes=5, elem_id="live-bars")
        camera.stream(classify, camera, bars, stream_every=0.1, time_limit=app.LIVE_TIME_LIMIT)
    return demo.queue()


def open_page(browser, url: str):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["camera"], origin=url.rstrip("/"))
    page = context.new_page()
    page.add_init_script(PAGE_PROBE)
    page.goto(url)
    return page


def start_stream(page) -> None:
    camera, tab = page.locator("#live-camera"), page.get_by_role("tab", name="Live")
    camera.or_(tab).first.wait_for(state="attached")  # the app's tabs render their content when shown
    if tab.count():
        tab.click()
    camera.get_by_role("button", name="Click to Access Webcam").click()
    camera.locator('[data-testid="webcam-video"]').wait_for(state="visible")
    page.wait_for_timeout(500)
    camera.locator(".capture-button").click()  # Gradio's Record button
    page.locator("#live-bars .confidence-set").first.wait_for(timeout=60_000)


def reset_log(page) -> None:
    page.evaluate("() => { for (const list of Object.values(window.__live)) list.length = 0; }")


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def first_at_or_after(times: list[float], moment: float) -> float | None:
    index = bisect.bisect_left(times, moment)
    return times[index] if index < len(times) else None


def measure_stream(page, seconds: float, probe: ServerProbe | None) -> dict:
    """One stream for `seconds`: rates, freshness, the time of a frame step by step, CPU per frame."""
    reset_log(page)
    first_server_frame = len(probe.frames) if probe else 0
    with cpu_meter() as cpu:
        start = time.time() * 1000
        page.wait_for_timeout(seconds * 1000)
        end = time.time() * 1000
    log = page.evaluate("window.__live")
    arrivals = sorted(a["at"] for a in log["answers"] if a["answered"])
    answers = [t for t in arrivals if start <= t <= end]
    bar_times = sorted(log["bars"])
    shown = [t for t in (first_at_or_after(bar_times, a) for a in answers) if t is not None]
    captures = [c for c in log["captures"] if start <= c["end"] <= end]
    result = {
        "seconds": seconds,
        "answered_per_s": len(answers) / seconds,
        "bars_updated_per_s": len(set(shown)) / seconds,  # answers followed by a change of the bars
        "captures_per_s": len(captures) / seconds,
        "capture_size": f"{captures[-1]['width']}×{captures[-1]['height']}" if captures else None,
        "capture_bytes": median(c["bytes"] for c in captures),
        "cpu_ms_per_answer": {k: v * 1000 / max(len(answers), 1) for k, v in cpu.items()},
        "cpu_share": {k: v / seconds for k, v in cpu.items()},
    }
    if probe is None:
        return result
    frames = [f for f in probe.frames[first_server_frame:] if f.get("number") is not None]
    by_number = {c["number"]: c for c in log["captures"]}
    post_starts = sorted(p["start"] for p in log["posts"])
    post_end = {p["start"]: p["end"] for p in log["posts"]}

    def sent(capture: dict) -> float | None:
        """When the server had this capture: the end of the first upload that followed it."""
        post = first_at_or_after(post_starts, capture["end"])
        return None if post is None else post_end[post]

    steps: dict[str, list[float]] = {}
    ages, newer_at_display, newer_at_server, dropped = [], [], [], []
    previous = None
    for frame in frames:
        capture = by_number.get(frame["number"])
        arrival = first_at_or_after(arrivals, frame["end"] * 1000)
        if capture is None or arrival is None:
            continue
        bars = first_at_or_after(bar_times, arrival)
        uploaded = sent(capture)
        step = {
            "capture (draw)": capture["draw_ms"],
            "capture (JPEG encode)": capture["encode_ms"],
            "upload (POST round trip)": uploaded
            and uploaded - first_at_or_after(post_starts, capture["end"]),
            "wait for the server": uploaded and frame["start"] * 1000 - uploaded,
            "decode": frame.get("decode_ms"),
            "preprocess": frame.get("preprocess_ms"),
            "forward": frame.get("forward_ms"),
            "top-k": frame.get("postprocess_ms"),
            "delivery to the page": arrival - frame["end"] * 1000,
            "bars update": bars and bars - arrival,
        }
        for name, ms in step.items():
            if ms is not None:
                steps.setdefault(name, []).append(ms)
        display = bars or arrival
        ages.append(display - capture["start"])
        later = [c for c in log["captures"] if c["number"] > frame["number"]]
        newer_at_display.append(sum(1 for c in later if c["end"] <= display))
        newer_at_server.append(sum(1 for c in later if (sent(c) or float("inf")) <= frame["start"] * 1000))
        if previous is not None:
            dropped.append(frame["number"] - previous - 1)
        previous = frame["number"]
    result["step_ms"] = {name: median(values) for name, values in steps.items()}
    third = max(len(ages) // 3, 1)
    result["age_ms"] = {
        "median": median(ages),
        "max": max(ages) if ages else None,
        "first_third_median": median(ages[:third]),  # a backlog would make the last third older
        "last_third_median": median(ages[-third:]),
    }
    result["newer_frames_at_display"] = {
        "median": median(newer_at_display),
        "max": max(newer_at_display) if newer_at_display else None,
    }
    result["newer_frames_waiting_at_the_server"] = {
        "max": max(newer_at_server) if newer_at_server else None,
        "share_0": newer_at_server.count(0) / max(len(newer_at_server), 1),
    }
    result["frames_dropped_between_answers"] = {"mean": statistics.mean(dropped) if dropped else None}
    result["server_answered_per_s"] = len([f for f in frames if start <= f["end"] * 1000 <= end]) / seconds
    return result


def photo_latency(browser, url: str, photos: list[Path]) -> list[float]:
    """Milliseconds from choosing a file in the Photo tab to its five bars on screen, one fresh page each."""
    latencies = []
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    for photo in photos:
        page = context.new_page()
        page.goto(url)
        page.locator("input[type=file]").first.wait_for(state="attached")
        page.evaluate(PHOTO_PROBE)
        page.set_input_files("input[type=file]", photo)
        page.wait_for_function("window.__photo.end", timeout=60_000)
        latencies.append(page.evaluate("window.__photo.end - window.__photo.start"))
        page.close()
    context.close()
    return latencies


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def print_stream(name: str, result: dict) -> None:
    print(
        f"   {name:<42} {result['answered_per_s']:5.1f} answered/s"
        f"   bars updated {result['bars_updated_per_s']:5.1f}/s"
        f"   captures {result['captures_per_s']:5.1f}/s at {result['capture_size']}"
        f" ({(result['capture_bytes'] or 0) / 1000:.0f} kB)"
    )


def stream_once(browser, url: str, seconds: float, warm_up: float, probe: ServerProbe | None) -> dict:
    page = open_page(browser, url)
    start_stream(page)
    page.wait_for_timeout(warm_up * 1000)
    result = measure_stream(page, seconds, probe)
    page.context.close()
    return result


def photo_with_streams(browser, url: str, photo: Path, warm_up: float) -> tuple[float, list[float]]:
    """One photo's latency while two streams run, and the streams' answered frames per second meanwhile."""
    streams = [open_page(browser, url) for _ in range(2)]
    for page in streams:
        start_stream(page)
    streams[0].wait_for_timeout(warm_up * 1000)
    for page in streams:
        reset_log(page)
    begin = time.time() * 1000
    (latency,) = photo_latency(browser, url, [photo])
    elapsed = time.time() * 1000 - begin
    rates = []
    for page in streams:
        answers = page.evaluate("window.__live.answers.filter(a => a.answered).length")
        rates.append(answers / (elapsed / 1000))
        page.context.close()
    return latency, rates


def part_pages(classifier: Classifier) -> dict[str, tuple[gr.Blocks, live.PhotosFirst | None]]:
    """The page as shipped and without each part of "photos first": (page, what its server is told)."""
    from image_classifier.page import live as live_tab

    pages = {}
    for name, pacing, shared, told in (
        ("as shipped", True, live.SHARED_FRAMES_PER_SECOND_PER_SLOT, True),
        ("frames not paced by the page", False, live.SHARED_FRAMES_PER_SECOND_PER_SLOT, True),
        ("no shared frame rate", True, live.FRAMES_PER_SECOND_PER_SLOT, True),
        ("frames give way only while it is classified", True, live.SHARED_FRAMES_PER_SECOND_PER_SLOT, False),
        ("none of the three", False, live.FRAMES_PER_SECOND_PER_SLOT, False),
    ):
        shipped, live_tab.LIVE_PACING = live_tab.LIVE_PACING, live_tab.LIVE_PACING if pacing else ""
        photos_first = live.PhotosFirst(shared_per_slot=shared)
        pages[name] = (app.build_demo(classifier, photos_first=photos_first), photos_first if told else None)
        live_tab.LIVE_PACING = shipped
    return pages


def photos_first_parts(
    browser, classifier: Classifier, photos: list[Path], rounds: int, warm_up: float
) -> dict:
    """Section 5: section 4's photo, idle and beside two streams, on each of `part_pages`, interleaved."""
    print(f"\n5. What each part of photos-first is worth ({rounds} rounds; photo idle / two streams)")
    pages = part_pages(classifier)
    results: dict[str, dict[str, list]] = {name: {"idle_ms": [], "with_two_streams_ms": []} for name in pages}
    with ExitStack() as servers:
        urls = {name: servers.enter_context(serving(demo, told)) for name, (demo, told) in pages.items()}
        for url in urls.values():
            photo_latency(browser, url, photos[:1])  # warm-up
        for round in range(rounds):
            photo = photos[round % len(photos)]
            for name, url in urls.items():
                results[name]["idle_ms"] += photo_latency(browser, url, [photo])
                latency, _ = photo_with_streams(browser, url, photo, warm_up)
                results[name]["with_two_streams_ms"].append(latency)
    for name, figures in results.items():
        idle, busy = median(figures["idle_ms"]), median(figures["with_two_streams_ms"])
        figures["ratio"] = busy / idle
        print(f"   {name:<46} {idle:5.0f} ms / {busy:5.0f} ms   {busy / idle:.2f}×")
    print(f"   (load average {load_average()})")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--seconds", type=float, default=15, help="measured seconds per stream (default 15)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of the three streams, interleaved")
    parser.add_argument("--photos", type=int, default=5, help="photo uploads per condition (default 5)")
    parser.add_argument("--parts", type=int, default=0, help="rounds of section 5 (default 0: not run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where live.json goes")
    args = parser.parse_args()
    seconds, warm_up, uploads, rounds = (
        (3, 1, 1, 1) if args.quick else (args.seconds, 3, args.photos, args.rounds)
    )

    torch.manual_seed(0)
    model = torchvision.models.resnet18() if args.quick else torchvision.models.densenet121()
    classifier = Classifier(model, load_labels(), device="cpu")
    x = torch.randn(1, 3, 224, 224)
    alone: dict[str, list[float]] = {"all cores": [], "one thread": []}
    for round in range(8 if args.quick else 23):
        for name, threads in (("all cores", None), ("one thread", live.FRAME_THREADS)):
            begin = time.perf_counter()
            classifier.forward(x, threads=threads)
            if round >= 3:  # the first ones compile and warm up
                alone[name].append((time.perf_counter() - begin) * 1000)
    results: dict = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average_at_start": load_average()},
        "model": type(model).__name__,
        "engine": classifier.engine,
        "forward_alone_ms": {name: median(samples) for name, samples in alone.items()},
    }
    print(f"{cpu_model()}, {os.cpu_count()} cores, load average {load_average()}")
    print(
        f"{type(model).__name__}, engine {classifier.engine}; forward pass alone, median: "
        + ", ".join(f"{median(samples):.1f} ms on {name}" for name, samples in alone.items())
    )
    photos = [ROOT / "examples" / name for name in ("cat.jpg", "coffee.jpg", "rocket.jpg")]
    variants = {
        "plain": "plain Live tab (stream_every=0.1)",
        "all_cores": "this app's Live tab, forward on all cores",
        "live": "this app's Live tab",
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}

    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, *FAKE_WEBCAM_ARGS)
        probe = ServerProbe(classifier)
        photos_first = live.PhotosFirst()  # as app.py builds and launches the page
        demo = app.build_demo(
            classifier, model_name="DenseNet-121 (random weights)", photos_first=photos_first
        )
        with serving(plain_demo(classifier)) as plain_url, serving(demo, photos_first) as url:
            print(
                f"\n1. One stream, {seconds:g} s each, {rounds} round(s), browser and server on this machine"
            )
            for _ in range(rounds):
                runs["plain"].append(stream_once(browser, plain_url, seconds, warm_up, None))
                frame_threads, live.FRAME_THREADS = live.FRAME_THREADS, None
                runs["all_cores"].append(stream_once(browser, url, seconds, warm_up, None))
                live.FRAME_THREADS = frame_threads
                runs["live"].append(stream_once(browser, url, seconds, warm_up, probe))
                for name, label in variants.items():
                    print_stream(label, runs[name][-1])
                print(f"   (load average {load_average()})")
            for name in variants:
                results[name] = {
                    "answered_per_s": median(r["answered_per_s"] for r in runs[name]),
                    "bars_updated_per_s": median(r["bars_updated_per_s"] for r in runs[name]),
                    "rounds": runs[name],
                }
            if rounds > 1:
                print("   median over the rounds, answered frames per second:")
                for name, label in variants.items():
                    print(f"   {label:<42} {results[name]['answered_per_s']:5.1f}")
            stream = min(
                runs["live"], key=lambda r: abs(r["answered_per_s"] - results["live"]["answered_per_s"])
            )
            all_cores = min(
                runs["all_cores"],
                key=lambda r: abs(r["answered_per_s"] - results["all_cores"]["answered_per_s"]),
            )

            print("\n2. Where an answered frame's time goes (median ms; the round closest to the median)")
            for name, ms in stream["step_ms"].items():
                print(f"   {name:<26} {ms:7.1f}" if ms is not None else f"   {name:<26}       -")
            print(
                "   CPU per answered frame (ms), share of one core (and CPU per frame, forward on all cores):"
            )
            for kind, ms in stream["cpu_ms_per_answer"].items():
                share = stream["cpu_share"][kind]
                print(
                    f"     {kind:<24} {ms:7.1f}   {share:5.2f}   ({all_cores['cpu_ms_per_answer'][kind]:.1f})"
                )
            ours = {k: v for k, v in stream["cpu_ms_per_answer"].items() if k != "rest of the machine"}
            ceiling = (os.cpu_count() or 1) * 1000 / sum(ours.values())
            results["cpu_ceiling_per_s"] = ceiling
            print(
                f"   so with the {os.cpu_count()} cores to themselves, these processes could answer at most"
                f" {ceiling:.0f} frames/s (CPU time alone; a shared machine inflates it)"
            )

            print("\n3. Freshness: frames are dropped, never queued")
            age, newer = stream["age_ms"], stream["newer_frames_at_display"]
            waiting = stream["newer_frames_waiting_at_the_server"]
            dropped = stream["frames_dropped_between_answers"]["mean"]
            print(
                f"   when the server starts on a frame, newer frames already there: none for"
                f" {waiting['share_0']:.0%} of frames, at most {waiting['max']}"
            )
            print(f"   frames dropped between two answered ones: {dropped:.1f} on average")
            print(
                f"   age from capture to bars shown: median {age['median']:.0f} ms, max {age['max']:.0f} ms"
            )
            print(
                f"   median age in the first third of the run {age['first_third_median']:.0f} ms, in the last"
                f" {age['last_third_median']:.0f} ms (a backlog would make the last third older)"
            )
            print(f"   newer frames captured by then: median {newer['median']:.0f}, max {newer['max']}")

            print("\n4. Another user's photo (Photo tab): choosing the file -> five bars on screen")
            print("   (idle and with two streams running, alternately)")
            photo_latency(browser, url, photos[:1])  # warm-up
            idle, busy, rates = [], [], []
            for photo in (photos * uploads)[:uploads]:
                idle += photo_latency(browser, url, [photo])
                latency, stream_rates = photo_with_streams(browser, url, photo, warm_up)
                busy.append(latency)
                rates += stream_rates
        results["photo"] = {
            "idle_ms": idle,
            "with_two_streams_ms": busy,
            "ratio": median(busy) / median(idle),
            "stream_answered_per_s": rates,
        }
        for name, samples in (("idle", idle), ("two streams running", busy)):
            each = ", ".join(f"{v:.0f}" for v in samples)
            print(f"   {name + ':':<21}{median(samples):6.0f} ms (median of {len(samples)}: {each})")
        print(
            f"   ratio {results['photo']['ratio']:.2f}× (target ≤ 1.5×); meanwhile each stream answered "
            f"{median(rates):.1f} frames/s (median)"
        )
        if args.parts:
            results["parts"] = photos_first_parts(browser, classifier, photos, args.parts, warm_up)
        browser.close()

    results["machine"]["load_average_at_end"] = load_average()
    print(f"\nload average at the end: {load_average()}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "live.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out / 'live.json'}")


if __name__ == "__main__":
    main()
