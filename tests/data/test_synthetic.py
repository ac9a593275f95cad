"""Tests for the synthetic MusicCaps stand-in (musicgen/data/synthetic.py)."""

import ast
import copy
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from musicgen.data.synthetic import (
    MUSICCAPS_COLUMNS,
    SCALES,
    TIMBRE_WORDS,
    SyntheticConfig,
    caption_for,
    make_clip,
    make_synthetic_dataset,
    random_ytid,
    render_clip,
    sample_attributes,
    samples_per_beat,
    tempo_word,
)

SMALL = SyntheticConfig(n_clips=4, duration_s=2.0, sample_rate=16000, channels=2, seed=3)
YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
LABELS_RE = re.compile(r"^/[mt]/[0-9a-z_]+(,/[mt]/[0-9a-z_]+)*$")
REAL_CSV = Path(os.environ.get("MUSICCAPS_CSV", "/work/shared/data/musiccaps-public.csv"))
TEMPO_WORDS = ("slow", "medium", "fast")


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    out_dir = tmp_path_factory.mktemp("synthetic")
    return out_dir, make_synthetic_dataset(out_dir, SMALL, progress=False)


def _attrs(seed: int, cfg: SyntheticConfig = SMALL, **overrides) -> dict:
    attrs = sample_attributes(np.random.default_rng([seed, 0]), cfg)
    attrs.update(overrides)
    return attrs


def _pitch_class_energy(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Spectral power folded onto the 12 pitch classes (index 0 = C), 30 Hz - 4 kHz."""
    power = np.abs(np.fft.rfft(audio.mean(axis=0))) ** 2
    freqs = np.fft.rfftfreq(audio.shape[1], 1 / sample_rate)
    band = (freqs > 30) & (freqs < 4000)
    pitch_class = np.round(12 * np.log2(freqs[band] / 440) + 69).astype(int) % 12
    return np.bincount(pitch_class, power[band], minlength=12)


def _beat_transient_ratio(audio: np.ndarray, sample_rate: int, tempo_bpm: int) -> float:
    """High-pass energy in the 20 ms after each 8th-note grid point, relative to the mean."""
    hf = np.diff(audio.mean(axis=0)) ** 2
    width, step = int(0.02 * sample_rate), samples_per_beat(tempo_bpm, sample_rate) // 2
    at_grid = np.mean([hf[s : s + width].mean() for s in range(0, len(hf) - width, step)])
    return float(at_grid / hf.mean())


# -----------------------------------------------------------------------------
# dataset: determinism, files and metadata


def test_same_config_gives_identical_files_and_table(small_dataset, tmp_path):
    first_dir, first = small_dataset
    second = make_synthetic_dataset(tmp_path, SMALL, progress=False)
    pd.testing.assert_frame_equal(first, second)
    for ytid in first["ytid"]:
        assert (first_dir / f"{ytid}.wav").read_bytes() == (tmp_path / f"{ytid}.wav").read_bytes()


def test_clip_does_not_depend_on_n_clips(small_dataset, tmp_path):
    first_dir, full = small_dataset
    fewer = make_synthetic_dataset(tmp_path, replace(SMALL, n_clips=2), progress=False)
    pd.testing.assert_frame_equal(fewer, full.iloc[:2])
    ytid = fewer["ytid"][1]
    assert (tmp_path / f"{ytid}.wav").read_bytes() == (first_dir / f"{ytid}.wav").read_bytes()


def test_other_seed_gives_other_data(small_dataset, tmp_path):
    _, df = small_dataset
    other = make_synthetic_dataset(tmp_path, replace(SMALL, seed=4, n_clips=1), progress=False)
    assert other["ytid"][0] not in set(df["ytid"])


def test_table_has_musiccaps_columns_and_formats(small_dataset):
    _, df = small_dataset
    assert list(df.columns) == MUSICCAPS_COLUMNS
    assert len(df) == SMALL.n_clips
    assert df["ytid"].is_unique and df["ytid"].map(YTID_RE.match).all()
    assert (df["start_s"] == 0).all() and (df["end_s"] == 2).all()
    for column in ("start_s", "end_s", "author_id"):
        assert df[column].dtype == np.int64
    for column in ("is_balanced_subset", "is_audioset_eval"):
        assert df[column].dtype == bool
    for column in ("ytid", "audioset_positive_labels", "aspect_list", "caption"):
        assert pd.api.types.is_string_dtype(df[column])
    for labels in df["audioset_positive_labels"]:
        assert LABELS_RE.match(labels) and "/m/04rlf" in labels
        assert labels.split(",") == sorted(labels.split(","))
    for aspects in df["aspect_list"]:
        parsed = ast.literal_eval(aspects)
        assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed)
        assert str(parsed) == aspects


def test_table_survives_csv_round_trip(small_dataset, tmp_path):
    _, df = small_dataset
    df.to_csv(tmp_path / "meta.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "meta.csv"), df)


@pytest.mark.skipif(not REAL_CSV.exists(), reason="real musiccaps-public.csv not available")
def test_dtypes_match_real_csv(small_dataset):
    _, df = small_dataset
    real = pd.read_csv(REAL_CSV, nrows=50)
    assert list(real.columns) == MUSICCAPS_COLUMNS
    assert df.dtypes.to_dict() == real.dtypes.to_dict()


def test_ids_and_flag_rates_over_many_tiny_clips(tmp_path):
    cfg = SyntheticConfig(n_clips=300, duration_s=0.05, sample_rate=8000, channels=1)
    df = make_synthetic_dataset(tmp_path, cfg, progress=False)
    assert df["ytid"].is_unique and df["ytid"].map(YTID_RE.match).all()
    assert 0.12 < df["is_balanced_subset"].mean() < 0.28
    assert 0.4 < df["is_audioset_eval"].mean() < 0.6
    assert 3 <= df["author_id"].nunique() <= 10 and df["author_id"].min() >= 0
    assert len(list(tmp_path.iterdir())) == cfg.n_clips  # no temp files left behind


def test_random_ytid():
    ids = {random_ytid(np.random.default_rng(i)) for i in range(2000)}
    assert len(ids) == 2000 and all(YTID_RE.match(i) for i in ids)


def test_wav_files(small_dataset):
    out_dir, df = small_dataset
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(f"{y}.wav" for y in df["ytid"])
    for ytid in df["ytid"]:
        info = sf.info(out_dir / f"{ytid}.wav")
        assert (info.samplerate, info.channels, info.subtype) == (16000, 2, "PCM_16")
        assert info.frames == 2 * 16000
        audio, _ = sf.read(out_dir / f"{ytid}.wav")
        assert 0.4 < np.abs(audio).max() <= 0.9 + 1e-4
        assert not np.allclose(audio[:, 0], audio[:, 1])  # some stereo spread


# -----------------------------------------------------------------------------
# audio


@pytest.mark.parametrize("channels", [1, 2])
def test_make_clip_shape_and_range(channels):
    cfg = SyntheticConfig(duration_s=1.5, sample_rate=8000, channels=channels)
    audio, attrs = make_clip(np.random.default_rng([0, 7]), cfg)
    assert audio.shape == (channels, 12000) and audio.dtype == np.float32
    assert np.isfinite(audio).all() and 0.4 < np.abs(audio).max() <= 0.9
    assert 70 <= attrs["tempo_bpm"] <= 160 and attrs["mode"] in ("major", "minor")
    assert set(attrs["instruments"]) <= set(TIMBRE_WORDS)


def test_make_clip_is_deterministic():
    cfg = SyntheticConfig(duration_s=1.0, sample_rate=8000)
    a, attrs_a = make_clip(np.random.default_rng([1, 2]), cfg)
    b, attrs_b = make_clip(np.random.default_rng([1, 2]), cfg)
    assert attrs_a == attrs_b and np.array_equal(a, b)


def test_every_timbre_renders():
    cfg = SyntheticConfig(duration_s=1.0, sample_rate=16000, channels=1)
    for timbre in TIMBRE_WORDS:
        attrs = _attrs(
            0, cfg, parts={"lead": timbre, "chords": timbre, "bass": timbre}, has_drums=False
        )
        audio = render_clip(attrs, np.random.default_rng(0), cfg)
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.4, timbre


def test_key_is_audible_in_sine_only_clips():
    cfg = SyntheticConfig(duration_s=4.0, sample_rate=16000, channels=1)
    roots_on_top = 0
    for seed in range(8):
        attrs = _attrs(
            seed,
            cfg,
            parts={"lead": "sine", "chords": "sine", "bass": "sine"},
            instruments=["sine"],
            has_drums=False,
        )
        energy = _pitch_class_energy(
            render_clip(attrs, np.random.default_rng(seed), cfg), cfg.sample_rate
        )
        scale = [(attrs["key_root"] + step) % 12 for step in SCALES[attrs["mode"]]]
        assert int(np.argmax(energy)) in scale
        assert energy[scale].sum() > 0.75 * energy.sum()
        roots_on_top += int(np.argmax(energy)) == attrs["key_root"]
    assert roots_on_top >= 6


def test_key_is_audible_in_full_mixes():
    cfg = SyntheticConfig(duration_s=3.0, sample_rate=16000, channels=2)
    for seed in range(6):
        audio, attrs = make_clip(np.random.default_rng([seed, 1]), cfg)
        energy = _pitch_class_energy(audio, cfg.sample_rate)
        scale = [(attrs["key_root"] + step) % 12 for step in SCALES[attrs["mode"]]]
        assert int(np.argmax(energy)) in scale
        assert energy[scale].sum() > 0.6 * energy.sum()


def test_drums_add_energy_on_the_beat_grid():
    cfg = SyntheticConfig(duration_s=3.0, sample_rate=16000, channels=1)
    soft = {"lead": "sine", "chords": "pad", "bass": "sine"}
    for seed, pattern in enumerate(("four-on-the-floor", "backbeat", "half-time")):
        attrs = _attrs(seed, cfg, parts=soft, has_drums=True, drum_pattern=pattern)
        without = {**copy.deepcopy(attrs), "has_drums": False, "drum_pattern": None}
        with_drums = render_clip(attrs, np.random.default_rng(seed), cfg)
        no_drums = render_clip(without, np.random.default_rng(seed), cfg)
        ratio = _beat_transient_ratio(with_drums, cfg.sample_rate, attrs["tempo_bpm"])
        assert ratio > 1.5, pattern
        assert ratio > 1.3 * _beat_transient_ratio(no_drums, cfg.sample_rate, attrs["tempo_bpm"])


# -----------------------------------------------------------------------------
# text


def test_tempo_word_thresholds():
    assert [tempo_word(b) for b in (70, 89, 90, 124, 125, 160)] == [
        "slow",
        "slow",
        "medium",
        "medium",
        "fast",
        "fast",
    ]


def test_captions_describe_attributes():
    for seed in range(60):
        attrs = _attrs(seed, SyntheticConfig())
        caption = caption_for(attrs, np.random.default_rng(seed))
        lower = caption.lower()
        assert f"{attrs['key']} {attrs['mode']}" in caption
        assert attrs["tempo_word"] == tempo_word(attrs["tempo_bpm"])
        words = set(re.findall(r"[a-z]+", lower))
        assert [w for w in TEMPO_WORDS if w in words] == [attrs["tempo_word"]]
        says_no_drums = "no percussion" in lower or "no drums" in lower
        assert says_no_drums != attrs["has_drums"]
        if attrs["has_drums"]:
            assert "drum" in lower or "percussion" in lower
        for timbre in attrs["instruments"]:
            assert any(word in lower for word in TIMBRE_WORDS[timbre]), timbre
        sentences = re.split(r"(?<=\.) ", caption)
        assert 2 <= len(sentences) <= 5 and caption.endswith(".")
        assert all(s[0].isupper() for s in sentences)


def test_captions_vary():
    captions = {caption_for(_attrs(0), np.random.default_rng(seed)) for seed in range(20)}
    assert len(captions) > 10


def test_aspect_list_agrees_with_caption(small_dataset):
    _, df = small_dataset
    for aspect_list, caption in zip(df["aspect_list"], df["caption"], strict=True):
        aspects = ast.literal_eval(aspect_list)
        tempo = [a.split()[0] for a in aspects if a.endswith(" tempo")]
        mode = [a.split()[0] for a in aspects if a.endswith(" key")]
        assert len(tempo) == 1 and tempo[0] in re.findall(r"[a-z]+", caption)
        assert len(mode) == 1 and re.search(rf"[A-G][b#]? {mode[0]}\b", caption)
        no_drums = "no percussion" in caption or "no drums" in caption
        assert ("no percussion" in aspects) == no_drums
