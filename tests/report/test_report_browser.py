"""The gallery in headless Chromium: served on localhost and opened from the file system.

The test skips only where chromium is missing, and fails instead on CI (``CI`` set); see
``browsercheck.py``.
"""

from __future__ import annotations

from browsercheck import open_gallery
from reporthelpers import FAD, HOSTILE_IDS, SCRIPT_CAPTION

ROW_IDS = "() => Array.from(document.querySelectorAll('#items tbody .id')).map(c => c.textContent)"


def test_gallery_in_headless_chromium(gallery, tmp_path):
    with open_gallery(gallery, tmp_path) as (page, log):
        assert page.locator("audio").count() == 3 * len(HOSTILE_IDS)  # reference, trip, generated

        # the <script> caption is text: shown, not run, not turned into an element
        captions = page.eval_on_selector_all("#items .caption", "cs => cs.map(c => c.textContent)")
        assert SCRIPT_CAPTION in captions
        assert page.evaluate("document.scripts.length") == 1
        assert (
            page.evaluate("document.querySelectorAll('#items .caption *, #items .id *').length")
            == 0
        )
        assert log.dialogs == []

        # sorting by a score reorders the rows, and a second click reverses them
        assert page.evaluate(ROW_IDS) == HOSTILE_IDS
        by_fad = [HOSTILE_IDS[i] for i in sorted(range(len(FAD)), key=FAD.__getitem__)]
        page.click("button.sort[data-label='fad']")
        assert page.evaluate(ROW_IDS) == by_fad
        page.click("button.sort[data-label='fad']")
        assert page.evaluate(ROW_IDS) == by_fad[::-1]
        page.click("button.sort[data-label='clap']")
        assert page.evaluate(ROW_IDS)[-1] == HOSTILE_IDS[2]  # its clap score is NaN: last
    assert (tmp_path / "gallery.png").stat().st_size > 0
