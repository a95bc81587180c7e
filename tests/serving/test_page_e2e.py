"""The upload page in a real headless Chromium against a real uvicorn server: pick a file, choose the
teacher, submit, and the overlay appears at the uploaded image's size with the latency shown."""

import os
from pathlib import Path

import pytest
from serving_testkit import FakeLoader, image_bytes, make_settings, random_image, running_server

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
