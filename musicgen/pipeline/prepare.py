"""Stages resample and split: audio at the codec's rate, and the train / valid / test lists."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from musicgen.data.audio import ResampleConfig, resample_clips
from musicgen.data.splits import SplitConfig, filter_clips, make_splits
from musicgen.data.store import save_table
from musicgen.params import write_json
from musicgen.pipeline.common import AUDIO, STATUS, read_metadata


def resample(params: dict, raw_dir: Path, out_dir: Path, progress: bool = True) -> None:
    """The resample stage: ``out_dir/<ytid>.wav`` mono at the codec rate and ``manifest.csv``.

    Args:
        params: the ``resample`` section.
    """
    status = pd.read_csv(raw_dir / STATUS, dtype={"ytid": str})
    ids = status.loc[status["status"] == "ok", "ytid"].tolist()
    manifest = resample_clips(ids, raw_dir / AUDIO, out_dir, ResampleConfig(**params), progress)
    save_table(out_dir / "manifest.csv", manifest)


def split(params: dict, raw_dir: Path, audio_dir: Path, out_dir: Path, metrics_path: Path) -> None:
    """The split stage: ``train.txt``, ``valid.txt``, ``test.txt``; counts as metrics.

    The metrics count the listed, usable (downloaded and resampled) and kept clips, what each
    filter removed, and each split.

    Args:
        params: the ``split`` section.
    """
    cfg = SplitConfig(**params)
    metadata = read_metadata(raw_dir)
    manifest = pd.read_csv(audio_dir / "manifest.csv", dtype={"ytid": str})
    ok = manifest[manifest["status"] == "ok"]
    durations = dict(zip(ok["ytid"], ok["orig_samples"] / ok["orig_rate"], strict=True))
    kept, filtered = filter_clips(metadata, durations, cfg)
    splits = make_splits(kept, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (out_dir / f"{name}.txt").write_text("".join(f"{y}\n" for y in ids))
    write_json(
        metrics_path,
        {
            "clips_listed": len(metadata),
            "clips_usable": len(durations),
            "clips_kept": len(kept),
            **filtered,
            **{f"clips_{name}": len(ids) for name, ids in splits.items()},
        },
    )
