"""The folder source: your own audio files and captions, through the same stages."""

import json

import numpy as np
import pandas as pd
import pytest
from datahelpers import write_clip
from pipeline_repo import DATA_STAGES, SMALL, copy_project, ran_stages, run

from musicgen.data.folder import FolderConfig, hashed_id, import_folder, list_clips
from musicgen.data.synthetic import MUSICCAPS_COLUMNS


def test_sidecar_captions(tmp_path):
    folder = tmp_path / "music"
    write_clip(folder, "a/one.wav", "A calm sine.")
    write_clip(folder, "two tracks.flac", "Two tracks.")
    write_clip(folder, "three.m4a", "An AAC file.")  # libsndfile cannot read it: ffmpeg converts
    write_clip(folder, "four.ogg", None)
    (folder / "broken.m4a").write_bytes(b"\0" * 1000)
    (folder / "broken.txt").write_text("Not audio at all.")
    (folder / "notes.md").write_text("not a clip")

    tables = import_folder(FolderConfig(str(folder)), tmp_path / "audio", False)
    metadata, status = tables.metadata, tables.status

    assert list(metadata.columns) == MUSICCAPS_COLUMNS
    assert status.set_index("ytid")["status"].to_dict() == {
        "a_one": "ok",
        "broken": "failed",
        "four": "invalid",
        "three": "ok",
        "two_tracks": "ok",
    }
    reasons = status.set_index("ytid")["reason"]
    assert reasons["four"] == "four.ogg, caption: no caption"
    assert reasons["broken"].startswith("broken.m4a: ffmpeg")
    assert status.set_index("ytid")["file"]["two_tracks"] == "two tracks.flac"
    files = sorted(p.name for p in (tmp_path / "audio").iterdir())
    assert files == ["a_one.wav", "three.flac", "two_tracks.flac"]
    captions = metadata.set_index("ytid")["caption"]
    assert captions["a_one"] == "A calm sine." and captions["three"] == "An AAC file."
    ends = metadata.set_index("ytid")["end_s"]
    assert ends["a_one"] == pytest.approx(1.5) and ends["three"] == pytest.approx(1.5, abs=0.05)


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifests(tmp_path, kind):
    folder = tmp_path / "music"
    write_clip(folder, "x/a.wav", None)
    write_clip(folder, "b.flac", None)
    write_clip(folder, "c.wav", None)
    rows = [
        {"file": "x/a.wav", "caption": "First.", "id": "first", "is_audioset_eval": "true"},
        {"file": "b.flac", "caption": "Second.", "id": "second", "is_audioset_eval": "false"},
        {"file": "gone.wav", "caption": "Missing.", "id": "gone", "is_audioset_eval": "false"},
        {"file": "c.wav", "caption": "Bad id.", "id": "b.c", "is_audioset_eval": "false"},
        {"file": "./b.flac", "caption": "Again.", "id": "again", "is_audioset_eval": "false"},
    ]
    manifest = folder / f"captions.{kind}"
    if kind == "csv":
        pd.DataFrame(rows).to_csv(manifest, index=False)
    else:
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    tables = import_folder(FolderConfig(str(folder), f"captions.{kind}"), tmp_path / "audio", False)
    metadata, status = tables.metadata, tables.status

    assert status["status"].tolist() == ["ok", "ok", "unavailable", "invalid"]
    assert (
        status["reason"][3]
        == f"captions.{kind} row {4 if kind == 'jsonl' else 5}, id: id 'b.c' must match [A-Za-z0-9_-]+"
    )
    assert metadata["is_audioset_eval"].tolist() == [True, False, False, False]
    row = 5 if kind == "jsonl" else 6
    assert tables.rejected["reason"].tolist() == [
        f"./b.flac listed twice, rows {row - 3} and {row} (the first is kept)"
    ]
    assert sorted(p.name for p in (tmp_path / "audio").iterdir()) == ["first.wav", "second.flac"]


def test_two_files_with_one_id_both_survive(tmp_path):
    write_clip(tmp_path, "a b.wav", "One.")
    write_clip(tmp_path, "a_b.flac", "Two.")
    write_clip(tmp_path, "c.wav", "Three.")
    clips, rejected = list_clips(FolderConfig(str(tmp_path)))
    ids = dict(zip(clips["file"], clips["ytid"], strict=True))
    assert ids == {"a b.wav": hashed_id("a b.wav"), "a_b.flac": hashed_id("a_b.flac"), "c.wav": "c"}
    assert ids["a b.wav"].startswith("a_b-") and ids["a b.wav"] != ids["a_b.flac"]
    assert rejected.empty
    with pytest.raises(FileNotFoundError, match="folder"):
        FolderConfig(str(tmp_path / "nowhere"))


@pytest.mark.slow
def test_the_pipeline_runs_on_a_folder(tmp_path):
    """``dvc repro`` of every stage with ``data.source: folder`` on 16 clips (12 usable)."""
    folder = tmp_path / "music"
    rng = np.random.default_rng(0)
    for i in range(16):
        freq, name = float(rng.uniform(110, 880)), f"take {i:02d}.{('wav', 'flac', 'ogg')[i % 3]}"
        write_clip(
            folder, name, f"A sine tone at {freq:.0f} Hz, piece {i}." if i % 5 else None, freq
        )
    write_clip(folder, "album/bonus.m4a", "An AAC bonus track.")
    params = {
        **SMALL,
        ("data", "source"): "folder",
        ("data", "folder", "path"): str(folder),
        ("resample", "duration_s"): 1,
        ("codec", "fit", "codes_used"): 128,  # k-means needs more frames than codes
    }
    repo = copy_project(tmp_path / "repo", params)

    out = run(["dvc", "repro"], repo)

    assert ran_stages(out) == DATA_STAGES | {"train", "generate", "evaluate"}
    split = json.loads((repo / "metrics/split.json").read_text())
    assert split["clips_listed"] == 17 and split["clips_usable"] == 13  # 4 had no caption
    assert split["clips_train"] and split["clips_valid"] and split["clips_test"]
    status = pd.read_csv(repo / "data/raw/status.csv", dtype={"ytid": str})
    assert (status["status"] == "invalid").sum() == 4
    assert "album_bonus" in set(status.loc[status["status"] == "ok", "ytid"])
    details = json.loads((repo / "reports/eval/details.json").read_text())  # evaluate's sizes
    assert details["fd_clips"] == min(split["clips_test"], 6)
