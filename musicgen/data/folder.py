"""A folder of your own music as a source: audio files and a caption for each.

Captions come from one of:

- a CSV manifest with the columns ``file`` (a path relative to the folder) and ``caption``, and
  optionally ``id`` and any MusicCaps column (e.g. ``is_audioset_eval`` to choose the test clips);
- a JSONL manifest with the same keys, one object per line;
- sidecar text files (when there is no manifest): ``a/song.txt`` holds the caption of ``a/song.wav``.

Each clip gets an id (the manifest's ``id``, else its path without the extension, every run of
characters outside ``[A-Za-z0-9_-]`` made ``_``; files whose paths reduce to the same id all get a
suffix hashed from their name, so both survive) and lands in the download stage's layout: files
libsndfile reads are copied as they are, others (m4a, webm, ...) are converted to FLAC with ffmpeg.
Clips without a caption, or with a bad id or flag, are listed as ``invalid``, missing files as
``unavailable``, files that neither libsndfile nor ffmpeg can read as ``failed``, each with the
reason; a file listed twice is kept once and the repeat recorded in ``rejected.csv``. The status
table keeps each clip's ``file`` as it was named.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import soundfile as sf
from tqdm import tqdm

from musicgen.data.download import FAILED, INVALID, OK, UNAVAILABLE, status_row
from musicgen.data.tables import (
    Problem,
    SourceTables,
    clean_caption,
    parse_bool,
    read_csv_rows,
    read_jsonl_rows,
    rejected_table,
)
from musicgen.io import atomic_path

AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff",
    ".m4a", ".aac", ".mp4", ".webm", ".mka", ".wma",
}  # fmt: skip
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # ids name files: no dots, slashes or glob characters
NA_WORDS = {"na", "nan", "-nan", "null", "none"}  # ids pandas would read back as missing values
BOOL_COLUMNS = ("is_balanced_subset", "is_audioset_eval")
STATUS_COLUMNS = ["ytid", "status", "reason", "duration", "bytes", "file"]


@dataclass
class FolderConfig:
    """Where the music is.

    Attributes:
        path: The folder.
        manifest: A ``.csv`` or ``.jsonl`` file (relative to the folder, or absolute), or None for
            sidecar ``.txt`` captions.
    """

    path: str | None = None
    manifest: str | None = None

    def __post_init__(self) -> None:
        if not self.path or not Path(self.path).is_dir():
            raise FileNotFoundError(f"data.folder.path is not a folder: {self.path!r}")


def clip_id(file: str) -> str:
    """The id of a clip from its path relative to the folder: ``a/b c.wav`` -> ``a_b_c``,
    ``Café.flac`` -> ``Cafe`` (accents dropped, other characters made ``_``)."""
    stem = unicodedata.normalize("NFKD", Path(file).with_suffix("").as_posix())
    stem = "".join(c for c in stem if not unicodedata.combining(c))
    return re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")


def hashed_id(file: str) -> str:
    """An id for ``file`` that no other name gets: :func:`clip_id` and 8 hex digits of a hash of
    the name (``a b.wav`` -> ``a_b-1f0c9e4a``)."""
    return f"{clip_id(file) or 'clip'}-{hashlib.sha256(file.encode()).hexdigest()[:8]}"


def read_manifest(path: Path) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV or JSONL manifest as strings, with their row numbers
    (see :mod:`musicgen.data.tables`).

    Raises:
        ValueError: an unknown suffix, an empty file, or no ``file`` / ``caption`` column.
    """
    if path.suffix == ".csv":
        header, rows = read_csv_rows(path)
    elif path.suffix in (".jsonl", ".ndjson"):
        header, rows = read_jsonl_rows(path)
    else:
        raise ValueError(f"{path}: a manifest is a .csv or .jsonl file")
    missing = {"file", "caption"} - set(header)
    if missing:
        raise ValueError(f"{path}: no column {', '.join(sorted(missing))} (header: {header})")
    return rows


def scan_sidecars(folder: Path) -> list[tuple[int, dict[str, str]]]:
    """Every audio file below ``folder`` with the caption of its ``.txt`` sidecar ("" if none)."""
    rows = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            text = path.with_suffix(".txt")
            caption = text.read_text(encoding="utf-8", errors="replace") if text.is_file() else ""
            rows.append((0, {"file": path.relative_to(folder).as_posix(), "caption": caption}))
    return rows


def list_clips(cfg: FolderConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The clips of the folder, and the listed rows that are no clip.

    Ids: the manifest's ``id``, else the path without the extension (:func:`clip_id`). Files whose
    paths reduce to the same id all get a hashed suffix (:func:`hashed_id`), so each survives. A file
    listed twice, or an ``id`` given twice, is kept once: the later rows are rejected, saying so.

    Returns:
        the clips (``ytid``, ``file``, ``caption``, ``row``, ``problem``: "" or what makes the clip
        invalid, plus manifest columns) and the rejected rows (:data:`REJECTED_COLUMNS`).
    """
    folder = Path(cfg.path)
    if cfg.manifest:
        manifest = Path(cfg.manifest)
        source = manifest if manifest.is_absolute() else folder / manifest
        rows = read_manifest(source)
    else:
        source, rows = folder, scan_sidecars(folder)
    rejected: list[Problem] = []
    rejected_ids: list[str] = []
    clips, first_row = [], {}
    for row, record in rows:
        file = record.get("file", "").strip()
        key = posixpath.normpath(file) if file else ""
        if not file:
            rejected.append(Problem(str(source), row, "file", "no file named"))
            rejected_ids.append(record.get("id", ""))
        elif key in first_row:
            reason = f"{file} listed twice, rows {first_row[key]} and {row} (the first is kept)"
            rejected.append(Problem(str(source), row, "file", reason))
            rejected_ids.append(record.get("id", ""))
        else:
            first_row[key] = row
            clips.append({**record, "file": file, "row": row})
    table = pd.DataFrame(clips).reindex(
        columns=list(dict.fromkeys(["file", "caption", "row", *(k for c in clips for k in c)]))
    )
    table = table.fillna("")
    given = table["id"].astype(str).str.strip() if "id" in table else pd.Series("", table.index)
    derived = table["file"].map(lambda f: clip_id(f) or "clip")
    clash = (derived.map(derived.value_counts()) > 1) | derived.str.lower().isin(NA_WORDS)
    derived[clash] = table.loc[clash, "file"].map(hashed_id)
    table["ytid"] = given.where(given != "", derived)
    repeated = table["ytid"].duplicated()
    first_of = dict(zip(table["ytid"][~repeated], table["row"][~repeated], strict=True))
    for r in table[repeated].itertuples():
        reason = f"id {r.ytid!r} repeats row {first_of[r.ytid]}'s (the first is kept)"
        rejected.append(Problem(str(source), r.row, "id", reason))
        rejected_ids.append(r.ytid)
    table = table[~repeated].drop(columns=["id"], errors="ignore").reset_index(drop=True)
    table["problem"] = [clip_problem(folder, str(source), r) for r in table.to_dict("records")]
    return table, rejected_table(rejected, rejected_ids)


def clip_problem(folder: Path, source: str, record: dict) -> str:
    """What makes a listed clip invalid ("" if nothing), naming the file, row and field."""
    where = Path(record["file"]).name if source == str(folder) else source
    problems = []
    if "__problem__" in record and record["__problem__"]:
        problems.append(Problem(where, record["row"], "row", record["__problem__"]))
    if record["ytid"].lower() in NA_WORDS:
        reason = f"id {record['ytid']!r} reads as a missing value in CSV tables"
        problems.append(Problem(where, record["row"], "id", reason))
    elif not ID_PATTERN.fullmatch(record["ytid"]):
        reason = f"id {record['ytid']!r} must match {ID_PATTERN.pattern}"
        problems.append(Problem(where, record["row"], "id", reason))
    if not clean_caption(record["caption"]):
        problems.append(Problem(where, record["row"], "caption", "no caption"))
    path = posixpath.normpath(record["file"].replace("\\", "/"))
    if "\0" in path:
        problems.append(Problem(where, record["row"], "file", "not a usable path (a NUL byte)"))
    elif posixpath.isabs(path) or path == ".." or path.startswith("../"):  # links inside are fine
        problems.append(Problem(where, record["row"], "file", "outside the folder"))
    for column in BOOL_COLUMNS:
        if column in record and parse_bool(record[column]) is None:
            reason = f"not a boolean: {record[column]!r} (true/false, yes/no, 1/0)"
            problems.append(Problem(where, record["row"], column, reason))
    return "; ".join(map(str, problems))


def import_audio(src: Path, dst_stem: Path) -> Path:
    """Copies ``src`` beside ``dst_stem`` if libsndfile reads it, else converts it to FLAC.

    Returns:
        the written file.

    Raises:
        RuntimeError: ffmpeg could not convert it either.
    """
    try:
        sf.info(str(src))
    except (RuntimeError, sf.LibsndfileError):
        dst = dst_stem.with_suffix(".flac")
        with atomic_path(dst) as tmp:
            cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(src)]
            cmd += ["-vn", "-map", "0:a:0", "-c:a", "flac", "-f", "flac", str(tmp)]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"ffmpeg: {' '.join(done.stderr.split())[:300]}") from None
        return dst
    dst = dst_stem.with_suffix(src.suffix.lower())
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def import_clip(folder: Path, clip: dict, audio_dir: Path) -> dict:
    """Brings one listed clip (a row of :func:`list_clips`) into ``audio_dir``.

    Returns:
        its status row, with the file's name as it was listed.
    """
    ytid, file = clip["ytid"], clip["file"]
    src = folder / file
    if clip["problem"]:
        row = status_row(ytid, INVALID, clip["problem"])
    elif not src.is_file():
        row = status_row(ytid, UNAVAILABLE, f"no such file: {file}")
    else:
        try:
            row = status_row(ytid, OK, path=import_audio(src, audio_dir / ytid))
        except (RuntimeError, OSError) as e:
            row = status_row(ytid, FAILED, f"{file}: " + " ".join(str(e).split())[:300])
    return {**row, "file": file}


def folder_metadata(clips: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """The MusicCaps-column table of the clips; manifest columns win over the defaults, except
    ``start_s`` and ``end_s`` (the imported file, whole); unreadable flags are False (and the clip
    is invalid, see :func:`clip_problem`)."""
    table = pd.DataFrame(
        {
            "ytid": clips["ytid"],
            "start_s": 0.0,
            "end_s": status["duration"].to_numpy(),
            "audioset_positive_labels": "",
            "aspect_list": "[]",
            "caption": clips["caption"].map(clean_caption),
            "author_id": -1,
            "is_balanced_subset": False,
            "is_audioset_eval": False,
        }
    )
    for column in ("audioset_positive_labels", "aspect_list"):
        if column in clips.columns:
            table[column] = clips[column]
    if "author_id" in clips.columns:
        table["author_id"] = pd.to_numeric(clips["author_id"], errors="coerce").fillna(-1)
        table["author_id"] = table["author_id"].astype(int)
    for column in BOOL_COLUMNS:
        if column in clips.columns:
            table[column] = clips[column].map(lambda v: bool(parse_bool(v)))
    return table


def import_folder(cfg: FolderConfig, audio_dir: Path, progress: bool = True) -> SourceTables:
    """Brings a folder of music into the download stage's layout.

    Returns:
        the metadata (MusicCaps columns, one row per listed clip), the status table (with the
        ``file`` each id came from) and the rejected rows.
    """
    folder = Path(cfg.path)
    clips, rejected = list_clips(cfg)
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        import_clip(folder, clip, audio_dir)
        for clip in tqdm(clips.to_dict("records"), desc="folder", unit="clip", disable=not progress)
    ]
    status = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    return SourceTables(folder_metadata(clips, status), status, rejected)
