"""Audio embedders for FAD, FAD∞ and KAD, by name, and where their weights came from.

Each embedder turns clips of equal length, (N, S) at some rate, into (N, E, D) float64 embeddings:
E per clip (0.96 s examples, windows, or 1 for a whole-clip embedding), D wide.

- ``mel``: needs no weights: music statistics of 0.96 s windows every 0.5 s (:class:`MelEmbedder`):
  timbre (the mean and standard deviation over time of VGGish's 64 log-mel bands), pitch (of the
  12 pitch classes' log energy share) and rhythm (the onset envelope's level, spread and
  periodicity), 158 numbers. Its chroma and onset parts tell music from noise or from
  spectrally similar sound without its pitch and rhythm (an untrained model's), which the
  embedded default's random-weight VGGish, CLAP and PaSST cannot; it is no perceptual quality
  measure.
- ``vggish``: VGGish (:mod:`musicgen.metrics.vggish`), the FAD embedder of MusicGen's paper and of
  audiocraft; its weights are the eval-models stage's ``vggish.safetensors``.
- ``clap``: CLAP's audio embedding (:mod:`musicgen.metrics.clap`), one per clip; the model is the
  eval-models stage's ``clap/``.
- ``passt``: PaSST (:mod:`musicgen.metrics.passt`), one 768-d embedding per 10 s segment (for FAD
  and KAD) and, per segment, the 527 AudioSet class probabilities of MusicGen's KL
  (:mod:`musicgen.metrics.kl`); its weights are the eval-models stage's ``passt.safetensors``.

The eval-models stage writes ``sources.json`` beside the weights: per embedder, what its weights are
(``random(seed=0)``, the torchvggish file and its SHA-256, a hub id), so every metric names them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from musicgen.data.audio import load_clips, resample
from musicgen.metrics import vggish as V

EMBEDDERS = ("mel", "vggish", "clap", "passt")
SOURCES = "sources.json"  # embedder -> weights source, in the eval-models directory
VGGISH_FILE = "vggish.safetensors"
CLAP_DIR = "clap"
PASST_FILE = "passt.safetensors"
WEIGHT_FREE = "none (weight-free)"


# The chroma analysis: a 2048-point STFT at 16 kHz (128 ms, 7.8 Hz bins: a semitone apart from
# ~130 Hz up) on VGGish's 10 ms hop, the bins from C2 to C7 folded onto the 12 pitch classes.
CHROMA_FFT = 2048
CHROMA_RANGE_HZ = (65.0, 2100.0)
CHROMA_FLOOR = 1e-3  # of the energy share: log(share + floor), so a silent pitch class is finite
# Onset periodicity: the onset envelope's largest autocorrelation in each band of lags (seconds):
# eighth notes to half a second, what a 0.96 s window holds twice.
ONSET_LAGS_S = ((0.1, 0.2), (0.2, 0.3), (0.3, 0.4), (0.4, 0.48))
ONSET_FLOOR = 1e-3  # nats per frame: log(onset level + floor)
# Fixed block weights (no fitted weights): on the embedded default's references the chroma and
# onset blocks' variance (trace of the covariance) is then of the order of the log-mel block's
# (measured 228 log-mel, 36 x 2^2 chroma, 1.7 x 8^2 onset), so each counts in FAD and KAD.
CHROMA_WEIGHT = 2.0
ONSET_WEIGHT = 8.0


@lru_cache(maxsize=1)
def pitch_class_matrix() -> torch.Tensor:
    """(CHROMA_FFT // 2 + 1, 12) float64: 1 where an STFT bin (16 kHz) in CHROMA_RANGE_HZ lies
    nearest to a pitch class (0 = A), else 0."""
    freqs = np.fft.rfftfreq(CHROMA_FFT, 1 / V.SAMPLE_RATE)
    lo, hi = CHROMA_RANGE_HZ
    rows = np.flatnonzero((freqs >= lo) & (freqs <= hi))
    classes = np.round(12 * np.log2(freqs[rows] / 440.0)).astype(np.int64) % 12
    out = np.zeros((len(freqs), 12))
    out[rows, classes] = 1.0
    return torch.from_numpy(out)


def chroma_frames(audio: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Each frame's log energy share of the 12 pitch classes.

    Args:
        audio: (S,) 16 kHz mono samples, float64.
        n_frames: frames to return, those of VGGish's log-mel (10 ms hop, 25 ms windows): the
            2048-point windows are centred on them.

    Returns:
        (n_frames, 12) float64 log(share + CHROMA_FLOOR); shares sum to 1 (0 in silence).
    """
    pad = (CHROMA_FFT - V.WINDOW) // 2
    spec = torch.stft(
        torch.nn.functional.pad(audio, (pad, pad + CHROMA_FFT)),
        CHROMA_FFT,
        V.HOP,
        window=torch.hann_window(CHROMA_FFT, dtype=torch.float64),
        center=False,
        return_complex=True,
    )  # (CHROMA_FFT // 2 + 1, F')
    energy = spec[:, :n_frames].abs().square().T @ pitch_class_matrix()  # (n_frames, 12)
    total = energy.sum(-1, keepdim=True)
    share = torch.where(total > 0, energy / total.clamp_min(1e-300), torch.zeros_like(energy))
    return torch.log(share + CHROMA_FLOOR)


def onset_envelope(mel: torch.Tensor) -> torch.Tensor:
    """Spectral flux of log-mel frames: the mean rise of the bands from the previous frame.

    Args:
        mel: (..., F, B) log-mel frames.

    Returns:
        (..., F) float, 0 at the first frame.
    """
    flux = torch.relu(mel[..., 1:, :] - mel[..., :-1, :]).mean(-1)
    return torch.nn.functional.pad(flux, (1, 0))


def onset_statistics(windows: torch.Tensor, frames_per_s: float) -> torch.Tensor:
    """Rhythm numbers of onset-envelope windows: log level, log spread and the periodicity.

    Args:
        windows: (..., L) onset envelope windows.
        frames_per_s: their frame rate.

    Returns:
        (..., 2 + len(ONSET_LAGS_S)): log(mean + ONSET_FLOOR), log(std + ONSET_FLOOR), and per
        band of ONSET_LAGS_S the largest normalised autocorrelation (in [-1, 1]; 0 for a flat
        window).
    """
    centred = windows - windows.mean(-1, keepdim=True)
    power = centred.square().mean(-1)
    lags = torch.arange(1, windows.shape[-1] // 2)
    acf = torch.stack([(centred[..., :-k] * centred[..., k:]).mean(-1) for k in lags.tolist()], -1)
    acf = torch.where(power[..., None] > 0, acf / power[..., None].clamp_min(1e-300), 0.0)
    seconds = lags / frames_per_s
    bands = [acf[..., (seconds >= lo) & (seconds < hi)].amax(-1) for lo, hi in ONSET_LAGS_S]
    level = torch.log(windows.mean(-1) + ONSET_FLOOR)
    spread = torch.log(windows.std(-1) + ONSET_FLOOR)
    return torch.stack([level, spread, *bands], -1)


@dataclass
class MelEmbedder:
    """Weight-free music statistics of 0.96 s windows every 0.5 s, on VGGish's 16 kHz front end.

    Each window gives three blocks (:attr:`blocks`), 158 numbers:

    - ``logmel`` (128): the mean and standard deviation over time of the 64 log-mel bands:
      timbre and loudness;
    - ``chroma`` (24, times CHROMA_WEIGHT): the mean and standard deviation over time of each
      pitch class's log energy share (:func:`chroma_frames`): key, chords, how tonal;
    - ``onset`` (6, times ONSET_WEIGHT): the spectral-flux onset envelope's log level and spread
      and its periodicity (:func:`onset_statistics`): attacks and rhythm.

    Noise has flat chroma and no periodic onsets; a model that makes the references' spectrum but
    not their notes differs in the chroma and onset blocks (:func:`block_distances`).
    """

    window_s: float = 0.96  # VGGish's example length
    hop_s: float = 0.5
    clips_per_call: int = 16  # clips through the float64 log-mel at a time (~13 MB per 10 s)

    name = "mel"
    blocks = {"logmel": slice(0, 128), "chroma": slice(128, 152), "onset": slice(152, 158)}
    dim = 158

    def embed_clips(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        """(N, S) clips -> (N, W, 158): the three blocks of each window."""
        step = self.clips_per_call
        return np.concatenate(
            [self._embed(clips[i : i + step], sample_rate) for i in range(0, len(clips), step)]
        )

    def _embed(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = torch.from_numpy(
            np.stack([resample(c, sample_rate, V.SAMPLE_RATE) for c in clips])
        ).to(torch.float64)
        mel = V.log_mel(audio)  # (n, F, 64)
        frames_per_s = V.SAMPLE_RATE / V.HOP
        win, hop = round(self.window_s * frames_per_s), round(self.hop_s * frames_per_s)
        if mel.shape[1] < win:
            raise ValueError(f"clips too short for one {self.window_s} s window")
        chroma = torch.stack([chroma_frames(a, mel.shape[1]) for a in audio])  # (n, F, 12)
        mel_w = mel.unfold(1, win, hop)  # (n, W, 64, win)
        chroma_w = chroma.unfold(1, win, hop)  # (n, W, 12, win)
        onset_w = onset_envelope(mel).unfold(1, win, hop)  # (n, W, win)
        return torch.cat(
            [
                mel_w.mean(-1),
                mel_w.std(-1),
                CHROMA_WEIGHT * chroma_w.mean(-1),
                CHROMA_WEIGHT * chroma_w.std(-1),
                ONSET_WEIGHT * onset_statistics(onset_w, frames_per_s),
            ],
            dim=-1,
        ).numpy()


def block_distances(reference: np.ndarray, generated: np.ndarray) -> dict[str, float]:
    """The Fréchet distance of each block of :class:`MelEmbedder` embeddings (timbre, pitch,
    rhythm apart).

    Args:
        reference: (N, W, 158) or (M, 158) embeddings of the real clips.
        generated: the same of the clips to score.

    Returns:
        ``{"logmel": ..., "chroma": ..., "onset": ...}``.
    """
    from musicgen.metrics.frechet import frechet_distance, gaussian

    ref = reference.reshape(-1, MelEmbedder.dim)
    gen = generated.reshape(-1, MelEmbedder.dim)
    return {
        name: frechet_distance(*gaussian(ref[:, cols]), *gaussian(gen[:, cols]))
        for name, cols in MelEmbedder.blocks.items()
    }


def check_embedders(names: list[str]) -> None:
    unknown = [n for n in names if n not in EMBEDDERS]
    if unknown or not names:
        raise ValueError(
            f"evaluate.embedders: unknown {unknown or 'empty list'}; available: {', '.join(EMBEDDERS)}"
        )


def read_sources(models_dir: Path) -> dict[str, str]:
    """Embedder -> weights source, as the eval-models stage recorded it."""
    return json.loads((Path(models_dir) / SOURCES).read_text())


def build_embedder(name: str, models_dir: Path, device: torch.device, batch_size: int):
    """The embedder ``name`` with the weights in ``models_dir`` (the eval-models output)."""
    check_embedders([name])
    if name == "mel":
        return MelEmbedder()
    sources = read_sources(models_dir)
    if name not in sources:
        raise ValueError(
            f"{models_dir / SOURCES}: no '{name}' model; the eval_models stage makes one for each "
            "name in evaluate.embedders"
        )
    if name == "vggish":
        return V.VGGishEmbedder(V.load_vggish(Path(models_dir) / VGGISH_FILE), device, batch_size)
    if name == "passt":
        from musicgen.metrics.passt import PasstEmbedder, load_passt

        return PasstEmbedder(load_passt(Path(models_dir) / PASST_FILE), device, batch_size)
    from musicgen.metrics.clap import ClapEmbedder

    return ClapEmbedder(Path(models_dir) / CLAP_DIR, device, batch_size)


def weights_source(name: str, models_dir: Path) -> str:
    return WEIGHT_FREE if name == "mel" else read_sources(models_dir)[name]


@dataclass
class Embedded:
    """What an embedder made of a set of clips.

    Attributes:
        embeddings: (N, E, D) float64, E per clip.
        probs: (N, E, C) float64 class probabilities per segment (PaSST's 527 AudioSet classes,
            for KL), or None for an embedder without a classifier.
    """

    embeddings: np.ndarray
    probs: np.ndarray | None = None


def embed_read(embedder, clips: np.ndarray, sample_rate: int) -> Embedded:
    """One read's (n, S) clips through ``embedder``: embeddings, and class probabilities when
    the embedder has them (PaSST's ``outputs``: both from one network call per segment)."""
    if hasattr(embedder, "outputs"):
        out = embedder.outputs(clips, sample_rate)
        return Embedded(out.embeddings, out.probs)
    return Embedded(embedder.embed_clips(clips, sample_rate))


def embed_files_with_probs(
    embedder,
    audio_dir: Path,
    ids: list[str],
    sample_rate: int,
    clips_per_read: int,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Embedded:
    """Embeddings (N, E, D) and, for PaSST, class probabilities (N, E, C) of the wavs
    ``audio_dir/<id>.wav``, streamed.

    The clips are read ``clips_per_read`` at a time (the embedders batch further inside), so only
    one read's audio is in memory, whatever the number of clips; the outputs are small (128 to 768
    numbers per embedding, 527 per segment's probabilities).

    Args:
        embedder: a ``mel``, ``vggish``, ``clap`` or ``passt`` embedder.
        audio_dir: mono wavs of equal length at ``sample_rate``.
        ids: the clips, in the output's order.
        sample_rate: their rate.
        clips_per_read: clips read and embedded at a time.
        prepare: applied to each read (n, S) before embedding, e.g. loudness normalisation.
    """
    parts = []
    for i in range(0, len(ids), clips_per_read):
        clips = load_clips(audio_dir, ids[i : i + clips_per_read], sample_rate)  # (n, S)
        parts.append(
            embed_read(embedder, clips if prepare is None else prepare(clips), sample_rate)
        )
    probs = [p.probs for p in parts]
    return Embedded(
        np.concatenate([p.embeddings for p in parts]),
        None if any(p is None for p in probs) else np.concatenate(probs),
    )


def embed_files(embedder, *args, **kwargs) -> np.ndarray:
    """The embeddings (N, E, D) alone of :func:`embed_files_with_probs` (the same arguments)."""
    return embed_files_with_probs(embedder, *args, **kwargs).embeddings


def embed_clips(embedder, clips: np.ndarray, sample_rate: int) -> np.ndarray:
    """All embeddings of clips (N, S) as one set, (N * E, D)."""
    out = embedder.embed_clips(clips, sample_rate)
    return out.reshape(-1, out.shape[-1])
