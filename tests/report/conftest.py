"""Fixtures of the report tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reporthelpers import (
    CLAP,
    DURATIONS,
    FAD,
    HOSTILE_CAPTIONS,
    HOSTILE_IDS,
    SAMPLE_RATE,
    SUBTYPES,
    gallery_dir,
    tone,
)

from musicgen.data.audio import write_wav
from musicgen.report.gallery import GalleryItem, write_gallery


@pytest.fixture
def hostile_items(tmp_path) -> list[GalleryItem]:
    """Three items with short wavs (outside the gallery's folder) and hostile ids and captions:
    reference, codec round trip and generated clip each."""
    src = tmp_path / "clips"
    items = []
    for i, seconds in enumerate(DURATIONS):
        ref, trip, gen = src / f"ref{i}.wav", src / f"trip{i}.wav", src / f"gen{i}.wav"
        write_wav(ref, tone(220.0 * (i + 1), seconds, i), SAMPLE_RATE, SUBTYPES[i])
        write_wav(trip, tone(220.0 * (i + 1), seconds, 20 + i), SAMPLE_RATE, SUBTYPES[i])
        write_wav(gen, tone(330.0 * (i + 1), seconds, 10 + i), SAMPLE_RATE, SUBTYPES[-1 - i])
        scores = {"fad": FAD[i], "clap": CLAP[i]}
        items.append(GalleryItem(HOSTILE_IDS[i], HOSTILE_CAPTIONS[i], ref, gen, scores, trip))
    return items


@pytest.fixture
def run_info() -> dict:
    """Metrics, params and curves as the evaluate stage passes them (with hostile text too)."""
    return {
        "metrics": {
            "fad_vggish": {"value": 3.25, "embedder": "vggish<script>"},
            "n": 3,
            "<em>k</em>": 1,
        },
        "params": {"data.source": "synthetic", "lm.preset": "<i>tiny</i>", "train.steps": 300},
        "curves": pd.DataFrame(
            {
                "step": [0, 10, 20, 30],
                "train_loss": [8.0, 7.5, 7.2, 7.0],
                "val_ce": [7.9, np.nan, 7.3, np.nan],
            }
        ),
    }


@pytest.fixture
def gallery(tmp_path, hostile_items, run_info) -> Path:
    """The gallery of :func:`hostile_items` with curves; returns its index.html."""
    return write_gallery(gallery_dir(tmp_path), items=hostile_items, **run_info)
