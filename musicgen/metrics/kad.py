"""Kernel Audio Distance (KAD; Chung et al., 2025, kadtk): unbiased MMD² with a Gaussian kernel.

    KAD = SCALE * ( mean_{i != j} k(x_i, x_j) + mean_{i != j} k(y_i, y_j) - 2 mean_{i, j} k(x_i, y_j) )
    k(a, b) = exp(-||a - b||² / (2 σ²))

with x the reference embeddings, y the evaluated ones, and σ the median pairwise distance of the
REFERENCE set, so the kernel (and with it the scale of the number) is the same for every system
scored against one reference. (kadtk's code takes the median of the set passed second, the
evaluated one; the paper's definition and ours use the reference.) SCALE = 100 as in kadtk.
The estimator is unbiased: its mean over draws of two sets from one distribution is 0, so single
values can be slightly negative. Everything is float64, in blocks (no N x N matrix in memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCALE = 100.0  # kadtk's SCALE_FACTOR
BLOCK = 512  # rows per kernel block (a block is BLOCK x N float64)
MAX_PAIRS = 2_000_000  # above this many pairs the median distance comes from a seeded sample


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2.0 * a @ b.T
    return np.clip(d, 0.0, None)


def median_pairwise_distance(x: np.ndarray, seed: int = 0) -> float:
    """The median Euclidean distance between distinct embeddings of x (N, D).

    Exact up to ``MAX_PAIRS`` pairs; above that, the median of ``MAX_PAIRS`` pairs drawn with a
    seed (i != j). Distances are computed a block of rows at a time.
    """
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    if n < 2:
        raise ValueError(f"need at least 2 embeddings for a median distance, got {n}")
    if n * (n - 1) // 2 <= MAX_PAIRS:
        rows = [
            _sq_dists(x[start : start + BLOCK], x)[
                np.triu_indices(min(BLOCK, n - start), start + 1, n)
            ]
            for start in range(0, n, BLOCK)
        ]
        return float(np.median(np.sqrt(np.concatenate(rows))))
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, MAX_PAIRS)
    j = (i + rng.integers(1, n, MAX_PAIRS)) % n
    step = BLOCK * 64
    d = [((x[i[k : k + step]] - x[j[k : k + step]]) ** 2).sum(1) for k in range(0, MAX_PAIRS, step)]
    return float(np.median(np.sqrt(np.concatenate(d))))


def kernel_mean(a: np.ndarray, b: np.ndarray, bandwidth: float, same: bool = False) -> float:
    """Mean of k(a_i, b_j) over all pairs, or over i != j when ``same`` (a is b)."""
    gamma = 1.0 / (2.0 * bandwidth**2)
    total = 0.0
    for start in range(0, len(a), BLOCK):
        k = np.exp(-gamma * _sq_dists(a[start : start + BLOCK], b))
        if same:
            rows = np.arange(start, min(start + BLOCK, len(a)))
            k[rows - start, rows] = 0.0
        total += k.sum()
    pairs = len(a) * (len(a) - 1) if same else len(a) * len(b)
    return total / pairs


@dataclass
class KadReference:
    """What KAD needs of the reference set, computed once (the reference statistics stage).

    Attributes:
        embeddings: (N, D) float64.
        bandwidth: σ, the median pairwise distance of ``embeddings``.
        self_kernel: mean_{i != j} k(x_i, x_j).
    """

    embeddings: np.ndarray
    bandwidth: float
    self_kernel: float

    @classmethod
    def fit(cls, embeddings: np.ndarray) -> KadReference:
        x = np.asarray(embeddings, dtype=np.float64)
        bandwidth = median_pairwise_distance(x)
        if not bandwidth > 0:
            raise ValueError("the reference embeddings are all equal: no KAD bandwidth")
        return cls(x, bandwidth, kernel_mean(x, x, bandwidth, same=True))


def kad(reference: KadReference, embeddings: np.ndarray) -> float:
    """KAD (scaled by SCALE) of embeddings (M, D), M >= 2, against the reference."""
    y = np.asarray(embeddings, dtype=np.float64)
    if len(y) < 2:
        raise ValueError(f"KAD needs at least 2 embeddings, got {len(y)}")
    s = reference.bandwidth
    value = (
        reference.self_kernel
        + kernel_mean(y, y, s, same=True)
        - 2.0 * kernel_mean(reference.embeddings, y, s)
    )
    return SCALE * float(value)
