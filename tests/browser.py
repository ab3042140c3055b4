"""Debian's Chromium driven by Playwright (never `playwright install`: it downloads a browser)."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import axe_playwright_python

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
AXE = Path(axe_playwright_python.__file__).with_name("axe.min.js")
"""axe-core, as the axe-playwright-python wheel ships it (a test requirement: nothing to install from npm)."""
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


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


_SHRINK = """async data => {
    const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
    const file = await window.imageClassifierUploads.shrink(new File([bytes], "photo.jpg"));
    const sent = new Uint8Array(await file.arrayBuffer());
    let text = "";
    for (let i = 0; i < sent.length; i += 8192) text += String.fromCharCode(...sent.subarray(i, i + 8192));
    return btoa(text);
}"""


def sent_by_page(page, photo: bytes) -> bytes:
    """The bytes the page uploads for `photo`: what image_classifier/shrink_uploads.js makes of it (shrunk,
    upright, re-encoded without metadata), so what the server classifies."""
    return base64.b64decode(page.evaluate(_SHRINK, base64.b64encode(photo).decode()))


def accessibility_violations(page) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is once its animations have ended, one line each;
    with the one rule axe keeps experimental (label-content-name-mismatch: a control's name contains its
    visible text)."""
    page.add_script_tag(path=str(AXE))
    return page.evaluate(
        """async tags => {
            // Once what is about to stop has stopped (a list that opens flies in for 200 ms): axe reads
            // colours as they are drawn at that moment. Long and endless ones (a stream's time bar, a
            // toast's countdown, a progress bar) are left running; a second at most.
            const ending = document.getAnimations().filter(a => {
                const timing = a.effect?.getComputedTiming();
                const left = timing && timing.endTime - (timing.localTime ?? 0);
                return a.playState === "running" && left <= 1000;
            });
            const aSecond = new Promise(resolve => setTimeout(resolve, 1000));
            await Promise.race([Promise.all(ending.map(a => a.finished.catch(() => null))), aSecond]);
            return (await axe.run(document, {
                runOnly: {type: "tag", values: tags},
                rules: {"label-content-name-mismatch": {enabled: true}},  // WCAG 2.5.3, off by default
            })).violations
            .map(v => `${v.id}: ${v.help} (${v.nodes.map(n =>
                [n.target.join(" "), ...n.any.map(check => check.message)].join(": ")).join(", ")})`);
        }""",
        WCAG_21_AA,
    )


def camera_streaming(page, scope=None) -> None:
    """Wait until the webcam's video shows, and Chromium's fake camera has produced frames into it."""
    video = (scope or page).locator('[data-testid="webcam-video"]')
    video.wait_for(state="visible", timeout=20_000)
    streaming = "video => video.readyState >= 2 && video.currentTime > 0"
    page.wait_for_function(streaming, arg=video.element_handle(), timeout=20_000)
