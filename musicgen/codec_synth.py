"""The tiny codec's analysis and synthesis: pitch-resolving band energies in, audio out.

The offline default's codec (``codec.source: tiny``) is an ``EncodecModel`` container (its config and
its quantizer's codebooks, see :func:`musicgen.codec.build_tiny_codec`) plus a :class:`SpectralPart`
that replaces the container's encoder and decoder in :func:`musicgen.codec.encode` /
:func:`musicgen.codec.decode`:

* **Analysis** (:func:`analyse`): a 4096-point STFT power (Hann, hop 640: 50 frames/s, 7.8 Hz bins,
  phase-invariant), summed into ``D`` log-frequency bands (:func:`band_centres`: a few wide bands
  for the bass fundamentals, one band per semitone from 110 Hz to ~5 kHz, three per octave above),
  log-compressed as ``10 log10(E + floor)`` dB and rounded to a grid of ``1 / grid`` dB. The latent
  *is* that ``D``-band spectrum (``D = hidden_size`` of the container): no learned reduction, so a
  codeword is a spectral envelope one can read.
* **Codebooks**: residual k-means on the training frames, as for the other codecs, but in fixed point
  (:func:`fit_codebooks_fixed`): features and centroids are integers on the dB grid, so every
  distance is an integer computed exactly by a float64 matrix product (all partial sums are
  integers below 2^53, exact in any summation order), ties go to the lowest index, and centroid
  means are rounded integer divisions. Whatever SIMD path BLAS, ATen or numpy take, the codes are
  the same, bit for bit, once the features are: those are float64 DSP rounded to the grid, and a
  last-bit difference moves a feature only if it lies within ~1e-13 dB of a grid boundary.
* **Decoder** (:func:`fit_decoder`): a ridge regression (closed form) from the quantised band
  spectrum (``D`` + 1 inputs) to the 2048-point STFT's per-bin dB (1025 outputs), fitted on the
  training frames' *quantised* latents, so it also undoes the quantiser's bias. Its weights are
  rounded to a 2^-16 grid (the fit's bytes do not depend on the CPU either).
* **Synthesis** (:func:`synthesise`): the per-bin power back from dB (the floor subtracted), its
  frames interpolated to hop 320, then fast Griffin-Lim (momentum 0.99, ``gl_iters`` iterations,
  a seeded initial phase) on the device of the container: a deterministic function of the codes.

What it keeps: pitch to a semitone above ~110 Hz (chords, melody, the bass's harmonics), timbre as
a band envelope, onsets at 20 ms. What it loses: phase (a Griffin-Lim "phasiness"), detail within a
band, and whatever 4 x 11 bits per frame cannot hold.

Shapes: audio ``(B, S)``; features and latents ``(B, T, D)``; codes ``(B, K, T)``, ``T = ceil(S /
hop)``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen.metrics.music_features import stft_power

SPECTRAL_CONFIG = "spectral.json"
SPECTRAL_WEIGHTS = "spectral.safetensors"
_WEIGHT_GRID = 2.0**16  # decoder weights are multiples of 2^-16
_CHUNK_ROWS = 4096  # frames per distance matrix (4096 x 2048 float64 = 64 MB)


@dataclass
class SpectralCodecConfig:
    """The analysis and synthesis of the tiny codec (``codec.tiny`` in params.yaml).

    Attributes:
        sample_rate: audio rate in Hz.
        hop: samples per codec frame (640 at 32 kHz: 50 frames/s).
        n_fft: analysis STFT size (4096: 7.8 Hz bins, semitones resolved from ~110 Hz).
        semitone_fmin: the lowest semitone band's centre, Hz (below: half-octave bands from 27.5 Hz).
        semitone_fmax: semitone bands up to here, Hz (above: three bands per octave).
        fmax: the highest band's upper edge, Hz.
        floor_db: the log's floor, dB re. a full-scale sine: ``10 log10(E + 10^(floor_db / 10))``.
        grid: feature steps per dB (16: 1/16 dB, far below what the codebooks resolve).
        synth_n_fft: synthesis STFT size (2048: 5x faster Griffin-Lim than 4096).
        synth_hop: Griffin-Lim hop (320: 84 % overlap; frames interpolated from the codec's 640).
        gl_iters: Griffin-Lim iterations.
        ridge: the decoder's ridge penalty, relative to the mean diagonal of ``X^T X``.
        seed: seed of Griffin-Lim's initial phase.
    """

    sample_rate: int = 32000
    hop: int = 640
    n_fft: int = 4096
    semitone_fmin: float = 110.0
    semitone_fmax: float = 5000.0
    fmax: float = 16000.0
    floor_db: float = -70.0
    grid: int = 16
    synth_n_fft: int = 2048
    synth_hop: int = 320
    gl_iters: int = 32
    ridge: float = 1e-3
    seed: int = 0


def band_centres(cfg: SpectralCodecConfig) -> np.ndarray:
    """Centre frequencies of the analysis bands, Hz, increasing.

    Half-octave bands from 27.5 Hz up to ``semitone_fmin``, one per semitone up to
    ``semitone_fmax``, three per octave below ``fmax``.
    """
    low = 27.5 * 2.0 ** (np.arange(math.floor(2 * math.log2(cfg.semitone_fmin / 27.5))) / 2)
    n_semi = math.floor(12 * math.log2(cfg.semitone_fmax / cfg.semitone_fmin)) + 1
    semi = cfg.semitone_fmin * 2.0 ** (np.arange(n_semi) / 12)
    n_high = math.floor(3 * math.log2(cfg.fmax / semi[-1]))
    high = semi[-1] * 2.0 ** (np.arange(1, n_high) / 3)  # the last one stays below fmax
    return np.concatenate([low, semi, high])


def band_filters(cfg: SpectralCodecConfig) -> np.ndarray:
    """Triangles on a log-frequency axis, each from its lower to its upper neighbour's centre.

    A band spans at least one FFT bin (the neighbours of a semitone band above 110 Hz are 13+ Hz
    apart, the bins 7.8 Hz).

    Returns:
        ``(D, n_fft // 2 + 1)`` float64 weights.
    """
    centres = np.log2(band_centres(cfg))
    edges = np.concatenate(
        [[2 * centres[0] - centres[1]], centres, [np.log2(cfg.fmax)]]
    )  # D + 2 points
    freqs = np.arange(cfg.n_fft // 2 + 1) * cfg.sample_rate / cfg.n_fft
    logf = np.log2(np.maximum(freqs, 1e-3))[None, :]
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    return np.clip(np.minimum((logf - lo) / (mid - lo), (hi - logf) / (hi - mid)), 0.0, None)


def n_bands(cfg: SpectralCodecConfig) -> int:
    """``D``: the number of bands, the latent width."""
    return len(band_centres(cfg))


def _db(power: np.ndarray, floor_db: float) -> np.ndarray:
    """``10 log10(power + 10^(floor_db / 10))``."""
    return 10.0 * np.log10(power + 10.0 ** (floor_db / 10.0))


def analyse(cfg: SpectralCodecConfig, audio: np.ndarray) -> np.ndarray:
    """The fixed-point band spectrum of each frame.

    Args:
        cfg: the analysis.
        audio: ``(B, S)`` audio.

    Returns:
        ``(B, T, D)`` int64 features: band energies in units of ``1 / cfg.grid`` dB.
    """
    x = np.atleast_2d(np.asarray(audio, dtype=np.float64))
    fb = band_filters(cfg)
    out = []
    for row in x:  # one clip at a time: the same arithmetic whatever the batch
        power = stft_power(row, cfg.n_fft, cfg.hop)  # (F, T)
        out.append(np.rint(cfg.grid * _db(fb @ power, cfg.floor_db)).T.astype(np.int64))
    return np.stack(out)


def nearest_fixed(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact nearest centroid of integer points: lowest index on ties.

    ``|x - c|^2 = |x|^2 - 2 x.c + |c|^2`` with integer ``x``, ``c`` small enough (|values| < 2^20,
    D < 2^10) that every product and partial sum of the float64 matrix product is an integer below
    2^53, hence exact in any order of summation: the result does not depend on the kernel.

    Args:
        x: ``(n, D)`` int64 points.
        centroids: ``(k, D)`` int64 centroids.

    Returns:
        ``(n,)`` int64 indices and ``(n,)`` int64 squared distances.
    """
    c = centroids.double()
    c_t, c_sq = c.t().contiguous(), centroids.pow(2).sum(1).double()
    idx = torch.empty(x.shape[0], dtype=torch.int64)
    dist = torch.empty(x.shape[0], dtype=torch.int64)
    for start in range(0, x.shape[0], _CHUNK_ROWS):
        xs = x[start : start + _CHUNK_ROWS]
        d = torch.addmm(c_sq, xs.double(), c_t, beta=1.0, alpha=-2.0)  # |c|^2 - 2 x.c, exact
        arg = torch.argmin(d, dim=1)  # documented: the first of equal minima
        idx[start : start + xs.shape[0]] = arg
        dist[start : start + xs.shape[0]] = d.gather(1, arg[:, None])[:, 0].long() + xs.pow(2).sum(
            1
        )
    return idx, dist


def _kmeans_fixed(
    x: torch.Tensor, k: int, n_iter: int, gen: torch.Generator, log_prefix: str | None
) -> torch.Tensor:
    """Lloyd's k-means on integer points with integer centroids (rounded means).

    Empty clusters are re-seeded with the points farthest from their centroid (largest first,
    ties by index), as :func:`musicgen.codec._kmeans` does.

    Args:
        x: ``(n, D)`` int64 points.
        k: clusters.
        n_iter: iterations.
        gen: seeded generator of the initialisation.
        log_prefix: one progress line per iteration to stderr, if given.

    Returns:
        ``(k, D)`` int64 centroids.
    """
    from musicgen.codec import _init_centroids, _reseed_empty

    centroids = _init_centroids(x, k, gen)
    for it in range(n_iter):
        assign, dist = nearest_fixed(x, centroids)
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros(k, x.shape[1], dtype=torch.int64).index_add_(0, assign, x)
        filled = counts > 0
        new = centroids.clone()
        n = counts[filled, None]
        new[filled] = torch.div(2 * sums[filled] + n, 2 * n, rounding_mode="floor")  # round(s/n)
        centroids = _reseed_empty(new, filled, x, dist, log_prefix, f"{it + 1}/{n_iter}")
    return centroids


def fit_codebooks_fixed(
    frames: torch.Tensor,
    n_codebooks: int,
    k: int,
    n_iter: int,
    gen: torch.Generator,
    progress: bool,
) -> list[torch.Tensor]:
    """Residual k-means in fixed point: one ``(k, D)`` int64 codebook per level.

    Args:
        frames: ``(n, D)`` int64 features (:func:`analyse`).
        n_codebooks: residual levels.
        k: entries fitted per codebook.
        n_iter: k-means iterations per level.
        gen: seeded generator.
        progress: print the k-means progress to stderr.

    Returns:
        The codebooks, coarse to fine.
    """
    residual, books = frames.clone(), []
    for i in range(n_codebooks):
        prefix = f"codebook {i + 1}/{n_codebooks}" if progress else None
        centroids = _kmeans_fixed(residual, k, n_iter, gen, prefix)
        assign, _ = nearest_fixed(residual, centroids)
        residual = residual - centroids[assign]
        books.append(centroids)
    return books


def quantise(features: np.ndarray, books: list[torch.Tensor]) -> torch.Tensor:
    """Residual quantisation of fixed-point features.

    Args:
        features: ``(B, T, D)`` int64 (:func:`analyse`).
        books: ``K`` codebooks ``(size, D)`` int64.

    Returns:
        ``(B, K, T)`` int64 codes.
    """
    b, t, d = features.shape
    residual = torch.from_numpy(np.ascontiguousarray(features)).reshape(b * t, d)
    codes = []
    for book in books:
        idx, _ = nearest_fixed(residual, book)
        residual = residual - book[idx]
        codes.append(idx.reshape(b, t))
    return torch.stack(codes, dim=1)


def dequantise(codes: torch.Tensor, books: list[torch.Tensor]) -> torch.Tensor:
    """``(B, K, T)`` codes to ``(B, T, D)`` int64 quantised features (sum over the K levels)."""
    return sum(book[c] for book, c in zip(books, codes.transpose(0, 1), strict=False))


def _inputs(latent_db: np.ndarray) -> np.ndarray:
    """The decoder's inputs: ``(n, D)`` dB and a constant 1, ``(n, D + 1)``."""
    return np.concatenate([latent_db, np.ones((latent_db.shape[0], 1))], axis=1)


def _target_db(cfg: SpectralCodecConfig, clip: np.ndarray) -> np.ndarray:
    """The synthesis STFT's per-bin dB of one clip on the feature grid, ``(T, synth_n_fft/2 + 1)``."""
    power = stft_power(clip, cfg.synth_n_fft, cfg.hop).T
    return np.rint(cfg.grid * _db(power, cfg.floor_db)) / cfg.grid


def fit_decoder(cfg: SpectralCodecConfig, audio: np.ndarray, quantised: np.ndarray) -> np.ndarray:
    """Ridge regression from quantised band spectra to the per-bin dB of the synthesis STFT.

    Args:
        cfg: the codec's analysis and synthesis.
        audio: ``(N, S)`` the training clips.
        quantised: ``(N, T, D)`` int64 their quantised features (grid units).

    Returns:
        ``(D + 1, synth_n_fft / 2 + 1)`` float32 weights, multiples of 2^-16.
    """
    d = quantised.shape[2]
    xtx = np.zeros((d + 1, d + 1))
    xty = np.zeros((d + 1, cfg.synth_n_fft // 2 + 1))
    for clip, q in zip(np.asarray(audio, dtype=np.float64), quantised, strict=True):
        x = _inputs(q / cfg.grid)  # multiples of 1/16: the products below are exact
        xtx += x.T @ x
        xty += x.T @ _target_db(cfg, clip)
    penalty = cfg.ridge * np.trace(xtx) / (d + 1) * np.eye(d + 1)
    penalty[d, d] = 0.0  # the bias is not shrunk
    weights = np.linalg.solve(xtx + penalty, xty)
    # + 0.0: the solve's last bits follow the BLAS kernel (OpenBLAS picks one per CPU), so a weight
    # within a rounding of zero comes out -0.0 on one CPU and 0.0 on another: the same value,
    # other bytes in the saved codec
    return (np.rint(weights * _WEIGHT_GRID) / _WEIGHT_GRID + 0.0).astype(np.float32)


def _interpolate_frames(x: torch.Tensor, factor: int) -> torch.Tensor:
    """Linear interpolation of ``(B, F, T)`` frames to ``(B, F, T * factor + 1)``."""
    if factor == 1:
        return torch.cat([x, x[..., -1:]], dim=-1)
    nxt = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)
    w = torch.arange(factor, dtype=x.dtype, device=x.device) / factor  # (factor,)
    steps = x[..., None] * (1 - w) + nxt[..., None] * w  # (B, F, T, factor)
    return torch.cat([steps.flatten(-2), x[..., -1:]], dim=-1)


def griffin_lim(
    magnitude: torch.Tensor, cfg: SpectralCodecConfig, length: int, momentum: float = 0.99
) -> torch.Tensor:
    """Fast Griffin-Lim (Perraudin et al., 2013) from a seeded random phase.

    Args:
        magnitude: ``(B, F, N)`` STFT magnitudes (``torch.stft`` scale) at hop ``synth_hop``.
        cfg: the synthesis sizes, iterations and seed.
        length: samples of the output.
        momentum: the fast variant's extrapolation (0: plain Griffin-Lim).

    Returns:
        ``(B, length)`` audio, on the magnitudes' device and dtype.
    """
    window = torch.hann_window(cfg.synth_n_fft, dtype=magnitude.dtype, device=magnitude.device)
    gen = torch.Generator().manual_seed(cfg.seed)
    phase = 2 * math.pi * torch.rand(magnitude.shape, generator=gen, dtype=torch.float64)
    complex_dtype = torch.complex64 if magnitude.dtype == torch.float32 else torch.complex128
    spec = magnitude * torch.polar(torch.ones_like(phase), phase).to(
        magnitude.device, complex_dtype
    )
    stft = dict(n_fft=cfg.synth_n_fft, hop_length=cfg.synth_hop, window=window)
    previous = torch.zeros_like(spec)
    for _ in range(cfg.gl_iters):
        audio = torch.istft(spec, length=length, **stft)
        rebuilt = torch.stft(audio, return_complex=True, **stft)
        accelerated = rebuilt + momentum * (rebuilt - previous)
        previous = rebuilt
        spec = magnitude * accelerated / accelerated.abs().clamp_min(1e-8)
    return torch.istft(spec, length=length, **stft)


def synthesise(
    cfg: SpectralCodecConfig,
    weights: torch.Tensor,
    latent: torch.Tensor,
) -> torch.Tensor:
    """Audio from quantised band spectra: the fitted decoder, then Griffin-Lim.

    Args:
        cfg: the synthesis.
        weights: ``(D + 1, F)`` decoder weights (:func:`fit_decoder`), on the target device.
        latent: ``(B, T, D)`` quantised features in grid units (any integer dtype or float).

    Returns:
        ``(B, T * hop)`` float32 audio on ``weights``' device.
    """
    b, t, _ = latent.shape
    x = latent.to(weights.device, torch.float32) / cfg.grid
    x = torch.cat([x, torch.ones(b, t, 1, device=x.device)], dim=-1)
    bins_db = x @ weights  # (B, T, F)
    power = (10.0 ** (bins_db / 10.0) - 10.0 ** (cfg.floor_db / 10.0)).clamp_min(0.0)
    window_sum = cfg.synth_n_fft / 2  # sum of a periodic Hann window: stft_power's scale back
    magnitude = power.sqrt() * (window_sum / 2)
    magnitude = _interpolate_frames(magnitude.transpose(1, 2), cfg.hop // cfg.synth_hop)
    return griffin_lim(magnitude, cfg, t * cfg.hop).float()


@dataclass
class SpectralPart:
    """The analysis config and the fitted decoder weights of a tiny codec.

    Attributes:
        config: the analysis and synthesis.
        weights: ``(D + 1, synth_n_fft / 2 + 1)`` float32 decoder weights.
    """

    config: SpectralCodecConfig
    weights: torch.Tensor

    def save(self, out_dir: Path) -> None:
        """Writes ``spectral.json`` (the config) and ``spectral.safetensors`` (the weights)."""
        from safetensors.torch import save_file

        (out_dir / SPECTRAL_CONFIG).write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        save_file({"decoder": self.weights.contiguous().cpu()}, str(out_dir / SPECTRAL_WEIGHTS))

    @classmethod
    def load(cls, directory: Path) -> SpectralPart | None:
        """The part saved in ``directory``, or None if there is none (another kind of codec)."""
        from safetensors.torch import load_file

        if not (directory / SPECTRAL_CONFIG).is_file():
            return None
        config = SpectralCodecConfig(**json.loads((directory / SPECTRAL_CONFIG).read_text()))
        return cls(config, load_file(str(directory / SPECTRAL_WEIGHTS))["decoder"])
