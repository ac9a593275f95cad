"""Spectrogram and training-curve images: what they show, and deterministic bytes."""

import numpy as np
import pandas as pd
import pytest
from reporthelpers import SAMPLE_RATE, decode_png, tone

from musicgen.data.audio import write_wav
from musicgen.report.curves import SERIES_COLOURS, curve_summary, curves_image
from musicgen.report.spectrogram import (
    SpectrogramConfig,
    _mel,
    band_weights,
    colour_map,
    log_spectrogram,
    spectrogram_image,
    write_spectrogram,
)


def test_band_weights_average_bins_and_cover_every_band():
    weights = band_weights(513, 32000, 128)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)  # each band is a weighted mean
    assert (weights >= 0).all() and (weights.sum(axis=0) > 0).all()  # every bin is used


def test_sine_lights_its_own_band_at_full_scale():
    cfg = SpectrogramConfig(width=50, height=64)
    freq = 1000.0
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE
    db = log_spectrogram(np.sin(2 * np.pi * freq * t), SAMPLE_RATE, cfg)  # (H, W)
    assert db.shape == (64, 50)
    expected_band = int(_mel(np.float64(freq)) / _mel(np.float64(SAMPLE_RATE / 2)) * 64)
    loudest = db[:, 5:-5].argmax(axis=0)  # away from the zero-padded ends
    assert set(loudest.tolist()) == {expected_band}
    assert -8.0 < db[expected_band, 25] <= 0.0  # a full-scale sine reads near 0 dBFS
    assert db.min() >= -cfg.top_db


def test_silence_is_the_floor_colour():
    cfg = SpectrogramConfig(width=20, height=16)
    image = spectrogram_image(np.zeros(4000), SAMPLE_RATE, cfg)
    assert image.shape == (16, 20, 3)
    assert (image == colour_map()[0]).all()


def test_colour_map_gets_lighter():
    lut = colour_map().astype(np.float64)
    luma = lut @ [0.299, 0.587, 0.114]
    assert (np.diff(luma) > 0).all()


def test_spectrogram_png_is_deterministic(tmp_path):
    wav = tmp_path / "a.wav"
    write_wav(wav, tone(440.0, 0.5, 0), SAMPLE_RATE)
    first = write_spectrogram(wav, tmp_path / "a.png").read_bytes()
    second = write_spectrogram(wav, tmp_path / "b.png").read_bytes()
    assert first == second
    cfg = SpectrogramConfig()
    assert decode_png(first).shape == (cfg.height, cfg.width, 3)


def test_spectrogram_rejects_empty_audio():
    with pytest.raises(ValueError, match="non-empty"):
        log_spectrogram(np.zeros(0), SAMPLE_RATE, SpectrogramConfig())


def test_curves_draw_each_series_and_skip_nan():
    curves = pd.DataFrame(
        {
            "step": [0, 10, 20, 30],
            "train_loss": [8.0, 7.0, 6.5, 6.0],
            "val_ce": [7.5, None, 7.0, None],
        }
    )
    image = curves_image(curves, width=200, height=100)
    assert image.shape == (100, 200, 3)
    for colour in SERIES_COLOURS[:2]:
        assert (image == colour).all(axis=2).sum() > 50  # a line, not a dot
    summary = curve_summary(curves)
    assert summary.x_range == (0.0, 30.0) and summary.y_range == (6.0, 8.0)
    assert list(summary.colours) == ["train_loss", "val_ce"]


def test_curves_need_the_step_column():
    with pytest.raises(ValueError, match="no 'step' column"):
        curves_image(pd.DataFrame({"epoch": [0, 1], "loss": [1.0, 0.5]}))
