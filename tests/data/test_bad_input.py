"""Hostile input: every row and file is processed or skipped with its reason, nothing crashes.

A MusicCaps-style CSV (short and long rows, a repeated id, end before start, times that are not
numbers, odd booleans, empty, HTML, control-character, 5,000-word and non-Latin captions) goes
through the download stage against the local media server; a folder of hostile audio files (corrupt,
empty, header-only, silent, NaN/inf, 50 ms, 8/24/32/64-bit, 6 channels, 8 to 96 kHz, names with
spaces, non-ASCII and shell metacharacters, two names with one id) and a manifest goes through
``dvc repro`` of the whole pipeline.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from datahelpers import ffmpeg_sine, sine, write_clip
from pipeline_repo import DATA_STAGES, SMALL, copy_project, ran_stages, run
from ruamel.yaml import YAML
from test_download import FAST

from musicgen.data.folder import FolderConfig, import_folder
from musicgen.data.musiccaps import read_musiccaps
from musicgen.data.tables import clean_caption, parse_bool
from musicgen.params import load_params
from musicgen.pipeline import sources

HEADER = "ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval"
LONG_CAPTION = " ".join(["word"] * 5000)
HOSTILE_ROWS = [  # (row text, what becomes of it)
    ('goodClip001,1,2,/m/x,[],"A sine, plain.",0,False,True', "ok"),
    ("shortRow001,1,2,/m/x", "row: 4 fields, the header has 9: no aspect_list"),
    ("longRow0001,1,2,,[],A caption.,0,False,False,extra", "row: 10 fields, the header has 9"),
    ("goodClip001,1,2,,[],Again.,0,False,False", "rejected: repeats the id of row 2"),
    ("backwards01,10,3,,[],Backwards.,0,False,False", "end_s: end_s 3 is not after start_s 10"),
    ("notNumber01,abc,2,,[],Bad start.,0,False,False", "start_s: not a number of seconds: 'abc'"),
    ("notFinite01,0,inf,,[],Infinite.,0,False,False", "end_s: not a number of seconds: 'inf'"),
    ("negative001,-1,2,,[],Negative.,x,False,False", "start_s: not a number of seconds: '-1'"),
    ("oddBools001,1,2,,[],Odd flags.,0,yes,maybe", "is_audioset_eval: not a boolean: 'maybe'"),
    ("emptyCapt01,1,2,,[],,0,False,False", "caption: empty"),
    ('spaceCapt01,1,2,,[],"  \t  ",0,False,False', "caption: empty"),
    ('htmlCaption,1,2,,[],"<b>Loud</b> drums &amp; bass<br/>",0,TRUE,1', "ok"),
    ('ctrlCaption,1,2,,[],"tab\tnul\x00esc\x1bzero\u200bwidth",0,f,0', "ok"),
    (f'longCaption,1,2,,[],"{LONG_CAPTION}",0,False,False', "ok"),
    ('nonLatin001,1,2,,[],"静かなピアノ曲。Тихая музыка; موسيقى",0,n,no', "ok"),
    (",1,2,,[],No id.,0,False,False", "rejected: no id"),
    ("bad id !!,1,2,,[],Bad id.,0,False,False", "malformed id"),
]


def hostile_csv(path: Path) -> Path:
    lines = [HEADER] + [text for text, _ in HOSTILE_ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_captions_and_flags_are_cleaned():
    assert (
        clean_caption("<p>Soft <i>piano</i></p> &amp; strings\x00\u200b ") == "Soft piano & strings"
    )
    assert clean_caption("Line one\nline two") == "Line one\nline two"
    assert clean_caption("R&B with a <3 heart") == "R&B with a <3 heart"
    assert [parse_bool(v) for v in ("TRUE", " yes", "1", "f", "No", "", "maybe")] == [
        True, True, True, False, False, False, None,
    ]  # fmt: skip


def test_a_hostile_musiccaps_csv(tmp_path):
    metadata, invalid, rejected = read_musiccaps(hostile_csv(tmp_path / "hostile.csv"))

    rows = {i + 2: outcome for i, (_, outcome) in enumerate(HOSTILE_ROWS)}
    assert rejected["row"].tolist() == [r for r, o in rows.items() if o.startswith("rejected")]
    assert rejected["reason"].tolist() == [
        "repeats the id of row 2 (the first is kept)",
        "no id",
    ]
    assert rejected["file"].str.endswith("hostile.csv").all()
    assert metadata["ytid"].is_unique and len(metadata) == len(HOSTILE_ROWS) - 2
    by_id = metadata.set_index("ytid")
    for row, outcome in rows.items():
        ytid = HOSTILE_ROWS[row - 2][0].split(",")[0]
        if outcome in ("ok", "malformed id") or outcome.startswith("rejected"):
            assert ytid not in invalid or outcome.startswith("rejected")
        else:  # the reason names the file, the row and the field
            assert invalid[ytid].startswith(f"hostile.csv row {row}, "), invalid[ytid]
            assert outcome in invalid[ytid]
    assert by_id.at["goodClip001", "caption"] == "A sine, plain."  # the first row is kept
    assert by_id.at["htmlCaption", "caption"] == "Loud drums & bass"
    assert by_id.at["ctrlCaption", "caption"] == "tab\tnul esc zero width"
    assert by_id.at["longCaption", "caption"] == LONG_CAPTION
    assert by_id.at["nonLatin001", "caption"].startswith("静かなピアノ曲")
    assert by_id.loc["htmlCaption", ["is_balanced_subset", "is_audioset_eval"]].tolist() == [
        True,
        True,
    ]
    assert by_id.at["negative001", "author_id"] == -1
    assert metadata["is_audioset_eval"].dtype == bool


def test_missing_columns(tmp_path):
    (tmp_path / "no_caption.csv").write_text("ytid,start_s,end_s\nabcdefghijk,0,10\n")
    with pytest.raises(ValueError, match=r"no_caption.csv: no column caption"):
        read_musiccaps(tmp_path / "no_caption.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty.csv: empty file"):
        read_musiccaps(tmp_path / "empty.csv")
    (tmp_path / "minimal.csv").write_text("ytid,start_s,end_s,caption\nabcdefghijk,0,10,Calm.\n")
    metadata, invalid, _ = read_musiccaps(tmp_path / "minimal.csv")
    assert not invalid
    assert metadata.iloc[0][["author_id", "is_audioset_eval", "aspect_list"]].tolist() == [
        -1,
        False,
        "[]",
    ]


def test_the_download_stage_on_a_hostile_csv(tmp_path, media_server):
    """Good rows are fetched, bad rows never requested, every outcome recorded."""
    good = [t.split(",")[0] for t, o in HOSTILE_ROWS if o == "ok"]
    for ytid in good:
        ffmpeg_sine(media_server.root / f"{ytid}.wav", 3, 44100)
    data = load_params(Path(__file__).parents[2] / "params.yaml")["data"]
    data["source"] = "musiccaps"
    csv = str(hostile_csv(tmp_path / "hostile.csv"))
    data["musiccaps"].update(csv=csv, url_template=media_server.url_template, **FAST)
    raw = tmp_path / "raw"

    sources.download(data, raw, tmp_path / "downloads", progress=False)

    status = pd.read_csv(raw / "status.csv", keep_default_na=False).set_index("ytid")
    assert sorted(status.index[status["status"] == "ok"]) == sorted(good)
    assert set(status["status"]) == {"ok", "invalid"}
    assert status.at["bad id !!", "reason"] == "malformed id"
    assert status.at["backwards01", "reason"].startswith("hostile.csv row 6, end_s:")
    requested = {p.removeprefix("/v/") for p in media_server.requests}
    assert requested == set(good)  # invalid rows are never requested
    rejected = pd.read_csv(raw / "rejected.csv", keep_default_na=False)
    assert rejected["row"].tolist() == [5, 17]
    assert sorted(p.stem for p in (raw / "audio").iterdir()) == sorted(good)


# --- a hostile folder through the whole pipeline ------------------------------------------------


def write_array(folder: Path, name: str, audio: np.ndarray, rate: int, subtype: str) -> None:
    """(C, S) audio as ``name`` in ``subtype`` (libsndfile picks the format from the suffix)."""
    sf.write(folder / name, audio.T, rate, subtype=subtype)


def nan_clip(value: float) -> np.ndarray:
    audio = sine(330, 44100, 1.0)
    audio[0, 100] = value
    return audio


SPECIAL_NAMES = [  # files that are fine but for their names
    "with spaces and 'quotes'.wav",
    "ünïcødé 音楽.wav",
    "$(touch pwned); rm -rf `x` & echo.wav",
    "a b.wav",  # these two reduce to the id a_b
    "a_b.wav",
    "NA.wav",  # pandas would read the id NA as a missing value
]
FORMATS = [  # name, rate, channels, subtype, seconds: odd but usable
    ("u8.wav", 8000, 1, "PCM_U8", 1.0),
    ("s24.flac", 96000, 2, "PCM_24", 1.0),
    ("s32 six channels.wav", 22050, 6, "PCM_32", 1.0),
    ("f64.wav", 44100, 1, "DOUBLE", 1.0),
    ("fifty ms.wav", 44100, 2, "PCM_16", 0.05),
]
BROKEN = {  # name -> (stage table, reason)
    "corrupt.wav": ("status", "ffmpeg"),
    "empty.wav": ("status", "ffmpeg"),
    "header only.wav": ("manifest", "empty"),
    "silent.wav": ("manifest", "silent"),
    "nan.wav": ("manifest", "non-finite samples"),
    "inf.wav": ("manifest", "non-finite samples"),
}


def hostile_folder(folder: Path) -> list[dict]:
    """Writes the files and ``captions.csv``; returns the manifest rows (file, caption, flag)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):  # plain clips, so that every split gets some
        name = f"take {i}.wav"
        write_clip(folder, name, None, float(rng.uniform(110, 880)))
        rows.append({"file": name, "caption": f"A sine tone, take {i}."})
    for name in SPECIAL_NAMES:
        write_clip(folder, name, None, float(rng.uniform(110, 880)))
        rows.append({"file": name, "caption": f"A tone with an odd name: {name}"})
    for name, rate, channels, subtype, seconds in FORMATS:
        write_array(folder, name, sine(440, rate, seconds, channels), rate, subtype)
        rows.append({"file": name, "caption": f"A {subtype} file at {rate} Hz."})
    (folder / "corrupt.wav").write_bytes(rng.bytes(5000))
    (folder / "empty.wav").write_bytes(b"")
    write_array(folder, "header only.wav", np.zeros((2, 0)), 44100, "PCM_16")
    write_array(folder, "silent.wav", np.zeros((1, 44100)), 44100, "PCM_16")
    write_array(folder, "nan.wav", nan_clip(np.nan), 44100, "FLOAT")
    write_array(folder, "inf.wav", nan_clip(np.inf), 44100, "DOUBLE")
    rows += [{"file": name, "caption": f"Broken: {name}"} for name in BROKEN]
    captions = {  # hostile captions on good files
        "take 0.wav": "<p>Soft <b>piano</b> &amp; strings</p>",
        "take 1.wav": "ctrl\x00chars\x1b and \u200bzero width",
        "take 2.wav": LONG_CAPTION,
        "take 3.wav": "静かなピアノ曲。Тихая музыка; موسيقى",
    }
    for row in rows:
        row["caption"] = captions.get(row["file"], row["caption"])
        row["is_audioset_eval"] = "no"
    rows += [
        {"file": "take 4.wav", "caption": "Listed again.", "is_audioset_eval": "no"},
        {"file": "missing.wav", "caption": "Not there.", "is_audioset_eval": "no"},
    ]
    write_clip(folder, "no caption.wav", None)
    write_clip(folder, "blank caption.wav", None)
    write_clip(folder, "odd flag.wav", None)
    rows += [
        {"file": "no caption.wav", "caption": "", "is_audioset_eval": "no"},
        {"file": "blank caption.wav", "caption": " \t ", "is_audioset_eval": "no"},
        {"file": "odd flag.wav", "caption": "Odd flag.", "is_audioset_eval": "maybe"},
    ]
    pd.DataFrame(rows).to_csv(folder / "captions.csv", index=False)
    with open(folder / "captions.csv", "a", encoding="utf-8") as f:
        f.write("short row.wav\n")  # one field of three
    return rows


def tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Relative path -> SHA-256 of every file below ``root`` outside the ``skip`` prefixes (and
    but for the ``.gitignore`` files DVC keeps of its outputs)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and not rel.startswith(skip) and p.name != ".gitignore":
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def declared_outputs(repo: Path) -> tuple[str, ...]:
    """Every stage's outs, metrics and plots, train's resume folder (its ``--checkpoint``, kept
    out of the outs on purpose), plus what DVC and git keep for themselves."""
    stages = YAML(typ="safe").load(repo / "dvc.yaml")["stages"]
    paths = [".git/", ".dvc/", "dvc.lock"]
    train_cmd = stages["train"]["cmd"].split()
    paths.append(train_cmd[train_cmd.index("--checkpoint") + 1] + "/")
    for stage in stages.values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind, []):
                paths.append(next(iter(entry)) if isinstance(entry, dict) else entry)
    return tuple(paths)


@pytest.mark.slow
def test_the_pipeline_survives_a_hostile_folder(tmp_path):
    """``dvc repro`` of every stage: each bad item's reason is recorded, the good ones reach the
    end, nothing is written outside the declared outputs (nor into the music folder)."""
    folder = tmp_path / "music"
    folder.mkdir()
    rows = hostile_folder(folder)
    params = {
        **SMALL,
        ("data", "source"): "folder",
        ("data", "folder", "path"): str(folder),
        ("data", "folder", "manifest"): "captions.csv",
        ("resample", "duration_s"): 1,
        ("codec", "fit", "codes_used"): 128,  # k-means needs more frames than codes
    }
    repo = copy_project(tmp_path / "repo", params)
    folder_before = tree(folder)
    repo_before = tree(repo, declared_outputs(repo))

    out = run(["dvc", "repro"], repo)

    assert ran_stages(out) == DATA_STAGES | {"train", "generate", "evaluate"}
    assert tree(folder) == folder_before
    assert tree(repo, declared_outputs(repo)) == repo_before
    status = pd.read_csv(repo / "data/raw/status.csv", keep_default_na=False)
    by_file = status.set_index("file")
    manifest = pd.read_csv(repo / "data/audio/manifest.csv", keep_default_na=False)
    resampled = manifest.set_index("ytid")
    for name, (table, reason) in BROKEN.items():
        if table == "status":
            assert by_file.at[name, "status"] == "failed" and reason in by_file.at[name, "reason"]
        else:
            ytid = by_file.at[name, "ytid"]
            assert resampled.at[ytid, "status"] == "skipped"
            assert resampled.at[ytid, "reason"] == reason
    reasons, row_of = by_file["reason"], {}
    for i, r in enumerate(rows + [{"file": "short row.wav"}]):
        row_of.setdefault(r["file"], []).append(i + 2)  # the header is row 1
    assert by_file.at["missing.wav", "status"] == "unavailable"
    assert (
        reasons["no caption.wav"]
        == f"captions.csv row {row_of['no caption.wav'][0]}, caption: no caption"
    )
    assert reasons["blank caption.wav"].endswith("caption: no caption")
    assert "is_audioset_eval: not a boolean: 'maybe'" in reasons["odd flag.wav"]
    rejected = pd.read_csv(repo / "data/raw/rejected.csv", keep_default_na=False)
    first, again = row_of["take 4.wav"]
    assert rejected["reason"].tolist() == [
        f"take 4.wav listed twice, rows {first} and {again} (the first is kept)"
    ]
    assert reasons["short row.wav"].startswith(
        f"captions.csv row {row_of['short row.wav'][0]}, row: 1 fields, the header has 3: no caption"
    )

    good = [r["file"] for r in rows[: 8 + len(SPECIAL_NAMES) + len(FORMATS)]]
    good_ids = set(by_file.loc[good, "ytid"])
    assert len(good_ids) == len(good)  # a b.wav and a_b.wav both survive
    assert (by_file.loc[good, "status"] == "ok").all()
    assert set(resampled.index[resampled["status"] == "ok"]) == good_ids
    splits = {
        n: (repo / f"data/split/{n}.txt").read_text().split() for n in ("train", "valid", "test")
    }
    assert set(sum(splits.values(), [])) == good_ids
    tokens = pd.read_csv(repo / "data/tokens/index.csv", keep_default_na=False)
    text = pd.read_csv(repo / "data/text/index.csv", keep_default_na=False)
    assert set(tokens["ytid"]) == good_ids and set(text["ytid"]) == good_ids
    generated = {p.stem for p in (repo / "data/generated/audio").glob("*.wav")}
    assert generated and generated <= set(splits["test"])
    details = json.loads((repo / "reports/eval/details.json").read_text())  # evaluate's sizes
    assert details["fd_clips"] == len(generated)
    metadata = pd.read_csv(repo / "data/raw/metadata.csv", keep_default_na=False).set_index("ytid")
    captions = metadata["caption"]
    assert captions[by_file.at["take 0.wav", "ytid"]] == "Soft piano & strings"
    assert captions[by_file.at["NA.wav", "ytid"]].endswith("NA.wav")


def test_manifest_paths_outside_the_folder_or_unusable_are_invalid(tmp_path):
    (tmp_path / "m.csv").write_text(
        'file,caption\n"a\x00b.wav",x\n../../etc/passwd,y\n/etc/hostname,z\n'
    )
    tables = import_folder(FolderConfig(str(tmp_path), "m.csv"), tmp_path / "out", False)
    assert tables.status["reason"].tolist() == [
        "m.csv row 2, file: not a usable path (a NUL byte)",
        "m.csv row 3, file: outside the folder",
        "m.csv row 4, file: outside the folder",
    ]
    assert not list((tmp_path / "out").iterdir())
    write_clip(tmp_path / "elsewhere", "x.wav", None)  # a link to music kept elsewhere is fine
    (tmp_path / "music").mkdir()
    (tmp_path / "music" / "linked.wav").symlink_to(tmp_path / "elsewhere" / "x.wav")
    (tmp_path / "music" / "linked.txt").write_text("A linked file.")
    tables = import_folder(FolderConfig(str(tmp_path / "music")), tmp_path / "out", False)
    assert tables.status["status"].tolist() == ["ok"]
