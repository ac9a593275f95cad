import numpy as np
import pytest

from musicgen.metrics import kad as K


def brute_kad(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """The definition, term by term, with full matrices."""

    def k(a, b):
        return np.exp(-np.sum((a[:, None] - b[None]) ** 2, -1) / (2 * sigma**2))

    kxx, kyy = k(x, x), k(y, y)
    m, n = len(x), len(y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return K.SCALE * (xx + yy - 2 * k(x, y).mean())


def pairwise_median(x: np.ndarray) -> float:
    d = np.sqrt(np.sum((x[:, None] - x[None]) ** 2, -1))
    return float(np.median(d[np.triu_indices(len(x), 1)]))


def test_kad_is_the_unbiased_mmd_with_the_reference_bandwidth():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(60, 5))
    generated = 4.0 * rng.normal(size=(45, 5)) + 1.0  # a much wider set: another median distance
    ref = K.KadReference.fit(reference)
    assert ref.bandwidth == pytest.approx(pairwise_median(reference), rel=1e-12)
    value = K.kad(ref, generated)
    assert value == pytest.approx(brute_kad(reference, generated, ref.bandwidth), rel=1e-10)
    # the evaluated set's own bandwidth gives another number: the test would see the swap
    other = brute_kad(reference, generated, pairwise_median(generated))
    assert abs(value - other) > 0.1 * abs(value)


def test_kad_is_unbiased_between_two_draws_of_one_distribution():
    """Mean over 300 draws within 3 standard errors of 0; the biased V-statistic's is far from it."""
    rng = np.random.default_rng(1)
    values, biased = [], []
    for _ in range(300):
        x, y = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
        ref = K.KadReference.fit(x)
        values.append(K.kad(ref, y))
        kxx = np.exp(-np.sum((x[:, None] - x[None]) ** 2, -1) / (2 * ref.bandwidth**2))
        kyy = np.exp(-np.sum((y[:, None] - y[None]) ** 2, -1) / (2 * ref.bandwidth**2))
        kxy = np.exp(-np.sum((x[:, None] - y[None]) ** 2, -1) / (2 * ref.bandwidth**2))
        biased.append(K.SCALE * (kxx.mean() + kyy.mean() - 2 * kxy.mean()))
    mean, sem = np.mean(values), np.std(values) / np.sqrt(len(values))
    assert abs(mean) < 3 * sem
    assert np.mean(biased) > 10 * sem  # the diagonal terms bias it upwards


def test_kad_grows_with_the_shift_and_blocks_change_nothing(monkeypatch):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 3))
    ref = K.KadReference.fit(x)
    near, far = (
        K.kad(ref, rng.normal(size=(150, 3)) + 0.3),
        K.kad(ref, rng.normal(size=(150, 3)) + 1.0),
    )
    assert 0 < near < far
    y = rng.normal(size=(150, 3))
    monkeypatch.setattr(K, "BLOCK", 7)
    assert K.kad(K.KadReference.fit(x), y) == pytest.approx(K.kad(ref, y), rel=1e-12)


def test_median_distance_is_sampled_above_max_pairs(monkeypatch):
    x = np.random.default_rng(3).normal(size=(400, 4))
    exact = K.median_pairwise_distance(x)
    monkeypatch.setattr(K, "MAX_PAIRS", 20000)
    assert K.median_pairwise_distance(x) == pytest.approx(exact, rel=0.03)


def test_bad_inputs_are_clear_errors():
    ref = K.KadReference.fit(np.random.default_rng(4).normal(size=(10, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        K.kad(ref, np.zeros((1, 2)))
    with pytest.raises(ValueError, match="all equal"):
        K.KadReference.fit(np.ones((5, 2)))
