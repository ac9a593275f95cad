"""The weight-free ``mel`` embedder's music statistics: pitch classes, onsets, and what separates
synthetic music from noise and from its own notes shuffled in time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicgen.data.synthetic import SyntheticConfig, make_clip
from musicgen.metrics.embedders import (
    MelEmbedder,
    block_distances,
    chroma_frames,
    embed_clips,
    onset_statistics,
)
from musicgen.metrics.frechet import frechet_distance, gaussian

SR = 32000
N_CLIPS = 24


def fad(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    return frechet_distance(*gaussian(a), *gaussian(b))


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    """(24, 3 s) clips of the synthetic set, mono at 32 kHz."""
    cfg = SyntheticConfig(n_clips=N_CLIPS, duration_s=3, sample_rate=SR, channels=1)
    rngs = (np.random.default_rng(np.random.SeedSequence([0, i])) for i in range(N_CLIPS))
    return np.stack([make_clip(rng, cfg)[0][0] for rng in rngs])


@pytest.fixture(scope="module")
def embedded(music) -> dict[str, np.ndarray]:
    """Embeddings of the music, of white noise at its loudness, and of the music cut into 0.1 s
    blocks put back in a random order (each clip's notes and spectrum, not its rhythm)."""
    rng = np.random.default_rng(1)
    rms = np.sqrt(np.mean(music**2))
    noise = (rms * rng.standard_normal(music.shape)).astype(np.float32)
    blocks = music.reshape(len(music), -1, SR // 10)
    shuffled = np.stack([clip[rng.permutation(len(clip))] for clip in blocks]).reshape(music.shape)
    e = MelEmbedder()
    return {
        k: e.embed_clips(v, SR)
        for k, v in {"music": music, "noise": noise, "shuffled": shuffled}.items()
    }


def torch_audio(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def test_chroma_names_the_pitch_classes_of_a_chord():
    t = np.arange(16000) / 16000
    a440 = torch_audio(np.sin(2 * np.pi * 440.0 * t))
    share = np.exp(chroma_frames(a440, 50).numpy())
    assert (share.argmax(-1) == 0).all()  # A
    c_major = sum(np.sin(2 * np.pi * f * t) for f in (261.63, 329.63, 392.0))  # C E G
    top = np.argsort(chroma_frames(torch_audio(c_major), 50).numpy().mean(0))[-3:]
    assert sorted(top) == [3, 7, 10]  # C, E, G counted from A
    silent = chroma_frames(torch_audio(np.zeros(16000)), 50).numpy()
    assert np.isfinite(silent).all() and np.ptp(silent) == 0


def test_onset_periodicity_finds_the_beat():
    frames_per_s = 100.0
    beat = np.zeros(96)
    beat[::25] = 1.0  # an onset every 0.25 s
    stats = onset_statistics(torch.from_numpy(beat), frames_per_s).numpy()
    assert stats[2 + 1] == pytest.approx(stats[2:].max())  # the 0.2 to 0.3 s band
    assert stats[2 + 1] > 0.5 > stats[2]
    flat = onset_statistics(torch.zeros(96, dtype=torch.float64), frames_per_s).numpy()
    assert np.isfinite(flat).all() and (flat[2:] == 0).all()


def test_embeddings_have_three_blocks_and_do_not_depend_on_batching(music):
    e = MelEmbedder()
    out = e.embed_clips(music[:3], SR)
    assert out.shape == (3, 5, e.dim)  # 0.96 s windows every 0.5 s of 3 s
    columns = np.concatenate([np.arange(e.dim)[cols] for cols in e.blocks.values()])
    assert (columns == np.arange(e.dim)).all()
    one_by_one = MelEmbedder(clips_per_call=1).embed_clips(music[:3], SR)
    np.testing.assert_allclose(one_by_one, out, rtol=0, atol=1e-9)
    assert embed_clips(e, music[:3], SR).shape == (15, e.dim)


def test_music_is_far_from_noise_and_close_to_itself(embedded):
    music, noise = embedded["music"], embedded["noise"]
    half = N_CLIPS // 2
    itself = fad(music[:half], music[half:])
    assert fad(music, noise) > 4 * itself
    same, other = block_distances(music[:half], music[half:]), block_distances(music, noise)
    for name in MelEmbedder.blocks:
        assert other[name] > 3 * same[name], name


def test_pitch_and_rhythm_blocks_see_what_the_spectrum_does_not(embedded):
    """Music shuffled in time keeps its spectrum (log-mel block close to the music's) but loses
    its rhythm: the onset block moves most."""
    music, shuffled = embedded["music"], embedded["shuffled"]
    half = N_CLIPS // 2
    same = block_distances(music[:half], music[half:])
    moved = block_distances(music, shuffled)
    noise = block_distances(music, embedded["noise"])
    assert moved["logmel"] < noise["logmel"] / 5
    assert moved["onset"] > 3 * same["onset"]
    assert moved["onset"] / noise["onset"] > moved["logmel"] / noise["logmel"]
