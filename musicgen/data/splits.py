"""Train / valid / test splits that stay put when other clips come and go.

A clip's split is a function of its id and the seed alone (a seeded hash mapped to [0, 1) and cut at
the cumulative fractions), so a clip that fails to download or is filtered out never moves another
clip to a different split.
"""

from __future__ import annotations

import hashlib
import re

import pandas as pd

SPLITS = ("train", "valid", "test")


def unit_hash(key: str, seed: int) -> float:
    """Maps ``key`` to a number in [0, 1) by a seeded SHA-256."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(ytid: str, fractions: tuple[float, float, float], seed: int) -> str:
    """The split of one id for the given (train, valid, test) fractions."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"split fractions must be three non-negative numbers summing to 1, got {fractions}"
        )
    u = unit_hash(ytid, seed)
    edge = 0.0
    for name, frac in zip(SPLITS, fractions, strict=True):
        edge += frac
        if u < edge:
            return name
    return SPLITS[-1]


def keyword_mask(captions: pd.Series, keywords: list[str]) -> pd.Series:
    """True where a caption contains none of ``keywords`` as whole words (case-insensitive)."""
    if not keywords:
        return pd.Series(True, index=captions.index)
    pattern = r"\b(?:" + "|".join(re.escape(k) for k in keywords) + r")\b"
    return ~captions.fillna("").str.contains(pattern, case=False, regex=True)


def make_splits(
    metadata: pd.DataFrame,
    usable: set[str],
    fractions: tuple[float, float, float],
    seed: int,
    exclude_keywords: list[str] | None = None,
) -> dict[str, list[str]]:
    """Assigns each usable, unfiltered clip to a split.

    Args:
        metadata: the MusicCaps-style table (``ytid``, ``caption``, ...).
        usable: ids whose audio made it through the resample stage.
        fractions: (train, valid, test), summing to 1.
        seed: the hash seed.
        exclude_keywords: captions with any of these whole words are dropped.

    Returns:
        split name -> sorted ids.
    """
    keep = metadata["ytid"].isin(usable) & keyword_mask(metadata["caption"], exclude_keywords or [])
    out: dict[str, list[str]] = {name: [] for name in SPLITS}
    for ytid in metadata.loc[keep, "ytid"]:
        out[assign_split(ytid, fractions, seed)].append(ytid)
    return {name: sorted(ids) for name, ids in out.items()}
