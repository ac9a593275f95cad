"""Weight-free music features and the agreement of two renditions of the same clips.

Everything here is plain DSP in float64 numpy (no learned weights, no download), so it means the same
on the embedded default and on the real run:

* :func:`log_mel`: a log-mel spectrogram in dB (timbre and loudness over time);
* :func:`chroma`: a 12-bin pitch-class profile per frame (harmony and melody, octave-free);
* :func:`onset_envelope`: the spectral flux of the log-mel spectrogram (where notes and drums start);
* :func:`tempo`: the beat period of an onset envelope by autocorrelation, in BPM;
* :func:`clip_scores` / :func:`music_similarity`: how close an estimate (e.g. a codec round trip)
  is to its reference: log-mel distance, chroma similarity, onset correlation, tempo agreement.

Frames are centred at ``t * hop`` (the signal zero-padded by ``n_fft // 2`` on both sides), so a clip
of S samples gives ``ceil(S / hop)`` frames, as many as codec frames at the same hop. Spectra are
scaled so that a full-scale sine has a peak of 0 dB.

Shapes: audio is ``(S,)`` or ``(B, S)``; features are ``(B, bins, T)`` (``(bins, T)`` for 1-d
audio); envelopes ``(B, T)``.
"""

from __future__ import annotations

import numpy as np

DEFAULT_HOP = 640  # 50 frames/s at 32 kHz, the codec's frame rate
FLOOR_DB = -80.0  # spectra are clamped here (dB re. a full-scale sine): silence compares equal
CHROMA_FMIN, CHROMA_FMAX = 55.0, 4200.0  # A1 .. C8: the bins that carry pitch classes
TEMPO_RANGE_BPM = (60.0, 200.0)
TEMPO_TOLERANCE = 0.05  # two tempi agree within 5 % (one frame of lag at 50 frames/s and 120 BPM)


def _batch(audio: np.ndarray) -> tuple[np.ndarray, bool]:
    """``(B, S)`` float64 audio and whether the input was 1-d."""
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim not in (1, 2) or x.shape[-1] == 0:
        raise ValueError(f"audio must be (samples,) or (batch, samples), got {x.shape}")
    return np.atleast_2d(x), x.ndim == 1


def _unbatch(features: np.ndarray, single: bool) -> np.ndarray:
    return features[0] if single else features


def n_frames(n_samples: int, hop: int = DEFAULT_HOP) -> int:
    """Frames of a clip of ``n_samples``: ``ceil(n_samples / hop)``."""
    return -(-n_samples // hop)


def stft_power(audio: np.ndarray, n_fft: int = 2048, hop: int = DEFAULT_HOP) -> np.ndarray:
    """Power spectrogram with a periodic Hann window, centred frames.

    Args:
        audio: ``(B, S)`` or ``(S,)`` audio.
        n_fft: window and FFT size.
        hop: samples between frames.

    Returns:
        ``(B, n_fft // 2 + 1, ceil(S / hop))`` float64 power, a full-scale sine's peak bin at ~1.
    """
    x, single = _batch(audio)
    t = n_frames(x.shape[1], hop)
    pad = n_fft // 2
    padded = np.zeros((x.shape[0], (t - 1) * hop + n_fft))
    padded[:, pad : pad + x.shape[1]] = x
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    index = (np.arange(t) * hop)[:, None] + np.arange(n_fft)  # (T, n_fft)
    scale = (2.0 / window.sum()) ** 2
    power = np.empty((x.shape[0], n_fft // 2 + 1, t))
    for i, row in enumerate(padded):  # one clip at a time: (T, n_fft) frames stay small
        spec = np.fft.rfft(row[index] * window, axis=-1)
        power[i] = ((spec.real**2 + spec.imag**2) * scale).T
    return _unbatch(power, single)


def _hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)


def mel_filters(
    sample_rate: int, n_fft: int, n_mels: int = 64, fmin: float = 30.0, fmax: float | None = None
) -> np.ndarray:
    """Triangular filters on the HTK mel scale, each with a peak of 1.

    Returns:
        ``(n_mels, n_fft // 2 + 1)`` float64 weights.
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs - lo) / (mid - lo)
    down = (hi - freqs) / (hi - mid)
    return np.clip(np.minimum(up, down), 0.0, None)


def power_db(power: np.ndarray) -> np.ndarray:
    """``10 log10`` of a power, clamped at :data:`FLOOR_DB`."""
    return 10.0 * np.log10(np.maximum(power, 10.0 ** (FLOOR_DB / 10.0)))


def log_mel(
    audio: np.ndarray,
    sample_rate: int,
    n_mels: int = 64,
    n_fft: int = 2048,
    hop: int = DEFAULT_HOP,
) -> np.ndarray:
    """Log-mel spectrogram in dB, clamped at :data:`FLOOR_DB`.

    Returns:
        ``(B, n_mels, T)`` (``(n_mels, T)`` for 1-d audio) float64.
    """
    x, single = _batch(audio)
    fb = mel_filters(sample_rate, n_fft, n_mels)
    mel = np.einsum("mf,bft->bmt", fb, stft_power(x, n_fft, hop))
    return _unbatch(power_db(mel), single)


def chroma_filters(
    sample_rate: int, n_fft: int, fmin: float = CHROMA_FMIN, fmax: float = CHROMA_FMAX
) -> np.ndarray:
    """Maps FFT bins to pitch classes (C = 0): each bin in [fmin, fmax] to its nearest semitone.

    Returns:
        ``(12, n_fft // 2 + 1)`` 0/1 weights.
    """
    freqs = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    inside = (freqs >= fmin) & (freqs <= fmax)
    midi = 69.0 + 12.0 * np.log2(np.where(inside, freqs, 1.0) / 440.0)
    pitch_class = np.round(midi).astype(np.int64) % 12
    return (pitch_class[None, :] == np.arange(12)[:, None]) & inside[None, :]


def chroma(
    audio: np.ndarray, sample_rate: int, n_fft: int = 4096, hop: int = DEFAULT_HOP
) -> np.ndarray:
    """Chromagram: STFT magnitudes summed per pitch class, each frame scaled to unit L2 norm.

    The 4096-point window (128 ms at 32 kHz, 7.8 Hz bins) separates semitones from ~130 Hz up.
    Frames with no energy between :data:`CHROMA_FMIN` and :data:`CHROMA_FMAX` (silence) are zero.

    Returns:
        ``(B, 12, T)`` (``(12, T)`` for 1-d audio) float64.
    """
    x, single = _batch(audio)
    magnitude = np.sqrt(stft_power(x, n_fft, hop))
    c = np.einsum("pf,bft->bpt", chroma_filters(sample_rate, n_fft).astype(np.float64), magnitude)
    norm = np.linalg.norm(c, axis=1, keepdims=True)
    return _unbatch(np.where(norm > 1e-6, c / np.maximum(norm, 1e-12), 0.0), single)


def onset_envelope(
    audio: np.ndarray, sample_rate: int, n_fft: int = 2048, hop: int = DEFAULT_HOP
) -> np.ndarray:
    """Onset strength: the log-mel rises summed over bands (spectral flux), per frame.

    Returns:
        ``(B, T)`` (``(T,)`` for 1-d audio) float64, the first frame 0.
    """
    x, single = _batch(audio)
    mel = log_mel(x, sample_rate, n_fft=n_fft, hop=hop)  # (B, M, T)
    flux = np.clip(np.diff(mel, axis=2), 0.0, None).mean(axis=1)
    env = np.concatenate([np.zeros((x.shape[0], 1)), flux], axis=1)
    return env[0] if single else env


def tempo(
    envelope: np.ndarray,
    frame_rate: float,
    bpm_range: tuple[float, float] = TEMPO_RANGE_BPM,
) -> np.ndarray:
    """Tempo of onset envelopes: the lag of the highest autocorrelation in ``bpm_range``.

    Args:
        envelope: ``(B, T)`` or ``(T,)`` onset envelopes (:func:`onset_envelope`).
        frame_rate: envelope frames per second.
        bpm_range: the tempi considered, in BPM.

    Returns:
        ``(B,)`` (a scalar array for 1-d input) tempi in BPM; 0 for a flat envelope.
    """
    env = np.atleast_2d(np.asarray(envelope, dtype=np.float64))
    env = env - env.mean(axis=1, keepdims=True)
    lags = np.arange(
        max(1, int(np.floor(60.0 * frame_rate / bpm_range[1]))),
        int(np.ceil(60.0 * frame_rate / bpm_range[0])) + 1,
    )
    lags = lags[lags < env.shape[1]]
    out = np.zeros(env.shape[0])
    if lags.size == 0:
        return out[0] if np.ndim(envelope) == 1 else out
    # unbiased autocorrelation: the sum over the overlap divided by its length
    ac = np.stack(
        [(env[:, lag:] * env[:, :-lag]).sum(axis=1) / (env.shape[1] - lag) for lag in lags]
    )
    best = lags[np.argmax(ac, axis=0)]
    flat = (env**2).sum(axis=1) <= 1e-12
    out = np.where(flat, 0.0, 60.0 * frame_rate / best)
    return out[0] if np.ndim(envelope) == 1 else out


def _pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows of ``(B, T)`` arrays; 0 where either is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a**2).sum(axis=1) * (b**2).sum(axis=1))
    return np.where(den > 1e-12, (a * b).sum(axis=1) / np.maximum(den, 1e-12), 0.0)


def _centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of mean-removed chroma frames, ``(B, 12, T)`` -> ``(B, T)``; 0 for a flat frame.

    Removing each frame's mean makes flat chroma (noise, silence) score 0 against anything, where
    a plain cosine gives ~0.5 to white noise against a triad.
    """
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 1e-12, (a * b).sum(axis=1) / np.maximum(den, 1e-12), 0.0)


def clip_scores(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, hop: int = DEFAULT_HOP
) -> dict[str, np.ndarray]:
    """Per-clip agreement of an estimate (a codec round trip, a generation) with its reference.

    Args:
        reference: ``(B, S)`` audio.
        estimate: ``(B, S')`` audio at the same rate; cut or zero-padded to ``S``.
        sample_rate: their rate.
        hop: frame hop of every feature.

    Returns:
        ``(B,)`` float64 arrays:

        * ``logmel_db``: mean absolute difference of the 64-band log-mel spectrograms, dB (0 best);
        * ``chroma_similarity``: mean over the reference's voiced frames of the cosine of the
          mean-removed chroma vectors (:func:`_centred_cosine`): 1 best, ~0 for noise or for
          unrelated harmony, 0 for silence;
        * ``onset_correlation``: Pearson correlation of the onset envelopes (1 best);
        * ``tempo_match``: 1 where the two tempi agree within :data:`TEMPO_TOLERANCE`, else 0.
    """
    ref, _ = _batch(reference)
    est, _ = _batch(estimate)
    if ref.shape[0] != est.shape[0]:
        raise ValueError(f"{ref.shape[0]} references but {est.shape[0]} estimates")
    fitted = np.zeros_like(ref)
    n = min(ref.shape[1], est.shape[1])
    fitted[:, :n] = est[:, :n]
    logmel = np.abs(log_mel(ref, sample_rate, hop=hop) - log_mel(fitted, sample_rate, hop=hop))
    c_ref, c_est = chroma(ref, sample_rate, hop=hop), chroma(fitted, sample_rate, hop=hop)
    voiced = np.linalg.norm(c_ref, axis=1) > 0  # (B, T)
    cosine = _centred_cosine(c_ref, c_est)
    chroma_sim = (cosine * voiced).sum(axis=1) / np.maximum(voiced.sum(axis=1), 1)
    e_ref, e_est = (
        onset_envelope(ref, sample_rate, hop=hop),
        onset_envelope(fitted, sample_rate, hop=hop),
    )
    rate = sample_rate / hop
    t_ref, t_est = tempo(e_ref, rate), tempo(e_est, rate)
    match = (np.abs(t_est - t_ref) <= TEMPO_TOLERANCE * np.maximum(t_ref, 1e-9)) & (t_ref > 0)
    return {
        "logmel_db": logmel.mean(axis=(1, 2)),
        "chroma_similarity": chroma_sim,
        "onset_correlation": _pearson(e_ref, e_est),
        "tempo_match": match.astype(np.float64),
    }


def music_similarity(
    reference: np.ndarray, estimate: np.ndarray, sample_rate: int, hop: int = DEFAULT_HOP
) -> dict[str, float]:
    """The means over clips of :func:`clip_scores` (same keys), as plain floats."""
    scores = clip_scores(reference, estimate, sample_rate, hop)
    return {k: float(v.mean()) for k, v in scores.items()}
