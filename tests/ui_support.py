"""What the browser tests share: Debian's Chromium driven by Playwright (no browser download), skipped
when either is missing, and a page opened on a running server."""

import contextlib
import shutil
from pathlib import Path
from typing import Iterator

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
if not Path(CHROMIUM).exists():
    pytest.skip("Debian chromium is not installed (apt-get install -y chromium)", allow_module_level=True)

ARTIFACTS = Path(__file__).parent / "artifacts" / "ui"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


@contextlib.contextmanager
def open_page(url: str) -> Iterator:
    """A 1400 x 860 page on `url` once its model list has loaded; `page.requests` records every
    request URL and page error."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.requests, page.errors = [], []
        page.on("request", lambda r: page.requests.append(r.url))
        page.on("pageerror", lambda e: (page.requests.append(f"pageerror: {e}"), page.errors.append(str(e))))
        page.goto(url)
        page.wait_for_function("document.querySelectorAll('#model-select option').length == 2")
        try:
            yield page
        finally:
            browser.close()
