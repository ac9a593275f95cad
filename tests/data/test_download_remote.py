"""The MusicCaps download store through a DVC remote: pushed after a run, it gives a clone the same
audio after the videos are gone, and the clone's download stage requests nothing (README, Share a
run). The download goes through real yt-dlp and ffmpeg against the local media server."""

import hashlib

from datahelpers import ffmpeg_sine
from pipeline_repo import ran_stages, run
from test_download import FAST, musiccaps_csv

from musicgen.reproducibility import copy_project

UP_TO_DATE = "Data and pipelines are up to date."


def files_md5(folder) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_a_pulled_store_gives_the_audio_after_the_videos_are_gone(tmp_path, media_server):
    ok, gone = ["storeClip01", "storeClip02"], "goneClip404"
    for ytid in ok:
        ffmpeg_sine(media_server.root / f"{ytid}.wav", 3, 44100)
    csv = musiccaps_csv(tmp_path / "musiccaps.csv", [*ok, gone])
    musiccaps = {"csv": str(csv), "url_template": media_server.url_template, **FAST}
    params = {("data", "source"): "musiccaps"}
    params |= {("data", "musiccaps", key): value for key, value in musiccaps.items()}
    (tmp_path / "run").mkdir()
    repo = copy_project(tmp_path / "run", params)
    assert ran_stages(run(["dvc", "repro", "download"], repo)) == {"download"}
    store = files_md5(repo / "data/downloads")
    assert sorted(store) == ["musiccaps/audio/storeClip01.flac", "musiccaps/audio/storeClip02.flac", "musiccaps/journal.jsonl"]  # fmt: skip
    run(["dvc", "remote", "add", "-d", "storage", str(tmp_path / "nas")], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the download stage's run"], repo)
    run(["dvc", "push", "download"], repo)  # the only stage that ran

    for video in media_server.root.iterdir():  # every video is gone
        video.unlink()
    requests = dict(media_server.requests)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    run(["dvc", "pull", "download"], clone)

    assert files_md5(clone / "data/downloads") == store
    assert files_md5(clone / "data/raw") == files_md5(repo / "data/raw")
    assert UP_TO_DATE in run(["dvc", "status", "download"], clone)
    assert ran_stages(run(["dvc", "repro", "download"], clone)) == set()
    out = run(["dvc", "repro", "--force", "--single-item", "download"], clone)  # the stage itself
    assert ran_stages(out) == {"download"}
    assert dict(media_server.requests) == requests  # it requested nothing
    assert files_md5(clone / "data/raw") == files_md5(repo / "data/raw")
    assert UP_TO_DATE in run(["dvc", "status", "download"], clone)
