"""A CPU kernel for the decoding step: a few rows times a big weight, each weight read once.

One decoding step multiplies a handful of rows (batch x 2 with classifier-free guidance) by every
weight matrix of the LM. That is memory-bound: the floor is the time to stream the weights from
RAM once. BLAS kernels are tuned for tall inputs; measured on this project's 2-core AMD EPYC
(AVX2, 1 thread, 100 MB of fp32 weights, see ``benchmarks/bench_lm.py``), MKL's sgemm reads weights
at ~19 GB/s for 1 row but only ~9 GB/s for 2 rows and ~6 GB/s for 8: it streams them once per row.
:class:`LinearKernel` loads each weight element once for up to 4 rows and keeps 8 running sums in
registers (2-4 weight rows x 4-2 input rows), reaching ~17-18 GB/s for 2 rows.

The kernel is compiled by numba (LLVM) on first use and cached on disk. Its sums are in another
order than BLAS's (``fastmath`` lets LLVM vectorise them), so results differ from ``F.linear`` by
float32 rounding (~1e-6 relative). It serves inference only: with autograd, more rows, another
dtype or device, or without numba, :class:`LinearKernel` runs the layer itself.

:func:`decoder_layer_step` runs a whole decoder layer on one new step in numba (LayerNorms, the
projections through the kernel, the KV cache write, single-query self- and cross-attention, exact
GELU, residuals), so that a step costs ~one numba call per layer instead of ~30 small torch ops.
More than :data:`MAX_ROWS` rows go through the kernel in blocks of rows (each block reads the
weights once; measured 8 rows: ~8 GB/s vs ~6.5 for MKL).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    njit = None

MAX_ROWS = 4  # rows per kernel pass; LinearKernel leaves more rows (e.g. a prompt chunk) to BLAS


def _kernel(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """out (M, O) = x (M, I) @ w (O, I).T for M <= 4, every weight element loaded once."""
    M, n_in = x.shape
    n_out = w.shape[0]
    o = 0
    if M == 1:
        x0 = x[0]
        while o + 4 <= n_out:
            w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
            a0 = a1 = a2 = a3 = np.float32(0.0)
            for i in range(n_in):
                u = x0[i]
                a0 += u * w0[i]
                a1 += u * w1[i]
                a2 += u * w2[i]
                a3 += u * w3[i]
            out[0, o], out[0, o + 1], out[0, o + 2], out[0, o + 3] = a0, a1, a2, a3
            o += 4
    elif M == 2:
        x0, x1 = x[0], x[1]
        while o + 4 <= n_out:
            w0, w1, w2, w3 = w[o], w[o + 1], w[o + 2], w[o + 3]
            a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
            for i in range(n_in):
                u, v = x0[i], x1[i]
                p, q, r, s = w0[i], w1[i], w2[i], w3[i]
                a00 += u * p
                a01 += u * q
                a02 += u * r
                a03 += u * s
                a10 += v * p
                a11 += v * q
                a12 += v * r
                a13 += v * s
            out[0, o], out[0, o + 1], out[0, o + 2], out[0, o + 3] = a00, a01, a02, a03
            out[1, o], out[1, o + 1], out[1, o + 2], out[1, o + 3] = a10, a11, a12, a13
            o += 4
    else:  # 3 or 4 rows (a missing 4th row reads row 2 again and is not written)
        x0, x1, x2, x3 = x[0], x[1], x[2], x[min(3, M - 1)]
        while o + 2 <= n_out:
            w0, w1 = w[o], w[o + 1]
            a00 = a01 = a10 = a11 = a20 = a21 = a30 = a31 = np.float32(0.0)
            for i in range(n_in):
                p, q = w0[i], w1[i]
                a00 += x0[i] * p
                a01 += x0[i] * q
                a10 += x1[i] * p
                a11 += x1[i] * q
                a20 += x2[i] * p
                a21 += x2[i] * q
                a30 += x3[i] * p
                a31 += x3[i] * q
            out[0, o], out[0, o + 1], out[1, o], out[1, o + 1] = a00, a01, a10, a11
            out[2, o], out[2, o + 1] = a20, a21
            if M == 4:
                out[3, o], out[3, o + 1] = a30, a31
            o += 2
    for j in range(o, n_out):  # the last few outputs, one at a time
        wj = w[j]
        for m in range(M):
            acc = np.float32(0.0)
            xm = x[m]
            for i in range(n_in):
                acc += xm[i] * wj[i]
            out[m, j] = acc


def _jit(fn):
    """``fn`` compiled by numba (fastmath, cached on disk), or None without numba."""
    return njit(fastmath=True, cache=True, nogil=True, boundscheck=False)(fn) if njit else None


_jitted = _jit(_kernel)


def _matmul(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """out (M, O) = x (M, I) @ w (O, I).T for any M: the kernel on blocks of MAX_ROWS rows."""
    for r in range(0, x.shape[0], MAX_ROWS):
        _jitted(x[r : r + MAX_ROWS], w, out[r : r + MAX_ROWS])


def _layer_norm(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float, out: np.ndarray
) -> None:  # pragma: no cover - jitted
    """out (M, D) = LayerNorm(x (M, D)) with weight and bias (D,); statistics in float64."""
    M, D = x.shape
    for m in range(M):
        xm = x[m]
        total = 0.0
        for i in range(D):
            total += xm[i]
        mean = total / D
        total = 0.0
        for i in range(D):
            d = xm[i] - mean
            total += d * d
        inv = 1.0 / np.sqrt(total / D + eps)
        for i in range(D):
            out[m, i] = np.float32((xm[i] - mean) * inv) * w[i] + b[i]


def _attend(
    q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray, length: int, out: np.ndarray
) -> None:  # pragma: no cover - jitted
    """Single-query attention of each row over its first ``length`` keys, heads side by side.

    Args:
        q: (M, H * hd) queries, head h in columns ``h * hd : (h + 1) * hd``.
        k: (>= M, H, >= length, hd) keys; v: values, the same shape.
        mask: (>= M, >= length) bool, True where a key may be attended to (at least one per row).
        length: how many keys.
        out: (M, H * hd) the attention output (before the output projection).
    """
    M = q.shape[0]
    H, hd = k.shape[1], k.shape[3]
    scale = np.float32(1.0 / np.sqrt(hd))
    p = np.empty(length, dtype=np.float32)
    acc = np.empty(hd, dtype=np.float32)
    for m in range(M):
        for h in range(H):
            qh = q[m, h * hd : (h + 1) * hd]
            top = -np.inf
            for s in range(length):
                if mask[m, s]:
                    ks = k[m, h, s]
                    dot = np.float32(0.0)
                    for d in range(hd):
                        dot += qh[d] * ks[d]
                    p[s] = dot * scale
                    top = max(top, p[s])
            total = np.float32(0.0)
            acc[:] = 0.0
            for s in range(length):
                if mask[m, s]:
                    e = np.float32(np.exp(p[s] - top))
                    total += e
                    vs = v[m, h, s]
                    for d in range(hd):
                        acc[d] += e * vs[d]
            for d in range(hd):
                out[m, h * hd + d] = acc[d] / total


def _decoder_layer_step(
    x: np.ndarray,
    pos: int,
    n_cond: int,
    eps: float,
    norm1_w: np.ndarray,
    norm1_b: np.ndarray,
    q_w: np.ndarray,
    k_w: np.ndarray,
    v_w: np.ndarray,
    out_w: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    self_mask: np.ndarray,
    norm2_w: np.ndarray,
    norm2_b: np.ndarray,
    cross_q_w: np.ndarray,
    cross_out_w: np.ndarray,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    cross_mask: np.ndarray,
    norm3_w: np.ndarray,
    norm3_b: np.ndarray,
    fc1_w: np.ndarray,
    fc2_w: np.ndarray,
) -> np.ndarray:  # pragma: no cover - jitted
    """One pre-norm decoder layer on one new step; see :class:`LayerArrays` for the arguments."""
    M, D = x.shape
    H, hd = k_cache.shape[1], k_cache.shape[3]
    y = x.copy()
    h = np.empty_like(x)
    q = np.empty_like(x)
    t = np.empty_like(x)
    a = np.empty_like(x)
    # causal self-attention: this step's keys and values join the cache at `pos`
    _layer_norm(y, norm1_w, norm1_b, eps, h)
    _matmul(h, q_w, q)
    for w, cache in ((k_w, k_cache), (v_w, v_cache)):
        _matmul(h, w, t)
        for m in range(M):
            for j in range(H):
                cache[m, j, pos] = t[m, j * hd : (j + 1) * hd]
    _attend(q, k_cache, v_cache, self_mask, pos + 1, a)
    _matmul(a, out_w, t)
    y += t
    # cross-attention of the conditioned rows (the null rows' output is exactly zero)
    _layer_norm(y[:n_cond], norm2_w, norm2_b, eps, h[:n_cond])
    _matmul(h[:n_cond], cross_q_w, q[:n_cond])
    _attend(q[:n_cond], cross_k, cross_v, cross_mask, cross_k.shape[2], a[:n_cond])
    _matmul(a[:n_cond], cross_out_w, t[:n_cond])
    y[:n_cond] += t[:n_cond]
    # feed-forward with the exact (erf) GELU
    _layer_norm(y, norm3_w, norm3_b, eps, h)
    f = np.empty((M, fc1_w.shape[0]), dtype=np.float32)
    _matmul(h, fc1_w, f)
    for m in range(M):
        for i in range(f.shape[1]):
            u = f[m, i]
            f[m, i] = np.float32(0.5) * u * np.float32(1.0 + math.erf(u * 0.7071067811865476))
    _matmul(f, fc2_w, t)
    y += t
    return y


_matmul = _jit(_matmul)
_layer_norm = _jit(_layer_norm)
_attend = _jit(_attend)
_decoder_layer_step = _jit(_decoder_layer_step)


class LayerArrays(NamedTuple):
    """What the fused decoding step of one layer reads, as numpy views (float32, C-contiguous).

    D is the model width, H the heads, hd = D / H, F the feed-forward width, B the rows, L the text
    length. Linear weights are (out, in) as in ``nn.Linear`` (no biases).
    """

    eps: float  # of the three LayerNorms
    norm1_w: np.ndarray  # (D,) self-attention LayerNorm
    norm1_b: np.ndarray
    q_w: np.ndarray  # (D, D) self-attention projections
    k_w: np.ndarray
    v_w: np.ndarray
    out_w: np.ndarray
    k_cache: np.ndarray  # (B, H, max_len, hd) the KV cache, written at the step's position
    v_cache: np.ndarray
    self_mask: np.ndarray  # (B, max_len) bool, all True (every cached step is visible)
    norm2_w: np.ndarray  # (D,) cross-attention LayerNorm
    norm2_b: np.ndarray
    cross_q_w: np.ndarray  # (D, D)
    cross_out_w: np.ndarray
    cross_k: np.ndarray  # (n_cond, H, L, hd) the text keys and values
    cross_v: np.ndarray
    cross_mask: np.ndarray  # (n_cond, L) bool, True for text positions to attend to
    norm3_w: np.ndarray  # (D,) feed-forward LayerNorm
    norm3_b: np.ndarray
    fc1_w: np.ndarray  # (F, D)
    fc2_w: np.ndarray  # (D, F)


def decoder_layer_step(x: np.ndarray, pos: int, n_cond: int, arrays: LayerArrays) -> np.ndarray:
    """A pre-norm decoder layer (self-attention, cross-attention, GELU feed-forward) on one step.

    The numba counterpart of ``musicgen.lm.Block`` for one new step with a KV cache: every weight
    is read once for all rows (:func:`_kernel`), and nothing else goes through torch. Results match
    the torch path to float32 rounding.

    Args:
        x: (B, D) float32, C-contiguous: the layer's input at the new step.
        pos: the step's position: keys and values are written there, attention sees ``pos + 1``.
        n_cond: the first ``n_cond`` rows cross-attend to the text; the others (null conditions)
            get exactly zero from cross-attention.
        arrays: the layer's parameters and caches.

    Returns:
        (B, D) float32, the layer's output.
    """
    return _decoder_layer_step(x, pos, n_cond, *arrays)


def kernel_available() -> bool:
    """Whether numba is installed (else :class:`LinearKernel` always falls back to the layer)."""
    return _jitted is not None


class LinearKernel:
    """Runs a model's ``nn.Linear`` layers on a few rows with the numba kernel (inference only).

    The weights' numpy views are taken once, here, so that a decoding step pays only the kernel
    call. A layer the kernel does not handle (not float32 on CPU, not contiguous, or created after
    this object), an input with more than :data:`MAX_ROWS` rows, autograd, or a missing numba: the
    layer itself runs.

    Args:
        model: the module whose ``nn.Linear`` layers to serve.
    """

    def __init__(self, model: torch.nn.Module):
        self._weights: dict[int, np.ndarray] = {}
        if _jitted is None:
            return
        for layer in model.modules():
            w = getattr(layer, "weight", None)
            if (
                isinstance(layer, torch.nn.Linear)
                and w.dtype == torch.float32
                and w.device.type == "cpu"
                and w.is_contiguous()
            ):
                self._weights[id(layer)] = w.detach().numpy()

    def weight(self, layer: torch.nn.Linear) -> np.ndarray | None:
        """The numpy view of ``layer``'s weight (O, I), or None if the kernel does not serve it."""
        return self._weights.get(id(layer))

    @staticmethod
    def handles(x: torch.Tensor) -> bool:
        """Whether the kernels may run on ``x``: numba, float32 on the CPU, autograd off."""
        return (
            _jitted is not None
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
        )

    def __call__(self, layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` for x (..., I) -> (..., O)."""
        weight = self._weights.get(id(layer))
        n_in = x.shape[-1]
        rows = x.numel() // n_in if n_in else 0
        if weight is None or not 0 < rows <= MAX_ROWS or not self.handles(x):
            return layer(x)
        out = np.empty((rows, weight.shape[0]), dtype=np.float32)
        _jitted(x.reshape(rows, n_in).contiguous().numpy(), weight, out)
        y = torch.from_numpy(out)
        if layer.bias is not None:
            y += layer.bias
        return y.view(*x.shape[:-1], weight.shape[0])
