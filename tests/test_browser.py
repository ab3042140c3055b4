"""The demo in a real browser (Debian's Chromium driven by Playwright), checked as a person sees it.

The app runs on 127.0.0.1 with the real EfficientNet-Lite0 model, so the predictions are real.
If Chromium is missing these tests fail loudly: .ci/run installs it.
"""

import base64
import os
import re
import time

import pytest
from playwright.sync_api import expect, sync_playwright

from browser import CHROMIUM, FAKE_WEBCAM_ARGS, launch_chromium, shown_predictions
from conftest import EXAMPLES, EXPECTED, ROOT
from hostile import corpus
from servers import free_port

DROP_ZONE = '[aria-label="Drop an image file here to upload"]'
BARS = '[data-testid="label"] .confidence-set'
TOAST = ".toast-body"
HEATMAP = 'img[alt^="Where the model looked for"]'
CAPTION = "#heatmap-caption"
AXE = ROOT / "tests" / "node_modules" / "axe-core" / "axe.min.js"
WCAG_21_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM) and not os.environ.get("CI"):
        pytest.skip(
            f"no Chromium at {CHROMIUM}: apt-get install -y chromium (CI installs it and fails without)"
        )
    with sync_playwright() as playwright:
        browser = launch_chromium(playwright, *FAKE_WEBCAM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.grant_permissions(["clipboard-read", "clipboard-write", "camera"], origin=server.rstrip("/"))
    page = context.new_page()
    page.goto(server)
    page.locator(DROP_ZONE).wait_for()
    yield page
    context.close()


def read_chart(page) -> list[tuple[str, float]]:
    """The bars, once they are there: a photo is classified as soon as it lands, with no click."""
    page.locator(BARS).nth(4).wait_for(timeout=30_000)
    expect(page.locator(".pending")).to_have_count(0, timeout=30_000)
    return shown_predictions(page)


def assert_chart(predictions, expected_top=None):
    labels = [label for label, _ in predictions]
    percentages = [percentage for _, percentage in predictions]
    assert len(predictions) == 5 and len(set(labels)) == 5
    assert percentages == sorted(percentages, reverse=True) and percentages[0] > 0
    if expected_top:
        assert labels[0] in expected_top, predictions


def test_upload_through_the_file_chooser(page):
    with page.expect_file_chooser() as chooser:
        page.locator(DROP_ZONE).click()
    chooser.value.set_files(EXAMPLES / "cat.jpg")
    assert_chart(read_chart(page), EXPECTED["cat.jpg"])


def test_drag_and_drop_a_file_onto_the_image_area(page):
    data = base64.b64encode((EXAMPLES / "coffee.jpg").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "coffee.jpg", {type: "image/jpeg"}));
            return transfer;
        }""",
        data,
    )
    zone = page.locator(DROP_ZONE)
    for event in ("dragenter", "dragover", "drop"):
        zone.dispatch_event(event, {"dataTransfer": transfer})
    assert_chart(read_chart(page), EXPECTED["coffee.jpg"])


def test_paste_from_the_clipboard(page):
    data = base64.b64encode((EXAMPLES / "rocket.jpg").read_bytes()).decode()
    page.evaluate(
        """async data => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const bitmap = await createImageBitmap(new Blob([bytes], {type: "image/jpeg"}));
            const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
            canvas.getContext("2d").drawImage(bitmap, 0, 0);
            const png = await canvas.convertToBlob({type: "image/png"});  // what a copied image is
            await navigator.clipboard.write([new ClipboardItem({"image/png": png})]);
        }""",
        data,
    )
    page.get_by_role("button", name="Paste from clipboard").click()
    assert_chart(read_chart(page), EXPECTED["rocket.jpg"])


def test_click_an_example(page):
    page.get_by_role("button", name="Coffee").click()
    assert_chart(read_chart(page), EXPECTED["coffee.jpg"])


def test_webcam_capture_gets_five_bars(page):
    """Chromium's fake camera shows a test pattern: the chart must appear, whatever it says."""
    page.get_by_role("button", name="Capture from camera").click()
    page.get_by_text("Click to Access Webcam").click()
    expect(page.locator('[data-testid="webcam-video"]')).to_be_visible(timeout=20_000)
    page.wait_for_timeout(1000)  # let the fake stream produce frames
    page.get_by_role("button", name="capture photo").click()
    expect(page.locator('[data-testid="image"] img:not(.hide)').first).to_be_visible(timeout=20_000)
    assert_chart(read_chart(page))


def test_non_image_upload_shows_a_friendly_error_and_the_next_upload_works(page, tmp_path):
    fake = tmp_path / "holiday.jpg"
    fake.write_text("this is not a photo")
    page.set_input_files("input[type=file]", fake)
    toast = page.locator(TOAST).first
    expect(toast).to_contain_text("This file is not an image we can read (PNG, JPEG, WebP, GIF, BMP, TIFF).")
    assert "Traceback" not in toast.inner_text() and "upstream" not in toast.inner_text()
    page.get_by_role("button", name="Clear", exact=True).first.click()
    page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")
    assert_chart(read_chart(page), EXPECTED["cat.jpg"])


@pytest.mark.parametrize("case", [c for c in corpus() if c.error], ids=lambda case: case.name)
def test_hostile_uploads_show_their_error_on_the_page(page, case, tmp_path):
    path = tmp_path / case.name
    path.write_bytes(case.data)
    page.set_input_files("input[type=file]", path)
    expect(page.locator(TOAST).first).to_contain_text(case.error, timeout=30_000)


def test_phone_viewport_is_usable_without_horizontal_scrolling(browser, server):
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    page = context.new_page()
    page.goto(server)
    page.locator(DROP_ZONE).wait_for()
    page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")
    assert_chart(read_chart(page), EXPECTED["cat.jpg"])
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    for locator in (
        page.locator('[data-testid="image"]').first,
        page.locator('[data-testid="label"]'),
        page.locator(HEATMAP),
    ):
        box = locator.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
    context.close()


# --- heatmaps ---------------------------------------------------------------------------------------


def shown_heatmap(page) -> tuple[str, bytes]:
    """The heatmap picture as a person gets it: its text alternative and its pixels (the served file)."""
    picture = page.locator(HEATMAP)
    expect(picture).to_be_visible(timeout=30_000)
    return picture.get_attribute("alt"), page.request.get(picture.get_attribute("src")).body()


def test_a_photo_shows_bars_and_the_top_class_heatmap_without_a_click(page):
    page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")
    predictions = read_chart(page)
    assert_chart(predictions, EXPECTED["cat.jpg"])
    top = predictions[0][0]
    expect(page.locator(HEATMAP)).to_have_attribute("alt", f"Where the model looked for “{top}”")
    expect(page.locator(CAPTION)).to_contain_text(f"Where the model looked for “{top}”")


def test_clicking_a_bar_switches_the_heatmap_to_that_class(page):
    page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")
    predictions = read_chart(page)
    first_alt, first_pixels = shown_heatmap(page)
    second = predictions[1][0]
    page.locator(BARS).nth(1).click()
    expect(page.locator(CAPTION)).to_contain_text(f"Where the model looked for “{second}”")
    expect(page.locator(HEATMAP)).to_have_attribute("alt", f"Where the model looked for “{second}”")
    second_alt, second_pixels = shown_heatmap(page)
    assert second_alt != first_alt and second_pixels != first_pixels


def test_keyboard_alone_chooses_a_photo_and_switches_the_heatmap(page):
    page.locator(DROP_ZONE).focus()
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(EXAMPLES / "coffee.jpg")
    predictions = read_chart(page)
    page.locator(BARS).nth(2).focus()
    page.keyboard.press("Enter")
    expect(page.locator(CAPTION)).to_contain_text(f"Where the model looked for “{predictions[2][0]}”")


def test_clear_resets_the_bars_and_the_heatmap(page):
    page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")
    read_chart(page)
    expect(page.locator(HEATMAP)).to_be_visible(timeout=30_000)
    page.get_by_role("button", name="Clear", exact=True).first.click()
    expect(page.locator(BARS)).to_have_count(0, timeout=30_000)
    expect(page.locator(HEATMAP)).to_have_count(0)
    expect(page.locator(CAPTION)).to_have_text("")


def accessibility_violations(page) -> list[str]:
    """axe-core's WCAG 2.1 A/AA violations on the page as it is now, one line each."""
    page.add_script_tag(path=str(AXE))
    violations = page.evaluate(
        """async tags => (await axe.run(document, {runOnly: {type: "tag", values: tags}})).violations
            .map(v => `${v.id}: ${v.help} (${v.nodes.map(n => n.target.join(" ")).join(", ")})`)""",
        WCAG_21_AA,
    )
    return violations


def test_every_tab_passes_axe_wcag_21_aa_after_a_photo_is_classified(page):
    if not AXE.exists():
        if os.environ.get("CI"):
            pytest.fail(f"axe-core is missing at {AXE}: npm ci --prefix tests")
        pytest.skip(f"axe-core is missing at {AXE}: npm ci --prefix tests")
    page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")
    read_chart(page)
    expect(page.locator(HEATMAP)).to_be_visible(timeout=30_000)
    tabs = page.get_by_role("tab")
    names = tabs.all_inner_texts()
    assert names and names[0] == "Photo"
    for index, name in enumerate(names):
        tabs.nth(index).click()
        page.wait_for_timeout(300)
        assert accessibility_violations(page) == [], name


# --- many photos ------------------------------------------------------------------------------------


def test_many_photos_tab_gives_a_row_per_file_and_a_csv(page, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a photo")
    photos = [EXAMPLES / "cat.jpg", EXAMPLES / "coffee.jpg", EXAMPLES / "rocket.jpg", bad]
    page.get_by_role("tab", name="Many photos").click()
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Choose photos").click()
    chooser.value.set_files(photos)  # classified as soon as they are chosen
    rows = page.locator('.virtual-body [role="row"]')  # Gradio 6's table: a virtual body of ARIA rows
    expect(rows).to_have_count(4, timeout=60_000)
    cells = {row[0]: row for row in (rows.nth(i).get_by_role("gridcell").all_inner_texts() for i in range(4))}
    for name, expected in (
        ("cat.jpg", "cat.jpg"),
        ("coffee.jpg", "coffee.jpg"),
        ("rocket.jpg", "rocket.jpg"),
    ):
        assert cells[name][1] in EXPECTED[expected] and cells[name][4].strip() == ""
    assert "This file is not an image we can read" in cells["notes.jpg"][4]
    with page.expect_download() as download:
        page.get_by_role("button", name="Download CSV").click()
    lines = download.value.path().read_text().splitlines()
    assert lines[0].startswith("image,label_1,probability_1") and len(lines) == 5


# --- live -------------------------------------------------------------------------------------------

LIVE_CAMERA = "#live-camera"
LIVE_BARS = "#live-bars .confidence-set"
LIVE_READOUT = "#live-readout"


def allow_webcam(page) -> None:
    camera = page.locator(LIVE_CAMERA)
    camera.get_by_role("button", name="Click to Access Webcam").click()
    expect(camera.locator('[data-testid="webcam-video"]')).to_be_visible(timeout=20_000)
    page.wait_for_timeout(500)  # let the fake camera produce frames


def record_button(page):
    """The streaming webcam's Record/Stop button: one button whose name says what it does now."""
    return page.locator(LIVE_CAMERA).get_by_role("button", name=re.compile("^(Record|Stop)$"))


def answered_frames(page) -> int:
    """The readout's count of frames answered: '14.8 frames per second · ... · 312 frames answered'."""
    readout = page.locator(LIVE_READOUT)
    expect(readout).to_contain_text("frames answered", timeout=60_000)
    return int(re.search(r"(\d+) frames answered", readout.inner_text())[1])


def frames_per_second(page, seconds: float = 3.0) -> float:
    """Answered frames per second as the page shows them, counted over `seconds`."""
    before, start = answered_frames(page), time.monotonic()
    page.wait_for_timeout(seconds * 1000)
    return (answered_frames(page) - before) / (time.monotonic() - start)


def test_live_tab_follows_the_webcam_stops_and_starts_again_while_photos_still_work(browser, page, server):
    page.get_by_role("tab", name="Live").click()
    allow_webcam(page)
    record_button(page).click()
    expect(page.locator(LIVE_BARS)).to_have_count(5, timeout=60_000)
    expect(record_button(page)).to_have_accessible_name("Stop")
    expect(page.locator(LIVE_READOUT)).to_contain_text("frames per second")
    expect(page.locator(LIVE_READOUT)).to_contain_text("ms per frame")
    assert frames_per_second(page) > 1

    other = browser.new_context(viewport={"width": 1200, "height": 900})  # another user, meanwhile
    photo_page = other.new_page()
    photo_page.goto(server)
    photo_page.set_input_files("input[type=file]", EXAMPLES / "cat.jpg")
    assert_chart(read_chart(photo_page), EXPECTED["cat.jpg"])
    other.close()
    assert accessibility_violations(page) == []  # while streaming

    record_button(page).click()  # Stop
    expect(record_button(page)).to_have_accessible_name("Record", timeout=10_000)
    page.wait_for_timeout(1000)  # a frame in flight may still be answered
    stopped = answered_frames(page)
    page.wait_for_timeout(1500)
    assert answered_frames(page) == stopped

    record_button(page).click()  # and again
    expect(record_button(page)).to_have_accessible_name("Stop", timeout=30_000)
    page.wait_for_timeout(1500)
    assert frames_per_second(page) > 1


def test_keyboard_alone_starts_and_stops_the_live_stream(page):
    def tab_to(description: str, is_it: str) -> None:
        for _ in range(30):
            page.keyboard.press("Tab")
            if page.evaluate(f"(e => !!e && ({is_it}))(document.activeElement)"):
                return
        raise AssertionError(f"Tab never reached {description}")

    tab_to("the Live tab", "e.getAttribute('role') === 'tab' && e.textContent.trim() === 'Live'")
    page.keyboard.press("Enter")
    expect(page.locator(LIVE_CAMERA)).to_be_visible()
    tab_to("the webcam button", "e.textContent.includes('Click to Access Webcam')")
    page.keyboard.press("Enter")
    expect(page.locator(LIVE_CAMERA).locator('[data-testid="webcam-video"]')).to_be_visible(timeout=20_000)
    page.wait_for_timeout(500)
    tab_to("Record", "e.getAttribute('aria-label') === 'Record'")
    page.keyboard.press("Enter")
    expect(page.locator(LIVE_BARS)).to_have_count(5, timeout=60_000)
    expect(record_button(page)).to_have_accessible_name("Stop")
    page.keyboard.press("Enter")  # the same button stops it
    expect(record_button(page)).to_have_accessible_name("Record", timeout=10_000)


def test_streams_beyond_max_streams_wait_and_take_turns_after_the_time_limit(browser, oracle):
    import app

    demo = app.build_demo(oracle, live_time_limit=6, max_streams=1)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    url = f"http://127.0.0.1:{port}/"
    pages = []
    try:
        for _ in range(2):
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            context.grant_permissions(["camera"], origin=url.rstrip("/"))
            page = context.new_page()
            page.goto(url)
            page.get_by_role("tab", name="Live").click()
            allow_webcam(page)
            pages.append(page)
        first, second = pages
        record_button(first).click()
        expect(first.locator(LIVE_BARS)).to_have_count(5, timeout=60_000)
        record_button(second).click()
        waiting = second.locator(LIVE_CAMERA).get_by_role("button", name="Waiting")
        expect(waiting).to_be_visible()  # one stream at a time: the second waits
        expect(second.locator(LIVE_BARS)).to_have_count(5, timeout=30_000)  # its turn, after the first's 6 s
        expect(first.locator(LIVE_CAMERA).get_by_role("button", name="Waiting")).to_be_visible(timeout=10_000)
    finally:
        for page in pages:
            page.context.close()
        demo.close()
