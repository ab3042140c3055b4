"""Debian's Chromium driven by Playwright (never `playwright install`: it downloads a browser)."""

from __future__ import annotations

import os

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
FAKE_WEBCAM_ARGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]


def launch_chromium(playwright, *extra_args: str):
    if not os.path.exists(CHROMIUM):
        raise RuntimeError(f"Chromium not found at {CHROMIUM}: apt-get install -y chromium")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS + list(extra_args))


def shown_predictions(page) -> list[tuple[str, float]]:
    """The bar chart as a person reads it: (label, percentage) for each bar, top to bottom."""
    bars = page.locator('[data-testid="label"] .confidence-set')
    labels = bars.locator("dt").all_inner_texts()
    percentages = [float(text.rstrip("%")) for text in bars.locator("dd").all_inner_texts()]
    return list(zip(labels, percentages, strict=True))
