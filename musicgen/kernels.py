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
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    njit = None

MAX_ROWS = 4  # above this, BLAS's blocking wins (measured 8 rows: ~equal)


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


_jitted = njit(fastmath=True, cache=True, nogil=True, boundscheck=False)(_kernel) if njit else None


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

    def __call__(self, layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` for x (..., I) -> (..., O)."""
        weight = self._weights.get(id(layer))
        n_in = x.shape[-1]
        rows = x.numel() // n_in if n_in else 0
        if (
            weight is None
            or not 0 < rows <= MAX_ROWS
            or x.dtype != torch.float32
            or x.device.type != "cpu"
            or torch.is_grad_enabled()
        ):
            return layer(x)
        out = np.empty((rows, weight.shape[0]), dtype=np.float32)
        _jitted(x.reshape(rows, n_in).contiguous().numpy(), weight, out)
        y = torch.from_numpy(out)
        if layer.bias is not None:
            y += layer.bias
        return y.view(*x.shape[:-1], weight.shape[0])
