"""The MusicCaps source: Google's metadata CSV, and its clips fetched from YouTube.

The CSV (``data/musiccaps/musiccaps-public.csv``, CC BY-SA 4.0, see ``data/musiccaps/NOTICE.md``)
lists 5,521 ten-second sections of YouTube videos with a caption each. :func:`fetch_musiccaps`
downloads them into a persistent store (see :mod:`musicgen.data.download`) and returns the tables
the download stage writes: the metadata (every listed row) and a status per clip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from musicgen.data.download import (
    OK,
    Clip,
    DownloadConfig,
    clip_path,
    download_clips,
    link_clips,
)
from musicgen.data.synthetic import MUSICCAPS_COLUMNS

MUSICCAPS_CSV = "data/musiccaps/musiccaps-public.csv"


@dataclass
class MusicCapsConfig(DownloadConfig):
    """Which rows of the CSV to fetch, and how (see :class:`DownloadConfig` for the rest).

    Attributes:
        csv: The MusicCaps metadata file.
        limit: Only the first ``limit`` rows (a trial run); 0 for all.
    """

    csv: str = MUSICCAPS_CSV
    limit: int = 0


def read_musiccaps(path: str | Path) -> pd.DataFrame:
    """Reads a MusicCaps-format CSV (embedded line breaks and CRLF are fine).

    Raises:
        ValueError: a column is missing or an id repeats (ids name files).
    """
    table = pd.read_csv(path, dtype={"ytid": str}, keep_default_na=False)
    missing = [c for c in MUSICCAPS_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    repeated = table.loc[table["ytid"].duplicated(), "ytid"].tolist()
    if repeated:
        raise ValueError(f"{path}: repeated ids {repeated[:5]}")
    return table[MUSICCAPS_COLUMNS]


def fetch_musiccaps(
    cfg: MusicCapsConfig, store_dir: Path, audio_dir: Path, progress: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Downloads the listed clips into ``store_dir`` and links the finished ones into ``audio_dir``.

    Returns:
        the metadata (every listed row, whatever became of its clip) and the status table.
    """
    metadata = read_musiccaps(cfg.csv)
    if cfg.limit:
        metadata = metadata.head(cfg.limit)
    clips = [
        Clip(r.ytid, float(r.start_s), float(r.end_s))
        for r in metadata[["ytid", "start_s", "end_s"]].itertuples()
    ]
    status = download_clips(clips, store_dir, cfg, progress)
    ok = status.loc[status["status"] == OK, "ytid"]
    link_clips([clip_path(store_dir, y, cfg) for y in ok], audio_dir)
    return metadata.reset_index(drop=True), status
