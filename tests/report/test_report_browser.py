"""The gallery in headless Chromium: served on localhost and opened from the file system.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and Playwright's Python package (the dev
extra), driven with ``executable_path``: Playwright's own browser downloads are never used. The
test skips only where chromium is missing, and fails instead on CI (``CI`` set).
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf
from reporthelpers import FAD, HOSTILE_IDS, SCRIPT_CAPTION

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALL_AUDIO_READY = """() => Array.from(document.querySelectorAll('audio'))
    .every(a => a.readyState >= 1 || a.error !== null)"""
AUDIO_STATE = """() => Array.from(document.querySelectorAll('audio')).map(a => ({
    src: a.getAttribute('src'), ready: a.readyState, duration: a.duration,
    error: a.error && a.error.message}))"""
ROW_IDS = (
    "() => Array.from(document.querySelectorAll('#items tbody td.id')).map(c => c.textContent)"
)


def chromium_or_skip() -> str:
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    reason = "chromium is not installed (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the browser test")
    pytest.skip(reason)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def served(gallery):
    """Serves the gallery's folder on 127.0.0.1 (a free port); yields the page's URL."""
    handler = functools.partial(QuietHandler, directory=str(gallery.parent))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/index.html"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


class PageLog:
    """Console errors, page errors and dialogs (an ``alert`` would be one) of a page."""

    def __init__(self, page) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))
        page.on("dialog", self._dialog)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()


def check_audio(page, gallery: Path) -> None:
    """Every player loaded its wav, with the wav's duration."""
    page.wait_for_function(ALL_AUDIO_READY, timeout=15_000)
    players = page.evaluate(AUDIO_STATE)
    assert len(players) == 2 * len(HOSTILE_IDS)
    for player in players:
        assert player["error"] is None and player["ready"] >= 1, player
        expected = sf.info(str(gallery.parent / player["src"])).duration
        assert abs(player["duration"] - expected) < 0.1, (player, expected)


def test_gallery_in_headless_chromium(gallery, served, tmp_path):
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright  # the dev extra

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),  # a fresh profile
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            log = PageLog(page)
            page.goto(served)
            check_audio(page, gallery)

            # the <script> caption is text: shown, not run, not turned into an element
            captions = page.eval_on_selector_all("td.caption", "cs => cs.map(c => c.textContent)")
            assert SCRIPT_CAPTION in captions
            assert page.locator("td.caption", has_text="<script>alert(1)</script>").count() == 1
            assert page.evaluate("document.scripts.length") == 1
            assert page.evaluate("document.querySelectorAll('td.caption *').length") == 0

            # sorting by a score reorders the rows, and a second click reverses them
            assert page.evaluate(ROW_IDS) == HOSTILE_IDS
            by_fad = [HOSTILE_IDS[i] for i in sorted(range(len(FAD)), key=FAD.__getitem__)]
            page.click("button.sort[data-label='fad']")
            assert page.evaluate(ROW_IDS) == by_fad
            page.click("button.sort[data-label='fad']")
            assert page.evaluate(ROW_IDS) == by_fad[::-1]
            page.click("button.sort[data-label='clap']")
            assert page.evaluate(ROW_IDS)[-1] == HOSTILE_IDS[2]  # its clap score is NaN: last

            screenshot = tmp_path / "gallery.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"gallery screenshot: {screenshot}")

            # the same page straight from the file system
            page.goto(gallery.resolve().as_uri())
            check_audio(page, gallery)

            assert log.errors == []
            assert log.dialogs == []
        finally:
            context.close()
    assert screenshot.stat().st_size > 0
