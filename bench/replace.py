"""A photo replacing another on the Photo tab: chosen -> bars and -> heatmap, and the forward passes it
costs, the page as shipped against the page without its repeat guard, side by side in one run.

    python bench/replace.py            # about 2 minutes on 2 cores
    python bench/replace.py --quick    # one round each (the test suite uses it)

Gradio 6.31's image input sends "change" twice when a photo replaces another (image_classifier/page/
repeats.py); without the guard both requests run the model. Two copies of the page, built in this process
around the EfficientNet-Lite0 oracle, on 127.0.0.1: as shipped, and with `Repeats` swapped for a guard
that lets every request run (the page before the guard). Debian's Chromium (tests/browser.py), in a fresh
context per round, rounds alternating the order: the cat example is chosen and its heatmap awaited, then
the coffee photo at the 1008×756 the browser uploads for a 12 MP phone photo; timed from that choice to
its five bars and to its heatmap picture, with the model runs the server counted meanwhile. Medians (the
first round is a warm-up). Writes OUT/replace.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from playwright.sync_api import sync_playwright  # noqa: E402
from upload import DROP_ZONE  # noqa: E402

import app  # noqa: E402
import classifier  # noqa: E402
import image_classifier.page.answers as answers  # noqa: E402
import image_classifier.page.photo as photo_tab  # noqa: E402
from browser import launch_chromium  # noqa: E402
from conftest import EXAMPLES  # noqa: E402
from oracle import load_oracle  # noqa: E402
from photos import real_photo, upscaled  # noqa: E402
from servers import serving  # noqa: E402

HEATMAP = 'img[alt^="Where the model looked for"]'
HEATMAP_SHOWN = f"""() => !!document.querySelector('{HEATMAP}') && performance.now()"""
NEW_BARS_SHOWN = """before => {
    const top = document.querySelector('[data-testid="label"] dt');
    const bars = document.querySelectorAll('[data-testid="label"] .confidence-set').length;
    return !!top && top.textContent !== before && !document.querySelector('.pending') && bars >= 5
        && performance.now();
}"""


class EveryRequestRuns:
    """The page without its guard: each "change" runs the model, the twin too."""

    def run(self, session, inputs, work, twin):
        return work()


def pages(models: classifier.ModelSet) -> dict:
    """The Photo tab as shipped, and as it was before the guard."""
    shipped = app.build_demo(models)
    guard = photo_tab.Repeats
    photo_tab.Repeats = EveryRequestRuns
    try:
        before = app.build_demo(models)
    finally:
        photo_tab.Repeats = guard
    return {"as shipped": shipped, "without the guard": before}


def one_round(browser, url: str, first: Path, second: Path, runs: list) -> dict:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    try:
        page = context.new_page()
        page.goto(url)
        page.locator(DROP_ZONE).first.wait_for()
        page.wait_for_timeout(500)
        page.set_input_files('input[type="file"]', first)
        page.wait_for_function(HEATMAP_SHOWN, polling=5, timeout=60_000)
        before = page.locator('[data-testid="label"] dt').first.text_content()
        page.locator(HEATMAP).evaluate("picture => picture.alt = 'the first photo'")  # the next one's, below
        page.wait_for_timeout(300)
        counted = len(runs)
        chosen = page.evaluate("performance.now()")
        page.set_input_files('input[type="file"]', second)
        bars = page.wait_for_function(NEW_BARS_SHOWN, arg=before, polling=5, timeout=60_000).json_value()
        heatmap = page.wait_for_function(HEATMAP_SHOWN, polling=5, timeout=60_000).json_value()
        page.wait_for_timeout(1500)  # a twin, if it runs, has run
        return {
            "bars_ms": bars - chosen,
            "heatmap_ms": heatmap - chosen,
            "forward_passes": len(runs) - counted,
        }
    finally:
        context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="rounds per page, the first a warm-up")
    parser.add_argument("--quick", action="store_true", help="a warm-up and one round each")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rounds = 2 if args.quick else args.rounds
    oracle = load_oracle()
    models = classifier.ModelSet(
        {"EfficientNet-Lite0": lambda: oracle}, memory_mb_of=lambda model: model.memory_mb
    )
    runs: list = []
    analyse = answers.analyse
    answers.analyse = lambda model, image, *rest: runs.append(image) or analyse(model, image, *rest)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-replace-") as tmp:
        second = Path(tmp) / "IMG_0002.jpg"  # a 12 MP phone photo as the browser uploads it: 1008×756
        upscaled(real_photo("coffee"), (1008, 756)).save(second, quality=93)
        built = pages(models)
        with serving(built["as shipped"]) as shipped, serving(built["without the guard"]) as before:
            urls = {"as shipped": shipped, "without the guard": before}
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                for round_ in range(rounds):
                    for name in list(urls) if round_ % 2 == 0 else list(reversed(urls)):
                        row = one_round(browser, urls[name], EXAMPLES / "cat.jpg", second, runs)
                        if round_:
                            results.setdefault(name, []).append(row)
                browser.close()
    print("A photo replacing another: chosen -> bars, -> heatmap (medians, ms), forward passes per photo")
    for name, rows in results.items():
        bars, heatmap = (statistics.median(row[key] for row in rows) for key in ("bars_ms", "heatmap_ms"))
        passes = sorted({row["forward_passes"] for row in rows})
        print(
            f"  {name:<18} bars {bars:5.0f}  heatmap {heatmap:5.0f}  forward passes {passes}"
            f"  ({len(rows)} rounds)"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "replace.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out / 'replace.json'}")


if __name__ == "__main__":
    main()
