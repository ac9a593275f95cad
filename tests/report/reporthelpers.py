"""Shared data of the report tests: short synthetic clips and items with hostile text."""

from __future__ import annotations

import html.parser
import struct
import zlib
from pathlib import Path

import numpy as np

from musicgen.report.png import PNG_SIGNATURE

SAMPLE_RATE = 16000
SCRIPT_CAPTION = "<script>alert(1)</script> a calm piano"
HOSTILE_CAPTIONS = [
    SCRIPT_CAPTION,
    "<img src=x onerror=alert(2)> loud drums & 'quotes' \"double\"",
    "</td></tr></table><b>broken</b> strings",
]
HOSTILE_IDS = ["../../etc/passwd", "<b>id</b>", "clip 3 ✓"]
FAD = [2.0, 0.5, 1.25]  # per-clip scores: sorting ascending gives items 1, 2, 0
CLAP = [0.1, 0.3, float("nan")]
DURATIONS = [1.0, 1.5, 2.25]  # seconds; distinct so that each player's duration is checked
SUBTYPES = ["PCM_16", "PCM_24", "FLOAT"]  # WAV sample formats the pipeline may write


def tone(freq: float, seconds: float, seed: int) -> np.ndarray:
    """A sine with a little noise, (S,) float32."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(len(t))
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * noise).astype(np.float32)


def gallery_dir(tmp_path: Path) -> Path:
    return tmp_path / "reports" / "gallery"


class PageParser(html.parser.HTMLParser):
    """Collects a page's tags (name, attributes) and its text, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse_page(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    parser.close()
    return parser


def decode_png(data: bytes) -> np.ndarray:
    """An independent decoder for 8-bit grey/RGB PNGs with unfiltered rows; checks every CRC."""
    assert data[:8] == PNG_SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind}"
        chunks.append((kind, body))
        pos += 12 + length
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    width, height, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    assert (depth, comp, filt, interlace) == (8, 0, 0, 0)
    channels = {0: 1, 2: 3}[colour]
    raw = np.frombuffer(zlib.decompress(chunks[1][1]), np.uint8)
    rows = raw.reshape(height, 1 + width * channels)
    assert (rows[:, 0] == 0).all()  # filter type none on every row
    pixels = rows[:, 1:].reshape(height, width, channels)
    return pixels[..., 0] if channels == 1 else pixels
