"""Fréchet distance between Gaussians fitted to two sets of embeddings (FAD), per clip and FAD∞.

Everything is float64. The matrix square root goes through symmetric eigendecompositions
(:func:`sqrtm_psd`), so near-singular or rank-deficient covariances (fewer embeddings than
dimensions) give a finite, real, non-negative distance.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def gaussian(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of embeddings (N, D), in float64."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings of shape (N, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (negative round-off clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    root1: np.ndarray | None = None,
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), clamped at 0 against round-off.

    Tr((S1 S2)^1/2) is computed as Tr((S1^1/2 S2 S1^1/2)^1/2), whose argument is symmetric PSD, so
    no complex square roots arise.

    Args:
        mu1, sigma1: the first Gaussian, (D,) and (D, D) (the reference).
        mu2, sigma2: the second one.
        root1: ``sqrtm_psd(sigma1)`` if already known (many distances to one reference).
    """
    root1 = sqrtm_psd(sigma1) if root1 is None else root1
    cross = sqrtm_psd(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(cross)
    return float(max(value, 0.0))


def embedding_fd(reference: np.ndarray, generated: np.ndarray) -> float:
    """Fréchet distance between two embedding sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian(reference), *gaussian(generated))


def per_clip_fd(mu: np.ndarray, sigma: np.ndarray, clips: np.ndarray) -> np.ndarray:
    """Each clip's own Fréchet distance to the reference Gaussian (fadtk's per-song score).

    Args:
        mu, sigma: the reference Gaussian, (D,) and (D, D).
        clips: (N, E, D) embeddings, E >= 2 per clip (e.g. VGGish's 0.96 s examples).

    Returns:
        (N,) float64 distances. With E <= D a clip's covariance is rank-deficient, so the value
        mixes its mean offset with a covariance term that is large for every clip; compare clips
        with one another, not with the set's FAD.
    """
    root = sqrtm_psd(sigma)
    return np.array([frechet_distance(mu, sigma, *gaussian(c), root1=root) for c in clips])


@dataclass
class FadInf:
    """FAD extrapolated to an infinite evaluation set (fadtk's FAD∞).

    Attributes:
        value: the intercept of the fit, clamped at 0 (see :func:`fad_inf`).
        intercept: the intercept as fitted; it can be negative.
        slope: d FAD / d(1/n).
        r2: the fit's coefficient of determination.
        ns: the sample sizes used.
    """

    value: float
    intercept: float
    slope: float
    r2: float
    ns: list[int]


FAD_INF_MIN_EMBEDDINGS = 4  # two sample sizes of at least 2 embeddings each


def fad_inf(
    mu: np.ndarray,
    sigma: np.ndarray,
    embeddings: np.ndarray,
    min_n: int = 500,
    steps: int = 25,
    seed: int = 0,
) -> FadInf:
    """FAD∞ as fadtk defines it (Gui et al., 2024).

    For ``steps`` sample sizes n evenly spaced from ``min_n`` to the number of embeddings, draw n
    embeddings with replacement, compute their FAD to the reference, fit FAD = a + b / n by least
    squares and report the intercept a. When the set has fewer than ``min_n`` embeddings, the sizes
    run from half the set instead (the fit then extrapolates further; ``ns`` records it).

    fadtk reports the intercept as it is, which can be negative when the fit extrapolates past a
    small true distance; a distance cannot be, so ``value`` is clamped at 0 and ``intercept`` keeps
    the fitted number.

    Args:
        mu, sigma: the reference Gaussian.
        embeddings: (N, D) generated embeddings.
        min_n: the smallest sample size (fadtk: 500).
        steps: the number of sample sizes (fadtk: 25).
        seed: seeds the draws.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n_max = len(x)
    low = min(min_n, n_max // 2)
    if n_max < FAD_INF_MIN_EMBEDDINGS:
        raise ValueError(f"FAD∞ needs at least {FAD_INF_MIN_EMBEDDINGS} embeddings, got {n_max}")
    ns = sorted({int(n) for n in np.linspace(low, n_max, steps)})
    rng, root = np.random.default_rng(seed), sqrtm_psd(sigma)
    fads = np.array(
        [
            frechet_distance(mu, sigma, *gaussian(x[rng.integers(0, n_max, n)]), root1=root)
            for n in ns
        ]
    )
    inv = 1.0 / np.array(ns, dtype=np.float64)
    slope, intercept = np.polyfit(inv, fads, 1)
    residual = np.sum((fads - (slope * inv + intercept)) ** 2)
    total = np.sum((fads - fads.mean()) ** 2)
    r2 = float(1.0 - residual / total) if total > 0 else 1.0
    return FadInf(max(float(intercept), 0.0), float(intercept), float(slope), r2, ns)
