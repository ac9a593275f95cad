"""Opening a gallery in headless Chromium: serve it, load it, check its players and its log.

Debian's ``chromium`` (``.ci/run`` installs it) driven by Playwright's Python package (the dev
extra) through ``executable_path``; Playwright's own browser downloads are never used. Any test
can check a gallery with :func:`open_gallery`, e.g. one that ``dvc repro`` wrote.
"""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf

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


def chromium_or_skip() -> str:
    """The chromium executable; skips the test where it is missing (fails on CI instead)."""
    if Path(CHROMIUM).is_file():
        return CHROMIUM
    reason = "chromium is not installed (apt-get install chromium; .ci/run installs it)"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must run the browser test")
    pytest.skip(reason)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def serve_dir(root: Path) -> Iterator[str]:
    """Serves ``root`` on 127.0.0.1 at a free port; yields the base URL (ending in /)."""
    handler = functools.partial(QuietHandler, directory=str(root))
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


class PageLog:
    """Console errors, page errors, failed requests and dialogs (an ``alert``) of a page."""

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


def check_audio(page, out_dir: Path) -> int:
    """Every player loaded its wav (readyState >= 1) with the wav's duration (within 0.1 s).

    Returns:
        the number of players.
    """
    page.wait_for_function(ALL_AUDIO_READY, timeout=15_000)
    players = page.evaluate(AUDIO_STATE)
    for player in players:
        assert player["error"] is None and player["ready"] >= 1, player
        expected = sf.info(str(out_dir / player["src"])).duration
        assert abs(player["duration"] - expected) < 0.1, (player, expected)
    return len(players)


@contextmanager
def open_gallery(index: Path, work_dir: Path) -> Iterator[tuple[object, PageLog]]:
    """Opens a gallery served on localhost in headless Chromium and checks it.

    On entry every player has loaded (:func:`check_audio`); the caller's checks run on the yielded
    page. On exit a full-page screenshot is saved as ``work_dir/gallery.png`` (its path printed),
    the page is opened again from the file system (``file://``) and its players checked, and no
    console error, failed request or dialog may have happened in either.

    Yields:
        the Playwright page and its :class:`PageLog`.
    """
    executable = chromium_or_skip()
    from playwright.sync_api import sync_playwright  # the dev extra

    out_dir = index.parent
    with sync_playwright() as pw, serve_dir(out_dir) as base_url:
        context = pw.chromium.launch_persistent_context(
            str(work_dir / "chromium-profile"),  # a fresh profile
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        try:
            page = context.new_page()
            log = PageLog(page)
            page.goto(base_url + index.name)
            assert check_audio(page, out_dir) > 0
            yield page, log
            screenshot = work_dir / "gallery.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"gallery screenshot: {screenshot}")
            page.goto(index.resolve().as_uri())
            check_audio(page, out_dir)
            assert log.errors == []
            assert log.dialogs == []
        finally:
            context.close()
