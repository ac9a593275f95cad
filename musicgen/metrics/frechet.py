"""Fréchet distance between Gaussians fitted to two sets of embeddings (the core of FAD)."""

from __future__ import annotations

import numpy as np


def gaussian(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of embeddings (N, D), in float64."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need at least 2 embeddings of shape (N, D), got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2).

    Tr((S1 S2)^1/2) is computed as Tr((S1^1/2 S2 S1^1/2)^1/2), whose argument is symmetric PSD, so
    no complex square roots arise.
    """
    root1 = _sqrtm_psd(sigma1)
    cross = _sqrtm_psd(root1 @ sigma2 @ root1)
    diff = mu1 - mu2
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(cross)
    return float(max(value, 0.0))


def embedding_fd(reference: np.ndarray, generated: np.ndarray) -> float:
    """Fréchet distance between two embedding sets (N1, D) and (N2, D)."""
    return frechet_distance(*gaussian(reference), *gaussian(generated))
