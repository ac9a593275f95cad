import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from musicgen.data.audio import ResampleConfig, fix_length, read_audio, resample_clips


def sine(freq, sr, seconds, channels=1, amp=0.5):
    t = np.arange(int(sr * seconds)) / sr
    return np.tile(amp * np.sin(2 * np.pi * freq * t), (channels, 1)).astype(np.float32)


def peak_frequency(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()]


@pytest.mark.parametrize(
    "sr,channels,subtype",
    [(48000, 2, "PCM_16"), (44100, 1, "PCM_24"), (22050, 2, "FLOAT"), (32000, 1, "PCM_16")],
)
def test_resample_keeps_frequency_and_level(tmp_path, sr, channels, subtype):
    src = tmp_path / "raw"
    src.mkdir()
    sf.write(src / "abc.wav", sine(440, sr, 1.2, channels).T, sr, subtype=subtype)
    manifest = resample_clips(["abc"], src, tmp_path / "out", ResampleConfig(32000, 1.0), False)
    assert manifest["status"].tolist() == ["ok"]
    assert manifest["length_action"].tolist() == ["cropped"]
    audio, rate = read_audio(tmp_path / "out" / "abc.wav")
    assert rate == 32000 and audio.shape == (1, 32000)
    assert peak_frequency(audio[0], 32000) == pytest.approx(440, abs=2)
    rms = np.sqrt(np.mean(audio[0, 2000:-2000] ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_bad_inputs_are_skipped_with_a_reason(tmp_path):
    src = tmp_path / "raw"
    src.mkdir()
    sf.write(src / "silent.wav", np.zeros(16000, np.float32), 16000)
    (src / "broken.wav").write_bytes(b"RIFF not really")
    sf.write(src / "nan.wav", np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    m = resample_clips(
        ["silent", "broken", "nan", "missing"], src, tmp_path / "out", ResampleConfig(), False
    )
    reasons = dict(zip(m["ytid"], m["reason"], strict=True))
    assert set(m["status"]) == {"skipped"}
    assert reasons["silent"] == "silent"
    assert reasons["broken"].startswith("unreadable")
    assert reasons["nan"] == "non-finite samples"
    assert reasons["missing"] == "no audio file"
    assert isinstance(m, pd.DataFrame) and not any((tmp_path / "out").iterdir())


def test_fix_length():
    assert fix_length(np.ones(5), 8)[1] == "padded"
    assert fix_length(np.ones(5), 3)[0].tolist() == [1, 1, 1]
    assert fix_length(np.ones(5), 5)[1] == "none"
