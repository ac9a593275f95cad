"""The MusicCaps source: Google's metadata CSV, and its clips fetched from YouTube.

The CSV (``data/musiccaps/musiccaps-public.csv``, CC BY-SA 4.0, see ``data/musiccaps/NOTICE.md``)
lists 5,521 ten-second sections of YouTube videos with a caption each. :func:`fetch_musiccaps`
downloads them into a persistent store (see :mod:`musicgen.data.download`) and returns the tables
the download stage writes: the metadata (every listed row) and a status per clip.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from musicgen.data.download import (
    INVALID,
    OK,
    STATUS_COLUMNS,
    Clip,
    DownloadConfig,
    clip_path,
    download_clips,
    link_clips,
    status_row,
)
from musicgen.data.synthetic import MUSICCAPS_COLUMNS
from musicgen.data.tables import (
    Problem,
    SourceTables,
    clean_caption,
    parse_bool,
    parse_seconds,
    read_csv_rows,
    rejected_table,
)

log = logging.getLogger(__name__)

MUSICCAPS_CSV = "data/musiccaps/musiccaps-public.csv"
REQUIRED_COLUMNS = ("ytid", "start_s", "end_s", "caption")
DEFAULTS = {  # of the optional columns
    "audioset_positive_labels": "",
    "aspect_list": "[]",
    "author_id": -1,
    "is_balanced_subset": False,
    "is_audioset_eval": False,
}


@dataclass
class MusicCapsConfig(DownloadConfig):
    """Which rows of the CSV to fetch, and how (see :class:`DownloadConfig` for the rest).

    Attributes:
        csv: The MusicCaps metadata file.
        limit: Only the first ``limit`` rows (a trial run); 0 for all.
    """

    csv: str = MUSICCAPS_CSV
    limit: int = 0


def read_musiccaps(path: str | Path) -> tuple[pd.DataFrame, dict[str, str], pd.DataFrame]:
    """Reads a MusicCaps-format CSV (embedded line breaks and CRLF are fine), row by row.

    A row whose id repeats an earlier row's, or that has no id, becomes no clip: it is recorded in
    the rejected table (the first row with an id is kept). Every other row is a clip; what is wrong
    with it (a short or long row, times that are not numbers or end before they start, an empty
    caption, a flag that is not a boolean) makes it ``invalid``, with the reason naming the file,
    the row and the field. Captions are cleaned (:func:`clean_caption`). Absent optional columns
    get MusicCaps' defaults.

    Returns:
        the metadata (MusicCaps columns, typed), id -> reason of the invalid clips, and the
        rejected rows.

    Raises:
        ValueError: the file is empty or lacks a required column (``ytid``, ``start_s``,
            ``end_s``, ``caption``).
    """
    header, rows = read_csv_rows(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"{path}: no column {', '.join(missing)} in the header {header}; a MusicCaps CSV has "
            f"{', '.join(MUSICCAPS_COLUMNS)}"
        )
    for column in MUSICCAPS_COLUMNS:
        if column not in header:
            log.warning("%s: no column %s, every row gets %r", path, column, DEFAULTS[column])
    entries, invalid, rejected, rejected_ids = [], {}, [], []
    first_row: dict[str, int] = {}
    for row, record in rows:
        ytid = record.get("ytid", "").strip()
        if not ytid:
            rejected.append(Problem(str(path), row, "ytid", "no id"))
            rejected_ids.append("")
        elif ytid in first_row:
            reason = f"repeats the id of row {first_row[ytid]} (the first is kept)"
            rejected.append(Problem(str(path), row, "ytid", reason))
            rejected_ids.append(ytid)
        else:
            first_row[ytid] = row
            entry, problems = parse_row(record, str(path), row)
            entries.append(entry)
            if problems:
                invalid[ytid] = "; ".join(map(str, problems))
    metadata = pd.DataFrame(entries, columns=MUSICCAPS_COLUMNS)
    return metadata, invalid, rejected_table(rejected, rejected_ids)


def parse_row(record: dict[str, str], path: str, row: int) -> tuple[dict, list[Problem]]:
    """One CSV row as a metadata entry, and what is wrong with it."""
    problems = [Problem(path, row, "row", record["__problem__"])] if "__problem__" in record else []
    entry: dict = {"ytid": record["ytid"].strip()}
    for column in ("start_s", "end_s"):
        entry[column] = parse_seconds(record.get(column, ""))
        if entry[column] is None:
            value = record.get(column, "")
            problems.append(Problem(path, row, column, f"not a number of seconds: {value!r}"))
            entry[column] = math.nan
    if entry["end_s"] <= entry["start_s"]:
        reason = f"end_s {entry['end_s']:g} is not after start_s {entry['start_s']:g}"
        problems.append(Problem(path, row, "end_s", reason))
    entry["caption"] = clean_caption(record.get("caption", ""))
    if not entry["caption"]:
        problems.append(Problem(path, row, "caption", "empty"))
    for column in ("audioset_positive_labels", "aspect_list"):
        entry[column] = record.get(column, DEFAULTS[column])
    author = record.get("author_id", "").strip()
    entry["author_id"] = int(author) if re.fullmatch(r"-?\d+", author) else DEFAULTS["author_id"]
    for column in ("is_balanced_subset", "is_audioset_eval"):
        flag = parse_bool(record.get(column, ""))
        if flag is None:
            reason = f"not a boolean: {record[column]!r} (true/false, yes/no, 1/0)"
            problems.append(Problem(path, row, column, reason))
        entry[column] = bool(flag)
    return entry, problems


def fetch_musiccaps(
    cfg: MusicCapsConfig, store_dir: Path, audio_dir: Path, progress: bool = True
) -> SourceTables:
    """Downloads the listed clips into ``store_dir`` and links the finished ones into ``audio_dir``.

    Invalid rows (see :func:`read_musiccaps`) are never requested.

    Returns:
        the metadata (every listed clip, whatever became of it), the status table and the
        rejected rows.
    """
    metadata, invalid, rejected = read_musiccaps(cfg.csv)
    if cfg.limit:
        metadata = metadata.head(cfg.limit)
    metadata = metadata.reset_index(drop=True)
    clips = [
        Clip(r.ytid, float(r.start_s), float(r.end_s))
        for r in metadata[["ytid", "start_s", "end_s"]].itertuples()
        if r.ytid not in invalid
    ]
    fetched = download_clips(clips, store_dir, cfg, progress).set_index("ytid", drop=False)
    rows = [
        status_row(y, INVALID, invalid[y]) if y in invalid else fetched.loc[y].to_dict()
        for y in metadata["ytid"]
    ]
    status = pd.DataFrame(rows, columns=STATUS_COLUMNS)
    ok = status.loc[status["status"] == OK, "ytid"]
    link_clips([clip_path(store_dir, y, cfg) for y in ok], audio_dir)
    return SourceTables(metadata, status, rejected)
