"""Audio embedders for Fréchet distances.

``mel``: needs no weights. Each clip is resampled to 16 kHz, cut into 0.96 s windows with a 0.5 s hop
(VGGish's framing), and each window becomes the mean and standard deviation over time of its 64-band
log-mel spectrogram (128 numbers). It measures spectral statistics only, not musical quality; the
embedded default uses it because it runs offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from musicgen.data.audio import resample

EMBEDDERS = ("mel",)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, fmin: float = 125.0, fmax: float = 7500.0
) -> torch.Tensor:
    """Triangular HTK-mel filters, (n_mels, n_fft // 2 + 1)."""

    def hz_to_mel(f):
        return 1127.0 * np.log1p(np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * np.expm1(np.asarray(m) / 1127.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, center, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lower) / (center - lower)
    down = (upper - bins[None]) / (upper - center)
    return torch.from_numpy(np.clip(np.minimum(up, down), 0, None)).float()


@dataclass
class MelEmbedder:
    sample_rate: int = 16000  # audio is resampled to this rate first
    n_mels: int = 64
    window_s: float = 0.96  # VGGish example length
    hop_s: float = 0.5

    def __post_init__(self) -> None:
        self.n_fft, self.stft_hop = 400, 160  # 25 ms windows, 10 ms hop at 16 kHz
        self.fbank = mel_filterbank(self.n_mels, 512, self.sample_rate)

    @property
    def dim(self) -> int:
        return 2 * self.n_mels

    def log_mel(self, audio: np.ndarray) -> torch.Tensor:
        """(S,) 16 kHz audio -> (frames, n_mels) log-mel."""
        x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        spec = torch.stft(
            x,
            n_fft=512,
            hop_length=self.stft_hop,
            win_length=self.n_fft,
            window=torch.hann_window(self.n_fft),
            center=False,
            return_complex=True,
        )
        return torch.log(self.fbank @ spec.abs() + 0.01).T

    def embed(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """One clip (S,) -> (windows, 2 * n_mels) embeddings."""
        mel = self.log_mel(resample(audio, sample_rate, self.sample_rate))
        frames_per_s = self.sample_rate / self.stft_hop
        win, hop = round(self.window_s * frames_per_s), round(self.hop_s * frames_per_s)
        if mel.shape[0] < win:
            raise ValueError(f"clip too short for one {self.window_s} s window")
        windows = mel.unfold(0, win, hop)  # (W, n_mels, win)
        return torch.cat([windows.mean(-1), windows.std(-1)], dim=1).numpy().astype(np.float64)


def build_embedder(name: str) -> MelEmbedder:
    if name == "mel":
        return MelEmbedder()
    raise ValueError(f"unknown embedder '{name}'; available: {', '.join(EMBEDDERS)}")


def embed_clips(embedder: MelEmbedder, clips: np.ndarray, sample_rate: int) -> np.ndarray:
    """Stacks the window embeddings of clips (N, S) into (sum of windows, D)."""
    return np.concatenate([embedder.embed(c, sample_rate) for c in clips])
