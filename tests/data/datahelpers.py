"""Helpers of the data tests (fixtures in conftest.py): a local media server that answers Range requests, and test media.

``MediaServer`` serves ``<root>/<name>.<ext>`` at ``/v/<name>`` with the file's audio Content-Type,
so yt-dlp's generic extractor takes it for a plain media file, as it would a video page. It answers
``Range`` requests with 206 and ``Content-Range`` (ffmpeg seeks with them; Python's
``http.server`` does not), counts the requests per path, can answer a path with given error codes
(or a stall longer than the client's timeout) before serving it, and can stop half-way through a
ranged response until released (a download in progress, for the kill-and-resume test).
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter, defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]
CONTENT_TYPES = {".m4a": "audio/mp4", ".webm": "audio/webm", ".wav": "audio/wav"}
TIMEOUT = "timeout"  # a queued answer: say nothing for ``MediaServer.stall_s``


class MediaServer:
    """A threaded HTTP server of the media files in ``root`` (see the module docstring).

    Attributes:
        requests: Path -> number of requests received.
        cookies: The ``Cookie`` headers received.
        answers: Path -> queue of answers to give before serving it: an HTTP status, or ``TIMEOUT``.
        stall: Paths whose ranged responses stop half-way until ``release`` is set.
        stalled: Set once a response has stopped half-way.
    """

    stall_s = 3.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: Counter[str] = Counter()
        self.cookies: list[str] = []
        self.answers: dict[str, deque] = defaultdict(deque)
        self.stall: set[str] = set()
        self.stalled = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients hang up mid-transfer
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url_template(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/v/{{ytid}}"

    def count(self, name: str) -> int:
        return self.requests[f"/v/{name}"]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.serve(body=False)

            def do_GET(self) -> None:
                self.serve(body=True)

            def empty(self, code: int, headers: dict | None = None) -> None:
                self.send_response(code)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def serve(self, body: bool) -> None:
                path = self.path.split("?")[0]
                with server.lock:
                    server.requests[path] += 1
                    server.cookies += self.headers.get_all("Cookie", [])
                    queued = server.answers[path]
                    answer = queued.popleft() if queued else None
                if answer == TIMEOUT:
                    time.sleep(server.stall_s)
                    return
                if answer is not None:
                    return self.empty(answer)
                files = sorted(server.root.glob(path.removeprefix("/v/") + ".*"))
                if not path.startswith("/v/") or not files:
                    return self.empty(404)
                data = files[0].read_bytes()
                start, end = 0, len(data) - 1
                ranged = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
                if ranged:
                    if ranged[1]:
                        start, end = int(ranged[1]), int(ranged[2] or end)
                    else:  # a suffix: the last N bytes
                        start = max(0, len(data) - int(ranged[2]))
                    if start >= len(data):
                        return self.empty(416, {"Content-Range": f"bytes */{len(data)}"})
                    end = min(end, len(data) - 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Type", CONTENT_TYPES[files[0].suffix])
                self.send_header("Content-Length", str(end - start + 1))
                self.end_headers()
                if not body:
                    return
                chunk = data[start : end + 1]
                if ranged and path in server.stall:
                    self.wfile.write(chunk[: len(chunk) // 2])
                    self.wfile.flush()
                    server.stalled.set()
                    server.release.wait(60)
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        return Handler


def ffmpeg_sine(path: Path, seconds: float, rate: int, channels: int = 2, freq: int = 440) -> Path:
    """Writes a sine of ``freq`` Hz at -6 dBFS peak, encoded by ffmpeg after ``path``'s suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = f"sine=frequency={freq}:duration={seconds}:sample_rate={rate}"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source]
    cmd += ["-af", "volume=4", "-ac", str(channels), str(path)]  # lavfi's sine peaks at 1/8
    subprocess.run(cmd, check=True)
    return path


def sine(freq: float, sr: int, seconds: float, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """(C, S) float32 sine."""
    t = np.arange(int(sr * seconds)) / sr
    return np.tile(amp * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float32)


def peak_frequency(x: np.ndarray, sr: int) -> float:
    """The frequency of the largest bin of a Hann-windowed spectrum."""
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()]


def write_clip(folder: Path, name: str, caption: str | None, freq: float = 440.0) -> None:
    """A 1.5 s sine (stereo, 44.1 kHz) at ``folder/name``, with a sidecar caption if given."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".m4a":
        ffmpeg_sine(path, 1.5, 44100, freq=int(freq))
    else:
        sf.write(path, sine(freq, 44100, 1.5, channels=2).T, 44100)
    if caption is not None:
        path.with_suffix(".txt").write_text(caption + "\n")
