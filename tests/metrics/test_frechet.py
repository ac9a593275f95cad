import numpy as np
import pytest

from musicgen.metrics.embedders import MelEmbedder, embed_clips
from musicgen.metrics.frechet import embedding_fd, fad_inf, frechet_distance, gaussian, per_clip_fd


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def test_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    # ||mu||^2 + sum (sqrt(a) - sqrt(b))^2 for diagonal covariances
    expected = 5.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_closed_form_for_full_covariances_sharing_eigenvectors():
    d, q = 16, random_rotation(16, 0)
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 5, d), rng.uniform(0.1, 5, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T  # full, non-diagonal matrices
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_full_covariances_agree_with_the_eigenvalues_of_the_product():
    rng = np.random.default_rng(2)
    d = 12
    a, b = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T + 0.1 * np.eye(d)  # not commuting
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # Tr((S1 S2)^1/2) = sum of the square roots of S1 S2's (real, positive) eigenvalues
    cross = np.sum(np.sqrt(np.linalg.eigvals(s1 @ s2).real))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)


def test_rank_deficient_covariances_give_a_finite_real_non_negative_distance():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(7, 64)) + 0.2  # fewer samples than dims
    for a, b in [(x, y), (y, x), (x, x), (x, x[:3])]:
        value = embedding_fd(a, b)
        assert isinstance(value, float) and np.isfinite(value) and value >= 0
    assert embedding_fd(x, x) == pytest.approx(0.0, abs=1e-8)
    # near-singular: a covariance with eigenvalues down to 1e-14
    q = random_rotation(8, 4)
    s = (q * np.logspace(-14, 0, 8)) @ q.T
    assert 0 <= frechet_distance(np.zeros(8), s, np.zeros(8), s) < 1e-6


def test_same_set_is_zero_and_shift_grows():
    x = np.random.default_rng(0).normal(size=(400, 6))
    assert embedding_fd(x, x) == pytest.approx(0.0, abs=1e-8)
    assert embedding_fd(x, x + 0.5) < embedding_fd(x, x + 1.0)


def test_fad_inf_recovers_the_population_distance():
    """FAD at small n is biased upwards; the 1/n fit's intercept lands on the true value."""
    d, rng = 32, np.random.default_rng(5)
    mu_ref, s_ref = np.zeros(d), np.eye(d)
    scales, shift = np.linspace(0.5, 2.0, d), np.full(d, 0.1)
    generated = shift + rng.normal(size=(40000, d)) * np.sqrt(scales)
    truth = d * 0.01 + np.sum((1 - np.sqrt(scales)) ** 2)  # the population FAD, 2.005
    small_n = frechet_distance(mu_ref, s_ref, *gaussian(generated[:500]))  # 2.91
    result = fad_inf(mu_ref, s_ref, generated, min_n=500, steps=25, seed=0)
    assert result.value == pytest.approx(truth, abs=0.05)  # stated tolerance: 0.05 (2.5 %)
    assert small_n - truth > 10 * abs(result.value - truth)
    assert result.slope > 0 and result.r2 > 0.9
    assert result.ns[0] == 500 and result.ns[-1] == 40000


def test_fad_inf_is_clamped_but_keeps_the_fitted_intercept():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(300, 4))
    mu, s = gaussian(x)
    result = fad_inf(mu, s, x, min_n=500, steps=10, seed=0)  # fewer than min_n: from n/2
    assert result.ns[0] == 150 and result.value >= 0 and result.value >= result.intercept
    assert np.isfinite(result.intercept)


def test_per_clip_fd_ranks_clips_by_their_distance():
    rng = np.random.default_rng(7)
    reference = rng.normal(size=(500, 6))
    mu, s = gaussian(reference)
    clips = np.stack([rng.normal(size=(20, 6)) + shift for shift in (0.0, 1.0, 3.0)])
    values = per_clip_fd(mu, s, clips)
    assert values.shape == (3,) and np.all(np.diff(values) > 0)
    assert values[1] == pytest.approx(frechet_distance(mu, s, *gaussian(clips[1])))


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
