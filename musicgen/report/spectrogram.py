"""Log-magnitude spectrograms as PNG images (numpy only), for the gallery and DVC image plots.

An image shows a clip's whole length in ``width`` columns and ``height`` mel-spaced frequency rows
(low at the bottom, 0 Hz to Nyquist) on an absolute scale: 0 dB is a full-scale sine, and the
colour map spans ``[-top_db, 0]`` dBFS, so the reference and generated images of a pair (and of
different runs) can be compared by eye. The bytes depend only on the samples.

The gallery embeds these images; ``musicgen.report.gallery.write_spectrogram_pairs`` also writes a
few pairs as DVC image plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from musicgen.data.audio import read_audio, to_mono
from musicgen.report.png import write_png

# Anchor colours of the colour map, from silence (dark blue-black) to full scale (pale yellow);
# lightness rises monotonically, so the image reads in greyscale too.
COLOUR_ANCHORS = np.array(
    [
        [10, 8, 30],
        [55, 20, 105],
        [135, 35, 120],
        [210, 70, 80],
        [245, 145, 45],
        [250, 235, 150],
    ],
    dtype=np.float64,
)


@dataclass
class SpectrogramConfig:
    """How a clip becomes an image.

    Attributes:
        n_fft: FFT size (Hann window) of each column.
        width: image columns; each is one frame centred on its share of the clip.
        height: image rows, mel-spaced bands from 0 Hz to the Nyquist frequency.
        top_db: the colour map spans [-top_db, 0] dBFS; quieter is drawn as the floor colour.
    """

    n_fft: int = 1024
    width: int = 400
    height: int = 128
    top_db: float = 80.0


def colour_map(n: int = 256) -> np.ndarray:
    """The gallery's colour map as a lookup table, (n, 3) uint8."""
    x = np.linspace(0, len(COLOUR_ANCHORS) - 1, n)
    anchors = np.arange(len(COLOUR_ANCHORS))
    lut = np.stack([np.interp(x, anchors, COLOUR_ANCHORS[:, c]) for c in range(3)], axis=1)
    return np.round(lut).astype(np.uint8)


def _mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def band_weights(n_bins: int, sample_rate: int, n_bands: int) -> np.ndarray:
    """Weights that average FFT bins into mel-spaced bands, (n_bands, n_bins).

    A band holding bins averages them; a band narrower than a bin (low frequencies) interpolates
    linearly between the two bins around its centre.
    """
    bin_hz = np.linspace(0.0, sample_rate / 2, n_bins)
    edges = _mel_to_hz(np.linspace(0.0, _mel(np.float64(sample_rate / 2)), n_bands + 1))
    weights = np.zeros((n_bands, n_bins))
    for band in range(n_bands):
        lo, hi = edges[band], edges[band + 1]
        inside = (bin_hz >= lo) & (bin_hz < hi) if band < n_bands - 1 else (bin_hz >= lo)
        if inside.any():
            weights[band, inside] = 1.0 / inside.sum()
        else:
            pos = (lo + hi) / 2 / bin_hz[1]  # centre in units of bins
            left = min(int(pos), n_bins - 2)
            frac = pos - left
            weights[band, left], weights[band, left + 1] = 1.0 - frac, frac
    return weights


def _apply_weights(weights: np.ndarray, power: np.ndarray) -> np.ndarray:
    """``weights @ power.T`` through the few non-zero weights: (H, bins), (W, bins) -> (H, W).

    Each band holds a handful of bins, so this sums O(bins * W) products instead of a dense
    product (which BLAS threads make slow on a busy machine).
    """
    rows, cols = np.nonzero(weights)  # row-major order: each band's bins are contiguous
    terms = weights[rows, cols][:, None] * power.T[cols]  # (nnz, W)
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    return np.add.reduceat(terms, starts, axis=0)


def log_spectrogram(audio: np.ndarray, sample_rate: int, cfg: SpectrogramConfig) -> np.ndarray:
    """Power spectrogram in dBFS on mel-spaced bands.

    Args:
        audio: (S,) mono samples in [-1, 1].
        sample_rate: its rate.
        cfg: the image size and FFT.

    Returns:
        (height, width) float64 dB clipped to [-top_db, 0] (0 dB: a full-scale sine), row 0 the
        lowest band.
    """
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim != 1 or audio.size == 0:
        raise ValueError(f"log_spectrogram: expected non-empty (S,) audio, got {audio.shape}")
    half = cfg.n_fft // 2
    padded = np.pad(audio, (half, half))
    centres = ((np.arange(cfg.width) + 0.5) * len(audio) / cfg.width).astype(np.int64)  # (W,)
    frames = padded[centres[:, None] + np.arange(cfg.n_fft)[None]]  # (W, n_fft)
    window = np.hanning(cfg.n_fft + 1)[:-1]  # periodic Hann
    spectrum = np.abs(np.fft.rfft(frames * window, axis=1)) / (window.sum() / 2)  # (W, bins)
    bands = _apply_weights(band_weights(spectrum.shape[1], sample_rate, cfg.height), spectrum**2)
    db = 10.0 * np.log10(np.maximum(bands, 1e-20))  # (H, W)
    return np.clip(db, -cfg.top_db, 0.0)


def spectrogram_image(audio: np.ndarray, sample_rate: int, cfg: SpectrogramConfig) -> np.ndarray:
    """The coloured image of :func:`log_spectrogram`, (height, width, 3) uint8, low at the bottom."""
    db = log_spectrogram(audio, sample_rate, cfg)
    lut = colour_map()
    index = np.round((db + cfg.top_db) / cfg.top_db * (len(lut) - 1)).astype(np.int64)
    return lut[index[::-1]]


def write_spectrogram(
    wav_path: str | Path, png_path: str | Path, cfg: SpectrogramConfig | None = None
) -> Path:
    """Reads a wav (channels averaged) and writes its spectrogram PNG; returns the PNG's path."""
    audio, sr = read_audio(wav_path)
    return write_png(png_path, spectrogram_image(to_mono(audio), sr, cfg or SpectrogramConfig()))
