"""Audio embedders for FAD, FAD∞ and KAD, by name, and where their weights came from.

Each embedder turns clips of equal length, (N, S) at some rate, into (N, E, D) float64 embeddings:
E per clip (0.96 s examples, windows, or 1 for a whole-clip embedding), D wide.

- ``mel``: needs no weights. VGGish's 16 kHz log-mel front end, cut into 0.96 s windows every
  0.5 s; each window becomes the mean and standard deviation over time of its 64 bands (128
  numbers). It measures spectral statistics only, not musical quality.
- ``vggish``: VGGish (:mod:`musicgen.metrics.vggish`), the FAD embedder of MusicGen's paper and of
  audiocraft; its weights are the eval-models stage's ``vggish.safetensors``.
- ``clap``: CLAP's audio embedding (:mod:`musicgen.metrics.clap`), one per clip; the model is the
  eval-models stage's ``clap/``.

The eval-models stage writes ``sources.json`` beside the weights: per embedder, what its weights are
(``random(seed=0)``, the torchvggish file and its SHA-256, a hub id), so every metric names them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from musicgen.data.audio import resample
from musicgen.metrics import vggish as V

EMBEDDERS = ("mel", "vggish", "clap")
SOURCES = "sources.json"  # embedder -> weights source, in the eval-models directory
VGGISH_FILE = "vggish.safetensors"
CLAP_DIR = "clap"
WEIGHT_FREE = "none (weight-free)"


@dataclass
class MelEmbedder:
    window_s: float = 0.96  # VGGish's example length
    hop_s: float = 0.5

    name = "mel"
    dim = 2 * V.N_MELS

    def embed_clips(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        """(N, S) clips -> (N, W, 128): mean and std over time of each window's log-mel bands."""
        audio = np.stack([resample(c, sample_rate, V.SAMPLE_RATE) for c in clips])
        mel = V.log_mel(torch.from_numpy(audio))  # (N, F, 64)
        frames_per_s = V.SAMPLE_RATE / V.HOP
        win, hop = round(self.window_s * frames_per_s), round(self.hop_s * frames_per_s)
        if mel.shape[1] < win:
            raise ValueError(f"clips too short for one {self.window_s} s window")
        windows = mel.unfold(1, win, hop)  # (N, W, 64, win)
        return torch.cat([windows.mean(-1), windows.std(-1)], dim=-1).numpy()


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
    from musicgen.metrics.clap import ClapEmbedder

    return ClapEmbedder(Path(models_dir) / CLAP_DIR, device, batch_size)


def weights_source(name: str, models_dir: Path) -> str:
    return WEIGHT_FREE if name == "mel" else read_sources(models_dir)[name]


def embed_clips(embedder, clips: np.ndarray, sample_rate: int) -> np.ndarray:
    """All embeddings of clips (N, S) as one set, (N * E, D)."""
    out = embedder.embed_clips(clips, sample_rate)
    return out.reshape(-1, out.shape[-1])
