import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from datahelpers import peak_frequency, sine

from musicgen.data.audio import (
    ResampleConfig,
    fix_length,
    normalise_loudness,
    read_audio,
    resample_clips,
)


@pytest.mark.parametrize(
    "sr,channels,fmt,subtype",
    [
        (48000, 2, "WAV", "PCM_16"),
        (44100, 1, "WAV", "PCM_24"),
        (22050, 2, "WAV", "FLOAT"),
        (32000, 1, "WAV", "PCM_16"),
        (44100, 2, "WAV", "PCM_U8"),  # 8-bit WAV is unsigned
        (48000, 1, "WAV", "DOUBLE"),
        (44100, 2, "FLAC", "PCM_16"),
        (48000, 1, "FLAC", "PCM_24"),
        (22050, 1, "FLAC", "PCM_S8"),
    ],
)
def test_resample_keeps_frequency_and_level(tmp_path, sr, channels, fmt, subtype):
    src = tmp_path / "raw"
    src.mkdir()
    sf.write(src / f"abc.{fmt.lower()}", sine(440, sr, 1.2, channels).T, sr, subtype, format=fmt)
    manifest = resample_clips(["abc"], src, tmp_path / "out", ResampleConfig(32000, 1.0), False)
    assert manifest["status"].tolist() == ["ok"]
    assert manifest["length_action"].tolist() == ["cropped"]
    assert manifest[["orig_rate", "orig_channels"]].values.tolist() == [[sr, channels]]
    audio, rate = read_audio(tmp_path / "out" / "abc.wav")
    assert rate == 32000 and audio.shape == (1, 32000)
    assert peak_frequency(audio[0], 32000) == pytest.approx(440, abs=2)
    rms = np.sqrt(np.mean(audio[0, 2000:-2000] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_short_clips_are_padded_at_the_end(tmp_path):
    sf.write(tmp_path / "short.wav", sine(440, 16000, 0.5).T, 16000)
    m = resample_clips(["short"], tmp_path, tmp_path / "out", ResampleConfig(32000, 1.0), False)
    audio, _ = read_audio(tmp_path / "out" / "short.wav")
    assert m["length_action"].tolist() == ["padded"] and audio.shape == (1, 32000)
    assert np.abs(audio[0, 15000:16000]).max() > 0.4 and not audio[0, 16100:].any()


def test_loudness_normalisation(tmp_path):
    quiet = sine(440, 32000, 1.0, amp=0.05)[0]
    louder, gain = normalise_loudness(quiet, target_db=-20.0, peak_db=-1.0)
    assert 20 * np.log10(np.sqrt(np.mean(louder**2))) == pytest.approx(-20.0, abs=0.01)
    assert gain == pytest.approx(-20.0 - 20 * np.log10(0.05 / np.sqrt(2)), abs=0.01)
    # a crest factor too high for the target: the peak ceiling wins
    spiky = np.zeros(32000, np.float32)
    spiky[::1000] = 0.5
    capped, _ = normalise_loudness(spiky, target_db=-20.0, peak_db=-1.0)
    assert 20 * np.log10(np.abs(capped).max()) == pytest.approx(-1.0, abs=0.01)
    sf.write(tmp_path / "q.wav", quiet, 32000)
    cfg = ResampleConfig(32000, 1.0, loudness_db=-20.0)
    m = resample_clips(["q"], tmp_path, tmp_path / "out", cfg, False)
    assert m["gain_db"].iloc[0] == pytest.approx(gain, abs=0.01)
    assert "gain_db" not in resample_clips(
        ["q"], tmp_path, tmp_path / "o2", ResampleConfig(), False
    )


def test_bad_inputs_are_skipped_with_a_reason(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    sf.write(src / "silent.wav", np.zeros(16000, np.float32), 16000)
    (src / "broken.wav").write_bytes(b"RIFF not really")
    sf.write(src / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    sf.write(src / "inf.wav", np.full(16000, np.inf, np.float32), 16000, subtype="FLOAT")
    sf.write(src / "empty.wav", np.zeros(0, np.float32), 16000)
    tone = sine(440, 16000, 1.0)[0]
    sf.write(src / "cancels.wav", np.stack([tone, -tone], axis=1), 16000)  # silent as mono
    sf.write(src / "cut.flac", np.stack([tone, tone], axis=1), 16000)
    data = (src / "cut.flac").read_bytes()
    (src / "cut.flac").write_bytes(data[: len(data) // 2])  # a download cut short
    ids = ["silent", "broken", "nan", "inf", "empty", "cancels", "cut", "missing"]
    m = resample_clips(ids, src, tmp_path / "out", ResampleConfig(), False)
    reasons = dict(zip(m["ytid"], m["reason"], strict=True))
    assert set(m["status"]) == {"skipped"}
    assert reasons["silent"] == "silent"
    assert reasons["broken"].startswith("unreadable")
    assert reasons["nan"] == reasons["inf"] == "non-finite samples"
    assert reasons["empty"] == "empty"
    assert reasons["cancels"] == "silent"
    assert reasons["cut"].startswith("unreadable")
    assert reasons["missing"] == "no audio file"
    assert isinstance(m, pd.DataFrame) and not any((tmp_path / "out").iterdir())


def test_fix_length():
    assert fix_length(np.ones(5), 8)[1] == "padded"
    assert fix_length(np.ones(5), 3)[0].tolist() == [1, 1, 1]
    assert fix_length(np.ones(5), 5)[1] == "none"
