"""CPU kernels for the decoding step: a few rows times a big weight, each weight read once.

One decoding step multiplies a handful of rows (batch x 2 with classifier-free guidance) by every
weight matrix of the LM. At batch 1 that is memory-bound (the floor is the time to stream the
weights from RAM once); at batch 16 (32 rows) it is compute-bound. BLAS kernels are tuned for tall
inputs and stream the weights once *per row* when there are only a few. Measured on this project's
2-core AMD EPYC (Zen 4, 1 thread, (rows x 1024) @ (1024 x 4096), 100 MB of distinct weights, best
of 40 calls on a loaded machine): MKL 0.96 ms at 1 row, 1.80 at 2, 1.86 at 4, 4.4 at 32 (61
GFLOP/s); :func:`_matmul` 0.99, 1.03, 1.21 and 3.5 ms (77 GFLOP/s).

:func:`_matmul` is a blocked kernel for any number of rows: it takes the weight in tiles of
:data:`TILE` output rows (kept in L1/L2) and multiplies each tile by all input rows, 4 rows x 4
outputs at a time (16 running sums in registers, every loaded element used 4 times; 2 or 1 rows
for the rest). Each weight is read from RAM once per step whatever the batch.

Weights may be stored in fewer bytes (:data:`WEIGHT_TYPES`): ``bf16`` as uint16 (the top half of a
float32, widened by a shift as it is loaded), ``int8`` with one symmetric scale per output channel
(applied to the sums); all arithmetic is float32. :func:`quantize` makes the stored form,
:func:`dequantize` its float32 value (what the torch path multiplies by).

The kernels are compiled by numba (LLVM) on first use and cached on disk. Their sums are in another
order than BLAS's (``fastmath`` lets LLVM vectorise them), so results differ from ``F.linear`` by
float32 rounding (~1e-6 relative). They serve inference only: with autograd, another dtype or
device, or without numba, :class:`LinearKernel` runs the layer in torch (with the same stored
weights).

:func:`decoder_layer_step` runs a whole decoder layer on one new step in numba (LayerNorms, the
projections through :func:`_matmul`, the KV cache write, single-query self- and cross-attention,
exact GELU, residuals), so that a step costs ~one numba call per layer instead of ~30 torch ops.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

try:
    from llvmlite import ir
    from numba import njit, types
    from numba.extending import intrinsic, overload
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    njit = None

WEIGHT_TYPES = ("fp32", "bf16", "int8")  # how linear weights are stored for decoding
TILE = 8  # weight rows widened and multiplied by all input rows at a time
BLAS_ROWS = 64  # LinearKernel: more rows (a prompt chunk) in float32 go to BLAS, which wins there


class Weight(NamedTuple):
    """A linear weight as the kernels read it: stored values and a scale per output channel."""

    data: np.ndarray  # (O, I) float32, uint16 (bf16 bits) or int8
    scale: np.ndarray  # (O,) float32: the float value of row o is data[o] * scale[o]


def quantize(w: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The stored form of a float32 weight (O, I).

    Args:
        w: (O, I) float32.
        kind: one of :data:`WEIGHT_TYPES`. ``bf16`` rounds to nearest even; ``int8`` is symmetric
            per output channel (scale = max |w[o]| / 127, an all-zero row gets scale 1).

    Returns:
        data (O, I) float32 / bfloat16 / int8 (on ``w``'s device) and scale (O,) float32.
    """
    w = w.detach().float()
    ones = torch.ones(w.shape[0], dtype=torch.float32, device=w.device)
    if kind == "fp32":
        return w.contiguous(), ones
    if kind == "bf16":
        return w.to(torch.bfloat16).contiguous(), ones
    if kind == "int8":
        scale = w.abs().amax(dim=1) / 127.0
        scale = torch.where(scale > 0, scale, ones)
        data = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return data.contiguous(), scale
    raise ValueError(f"unknown weight type '{kind}'; choose one of {', '.join(WEIGHT_TYPES)}")


def dequantize(data: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 value (O, I) of a stored weight (see :func:`quantize`)."""
    return data.float() * scale[:, None] if data.dtype == torch.int8 else data.float()


def kernel_weight(data: torch.Tensor, scale: torch.Tensor) -> Weight:
    """Numpy views of a stored CPU weight for the kernels (bfloat16 as its uint16 bits)."""
    if data.dtype == torch.bfloat16:
        return Weight(data.view(torch.int16).numpy().view(np.uint16), scale.numpy())
    return Weight(data.numpy(), scale.numpy())


def _to_f32(v):
    """A stored weight element as float32 (unscaled); numba implementations below."""
    raise NotImplementedError  # pragma: no cover - only called from jitted code


if njit is not None:

    @intrinsic
    def _f32_bits(typingctx, u):  # pragma: no cover - jitted
        """The float32 whose bits are the uint32 ``u`` (a free reinterpretation in LLVM)."""

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())

        return types.float32(types.uint32), codegen

    @overload(_to_f32)
    def _to_f32_typed(v):  # pragma: no cover - jitted
        """float32: itself; uint16 (bf16 bits): shifted into a float32's high half; int8: cast."""
        if v == types.float32:
            return lambda v: v
        if v == types.uint16:
            return lambda v: _f32_bits(np.uint32(v) << np.uint32(16))
        return lambda v: np.float32(v)


def _store4(out, r, j, a0, a1, a2, a3, scale) -> None:  # pragma: no cover - jitted
    """out[r, j : j + 4] = the 4 sums, scaled per output channel."""
    out[r, j], out[r, j + 1] = a0 * scale[j], a1 * scale[j + 1]
    out[r, j + 2], out[r, j + 3] = a2 * scale[j + 2], a3 * scale[j + 3]


def _rows4(x, m, rows, t, lo, scale, out) -> int:  # pragma: no cover - jitted
    """out[m : m + rows, lo + o] for the tile t (n, I), 4 outputs x 4 rows at a time (rows 3-4;
    a missing 4th row reads row 3 again and is not written). Returns the outputs done."""
    n, n_in = t.shape
    x0, x1, x2, x3 = x[m], x[m + 1], x[m + 2], x[m + rows - 1]
    o = 0
    while o + 4 <= n:
        t0, t1, t2, t3 = t[o], t[o + 1], t[o + 2], t[o + 3]
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
        a20 = a21 = a22 = a23 = a30 = a31 = a32 = a33 = np.float32(0.0)
        for i in range(n_in):
            p, q, r, s = _to_f32(t0[i]), _to_f32(t1[i]), _to_f32(t2[i]), _to_f32(t3[i])
            u0, u1, u2, u3 = x0[i], x1[i], x2[i], x3[i]
            a00, a01, a02, a03 = a00 + u0 * p, a01 + u0 * q, a02 + u0 * r, a03 + u0 * s
            a10, a11, a12, a13 = a10 + u1 * p, a11 + u1 * q, a12 + u1 * r, a13 + u1 * s
            a20, a21, a22, a23 = a20 + u2 * p, a21 + u2 * q, a22 + u2 * r, a23 + u2 * s
            a30, a31, a32, a33 = a30 + u3 * p, a31 + u3 * q, a32 + u3 * r, a33 + u3 * s
        _store4(out, m, lo + o, a00, a01, a02, a03, scale)
        _store4(out, m + 1, lo + o, a10, a11, a12, a13, scale)
        _store4(out, m + 2, lo + o, a20, a21, a22, a23, scale)
        if rows == 4:
            _store4(out, m + 3, lo + o, a30, a31, a32, a33, scale)
        o += 4
    return o


def _rows2(x, m, t, lo, scale, out) -> int:  # pragma: no cover - jitted
    """out[m : m + 2, lo + o] for the tile t (n, I), 4 outputs x 2 rows at a time."""
    n, n_in = t.shape
    x0, x1 = x[m], x[m + 1]
    o = 0
    while o + 4 <= n:
        t0, t1, t2, t3 = t[o], t[o + 1], t[o + 2], t[o + 3]
        a00 = a01 = a02 = a03 = a10 = a11 = a12 = a13 = np.float32(0.0)
        for i in range(n_in):
            p, q, r, s = _to_f32(t0[i]), _to_f32(t1[i]), _to_f32(t2[i]), _to_f32(t3[i])
            u0, u1 = x0[i], x1[i]
            a00, a01, a02, a03 = a00 + u0 * p, a01 + u0 * q, a02 + u0 * r, a03 + u0 * s
            a10, a11, a12, a13 = a10 + u1 * p, a11 + u1 * q, a12 + u1 * r, a13 + u1 * s
        _store4(out, m, lo + o, a00, a01, a02, a03, scale)
        _store4(out, m + 1, lo + o, a10, a11, a12, a13, scale)
        o += 4
    return o


def _rows1(x, m, t, lo, scale, out) -> int:  # pragma: no cover - jitted
    """out[m, lo + o] for the tile t (n, I), 4 outputs at a time."""
    n, n_in = t.shape
    x0 = x[m]
    o = 0
    while o + 4 <= n:
        t0, t1, t2, t3 = t[o], t[o + 1], t[o + 2], t[o + 3]
        a0 = a1 = a2 = a3 = np.float32(0.0)
        for i in range(n_in):
            u = x0[i]
            a0, a1 = a0 + u * _to_f32(t0[i]), a1 + u * _to_f32(t1[i])
            a2, a3 = a2 + u * _to_f32(t2[i]), a3 + u * _to_f32(t3[i])
        _store4(out, m, lo + o, a0, a1, a2, a3, scale)
        o += 4
    return o


def _matmul(x: np.ndarray, w: Weight, out: np.ndarray) -> None:  # pragma: no cover - jitted
    """out (M, O) = x (M, I) @ (w.data * w.scale[:, None]).T for any M, each weight read once.

    The weight goes in tiles of :data:`TILE` rows (widened to float32 if stored in fewer bytes);
    each tile meets all input rows, 4 (or 2, or 1) at a time, while it sits in cache.
    """
    data, scale = w
    M, n_in = x.shape
    n_out = data.shape[0]
    for lo in range(0, n_out, TILE):
        hi = min(lo + TILE, n_out)
        t = data[lo:hi]
        m = 0
        while m < M:
            rows = min(4, M - m)
            if rows >= 3:
                done = _rows4(x, m, rows, t, lo, scale, out)
            elif rows == 2:
                done = _rows2(x, m, t, lo, scale, out)
            else:
                done = _rows1(x, m, t, lo, scale, out)
            for j in range(done, hi - lo):  # the tile's last few outputs, one at a time
                for r in range(m, m + rows):
                    acc = np.float32(0.0)
                    for i in range(n_in):
                        acc += x[r, i] * _to_f32(t[j, i])
                    out[r, lo + j] = acc * scale[lo + j]
            m += rows


def _jit(fn):
    """``fn`` compiled by numba (fastmath, cached on disk), or None without numba."""
    return njit(fastmath=True, cache=True, nogil=True, boundscheck=False)(fn) if njit else None


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
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray,
    length: int,
    out: np.ndarray,
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
    q_w: Weight,
    k_w: Weight,
    v_w: Weight,
    out_w: Weight,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    self_mask: np.ndarray,
    norm2_w: np.ndarray,
    norm2_b: np.ndarray,
    cross_q_w: Weight,
    cross_out_w: Weight,
    cross_k: np.ndarray,
    cross_v: np.ndarray,
    cross_mask: np.ndarray,
    norm3_w: np.ndarray,
    norm3_b: np.ndarray,
    fc1_w: Weight,
    fc2_w: Weight,
) -> np.ndarray:  # pragma: no cover - jitted
    """One pre-norm decoder layer on one new step; see :class:`LayerArrays` for the arguments."""
    M = x.shape[0]
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
    f = np.empty((M, fc1_w.data.shape[0]), dtype=np.float32)
    _matmul(h, fc1_w, f)
    for m in range(M):
        for i in range(f.shape[1]):
            u = f[m, i]
            f[m, i] = np.float32(0.5) * u * np.float32(1.0 + math.erf(u * 0.7071067811865476))
    _matmul(f, fc2_w, t)
    y += t
    return y


_store4 = _jit(_store4)
_rows4 = _jit(_rows4)
_rows2 = _jit(_rows2)
_rows1 = _jit(_rows1)
_matmul = _jit(_matmul)
_layer_norm = _jit(_layer_norm)
_attend = _jit(_attend)
_decoder_layer_step = _jit(_decoder_layer_step)


class LayerArrays(NamedTuple):
    """What the fused decoding step of one layer reads, as numpy views (C-contiguous).

    D is the model width, H the heads, hd = D / H, F the feed-forward width, B the rows, L the text
    length. Linear weights are (out, in) as in ``nn.Linear`` (no biases), stored as :class:`Weight`.
    """

    eps: float  # of the three LayerNorms
    norm1_w: np.ndarray  # (D,) self-attention LayerNorm
    norm1_b: np.ndarray
    q_w: Weight  # (D, D) self-attention projections
    k_w: Weight
    v_w: Weight
    out_w: Weight
    k_cache: np.ndarray  # (B, H, max_len, hd) the KV cache, written at the step's position
    v_cache: np.ndarray
    self_mask: np.ndarray  # (B, max_len) bool, all True (every cached step is visible)
    norm2_w: np.ndarray  # (D,) cross-attention LayerNorm
    norm2_b: np.ndarray
    cross_q_w: Weight  # (D, D)
    cross_out_w: Weight
    cross_k: np.ndarray  # (n_cond, H, L, hd) the text keys and values
    cross_v: np.ndarray
    cross_mask: np.ndarray  # (n_cond, L) bool, True for text positions to attend to
    norm3_w: np.ndarray  # (D,) feed-forward LayerNorm
    norm3_b: np.ndarray
    fc1_w: Weight  # (F, D)
    fc2_w: Weight  # (D, F)


def decoder_layer_step(x: np.ndarray, pos: int, n_cond: int, arrays: LayerArrays) -> np.ndarray:
    """A pre-norm decoder layer (self-attention, cross-attention, GELU feed-forward) on one step.

    The numba counterpart of ``musicgen.lm.Block`` for one new step with a KV cache: every weight
    is read once for all rows (:func:`_matmul`), and nothing else goes through torch. Results match
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


def matmul(x: np.ndarray, w: Weight) -> np.ndarray:
    """x (M, I) float32 @ the stored weight's float value (O, I).T -> (M, O), by :func:`_matmul`."""
    out = np.empty((x.shape[0], w.data.shape[0]), dtype=np.float32)
    _matmul(np.ascontiguousarray(x), w, out)
    return out


def kernel_available() -> bool:
    """Whether numba is installed (else :class:`LinearKernel` always runs torch)."""
    return njit is not None


class LinearKernel:
    """Serves a model's ``nn.Linear`` layers at inference, with weights stored as ``weights`` says.

    Every linear weight is stored once, here (:func:`quantize`; ``fp32`` shares the layer's own
    tensor), so that a decoding step pays only the kernel call. With ``use_numba`` and an input the
    kernels handle (:meth:`handles`), :func:`_matmul` runs (up to :data:`BLAS_ROWS` rows in float32,
    any number in bf16 / int8); otherwise torch runs, on the float value of the stored weight (the
    layer itself for ``fp32``). A layer created after this object runs itself.

    Args:
        model: the module whose ``nn.Linear`` layers to serve.
        weights: one of :data:`WEIGHT_TYPES`.
        use_numba: False always runs torch (e.g. to test the torch path with stored weights).
    """

    def __init__(self, model: torch.nn.Module, weights: str = "fp32", use_numba: bool = True):
        if weights not in WEIGHT_TYPES:
            raise ValueError(f"unknown weight type '{weights}'; choose one of {WEIGHT_TYPES}")
        self.weights = weights
        self.use_numba = use_numba and kernel_available()
        self._stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._arrays: dict[int, Weight] = {}
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear) and layer.weight.dtype == torch.float32:
                data, scale = quantize(layer.weight, weights)
                self._stored[id(layer)] = data, scale
                if self.use_numba and data.device.type == "cpu":
                    self._arrays[id(layer)] = kernel_weight(data, scale)

    def weight(self, layer: torch.nn.Linear) -> Weight | None:
        """The kernels' view of ``layer``'s stored weight, or None if they do not serve it."""
        return self._arrays.get(id(layer))

    def handles(self, x: torch.Tensor) -> bool:
        """Whether the kernels may run on ``x``: numba, float32 on the CPU, autograd off."""
        return (
            self.use_numba
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
        )

    def __call__(self, layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        """``layer(x)`` with the stored weight, for x (..., I) -> (..., O)."""
        stored = self._stored.get(id(layer))
        if stored is None or (self.weights == "fp32" and torch.is_grad_enabled()):
            return layer(x)
        n_in = x.shape[-1]
        rows = x.numel() // n_in if n_in else 0
        weight = self._arrays.get(id(layer))
        use_blas = self.weights == "fp32" and rows > BLAS_ROWS
        if weight is None or rows == 0 or use_blas or not self.handles(x):
            if self.weights == "fp32":
                return layer(x)
            return F.linear(x, dequantize(*stored).to(x.dtype), layer.bias)
        y = torch.from_numpy(matmul(x.reshape(rows, n_in).numpy(), weight))
        if layer.bias is not None:
            y += layer.bias
        return y.view(*x.shape[:-1], weight.data.shape[0])
