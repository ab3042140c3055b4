"""A thousand visitors, each opening the page, classifying one photo and leaving: does the memory come
back once they have gone?

    python bench/sessions.py                 # 1,000 visitors, 8 at a time (a few minutes here)
    python bench/sessions.py --quick         # 40 visitors: checks the script works

The server is tests/serve.py (the app with the EfficientNet-Lite0 oracle) in its own process on 127.0.0.1,
with its sessions forgotten 20 s after their tab closes (`--sessions IDLE CLOSED`; the app's: 120 s) and its
upload cache cleaned every 5 s of files older than 20 s (the app's: an hour). Each visitor speaks Gradio's
protocol as the page does (tests/queue_protocol.py): it keeps the session's heartbeat stream open, uploads a
photo of 1024×768 (what the page uploads after shrinking), runs the Photo tab's own event (bars, heatmap, the
session's state), checks the answer, and closes its heartbeat, as a closed tab does.

Prints the server's RSS before (after a warm-up), at its peak, and once the visitors' sessions may have gone,
and how long it took to come back within 5 % of where it started (target: within the time the closed sessions
are allowed to live, plus one sweep).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402

from conftest import EXAMPLES, EXPECTED  # noqa: E402
from queue_protocol import QueueSession  # noqa: E402
from servers import process_figures, serve_oracle  # noqa: E402
from soak import settled_figures, with_comment  # noqa: E402

WITHIN_PERCENT = 5
PHOTO_SIDE = 1024


def photos(scratch: Path) -> list[tuple[Path, set[str]]]:
    """The example photos at the size the page uploads, each with the labels that are right for it."""
    chosen = []
    for path in sorted(EXAMPLES.glob("*.jpg")):
        image = Image.open(path).convert("RGB")
        scale = PHOTO_SIDE / max(image.size)
        stream = io.BytesIO()
        image.resize((round(image.width * scale), round(image.height * scale))).save(
            stream, "JPEG", quality=90
        )
        chosen.append((stream.getvalue(), EXPECTED[path.name]))
    return chosen


def visit(url: str, number: int, photo: bytes, expected: set[str], scratch: Path) -> str:
    """One visitor: arrive, classify a photo on the Photo tab, leave. Returns "ok" or what went wrong."""
    visitor = QueueSession(url, timeout=120)
    path = scratch / f"visitor-{number}.jpg"
    path.write_bytes(with_comment(photo, f"visitor {number}"))  # each visitor's own file
    try:
        with visitor.tab_open():  # the heartbeat, open from the start to the end of the visit
            status, answer = visitor.join("/show_photo", [visitor.upload(path), None, None])
            if status != 200:
                return f"join: {status} {answer}"
            visitor.listen()
            result = visitor.result()
        if not result.get("success"):
            return f"failed: {json.dumps(result)[:200]}"
        label = result["output"]["data"][0]["label"]
        return "ok" if label in expected else f"wrong answer: {label}"
    except Exception as e:  # counted, not raised: the figures say how many
        return f"{type(e).__name__}: {e}"
    finally:
        path.unlink(missing_ok=True)


def visitors(url: str, count: int, at_once: int, scratch: Path, start: int = 0) -> list[str]:
    chosen = photos(scratch)
    with ThreadPoolExecutor(at_once) as pool:
        return list(
            pool.map(lambda n: visit(url, n, *chosen[n % len(chosen)], scratch), range(start, start + count))
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=1000)
    parser.add_argument("--at-once", type=int, default=8)
    parser.add_argument("--closed", type=int, default=20, help="seconds a closed tab's session is kept")
    parser.add_argument(
        "--keep", action="store_true", help="sessions never forgotten (as Gradio alone does), for comparison"
    )
    parser.add_argument("--quick", action="store_true", help="40 visitors after 10, closed tabs kept 4 s")
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where sessions.json goes")
    args = parser.parse_args()
    count, warmup = (40, 10) if args.quick else (args.visitors, 50)
    if args.quick:
        args.closed = 4
    sweep = min(10.0, args.closed / 4)
    allowed = args.closed + sweep + 5  # a closed tab is noticed at once; the sweep runs every `sweep` s
    with tempfile.TemporaryDirectory(prefix="bench-sessions-") as folder:
        work = Path(folder)
        (work / "server").mkdir()
        kept = "1e9" if args.keep else str(args.closed)
        options = ("--delete-cache", "5", "20", "--sessions", "1e9" if args.keep else "3600", kept)
        with serve_oracle(work / "server", *options) as served:
            print(
                f"sessions: {warmup} visitors to warm up, then {count}, {args.at_once} at a time", flush=True
            )
            warm_outcomes = visitors(served.url, warmup, args.at_once, work)
            time.sleep(allowed)  # the warm-up's sessions are gone too
            before = settled_figures(served.pid)
            peak, stop = [before["rss_mb"]], threading.Event()

            def watch() -> None:
                while not stop.wait(0.5):
                    peak.append(process_figures(served.pid)["rss_mb"])

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            started = time.monotonic()
            outcomes = visitors(served.url, count, args.at_once, work, start=warmup)
            elapsed = time.monotonic() - started
            left = time.monotonic()
            back_after = None
            while time.monotonic() - left < allowed + 60:
                rss = process_figures(served.pid)["rss_mb"]
                if back_after is None and rss <= before["rss_mb"] * (1 + WITHIN_PERCENT / 100):
                    back_after = time.monotonic() - left
                if time.monotonic() - left >= allowed and back_after is not None:
                    break
                time.sleep(0.5)
            stop.set()
            watcher.join()
            after = settled_figures(served.pid)
    problems = [o for o in warm_outcomes + outcomes if o != "ok"]
    report = {
        "visitors": count,
        "at_once": args.at_once,
        "seconds": round(elapsed, 1),
        "closed_session_kept_s": args.closed,
        "allowed_s": allowed,
        "ok": outcomes.count("ok"),
        "problems": problems[:10],
        "rss_mb_before": round(before["rss_mb"]),
        "rss_mb_peak": round(max(peak)),
        "rss_mb_after": round(after["rss_mb"]),
        "back_within_percent_after_s": None if back_after is None else round(back_after, 1),
        "open_fds": [before["open_fds"], after["open_fds"]],
        "threads": [before["threads"], after["threads"]],
    }
    report["met"] = not problems and back_after is not None and back_after <= allowed
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sessions.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"visitors:  {count} in {elapsed:.0f} s, {args.at_once} at a time; ok {report['ok']}, "
        f"problems {len(problems)} {problems[:3]}\n"
        f"RSS:       {report['rss_mb_before']} MB before -> peak {report['rss_mb_peak']} MB -> "
        f"{report['rss_mb_after']} MB after ({100 * (after['rss_mb'] / before['rss_mb'] - 1):+.1f} %); "
        f"within {WITHIN_PERCENT} % of the start {back_after if back_after is None else round(back_after)} s "
        f"after the last visitor left (allowed: {allowed:.0f} s)\n"
        f"open files {report['open_fds']}, threads {report['threads']}"
    )
    print(
        f"{'met   ' if report['met'] else 'MISSED'}  memory back within {WITHIN_PERCENT} % in {allowed:.0f} s"
    )
    return 0 if args.quick or report["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
