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


@dataclass
class MelEmbedder:
    window_s: float = 0.96  # VGGish's example length
    hop_s: float = 0.5
    clips_per_call: int = 16  # clips through the float64 front end at a time (~13 MB per 10 s)

    name = "mel"
    dim = 2 * V.N_MELS

    def embed_clips(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        """(N, S) clips -> (N, W, 128): mean and std over time of each window's log-mel bands."""
        step = self.clips_per_call
        return np.concatenate(
            [self._embed(clips[i : i + step], sample_rate) for i in range(0, len(clips), step)]
        )

    def _embed(self, clips: np.ndarray, sample_rate: int) -> np.ndarray:
        audio = np.stack([resample(c, sample_rate, V.SAMPLE_RATE) for c in clips])
        mel = V.log_mel(torch.from_numpy(audio))  # (n, F, 64)
        frames_per_s = V.SAMPLE_RATE / V.HOP
        win, hop = round(self.window_s * frames_per_s), round(self.hop_s * frames_per_s)
        if mel.shape[1] < win:
            raise ValueError(f"clips too short for one {self.window_s} s window")
        windows = mel.unfold(1, win, hop)  # (n, W, 64, win)
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
