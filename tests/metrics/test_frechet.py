import numpy as np
import pytest

from musicgen.metrics.embedders import MelEmbedder, embed_clips
from musicgen.metrics.frechet import embedding_fd, frechet_distance


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # ||mu||^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)


def test_same_set_is_zero_and_shift_grows():
    x = np.random.default_rng(0).normal(size=(400, 6))
    assert embedding_fd(x, x) == pytest.approx(0.0, abs=1e-8)
    assert embedding_fd(x, x + 0.5) < embedding_fd(x, x + 1.0)


def test_mel_embedder_separates_different_sounds():
    sr, rng = 32000, np.random.default_rng(0)
    t = np.arange(2 * sr) / sr
    tones = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 400, 6)])
    other_tones = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in rng.uniform(200, 400, 6)])
    noise = 0.3 * rng.normal(size=(6, 2 * sr))
    e = MelEmbedder()
    a, b, c = (embed_clips(e, x.astype(np.float32), sr) for x in (tones, other_tones, noise))
    assert a.shape[1] == e.dim
    assert embedding_fd(a, b) < embedding_fd(a, c)
