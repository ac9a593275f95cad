"""Downloading clip sections with yt-dlp: a pool of workers, throttling, retries and resume.

Each clip is the ``[start_s, end_s]`` section of one video, fetched through yt-dlp's Python API
(``bestaudio/best``, ffmpeg cutting the section and extracting lossless audio) into a scratch
directory and renamed into ``<store>/audio/<ytid>.<audio_format>`` only once it is complete, so a
file under its final name is always a finished clip. ``<store>/journal.jsonl`` records the outcome
of every attempt as it happens; a run that is interrupted and started again skips the finished clips
and the ones known to be gone, and tries the rest.

Errors are told apart by yt-dlp's message: transient ones (HTTP 429, 5xx, 403 from the media host,
timeouts, dropped connections, YouTube's "not a bot" and "try again later") are retried with
exponential backoff; permanent ones (HTTP 404/410, unavailable, private, removed, terminated,
blocked, age- or member-restricted) are recorded as ``unavailable`` at once; anything else is
``failed`` without a retry in this run (and tried again by the next one).

Example::

    clips = [Clip("-0Gj8-vB1q4", 30, 40)]
    status = download_clips(clips, Path("data/downloads/musiccaps"), DownloadConfig())
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import soundfile as sf
from tqdm import tqdm

log = logging.getLogger(__name__)

YTID_PATTERN = re.compile(r"[A-Za-z0-9_-]{11}")  # used with fullmatch
OK, UNAVAILABLE, FAILED, INVALID = "ok", "unavailable", "failed", "invalid"
STATUS_COLUMNS = ["ytid", "status", "reason", "duration", "bytes", "attempts"]
AUDIO, JOURNAL, WORK, COOKIES = "audio", "journal.jsonl", ".work", "cookies.txt"
AUDIO_FORMATS = ("flac", "wav")  # lossless, and read by libsndfile

TRANSIENT = re.compile(
    r"HTTP Error (?:403|408|429|5\d\d)|too many requests|timed? ?out|connection (?:reset|refused|"
    r"aborted)|remote end closed|incomplete ?read|temporar|try again later|not a bot|rate.?limit",
    re.IGNORECASE,
)
PERMANENT = re.compile(
    r"HTTP Error (?:404|410)|unavailable|not available|no longer available|private video|removed|"
    r"terminated|copyright|blocked|members.only|confirm your age|age.restricted|does not exist|"
    r"unsupported url",
    re.IGNORECASE,
)


@dataclass
class DownloadConfig:
    """How clips are fetched.

    Attributes:
        url_template: The video's URL, with ``{ytid}`` in it.
        workers: Clips downloaded at the same time.
        sleep_s: Least time between the starts of two attempts, across all workers.
        retries: Further attempts after a transient error.
        backoff_s: Wait before the first retry; doubled before each further one.
        timeout_s: yt-dlp's socket timeout.
        cookies: A Netscape-format cookies file handed to yt-dlp, or None.
        audio_format: What ffmpeg extracts to: ``flac`` or ``wav``.
        retry_unavailable: Try again the clips an earlier run found permanently unavailable.
        js_runtimes: JavaScript runtimes yt-dlp may use for YouTube's challenges, the first one
            installed wins (yt-dlp supports deno, node, quickjs, bun).
    """

    url_template: str = "https://www.youtube.com/watch?v={ytid}"
    workers: int = 2
    sleep_s: float = 2.0
    retries: int = 5
    backoff_s: float = 10.0
    timeout_s: float = 30.0
    cookies: str | None = None
    audio_format: str = "flac"
    retry_unavailable: bool = False
    js_runtimes: list[str] = field(default_factory=lambda: ["deno", "node"])

    def __post_init__(self) -> None:
        if "{ytid}" not in self.url_template:
            raise ValueError(f"url_template needs '{{ytid}}': {self.url_template!r}")
        if self.audio_format not in AUDIO_FORMATS:
            raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}: {self.audio_format!r}")
        if self.workers < 1 or self.retries < 0 or self.sleep_s < 0 or self.backoff_s < 0:
            raise ValueError("workers must be >= 1 and retries, sleep_s, backoff_s >= 0")
        if self.cookies and not Path(self.cookies).is_file():
            raise FileNotFoundError(f"cookies file not found: {self.cookies}")


@dataclass(frozen=True)
class Clip:
    """The section ``[start_s, end_s]`` (seconds) of the video ``ytid``."""

    ytid: str
    start_s: float
    end_s: float


class Throttle:
    """Spaces the starts of requests at least ``gap_s`` apart, across threads."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self._lock = threading.Lock()
        self._next = 0.0

    def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.gap_s
        time.sleep(start - now)


class _YdlLogger:
    """Sends yt-dlp's chatter to this module's logger (its errors come back as exceptions)."""

    def debug(self, msg: str) -> None:
        log.debug(msg)

    info = debug

    def warning(self, msg: str) -> None:
        log.info(msg)

    def error(self, msg: str) -> None:
        log.debug(msg)


def error_kind(message: str) -> str:
    """Sorts a yt-dlp error message: ``"transient"``, ``"permanent"`` or ``"unknown"``."""
    if TRANSIENT.search(message):
        return "transient"
    if PERMANENT.search(message):
        return "permanent"
    return "unknown"


def short_reason(message: str, limit: int = 300) -> str:
    """One line of an error message without yt-dlp's ``ERROR:`` prefix."""
    text = " ".join(str(message).split()).removeprefix("ERROR: ")
    return text[:limit]


def ydl_options(clip: Clip, cfg: DownloadConfig, work_dir: Path) -> dict:
    """yt-dlp options that cut ``clip`` and extract it to ``work_dir/clip.<audio_format>``.

    yt-dlp's own retries are off: every request failure comes back here to be counted and retried
    with backoff. yt-dlp writes its cookie jar back to the cookies file, so each attempt gets its own
    copy of ``cfg.cookies`` (``work_dir/cookies.txt``): workers never write the same file, and the
    user's file is left as it is.
    """
    from yt_dlp.utils import download_range_func

    return {
        "format": "bestaudio/best",
        "outtmpl": str(work_dir / "clip.%(ext)s"),
        "download_ranges": download_range_func(None, [(clip.start_s, clip.end_s)]),
        "force_keyframes_at_cuts": True,
        "postprocessors": [{"key": "FFmpegExtractAudio", "preferredcodec": cfg.audio_format}],
        "postprocessor_args": {"extractaudio": ["-sample_fmt", "s16"]},  # 16-bit: sources are lossy
        "noplaylist": True,
        "overwrites": True,
        "socket_timeout": cfg.timeout_s,
        "retries": 0,
        "fragment_retries": 0,
        "extractor_retries": 0,
        "cookiefile": str(work_dir / COOKIES) if cfg.cookies else None,
        "js_runtimes": {name: {} for name in cfg.js_runtimes},
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "logger": _YdlLogger(),
    }


def download_section(clip: Clip, dest: Path, cfg: DownloadConfig, work_dir: Path) -> None:
    """Fetches one clip into ``dest``: written in ``work_dir``, then renamed.

    Raises:
        yt_dlp.utils.DownloadError: yt-dlp or ffmpeg failed, or produced no audio.
        soundfile.LibsndfileError: what they produced is not readable audio.
    """
    import yt_dlp

    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        if cfg.cookies:
            shutil.copyfile(cfg.cookies, work_dir / COOKIES)
        url = cfg.url_template.format(ytid=clip.ytid)
        with yt_dlp.YoutubeDL(ydl_options(clip, cfg, work_dir)) as ydl:
            ydl.download([url])
        produced = work_dir / f"clip.{cfg.audio_format}"
        if not produced.is_file():
            raise yt_dlp.utils.DownloadError(f"no {cfg.audio_format} file was produced")
        sf.info(str(produced))  # raises if libsndfile cannot read it
        os.replace(produced, dest)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def clip_path(store_dir: Path, ytid: str, cfg: DownloadConfig) -> Path:
    """Where a finished clip lives in the store."""
    return store_dir / AUDIO / f"{ytid}.{cfg.audio_format}"


def status_row(
    ytid: str, status: str, reason: str = "", attempts: int = 0, path: Path | None = None
) -> dict:
    """One row of the status table; ``duration`` and ``bytes`` are read from ``path`` if given."""
    duration, size = 0.0, 0
    if path is not None:
        duration, size = round(sf.info(str(path)).duration, 3), path.stat().st_size
    return {
        "ytid": ytid,
        "status": status,
        "reason": reason,
        "duration": duration,
        "bytes": size,
        "attempts": attempts,
    }


def fetch_clip(
    clip: Clip, dest: Path, cfg: DownloadConfig, throttle: Throttle, work_dir: Path
) -> dict:
    """Downloads one clip, retrying transient errors with exponential backoff.

    Returns:
        its status row.
    """
    attempts = 0
    while True:
        attempts += 1
        throttle.wait()
        try:
            download_section(clip, dest, cfg, work_dir)
            return status_row(clip.ytid, OK, attempts=attempts, path=dest)
        except Exception as e:  # recorded, so that one odd clip never stops thousands
            reason = short_reason(str(e) or type(e).__name__)
            kind = error_kind(reason)
        if kind == "transient" and attempts <= cfg.retries:
            wait = cfg.backoff_s * 2 ** (attempts - 1)
            log.info("%s: %s; retry in %.1f s", clip.ytid, reason, wait)
            time.sleep(wait)
            continue
        return status_row(
            clip.ytid, UNAVAILABLE if kind == "permanent" else FAILED, reason, attempts
        )


def read_journal(path: Path) -> dict[str, dict]:
    """The last journal row of each id (a line cut short by a crash is ignored)."""
    rows: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows[row["ytid"]] = row
    return rows


def plan_downloads(
    clips: list[Clip], store_dir: Path, cfg: DownloadConfig
) -> tuple[dict[str, dict], list[Clip]]:
    """Splits ``clips`` into those settled already (by id, with their status row) and those to fetch.

    Settled: a malformed id (``invalid``, never requested), a finished file in the store (``ok``),
    and, unless ``cfg.retry_unavailable``, a clip the journal records as ``unavailable``.
    """
    journal = read_journal(store_dir / JOURNAL)
    settled: dict[str, dict] = {}
    todo: dict[str, Clip] = {}
    for clip in clips:
        ytid, before = clip.ytid, journal.get(clip.ytid, {})
        path = clip_path(store_dir, ytid, cfg)
        if not YTID_PATTERN.fullmatch(ytid):
            settled[ytid] = status_row(ytid, INVALID, "malformed id")
        elif path.is_file():
            settled[ytid] = status_row(ytid, OK, attempts=before.get("attempts", 0), path=path)
        elif before.get("status") == UNAVAILABLE and not cfg.retry_unavailable:
            settled[ytid] = before
        else:
            todo.setdefault(ytid, clip)
    return settled, list(todo.values())


def download_clips(
    clips: list[Clip], store_dir: Path, cfg: DownloadConfig, progress: bool = True
) -> pd.DataFrame:
    """Downloads every clip not yet in ``store_dir``, with ``cfg.workers`` threads.

    Args:
        clips: The sections to fetch; ids must be unique.
        store_dir: The persistent store (``audio/``, ``journal.jsonl``); created if missing.
        cfg: How to fetch.
        progress: Show a tqdm progress bar.

    Returns:
        The status table, one row per clip in order: ``ytid``, ``status`` (ok, unavailable, failed,
        invalid), ``reason``, ``duration`` (s, of the file), ``bytes``, ``attempts`` (of the run
        that settled it).
    """
    (store_dir / AUDIO).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(store_dir / WORK, ignore_errors=True)  # what an interrupted run left
    rows, todo = plan_downloads(clips, store_dir, cfg)
    log.info("%d clips settled already, %d to download", len(rows), len(todo))
    if todo and shutil.which("ffmpeg") is None:
        raise RuntimeError("yt-dlp needs ffmpeg to cut clips; scripts/install.sh installs it")
    throttle = Throttle(cfg.sleep_s)
    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="download")
    counts: Counter[str] = Counter()
    try:
        futures = [
            pool.submit(
                fetch_clip,
                clip,
                clip_path(store_dir, clip.ytid, cfg),
                cfg,
                throttle,
                store_dir / WORK / clip.ytid,
            )
            for clip in todo
        ]
        with (
            open(store_dir / JOURNAL, "a", encoding="utf-8") as journal,
            tqdm(total=len(todo), desc="download", unit="clip", disable=not progress) as bar,
        ):
            for future in as_completed(futures):
                row = future.result()
                rows[row["ytid"]] = row
                journal.write(json.dumps(row) + "\n")
                journal.flush()
                counts[row["status"]] += 1
                bar.set_postfix(counts, refresh=False)
                bar.update()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    shutil.rmtree(store_dir / WORK, ignore_errors=True)
    return pd.DataFrame([rows[c.ytid] for c in clips], columns=STATUS_COLUMNS)


def link_clips(paths: list[Path], dst_dir: Path) -> None:
    """Hard-links (or, across file systems, copies) each file into ``dst_dir``."""
    dst_dir.mkdir(parents=True, exist_ok=True)
    for src in paths:
        dst = dst_dir / src.name
        dst.unlink(missing_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
