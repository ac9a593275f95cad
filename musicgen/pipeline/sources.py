"""Stage download: clips, MusicCaps-style metadata and a status per clip, from any source."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pandas as pd

from musicgen.data.store import save_table
from musicgen.data.tables import REJECTED, SourceTables, rejected_table
from musicgen.pipeline.common import AUDIO, METADATA, STATUS

log = logging.getLogger(__name__)


def download(params: dict, out_dir: Path, store_dir: Path, progress: bool = True) -> None:
    """The download stage: clips in ``out_dir/audio``, ``metadata.csv`` and ``status.csv``.

    ``metadata.csv`` lists every clip of the source with the MusicCaps columns; ``status.csv`` says
    what became of each (``ok`` or why not); only ``ok`` clips have a file. ``rejected.csv`` lists
    the rows of a metadata file or manifest that became no clip (a repeated id or file, no id),
    with the file, row, field and reason. ``store_dir`` is the persistent store of downloads (a
    ``persist`` output), which outlives the stage's reruns.

    Args:
        params: the ``data`` section: ``source`` is ``synthetic``, ``musiccaps`` or ``folder``.
    """
    source, audio_dir = params["source"], out_dir / AUDIO
    shutil.rmtree(audio_dir, ignore_errors=True)
    store_dir.mkdir(parents=True, exist_ok=True)
    if source == "synthetic":
        tables = synthetic_source(params["synthetic"], audio_dir, progress)
    elif source == "musiccaps":
        from musicgen.data.musiccaps import MusicCapsConfig, fetch_musiccaps

        cfg = MusicCapsConfig(**params["musiccaps"])
        tables = fetch_musiccaps(cfg, store_dir / "musiccaps", audio_dir, progress)
    elif source == "folder":
        from musicgen.data.folder import FolderConfig, import_folder

        tables = import_folder(FolderConfig(**params["folder"]), audio_dir, progress)
    else:
        raise ValueError(f"data.source must be synthetic, musiccaps or folder, not {source!r}")
    save_table(out_dir / METADATA, tables.metadata)
    save_table(out_dir / STATUS, tables.status)
    save_table(out_dir / REJECTED, tables.rejected)
    log.info("download: %s", tables.status["status"].value_counts().to_dict())
    for row in tables.rejected.itertuples():
        log.warning("rejected: %s row %s, %s: %s", row.file, row.row, row.field, row.reason)


def synthetic_source(params: dict, audio_dir: Path, progress: bool) -> SourceTables:
    """The synthetic set: its metadata, and a status table in which every clip is ``ok``."""
    from musicgen.data.synthetic import SyntheticConfig, make_synthetic_dataset

    metadata = make_synthetic_dataset(audio_dir, SyntheticConfig(**params), progress=progress)
    sizes = [(audio_dir / f"{y}.wav").stat().st_size for y in metadata["ytid"]]
    status = pd.DataFrame(
        {
            "ytid": metadata["ytid"],
            "status": "ok",
            "reason": "",
            "duration": metadata["end_s"] - metadata["start_s"],
            "bytes": sizes,
        }
    )
    return SourceTables(metadata, status, rejected_table([], []))
