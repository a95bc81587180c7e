"""The upload page in a real headless Chromium against a real uvicorn server: pick a file, choose the
teacher, submit, and the overlay appears at the uploaded image's size with the latency shown; in
compare mode both models' overlays appear side by side with their agreement."""

import os
from pathlib import Path

import pytest
from serving_testkit import (
    ClampingLoader,
    FakeLoader,
    banded_image,
    image_bytes,
    make_settings,
    random_image,
    running_server,
)

from serving.app import create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing (apt-get install chromium); playwright never downloads one"
)


def test_upload_page_shows_the_overlay_and_latency(tmp_path):
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    upload = tmp_path / "street.png"
    upload.write_bytes(image_bytes(random_image(70, 110, seed=11)))
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("just text")
    app = create_app(make_settings(tmp_path), loader=FakeLoader())
    with running_server(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{url}/", wait_until="load")
            page.wait_for_function("document.querySelectorAll('#model option').length === 2")
            assert page.locator("#model").input_value() == "student"
            page.select_option("#model", "teacher")
            page.set_input_files("#file", str(upload))
            page.click("#submit")
            page.wait_for_function(
                "() => { const img = document.getElementById('overlay');"
                " return !img.hidden && img.complete && img.naturalWidth > 0; }",
                timeout=20_000,
            )
            size = page.evaluate("[overlay.naturalWidth, overlay.naturalHeight]")
            latency = page.locator("#latency").inner_text()
            status = page.locator("#status").inner_text()
            page.set_input_files("#file", str(not_an_image))  # errors are shown, not swallowed
            page.click("#submit")
            page.wait_for_function("document.getElementById('status').className === 'error'", timeout=20_000)
            error = page.locator("#status").inner_text()
        finally:
            browser.close()
    assert size == [110, 70]
    assert latency.startswith("teacher on onnxruntime: inference ") and "round trip" in latency, latency
    assert status == "Done: street.png"
    assert error.startswith("Error 415: the body is not a PNG or JPEG image"), error


def test_compare_mode_shows_both_overlays_and_their_agreement(tmp_path):
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    upload = tmp_path / "street.png"
    # 21 of 70 rows red=200: the student says truck, the clamped teacher terrain; 70.0 % of pixels agree.
    upload.write_bytes(image_bytes(banded_image(70, 110, ((21, 200), (49, 0)), seed=12)))
    app = create_app(make_settings(tmp_path), loader=ClampingLoader())
    overlays = "['student-overlay', 'teacher-overlay'].map((id) => document.getElementById(id))"
    with running_server(app) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{url}/", wait_until="load")
            page.wait_for_function("document.querySelectorAll('#teacher option').length === 2")
            assert page.locator("#compare-fields").is_hidden()
            page.check("#compare")
            assert page.locator("#teacher").input_value() == "teacher"
            assert page.locator("#submit").inner_text() == "Compare"
            page.set_input_files("#file", str(upload))
            page.click("#submit")
            page.wait_for_function(
                f"() => !document.getElementById('comparison').hidden"
                f" && {overlays}.every((img) => img.complete && img.naturalWidth > 0)",
                timeout=20_000,
            )
            sizes = page.evaluate(f"{overlays}.map((img) => [img.naturalWidth, img.naturalHeight])")
            agreement = page.locator("#agreement").inner_text()
            captions = [page.locator(f"#{role}-caption").inner_text() for role in ("student", "teacher")]
            status = page.locator("#status").inner_text()
            single_hidden = page.locator("#overlay").is_hidden()
        finally:
            browser.close()
    assert sizes == [[110, 70], [110, 70]]
    assert agreement.startswith("Pixel agreement 70.0%; teacher/student inference time "), agreement
    assert "least agreed: terrain 0.0%, truck 0.0%, road 100.0%" in agreement, agreement
    assert captions[0].startswith("student on onnxruntime: inference ") and "queue" in captions[0], captions
    assert captions[1].startswith("teacher on onnxruntime: inference "), captions
    assert status == "Done: street.png" and single_hidden
