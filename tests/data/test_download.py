"""The MusicCaps download, driven with real yt-dlp and ffmpeg against a local media server."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import soundfile as sf
from datahelpers import ROOT, TIMEOUT, ffmpeg_sine, peak_frequency
from ruamel.yaml import YAML

from musicgen.data.audio import read_audio
from musicgen.data.download import (
    YTID_PATTERN,
    DownloadConfig,
    Throttle,
    error_kind,
    read_journal,
)
from musicgen.data.musiccaps import MUSICCAPS_CSV, read_musiccaps
from musicgen.data.synthetic import MUSICCAPS_COLUMNS
from musicgen.params import load_params
from musicgen.pipeline import prepare, sources
from musicgen.pipeline.common import read_metadata, read_split

FAST = {"sleep_s": 0.01, "backoff_s": 0.05, "retries": 3, "timeout_s": 1.0}


def musiccaps_csv(path: Path, ids: list[str]) -> Path:
    """A MusicCaps-format CSV listing the section [1 s, 2 s] of each id."""
    rows = [
        {
            "ytid": ytid,
            "start_s": 1,
            "end_s": 2,
            "audioset_positive_labels": "/m/04rlf",
            "aspect_list": "['sine']",
            "caption": f"A pure sine tone, clip {i}.",
            "author_id": 0,
            "is_balanced_subset": False,
            "is_audioset_eval": i % 2 == 0,
        }
        for i, ytid in enumerate(ids)
    ]
    pd.DataFrame(rows, columns=MUSICCAPS_COLUMNS).to_csv(path, index=False)
    return path


def data_params(tmp_path: Path, server, ids: list[str], **overrides) -> dict:
    """The ``data`` section of params.yaml with the musiccaps source pointed at ``server``."""
    data = load_params(ROOT / "params.yaml")["data"]
    data["source"] = "musiccaps"
    data["musiccaps"].update(
        csv=str(musiccaps_csv(tmp_path / "musiccaps.csv", ids)),
        url_template=server.url_template,
        **{**FAST, **overrides},
    )
    return data


def check_clip(path: Path) -> None:
    """A finished clip: the 1 s section of the 440 Hz sine."""
    audio, sr = read_audio(path)
    assert sf.info(str(path)).subtype == "PCM_16"
    assert audio.shape[1] / sr == pytest.approx(1.0, abs=0.03)
    assert peak_frequency(audio[0], sr) == pytest.approx(440, abs=3)


def assert_no_leftovers(store: Path) -> None:
    assert not (store / ".work").exists()
    assert not [p for p in store.rglob("*") if p.name.startswith(".") or p.suffix == ".part"]


def test_each_outcome_and_a_rerun_that_downloads_nothing(tmp_path, media_server):
    served = media_server.root
    ffmpeg_sine(served / "okClipM4a00.m4a", 3, 44100)
    ffmpeg_sine(served / "busyClip429.webm", 3, 48000)
    ffmpeg_sine(served / "slowStart01.wav", 3, 22050, channels=1)
    media_server.answers["/v/busyClip429"].extend([429, 429])
    media_server.answers["/v/slowStart01"].append(TIMEOUT)
    ids = ["okClipM4a00", "goneClip404", "busyClip429", "bad/id?x=1", "slowStart01"]
    cookies = tmp_path / "cookies.txt"
    cookies.write_text("# Netscape HTTP Cookie File\n127.0.0.1\tFALSE\t/\tFALSE\t0\tsid\tabc\n")
    params = data_params(tmp_path, media_server, ids, cookies=str(cookies))
    raw, store = tmp_path / "raw", tmp_path / "downloads"

    sources.download(params, raw, store, progress=False)

    status = pd.read_csv(raw / "status.csv", dtype={"ytid": str}, keep_default_na=False)
    assert list(status.columns) == ["ytid", "status", "reason", "duration", "bytes", "attempts"]
    by_id = status.set_index("ytid")
    assert by_id["status"].to_dict() == {
        "okClipM4a00": "ok",
        "goneClip404": "unavailable",
        "busyClip429": "ok",
        "bad/id?x=1": "invalid",
        "slowStart01": "ok",
    }
    assert by_id["attempts"].to_dict() == {
        "okClipM4a00": 1,
        "goneClip404": 1,  # permanent: no retry
        "busyClip429": 3,  # 429, 429, then the clip
        "bad/id?x=1": 0,  # never requested
        "slowStart01": 2,  # a timeout, then the clip
    }
    assert "404" in by_id.at["goneClip404", "reason"]
    assert by_id.at["bad/id?x=1", "reason"] == "malformed id"
    assert media_server.count("goneClip404") == 1
    assert not [p for p in media_server.requests if "bad" in p]
    ok = ["okClipM4a00", "busyClip429", "slowStart01"]
    assert sorted(p.name for p in (raw / "audio").iterdir()) == sorted(f"{y}.flac" for y in ok)
    for ytid in ok:
        check_clip(raw / "audio" / f"{ytid}.flac")
        assert by_id.at[ytid, "bytes"] == (raw / "audio" / f"{ytid}.flac").stat().st_size
        assert by_id.at[ytid, "duration"] == pytest.approx(1.0, abs=0.03)
    assert_no_leftovers(store)
    assert "sid=abc" in media_server.cookies
    assert cookies.read_text().endswith("\tsid\tabc\n")  # yt-dlp wrote to a copy
    metadata = read_metadata(raw)
    assert metadata["ytid"].tolist() == ids and list(metadata.columns) == MUSICCAPS_COLUMNS

    requests = dict(media_server.requests)
    sources.download(params, raw, store, progress=False)  # everything is settled already
    assert dict(media_server.requests) == requests
    assert pd.read_csv(raw / "status.csv", dtype={"ytid": str}, keep_default_na=False).equals(
        status
    )
    retry = {**params, "musiccaps": {**params["musiccaps"], "retry_unavailable": True}}
    sources.download(retry, raw, store, progress=False)
    assert media_server.count("goneClip404") == 2
    assert dict(media_server.requests) == requests | {"/v/goneClip404": 2}

    # the later stages take the downloaded clips as they are
    resample = {**load_params(ROOT / "params.yaml")["resample"], "duration_s": 1}
    prepare.resample(resample, raw, tmp_path / "audio", progress=False)
    split = load_params(ROOT / "params.yaml")["split"]
    prepare.split(split, raw, tmp_path / "audio", tmp_path / "split", tmp_path / "split.json")
    listed = {
        y for name in ("train", "valid", "test") for y in read_split(tmp_path / "split", name)
    }
    assert listed == set(ok)


def test_a_killed_download_resumes_without_fetching_a_finished_clip_again(tmp_path, media_server):
    first, second = "firstClip01", "secondClip2"
    ffmpeg_sine(media_server.root / f"{first}.wav", 3, 44100)
    ffmpeg_sine(media_server.root / f"{second}.wav", 3, 44100)
    media_server.stall.add(f"/v/{second}")
    params = {"data": data_params(tmp_path, media_server, [first, second], workers=1)}
    YAML().dump(params, tmp_path / "params.yaml")
    raw, store = tmp_path / "raw", tmp_path / "downloads"
    cmd = [
        sys.executable,
        str(ROOT / "stages/download.py"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    cmd += ["--out", str(raw), "--store", str(store)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert media_server.stalled.wait(60), proc.stderr.read().decode() if proc.poll() else ""
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the stage, yt-dlp's ffmpeg and all
        proc.wait()
        proc.stderr.close()
    audio, work = store / "musiccaps" / "audio", store / "musiccaps" / ".work" / second
    assert [p.name for p in audio.iterdir()] == [f"{first}.flac"]  # the second is not finished
    assert work.is_dir()  # it was in progress
    assert read_journal(store / "musiccaps" / "journal.jsonl")[first]["status"] == "ok"
    assert not (raw / "status.csv").exists()
    # what a kill during ffmpeg's extraction would leave: half a file under the scratch name
    (work / "clip.flac").write_bytes((audio / f"{first}.flac").read_bytes()[:2000])
    fetched = {ytid: media_server.count(ytid) for ytid in (first, second)}

    media_server.stall.clear()
    media_server.release.set()
    sources.download(params["data"], raw, store, progress=False)

    assert media_server.count(first) == fetched[first]
    assert media_server.count(second) > fetched[second]
    status = pd.read_csv(raw / "status.csv", dtype={"ytid": str}).set_index("ytid")
    assert status["status"].to_dict() == {first: "ok", second: "ok"}
    for ytid in (first, second):
        check_clip(raw / "audio" / f"{ytid}.flac")
    assert_no_leftovers(store / "musiccaps")


@pytest.mark.parametrize(
    "message,kind",
    [
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 429: Too Many Requests", "transient"),
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 503: Service Unavailable", "transient"),
        ("ERROR: [generic] x: Unable to download webpage: HTTP Error 404: Not Found", "permanent"),
        ("ERROR: [youtube] abc: Read timed out. (read timeout=30.0)", "transient"),
        ("ERROR: [youtube] abc: Sign in to confirm you\u2019re not a bot. Use --cookies", "transient"),
        ("ERROR: [youtube] abc: Video unavailable. This content isn't available, try again later.", "transient"),
        ("ERROR: [youtube] abc: Video unavailable", "permanent"),
        ("ERROR: [youtube] abc: Private video. Sign in if you've been granted access", "permanent"),
        ("ERROR: [youtube] abc: Video unavailable. This video has been removed by the uploader", "permanent"),
        ("ERROR: [youtube] abc: Sign in to confirm your age. This video may be inappropriate", "permanent"),
        ("ERROR: [youtube] abc: This video is not available in your country", "permanent"),
        ("ERROR: Postprocessing: audio conversion failed", "unknown"),
    ],
)  # fmt: skip
def test_error_kinds(message, kind):
    assert error_kind(message) == kind


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="ytid"):
        DownloadConfig(url_template="http://example.com/watch")
    with pytest.raises(ValueError, match="audio_format"):
        DownloadConfig(audio_format="mp3")
    with pytest.raises(FileNotFoundError, match="cookies"):
        DownloadConfig(cookies=str(tmp_path / "missing.txt"))


def test_throttle_spaces_requests():
    throttle, starts = Throttle(0.05), []
    t0 = time.monotonic()
    for _ in range(4):
        throttle.wait()
        starts.append(time.monotonic())
    # the i-th start is no earlier than i gaps after the first call (a loaded machine may only be
    # later, so the gaps between returns can be shorter than 0.05 s, never their sum)
    assert all(s - t0 >= i * 0.05 - 1e-3 for i, s in enumerate(starts))


def test_the_shipped_musiccaps_csv():
    path = ROOT / MUSICCAPS_CSV
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == "bce5500709e6b129e070cbffc28caefe6b3d6977b2073493ee9b48806096c034"
    table, invalid, rejected = read_musiccaps(path)
    assert not invalid and rejected.empty
    assert len(table) == 5521 and table["is_audioset_eval"].sum() == 2858
    assert table["caption"].str.contains("\n").sum() == 5  # embedded line breaks survive
    assert table["ytid"].map(YTID_PATTERN.fullmatch).all()
    assert (table["end_s"] - table["start_s"] == 10).all()
    assert (ROOT / "data/musiccaps/NOTICE.md").read_text().count("CC BY-SA 4.0") >= 1
