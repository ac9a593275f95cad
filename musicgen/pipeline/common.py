"""What every stage family shares: the layout of ``data/raw`` and the split lists."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from musicgen.data.splits import SPLITS

METADATA = "metadata.csv"  # MusicCaps columns, one row per clip
STATUS = "status.csv"  # ytid, status, reason, duration, bytes (musiccaps: and attempts)
AUDIO = "audio"


def read_metadata(raw_dir: Path) -> pd.DataFrame:
    """``metadata.csv``; a caption such as "NA" or "null" stays text (only times may be missing)."""
    return pd.read_csv(
        raw_dir / METADATA,
        dtype={"ytid": str, "caption": str},
        keep_default_na=False,
        na_values={"start_s": [""], "end_s": [""]},
    )


def read_split(split_dir: Path, name: str) -> list[str]:
    return (split_dir / f"{name}.txt").read_text().split()


def used_ids(split_dir: Path) -> list[str]:
    """Every id in any split, in split order."""
    return [y for name in SPLITS for y in read_split(split_dir, name)]
