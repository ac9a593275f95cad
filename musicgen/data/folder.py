"""A folder of your own music as a source: audio files and a caption for each.

Captions come from one of:

- a CSV manifest with the columns ``file`` (a path relative to the folder) and ``caption``, and
  optionally ``id`` and any MusicCaps column (e.g. ``is_audioset_eval`` to choose the test clips);
- a JSONL manifest with the same keys, one object per line;
- sidecar text files (when there is no manifest): ``a/song.txt`` holds the caption of ``a/song.wav``.

Each clip gets an id (the manifest's ``id``, else its path without the extension, every run of
characters outside ``[A-Za-z0-9_-]`` made ``_``) and lands in the download stage's layout: files
libsndfile reads are copied as they are, others (m4a, webm, ...) are converted to FLAC with ffmpeg.
Clips without a caption are listed as ``invalid``, missing files as ``unavailable``, files that
neither libsndfile nor ffmpeg can read as ``failed``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import soundfile as sf
from tqdm import tqdm

from musicgen.data.download import FAILED, INVALID, OK, UNAVAILABLE, status_row
from musicgen.data.synthetic import MUSICCAPS_COLUMNS
from musicgen.io import atomic_path

AUDIO_EXTENSIONS = {
    ".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff",
    ".m4a", ".aac", ".mp4", ".webm", ".mka", ".wma",
}  # fmt: skip
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]+")  # ids name files: no dots, slashes or glob characters
BOOL_COLUMNS = ("is_balanced_subset", "is_audioset_eval")
STATUS_COLUMNS = ["ytid", "status", "reason", "duration", "bytes"]


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
    """The id of a clip from its path relative to the folder: ``a/b c.wav`` -> ``a_b_c``."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", Path(file).with_suffix("").as_posix()).strip("_")


def read_manifest(path: Path) -> pd.DataFrame:
    """A CSV or JSONL manifest as strings (``file``, ``caption``, optional columns).

    Raises:
        ValueError: an unknown suffix, or no ``file`` / ``caption`` column.
    """
    if path.suffix == ".csv":
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    elif path.suffix in (".jsonl", ".ndjson"):
        lines = path.read_text(encoding="utf-8").splitlines()
        table = pd.DataFrame([json.loads(line) for line in lines if line.strip()], dtype=object)
        table = table.fillna("").astype(str)
    else:
        raise ValueError(f"{path}: a manifest is a .csv or .jsonl file")
    missing = {"file", "caption"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {sorted(missing)}")
    return table


def scan_sidecars(folder: Path) -> pd.DataFrame:
    """Every audio file below ``folder`` with the caption of its ``.txt`` sidecar ("" if none)."""
    rows = []
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in AUDIO_EXTENSIONS and path.is_file():
            text = path.with_suffix(".txt")
            caption = text.read_text(encoding="utf-8").strip() if text.is_file() else ""
            rows.append({"file": path.relative_to(folder).as_posix(), "caption": caption})
    return pd.DataFrame(rows, columns=["file", "caption"])


def list_clips(cfg: FolderConfig) -> pd.DataFrame:
    """The clips of the folder: ``ytid``, ``file`` and ``caption`` (plus manifest columns).

    Raises:
        ValueError: two clips would get the same id.
    """
    folder = Path(cfg.path)
    if cfg.manifest:
        manifest = Path(cfg.manifest)
        table = read_manifest(manifest if manifest.is_absolute() else folder / manifest)
    else:
        table = scan_sidecars(folder)
    ids = table["id"] if "id" in table.columns else table["file"].map(clip_id)
    table = table.drop(columns=["id"], errors="ignore").assign(ytid=ids.astype(str))
    repeated = sorted(set(table.loc[table["ytid"].duplicated(), "ytid"]))
    if repeated:
        raise ValueError(f"{folder}: several files map to the ids {repeated[:5]}; rename them")
    return table


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


def import_clip(folder: Path, file: str, ytid: str, caption: str, audio_dir: Path) -> dict:
    """Brings one clip into ``audio_dir``.

    Returns:
        its status row.
    """
    src = folder / file
    if not ID_PATTERN.fullmatch(ytid):
        return status_row(ytid, INVALID, f"id must match {ID_PATTERN.pattern}")
    if not caption.strip():
        return status_row(ytid, INVALID, "no caption")
    if not src.is_file():
        return status_row(ytid, UNAVAILABLE, f"no such file: {file}")
    try:
        return status_row(ytid, OK, path=import_audio(src, audio_dir / ytid))
    except (RuntimeError, OSError) as e:
        return status_row(ytid, FAILED, " ".join(str(e).split())[:300])


def _as_bool(value: object) -> bool:
    return str(value).strip().lower() in ("true", "1", "yes")


def folder_metadata(clips: pd.DataFrame, status: pd.DataFrame) -> pd.DataFrame:
    """The MusicCaps-column table of the clips; manifest columns win over the defaults."""
    table = pd.DataFrame(
        {
            "ytid": clips["ytid"],
            "start_s": 0,
            "end_s": status["duration"].to_numpy(),
            "audioset_positive_labels": "",
            "aspect_list": "[]",
            "caption": clips["caption"].str.strip(),
            "author_id": -1,
            "is_balanced_subset": False,
            "is_audioset_eval": False,
        }
    )
    for column in MUSICCAPS_COLUMNS[1:]:
        if column in clips.columns and column != "caption":
            given = clips[column]
            table[column] = given.map(_as_bool) if column in BOOL_COLUMNS else given
    return table


def import_folder(
    cfg: FolderConfig, audio_dir: Path, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Brings a folder of music into the download stage's layout.

    Returns:
        the metadata (MusicCaps columns, one row per listed clip) and the status table.
    """
    folder = Path(cfg.path)
    clips = list_clips(cfg).reset_index(drop=True)
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows = [
        import_clip(folder, r.file, r.ytid, r.caption, audio_dir)
        for r in tqdm(
            clips[["file", "ytid", "caption"]].itertuples(),
            total=len(clips),
            desc="folder",
            unit="clip",
            disable=not progress,
        )
    ]
    status = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    return folder_metadata(clips, status), status
