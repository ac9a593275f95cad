"""Audio I/O, resampling to the codec's rate and the fixed-length policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
import soxr
from tqdm import tqdm

from musicgen.io import atomic_path

SILENCE_PEAK = 1e-4  # a clip whose peak is below this (-80 dBFS) counts as silent


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Reads any file libsndfile knows.

    Returns:
        audio (C, S) float32 in [-1, 1] and its sample rate.
    """
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    return np.ascontiguousarray(data.T), int(sr)


def write_wav(
    path: str | Path, audio: np.ndarray, sample_rate: int, subtype: str = "PCM_16"
) -> None:
    """Writes (S,) or (C, S) float audio as WAV, atomically (see :func:`atomic_path`)."""
    data = np.clip(audio.T if audio.ndim == 2 else audio, -1.0, 1.0)
    with atomic_path(path) as tmp:
        sf.write(str(tmp), data, sample_rate, subtype=subtype, format="WAV")


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(C, S) -> (S,) by averaging the channels."""
    return audio.mean(axis=0) if audio.ndim == 2 else audio


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Resamples (S,) audio with soxr's very-high-quality filter."""
    if sr_in == sr_out:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio, sr_in, sr_out, quality="VHQ").astype(np.float32)


def fix_length(audio: np.ndarray, n_samples: int) -> tuple[np.ndarray, str]:
    """Pads with zeros or crops (S,) audio to ``n_samples``.

    Returns:
        the audio and what was done: ``"none"``, ``"padded"`` or ``"cropped"``.
    """
    if len(audio) == n_samples:
        return audio, "none"
    if len(audio) > n_samples:
        return audio[:n_samples], "cropped"
    return np.pad(audio, (0, n_samples - len(audio))), "padded"


def audio_problem(audio: np.ndarray) -> str | None:
    """Names what makes a clip unusable (empty, non-finite, silent), or None."""
    if audio.size == 0:
        return "empty"
    if not np.isfinite(audio).all():
        return "non-finite samples"
    if float(np.abs(audio).max()) < SILENCE_PEAK:
        return "silent"
    return None


def normalise_loudness(
    audio: np.ndarray, target_db: float, peak_db: float
) -> tuple[np.ndarray, float]:
    """Scales (S,) audio to an RMS level of ``target_db`` dBFS, its peak kept at most ``peak_db``.

    A plain RMS level (no K-weighting or gating, so not LUFS): the gain is
    ``target_db - rms_db``, lowered where needed so that the sample peak stays at ``peak_db`` dBFS
    (nothing is clipped or limited).

    Returns:
        the scaled audio and the gain in dB.
    """
    rms_db = 20 * np.log10(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))
    peak_db_now = 20 * np.log10(np.abs(audio).max())
    gain_db = min(target_db - rms_db, peak_db - peak_db_now)
    return (audio * 10 ** (gain_db / 20)).astype(np.float32), float(gain_db)


@dataclass
class ResampleConfig:
    """The output format and length policy of the resample stage.

    Attributes:
        sample_rate: The codec's rate.
        duration_s: Every clip is cropped (its end cut) or zero-padded (at the end) to this length.
        subtype: WAV sample format of the output.
        loudness_db: If set, each clip is scaled to this RMS level in dBFS (e.g. -20.0), the
            gain lowered where needed to keep its peak at ``peak_db`` (:func:`normalise_loudness`);
            the manifest then gets a ``gain_db`` column. None: levels are left as they are.
        peak_db: The peak ceiling of the loudness normalisation, dBFS.
    """

    sample_rate: int = 32000
    duration_s: float = 10.0
    subtype: str = "PCM_16"
    loudness_db: float | None = None
    peak_db: float = -1.0


def resample_clip(src: Path, dst: Path, cfg: ResampleConfig) -> dict:
    """Reads one clip, makes it mono at ``cfg.sample_rate`` and ``cfg.duration_s``, writes it.

    Returns:
        a manifest row: status ``ok`` or ``skipped`` with the reason, and what was done
        (``length_action``: none, padded or cropped; ``gain_db`` if loudness is normalised).
    """
    row: dict = {
        "status": "skipped",
        "reason": "",
        "orig_rate": 0,
        "orig_channels": 0,
        "orig_samples": 0,
        "length_action": "",
    }
    try:
        audio, sr = read_audio(src)
    except (RuntimeError, sf.LibsndfileError, OSError) as e:
        row["reason"] = f"unreadable: {e}".replace("\n", " ")
        return row
    row.update(orig_rate=sr, orig_channels=audio.shape[0], orig_samples=audio.shape[1])
    problem = audio_problem(audio) or audio_problem(to_mono(audio))  # channels may cancel out
    if problem:
        row["reason"] = problem
        return row
    mono = resample(to_mono(audio), sr, cfg.sample_rate)
    if cfg.loudness_db is not None:
        mono, row["gain_db"] = normalise_loudness(mono, cfg.loudness_db, cfg.peak_db)
    mono, action = fix_length(mono, round(cfg.duration_s * cfg.sample_rate))
    write_wav(dst, mono, cfg.sample_rate, cfg.subtype)
    row.update(status="ok", length_action=action)
    return row


def resample_clips(
    ids: list[str], src_dir: Path, out_dir: Path, cfg: ResampleConfig, progress: bool = True
) -> pd.DataFrame:
    """Resamples ``src_dir/<id>.*`` for each id into ``out_dir/<id>.wav``.

    Returns:
        the manifest, one row per id (``ytid``, ``status``, ``reason``, original format, length action).
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for ytid in tqdm(ids, desc="resample", disable=not progress):
        matches = sorted(p for p in src_dir.glob(f"{ytid}.*") if not p.name.startswith("."))
        if not matches:
            rows.append({"ytid": ytid, "status": "skipped", "reason": "no audio file"})
            continue
        rows.append({"ytid": ytid, **resample_clip(matches[0], out_dir / f"{ytid}.wav", cfg)})
    return pd.DataFrame(rows)


def load_clips(audio_dir: Path, ids: list[str], sample_rate: int) -> np.ndarray:
    """Loads mono clips of equal length written by :func:`resample_clips`.

    Returns:
        audio (N, S) float32.
    """
    clips = []
    for ytid in ids:
        audio, sr = read_audio(audio_dir / f"{ytid}.wav")
        if sr != sample_rate:
            raise ValueError(f"{ytid}: expected {sample_rate} Hz, found {sr} Hz")
        clips.append(to_mono(audio))
    return np.stack(clips) if clips else np.zeros((0, 0), np.float32)
