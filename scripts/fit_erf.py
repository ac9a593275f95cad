"""Fit the float32 erf of musicgen/kernels.py (:func:`musicgen.kernels._erf`).

erf(x) ~= x * P(x^2) / Q(x^2) on [0, CLAMP] (erf is odd; beyond CLAMP float32 erf is +-1 to
within the error below, so the kernel clamps its argument there), P of degree P_DEG, Q of degree
Q_DEG with Q(0) = 1. The coefficients are found by a linearised Loeffler-Lawson iteration towards
the minimax rational (all in float64 with numpy): each pass solves the weighted least-squares
problem ``x P(t) - erf(x) Q(t) ~ 0`` (t = x^2) with rows divided by the previous Q and Lawson
weights multiplied by the error of the previous pass, which drives the weighted L2 solution towards
an equioscillating (minimax) one. Then the max error of the kernel's
arithmetic (:func:`erf32`: float32 in and out, the sums in float64) is measured over a dense
float32 grid on [-6, 6] plus a few huge and tiny values.

Run: ``python3 scripts/fit_erf.py``; it prints the coefficients as kernels.py spells them.
"""

from __future__ import annotations

import math

import numpy as np

CLAMP = 3.925  # float32 erf(x) rounds to 1 above ~3.92 (erfc(3.925) = 2.9e-8 < 2^-25)
P_DEG, Q_DEG = 5, 5  # degrees in t = x^2
ITERATIONS = 300
_erf = np.vectorize(math.erf, otypes=[np.float64])


def fit(clamp: float = CLAMP, p_deg: int = P_DEG, q_deg: int = Q_DEG) -> tuple[np.ndarray, ...]:
    """(p, q) in powers of t = x^2, lowest first (q[0] = 1), near-minimax in float64."""
    # dense on [0, clamp], denser near 0 and the end (Chebyshev-like spacing)
    x = clamp * 0.5 * (1.0 - np.cos(np.linspace(0.0, math.pi, 6000)))
    x = x[1:]
    y = _erf(x)
    s = (x / clamp) ** 2  # fit in s in [0, 1] (well conditioned), then rescale to t
    ps = s[:, None] ** np.arange(p_deg + 1)
    qs = s[:, None] ** np.arange(1, q_deg + 1)
    a = np.hstack([x[:, None] * ps, -y[:, None] * qs])
    w = np.full(len(x), 1.0 / len(x))
    q_prev = np.ones(len(x))
    best = (np.inf, None)
    for _ in range(ITERATIONS):
        row = np.sqrt(w) / np.abs(q_prev)
        c, *_ = np.linalg.lstsq(a * row[:, None], y * row, rcond=None)
        p_s, q_s = c[: p_deg + 1], np.concatenate([[1.0], c[p_deg + 1 :]])
        q_prev = np.polyval(q_s[::-1], s)
        err = x * np.polyval(p_s[::-1], s) / q_prev - y
        top = np.max(np.abs(err))
        if top < best[0]:
            best = (top, (p_s, q_s))
        w = w * np.abs(err)
        w /= w.sum()
    p_s, q_s = best[1]
    # s = t / clamp^2: the coefficient of s^k becomes that of t^k divided by clamp^(2k)
    p = p_s / clamp ** (2 * np.arange(p_deg + 1))
    q = q_s / clamp ** (2 * np.arange(q_deg + 1))
    return p, q


def erf32(x: np.ndarray, p: np.ndarray, q: np.ndarray, clamp: float = CLAMP) -> np.ndarray:
    """The kernel's evaluation: float32 in, clamp, Horner in t for P and Q and one division in
    float64 (float32 Horner sums lose ~5 ulps near erf = 1), float32 out."""
    x = np.minimum(np.maximum(np.asarray(x, np.float32).astype(np.float64), -clamp), clamp)
    t = x * x
    num = np.full_like(t, p[-1])
    for c in p[-2::-1]:
        num = num * t + c
    den = np.full_like(t, q[-1])
    for c in q[-2::-1]:
        den = den * t + c
    return (x * num / den).astype(np.float32)


def test_points() -> np.ndarray:
    """A dense float32 grid on [-6, 6] (step 3e-6), every float32 in [3.8, 4] (around the
    clamp), tiny values down to the smallest subnormal, a few huge ones and -0."""
    grid = np.linspace(0.0, 6.0, 2_000_001, dtype=np.float32)
    lo, hi = np.float32(3.8).view(np.int32), np.float32(4.0).view(np.int32)
    edge = np.arange(lo, hi + 1, dtype=np.int32).view(np.float32)
    tiny = np.logspace(-45, -1, 500).astype(np.float32)
    huge = np.array([7.0, 10.0, 1e4, 3e38, np.inf], np.float32)
    pos = np.concatenate([grid, edge, tiny, huge])
    return np.concatenate([pos, -pos, np.array([-0.0], np.float32)])


def max_error(p: np.ndarray, q: np.ndarray, clamp: float = CLAMP) -> float:
    """max |erf32(x) - erf(x)| (erf in float64) over :func:`test_points`, in chunks."""
    xs = test_points()
    got = erf32(xs, p, q, clamp).astype(np.float64)
    return float(np.max(np.abs(got - _erf(xs.astype(np.float64)))))


def main() -> None:
    p, q = fit()
    x = np.linspace(0.0, CLAMP, 200001)
    err64 = np.max(np.abs(x * np.polyval(p[::-1], x * x) / np.polyval(q[::-1], x * x) - _erf(x)))
    print(f"clamp = {CLAMP!r}; P degree {P_DEG}, Q degree {Q_DEG} in t = x^2")
    print(f"max |error| of the rational on [0, clamp] (float64): {err64:.3g}")
    for name, c in (("P", p), ("Q", q)):
        print(f"{name} (t^0 first): " + ", ".join(f"{float(v)!r}" for v in c))
    print(f"max |erf32(x) - erf(x)| over the float32 grid: {max_error(p, q):.3g}")


if __name__ == "__main__":
    main()
