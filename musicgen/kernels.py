"""CPU kernels for the decoding step: a few rows times a big weight, each weight read once.

One decoding step multiplies a handful of rows (batch x 2 with classifier-free guidance) by every
weight matrix of the LM. At batch 1 that is memory-bound (the floor is the time to stream the
weights from RAM once); at batch 16 (32 rows) it is compute-bound. BLAS kernels are tuned for tall
inputs and stream the weights once *per row* when there are only a few. Measured on this project's
2-core AMD EPYC (Zen 4, 1 thread, (rows x 1024) @ (1024 x 4096), 100 MB of distinct weights, best
of 40 calls on a loaded machine): MKL 0.96 ms at 1 row, 1.80 at 2, 1.86 at 4, 4.4 at 32 (61
GFLOP/s); :func:`_matmul` 0.99, 1.03, 1.21 and 3.5 ms (77 GFLOP/s).

:func:`_matmul` serves any number of rows, each weight read from RAM once per step whatever the
batch: the weight is packed once as panels of :data:`PANEL` outputs x all inputs (:func:`pack`);
each panel is taken in passes of inputs that stay in cache, and every block of rows multiplies the
pass with its sums in registers (:func:`_block_kernel`, LLVM IR through a numba intrinsic). The
pass length, the rows per block and the software prefetch distance change the speed, never the
result; :mod:`musicgen.kernel_plans` measures them (and BLAS) per machine, shape and row count.

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

import threading
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

try:
    from llvmlite import ir
    from numba import get_num_threads, njit, prange, set_num_threads, types
    from numba.core import cgutils
    from numba.core.config import NUMBA_NUM_THREADS
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    njit = None

WEIGHT_TYPES = ("fp32", "bf16", "int8")  # how linear weights are stored for decoding


class Weight(NamedTuple):
    """A linear weight as the kernels read it: stored values, a scale per output channel, the
    float32 matrix BLAS would read (fp32 only) and how to multiply it at each row count."""

    data: np.ndarray  # (P, I, PANEL) float32, uint16 (bf16 bits) or int8, packed (see pack)
    scale: np.ndarray  # (O,) float32: the float value of output o is its stored row * scale[o]
    dense: np.ndarray  # (O, I) float32, the stored fp32 weight (no copy); (0, I) for bf16 / int8
    plan: np.ndarray  # (PLAN_ROWS + 1, 4) int64: per row count, (method, inputs per pass, rows
    # per block, prefetch bytes ahead); the last entry serves every larger count (see
    # default_plan, kernel_plans)


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


def _layout() -> tuple[int, int]:
    """(panel width, row block) for this machine's vector registers (see :data:`PANEL`).

    With AVX-512 (32 registers of 16 floats): panels of 32 outputs and 8 rows, i.e. 16 running
    sums of 16 lanes plus 2 weight vectors and a broadcast. Elsewhere (AVX2, 16 registers of 8
    floats; arm64 NEON, 32 of 4): 16 outputs and 4 rows, which fit those registers too. A numba
    target set by ``NUMBA_CPU_NAME`` gets the portable layout.
    """
    try:
        from llvmlite.binding import get_host_cpu_features
        from numba.core.config import CPU_NAME

        wide = CPU_NAME in (None, "", "host") and bool(get_host_cpu_features().get("avx512f"))
    except Exception:  # pragma: no cover - without numba the layout is never used
        wide = False
    return (32, 8) if wide else (16, 4)


PANEL, ROW_BLOCK = _layout()  # outputs per packed panel; input rows per register block
K_BLOCK = 1024  # inputs per pass over a panel: 1024 x 32 floats (128 KB) stay in L2 for all rows
# Bytes ahead that the block kernel asks for by default: one fp32 pass, into L2, with 4 rows or
# more (compute and memory about even, or compute-bound: memory keeps streaming while every row
# block computes on the pass in cache); with fewer rows none, as the hardware's prefetcher did
# better alone. Measured on the project's Zen 4 (seed1 steps): 2 rows -5 %; 8 and 32 rows +5 %
# (4 KB ahead into L1 gave +2 %, 128 KB into L1 -10 %). kernel_plans measures it per machine.
PREFETCH = K_BLOCK * PANEL * 4
PREFETCH_ROWS = 4  # the default prefetches from this many rows on
OURS, BLAS, ONE_THREAD = 0, 1, 2  # a plan's methods: the block kernel, BLAS (numpy's dot in
# numba: sgemm), the block kernel on one thread whatever the count (small weights: no fork-join)
PLAN_ROWS = 64  # plans are kept per row count up to this; larger counts share the last entry


def default_ahead(rows: int) -> int:
    """The default prefetch distance at ``rows`` rows (see :data:`PREFETCH`)."""
    return PREFETCH if rows >= PREFETCH_ROWS else 0


def default_plan() -> np.ndarray:
    """(PLAN_ROWS + 1, 4) int64: the block kernel with K_BLOCK inputs per pass, ROW_BLOCK rows per
    block and the default prefetch at every row count, until :mod:`musicgen.kernel_plans` measures
    better ones."""
    return np.array(
        [[OURS, K_BLOCK, ROW_BLOCK, default_ahead(r)] for r in range(PLAN_ROWS + 1)], np.int64
    )


def packed_shape(n_out: int, n_in: int) -> tuple[int, int, int]:
    """The packed layout's shape of an (O, I) weight: (ceil(O / PANEL), I, PANEL)."""
    return -(-n_out // PANEL), n_in, PANEL


def pack(data: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A stored weight (O, I) in the kernels' layout (:func:`packed_shape`), zero-padded.

    Panel p holds outputs ``p * PANEL ...`` for every input, input by input, so a pass over the
    weight reads memory in order and every load feeds PANEL outputs. Written into ``out`` (of that
    shape and data's dtype) if given.
    """
    n_out, n_in = data.shape
    shape = packed_shape(n_out, n_in)
    out = np.empty(shape, dtype=data.dtype) if out is None else out
    full = n_out // PANEL
    out[:full] = data[: full * PANEL].reshape(full, PANEL, n_in).transpose(0, 2, 1)
    if full < shape[0]:  # a ragged last panel: the missing outputs are zero
        out[full:] = 0
        out[full, :, : n_out - full * PANEL] = data[full * PANEL :].T
    return out


def unpack(w: Weight) -> np.ndarray:
    """The stored values (O, I) of a packed :class:`Weight` (the inverse of :func:`pack`)."""
    n_panels, n_in, width = w.data.shape
    return w.data.transpose(0, 2, 1).reshape(n_panels * width, n_in)[: len(w.scale)]


def _numpy(data: torch.Tensor) -> np.ndarray:
    """A stored CPU weight as numpy (bfloat16 as its uint16 bits)."""
    if data.dtype == torch.bfloat16:
        return data.view(torch.int16).numpy().view(np.uint16)
    return data.numpy()


def kernel_weights(stored: list[tuple[torch.Tensor, torch.Tensor]]) -> list[Weight]:
    """Stored CPU weights (see :func:`quantize`, one type) packed for the kernels, back to back.

    They share one buffer, in the given order, each starting on a 64-byte line: a decoding step
    that reads them in that order streams one region of memory (which numpy asks the kernel to
    back with 2 MB pages), not dozens of separate 4-8 MB arrays, each with its own TLB misses
    (measured on the project's Zen 4, 84 weights of 4 MB at 2 rows: +5-25 %).
    """
    values = [_numpy(data) for data, _ in stored]
    if not values:
        return []
    dtype, align = values[0].dtype, 64 // values[0].itemsize
    starts, end = [], 0
    for v in values:
        starts.append(end)
        end += -(-int(np.prod(packed_shape(*v.shape))) // align) * align
    buffer = np.empty(end, dtype=dtype)
    weights = []
    for v, start, (_, scale) in zip(values, starts, stored, strict=True):
        shape = packed_shape(*v.shape)
        view = buffer[start : start + int(np.prod(shape))].reshape(shape)
        dense = v if v.dtype == np.float32 else np.empty((0, v.shape[1]), dtype=np.float32)
        scale = np.ascontiguousarray(scale.numpy())
        weights.append(Weight(pack(v, view), scale, dense, default_plan()))
    return weights


def kernel_weight(data: torch.Tensor, scale: torch.Tensor) -> Weight:
    """A stored CPU weight (see :func:`quantize`) packed for the kernels (bfloat16 as uint16)."""
    return kernel_weights([(data, scale)])[0]


def _block_kernel(rows: int):
    """An LLVM kernel for ``rows`` input rows and one panel: ``out[r, :PANEL] += x[r] @ panel``.

    Written in LLVM IR with vectors of PANEL floats, so that the sums stay in registers for the
    whole pass (``rows`` vectors, updated by fused multiply-adds), each panel row is loaded once
    (and widened: bf16 by a shift, int8 by a conversion) and each x element is broadcast once.
    LLVM splits the vectors into the machine's registers (AVX-512, AVX2, NEON).

    Arguments (in the jitted caller): the packed weight (P, I, PANEL), the flat index of its first
    element to read, n (inputs to sum over), x (M, I) float32 and the flat index of x[r0, i0], its
    row stride, out (M, O) float32 and the flat index of out[r0, c0], its row stride, and how many
    bytes ahead of each weight row read to prefetch (0: none; a loop without the instructions).
    """

    @intrinsic
    def block(typingctx, panel, start, n, x, x_at, x_stride, out, out_at, out_stride, ahead):
        sig = types.void(
            panel,
            types.intp,
            types.intp,
            x,
            types.intp,
            types.intp,
            out,
            types.intp,
            types.intp,
            types.intp,
        )

        def codegen(context, builder, signature, args):  # pragma: no cover - runs when compiled
            panel_t, x_t, out_t = signature.args[0], signature.args[3], signature.args[6]
            panel_a, start, n, x_a, x_at, x_stride, out_a, out_at, out_stride, ahead = args
            i64, f32 = ir.IntType(64), ir.FloatType()
            vec = ir.VectorType(f32, PANEL)
            w_ptr = context.make_array(panel_t)(context, builder, panel_a).data
            x_ptr = context.make_array(x_t)(context, builder, x_a).data
            out_ptr = context.make_array(out_t)(context, builder, out_a).data
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fmuladd.v{PANEL}f32"
            )
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
                "llvm.prefetch.p0",
            )
            kind = panel_t.dtype
            stored = ir.VectorType(context.get_data_type(kind), PANEL)

            def row_ptr(r):
                at = builder.add(out_at, builder.mul(out_stride, ir.Constant(i64, r)))
                return builder.bitcast(builder.gep(out_ptr, [at]), vec.as_pointer())

            sums = [builder.load(row_ptr(r), align=4) for r in range(rows)]
            entry = builder.block
            pick = builder.append_basic_block("panel.pick")
            done = builder.append_basic_block("panel.done")
            builder.cbranch(builder.icmp_signed(">", n, ir.Constant(i64, 0)), pick, done)
            row_bytes = PANEL * context.get_abi_sizeof(context.get_data_type(kind))
            zeros = ir.Constant(ir.VectorType(ir.IntType(32), PANEL), [0] * PANEL)

            def emit_loop(name, fetch):
                """The loop over the pass (entered from ``pick``), asking for the weight ``ahead``
                bytes on if ``fetch``; returns its first and last blocks and its final sums."""
                loop = builder.append_basic_block(name)
                builder.position_at_end(loop)
                i = builder.phi(i64)
                i.add_incoming(ir.Constant(i64, 0), pick)
                phis = []
                for s in sums:
                    phis.append(builder.phi(vec))
                    phis[-1].add_incoming(s, pick)
                at = builder.add(start, builder.mul(i, ir.Constant(i64, PANEL)))
                raw = builder.load(
                    builder.bitcast(builder.gep(w_ptr, [at]), stored.as_pointer()), align=1
                )
                if kind == types.float32:
                    w = raw
                elif kind == types.uint16:  # bf16 bits: the high half of a float32
                    wide = ir.VectorType(ir.IntType(32), PANEL)
                    w = builder.bitcast(
                        builder.shl(builder.zext(raw, wide), ir.Constant(wide, [16] * PANEL)), vec
                    )
                else:  # int8
                    w = builder.sitofp(raw, vec)
                # Software prefetch (see PREFETCH): the weight ``ahead`` bytes on, in order in the
                # packed layout, into L2, a cache line per line read.
                byte = builder.bitcast(builder.gep(w_ptr, [at]), ir.IntType(8).as_pointer())
                for line in range(0, row_bytes if fetch else 0, 64):
                    where = builder.gep(byte, [builder.add(ahead, ir.Constant(i64, line))])
                    builder.call(
                        prefetch, [where, *(ir.Constant(ir.IntType(32), a) for a in (0, 2, 1))]
                    )
                new = []
                for r in range(rows):
                    x_i = builder.add(
                        builder.add(x_at, builder.mul(x_stride, ir.Constant(i64, r))), i
                    )
                    one = builder.insert_element(
                        ir.Constant(vec, ir.Undefined),
                        builder.load(builder.gep(x_ptr, [x_i]), align=4),
                        ir.Constant(ir.IntType(32), 0),
                    )
                    lanes = builder.shuffle_vector(one, ir.Constant(vec, ir.Undefined), zeros)
                    new.append(builder.call(fma, [lanes, w, phis[r]]))
                after = builder.add(i, ir.Constant(i64, 1))
                i.add_incoming(after, builder.block)
                for phi, value in zip(phis, new, strict=True):
                    phi.add_incoming(value, builder.block)
                builder.cbranch(builder.icmp_signed("<", after, n), loop, done)
                return loop, builder.block, new

            loops = [emit_loop("panel.fetch", True), emit_loop("panel.plain", False)]
            builder.position_at_end(pick)  # ahead > 0: the loop that prefetches
            fetching = builder.icmp_signed(">", ahead, ir.Constant(i64, 0))
            builder.cbranch(fetching, loops[0][0], loops[1][0])
            builder.position_at_end(done)
            finals = [builder.phi(vec) for _ in range(rows)]  # phis first, then the stores
            for r, final in enumerate(finals):
                final.add_incoming(sums[r], entry)
                for _, end, new in loops:
                    final.add_incoming(new[r], end)
            for r, final in enumerate(finals):
                builder.store(final, row_ptr(r), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return block


if njit is not None:
    _b1, _b2, _b3, _b4, _b5, _b6, _b7, _b8 = (_block_kernel(r) for r in range(1, 9))


def _rows(
    rows, panel, start, n, x, x_at, x_stride, out, out_at, out_stride, ahead
):  # pragma: no cover - jitted
    """The block kernel of ``rows`` (1 to 8) rows; see :func:`_block_kernel`."""
    a = (panel, start, n, x, x_at, x_stride, out, out_at, out_stride, ahead)
    if rows == 8:
        _b8(*a)
    elif rows == 4:
        _b4(*a)
    elif rows == 2:
        _b2(*a)
    elif rows == 1:
        _b1(*a)
    elif rows == 3:
        _b3(*a)
    elif rows == 5:
        _b5(*a)
    elif rows == 6:
        _b6(*a)
    else:
        _b7(*a)


def _panel(
    x: np.ndarray, w: Weight, out: np.ndarray, p: int, k_block: int, row_block: int, ahead: int
) -> None:  # pragma: no cover - jitted
    """Adds panel ``p``'s outputs to out (M, O) (see :func:`_matmul`)."""
    data = w.data
    M, n_in = x.shape
    n_out = out.shape[1]
    c0 = p * PANEL
    ragged = c0 + PANEL > n_out  # the last panel of an output count that PANEL does not divide
    target = np.zeros((M, PANEL), dtype=np.float32) if ragged else out
    stride, col = (PANEL, 0) if ragged else (n_out, c0)
    for k0 in range(0, n_in, k_block):
        n = min(k_block, n_in - k0)
        for m in range(0, M, row_block):
            rows = min(row_block, M - m)
            at = (p * n_in + k0) * PANEL
            x_at, out_at = m * n_in + k0, m * stride + col
            _rows(rows, data, at, n, x, x_at, n_in, target, out_at, stride, ahead)
    if ragged:
        out[:, c0:] = target[:, : n_out - c0]


def _scale(out: np.ndarray, scale: np.ndarray) -> None:  # pragma: no cover - jitted
    """out (M, O) *= scale (O,), the per-channel scale of an int8 weight (ones otherwise)."""
    for m in range(out.shape[0]):
        for o in range(out.shape[1]):
            out[m, o] *= scale[o]


def _matmul(
    x: np.ndarray, w: Weight, out: np.ndarray, k_block: int, row_block: int, ahead: int
) -> None:  # pragma: no cover - jitted
    """out (M, O) = x (M, I) @ (stored weight * scale).T for any M, each weight read once.

    x and out are C-contiguous. Panel by panel (PANEL outputs), in passes of ``k_block`` inputs
    that stay in cache, every block of ``row_block`` (1 to 8) rows adds its sums
    (:func:`_block_kernel`, prefetching ``ahead`` bytes on); a last, partial panel goes through a
    scratch of full panel width. Each output's sum runs over the inputs in order whatever the three
    settings, so they change the speed, never the result. (K_BLOCK measured at 32 rows on the project's Zen 4: 128 / 256 / 512
    / 1024 inputs gave ~87 / 94 / 99 / 103 GFLOP/s; :mod:`musicgen.kernel_plans` measures them
    per machine and shape.)
    """
    out[:] = 0.0
    for p in range(w.data.shape[0]):
        _panel(x, w, out, p, k_block, row_block, ahead)
    _scale(out, w.scale)


def _matmul_threads(
    x: np.ndarray, w: Weight, out: np.ndarray, k_block: int, row_block: int, ahead: int
) -> None:  # pragma: no cover - jitted
    """:func:`_matmul` with the panels shared among numba's threads (each a contiguous range, so
    each thread streams its own part of the weight); the same sums in the same order."""
    out[:] = 0.0
    for p in prange(w.data.shape[0]):
        _panel(x, w, out, p, k_block, row_block, ahead)
    _scale(out, w.scale)


def _blas(x: np.ndarray, dense: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """out (M, O) = x (M, I) @ dense (O, I).T by BLAS (numba lowers numpy's dot to sgemm)."""
    np.dot(x, dense.T, out)


def _mm(x: np.ndarray, w: Weight, out: np.ndarray, threads: int) -> None:  # pragma: no cover
    """out = x @ w's float value.T, the way ``w.plan`` says for x's row count: BLAS (fp32 weights
    only), else the block kernel with the plan's pass and row block, on ``threads`` threads (or
    one), prefetching as it says. The block kernel gives the same bits whatever its sizes,
    prefetch and threads; BLAS does not."""
    how = w.plan[min(x.shape[0], w.plan.shape[0] - 1)]
    if how[0] == BLAS and w.dense.shape[0] == out.shape[1]:
        _blas(x, w.dense, out)
    elif threads > 1 and how[0] != ONE_THREAD:
        _matmul_threads(x, w, out, how[1], how[2], how[3])
    else:
        _matmul(x, w, out, how[1], how[2], how[3])


def _kth_largest(v: np.ndarray, k: int) -> np.float32:  # pragma: no cover - jitted
    """The k-th largest of v (V,) float32 (1 <= k <= V; no NaN), by radix selection.

    Floats map to unsigned keys in the same order; one pass counts the top 8 bits of every key and
    keeps the keys in the bucket where the k-th largest lies (a few dozen of ~2000 logits), and
    three more passes over those settle the other 24 bits.
    """
    keys = np.empty(v.shape[0], dtype=np.uint32)
    bits = v.view(np.uint32)
    for i in range(v.shape[0]):
        b = bits[i]
        keys[i] = ~b if b >> np.uint32(31) else b | np.uint32(0x80000000)
    hist = np.empty(256, dtype=np.int64)
    n, left = v.shape[0], k
    for shift in (24, 16, 8, 0):
        hist[:] = 0
        for i in range(n):
            hist[(keys[i] >> np.uint32(shift)) & np.uint32(255)] += 1
        digit = 255
        while hist[digit] < left:  # from the top bucket down to the one holding the k-th
            left -= hist[digit]
            digit -= 1
        kept = 0
        for i in range(n):
            if (keys[i] >> np.uint32(shift)) & np.uint32(255) == digit:
                keys[kept] = keys[i]
                kept += 1
        n = kept
    key = keys[0]  # all n survivors are equal now
    b = key & np.uint32(0x7FFFFFFF) if key >> np.uint32(31) else ~key
    return np.array([b], dtype=np.uint32).view(np.float32)[0]


def _sample_top_k(
    logits: np.ndarray, temperature: float, top_k: int, u: np.ndarray, out: np.ndarray
) -> None:  # pragma: no cover - jitted
    """out[r] = a token drawn from softmax(logits[r] / temperature) restricted to its top_k.

    What ``musicgen.generate.sample_next`` does in torch (the logits below the k-th largest
    dropped, ties kept; the inverse CDF of the rest at ``u[r] * total``, the first index whose
    cumulative sum exceeds it), with one radix selection (:func:`_kth_largest`) and one exp per
    kept logit, in float64.

    Args:
        logits: (N, V) float32. temperature: > 0. top_k: 0 or >= V keeps every token.
        u: (N,) float64 uniforms in [0, 1), one per row. out: (N,) int64.
    """
    N, V = logits.shape
    t = np.float32(temperature)
    weight = np.empty(V, dtype=np.float64)
    index = np.empty(V, dtype=np.int64)
    for r in range(N):
        v = logits[r] / t
        kth = _kth_largest(v, top_k) if 0 < top_k < V else np.float32(-np.inf)
        top = v.max()
        n, total = 0, 0.0
        for i in range(V):
            if v[i] >= kth:
                weight[n] = np.exp(np.float64(v[i] - top))
                index[n] = i
                total += weight[n]
                n += 1
        target, cum, pick = u[r] * total, 0.0, index[n - 1]
        for j in range(n):
            cum += weight[j]
            if cum > target:
                pick = index[j]
                break
        out[r] = pick


def sample_top_k(logits: np.ndarray, temperature: float, top_k: int, u: np.ndarray) -> np.ndarray:
    """(N,) int64 tokens drawn from (N, V) float32 logits by :func:`_sample_top_k`."""
    out = np.empty(logits.shape[0], dtype=np.int64)
    _sample_top_k(np.ascontiguousarray(logits), temperature, top_k, u.reshape(-1), out)
    return out


def _jit(fn, parallel: bool = False):
    """``fn`` compiled by numba (fastmath, cached on disk), or None without numba."""
    if njit is None:
        return None
    return njit(fastmath=True, cache=True, nogil=True, boundscheck=False, parallel=parallel)(fn)


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


def _erf(x: np.float32) -> np.float32:  # pragma: no cover - jitted
    """erf(x) for float32 x with no call, branch or table, so that loops over it vectorise.

    erf(v) ~= v * P(v^2) / Q(v^2) with v = x clamped to [-3.925, 3.925] (where float32 erf is
    +-1; NaN may come out as +-3.925's value), P and Q of degree 5 from ``scripts/fit_erf.py`` (a
    Loeffler-Lawson fit towards the minimax rational, 1.6e-8 in float64). The sums are in float64:
    float32 Horner sums lose ~5 ulps near erf = 1 (3.2-3.8e-7). Max |error| against float64
    ``math.erf`` over a dense float32 grid on [-6, 6] and huge, tiny and +-0 inputs: 4.6e-8
    (0.4 float32 ulp of 1). ``np.divide``: ``/`` would check for a zero divisor (Q >= 1 here),
    which stops LLVM vectorising.
    """
    v = min(max(np.float64(x), -3.925), 3.925)
    t = v * v
    p, q = 2.0308545689042727e-06, 3.803121333755253e-05  # Horner, t^5 first
    p, q = p * t + 0.00028749056895498073, q * t + 0.001189743694597858
    p, q = p * t + 0.0038763098896427294, q * t + 0.01518832130878378
    p, q = p * t + 0.05308429274200452, q * t + 0.1151673373213271
    p, q = p * t + 0.192972321124176, q * t + 0.5043489047840048
    p, q = p * t + 1.1283790197830803, q * t + 1.0
    return np.float32(np.divide(v * p, q))


def _gelu(f: np.ndarray) -> None:  # pragma: no cover - jitted
    """f (M, F) float32 = GELU(f) in place, the exact (erf) form: f * (1 + erf(f / sqrt 2)) / 2."""
    for m in range(f.shape[0]):
        for i in range(f.shape[1]):
            u = f[m, i]
            f[m, i] = np.float32(0.5) * u * (np.float32(1.0) + _erf(u * np.float32(0.70710677)))


def _decoder_layer_step(
    x: np.ndarray, pos: int, n_cond: int, threads: int, L: LayerArrays
) -> np.ndarray:  # pragma: no cover - jitted
    """One pre-norm decoder layer on one new step; L holds its parameters and caches."""
    M = x.shape[0]
    H, hd = L.k_cache.shape[1], L.k_cache.shape[3]
    y = x.copy()
    h = np.empty_like(x)
    q = np.empty_like(x)
    t = np.empty_like(x)
    a = np.empty_like(x)
    # causal self-attention: this step's keys and values join the cache at `pos`
    _layer_norm(y, L.norm1_w, L.norm1_b, L.eps, h)
    _mm(h, L.q_w, q, threads)
    for w, cache in ((L.k_w, L.k_cache), (L.v_w, L.v_cache)):
        _mm(h, w, t, threads)
        for m in range(M):
            for j in range(H):
                cache[m, j, pos] = t[m, j * hd : (j + 1) * hd]
    _attend(q, L.k_cache, L.v_cache, L.self_mask, pos + 1, a)
    _mm(a, L.out_w, t, threads)
    y += t
    # cross-attention of the conditioned rows (the null rows' output is exactly zero)
    _layer_norm(y[:n_cond], L.norm2_w, L.norm2_b, L.eps, h[:n_cond])
    _mm(h[:n_cond], L.cross_q_w, q[:n_cond], threads)
    _attend(q[:n_cond], L.cross_k, L.cross_v, L.cross_mask, L.cross_k.shape[2], a[:n_cond])
    _mm(a[:n_cond], L.cross_out_w, t[:n_cond], threads)
    y[:n_cond] += t[:n_cond]
    # feed-forward with the exact (erf) GELU
    _layer_norm(y, L.norm3_w, L.norm3_b, L.eps, h)
    f = np.empty((M, L.fc1_w.scale.shape[0]), dtype=np.float32)
    _mm(h, L.fc1_w, f, threads)
    _gelu(f)
    _mm(f, L.fc2_w, t, threads)
    y += t
    return y


def _decoder_steps(
    x: np.ndarray, pos: int, n_cond: int, threads: int, layers
) -> np.ndarray:  # pragma: no cover - jitted
    """Every layer (a numba typed list of :class:`LayerArrays`) on one new step, in one call."""
    for L in layers:
        x = _decoder_layer_step(x, pos, n_cond, threads, L)
    return x


_rows = _jit(_rows)
_kth_largest = _jit(_kth_largest)
_sample_top_k = _jit(_sample_top_k)
_panel = _jit(_panel)
_scale = _jit(_scale)
_matmul = _jit(_matmul)
_matmul_threads = _jit(_matmul_threads, parallel=True)
_blas = _jit(_blas)
_mm = _jit(_mm)
_layer_norm = _jit(_layer_norm)
_attend = _jit(_attend)
_erf = _jit(_erf)
_gelu = _jit(_gelu)
_decoder_layer_step = _jit(_decoder_layer_step)
_decoder_steps = _jit(_decoder_steps)


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
    return _decoder_layer_step(x, pos, n_cond, kernel_threads(), arrays)


def layer_list(arrays: list[LayerArrays]):
    """The layers' arrays as the numba typed list that :func:`decoder_steps` takes (made once)."""
    from numba.typed import List

    return List(arrays)


def decoder_steps(x: np.ndarray, pos: int, n_cond: int, layers) -> np.ndarray:
    """Every layer on one new step in one numba call: :func:`decoder_layer_step` in turn, without
    a return to Python between layers (``layers`` from :func:`layer_list`).

    Returns:
        (B, D) float32, the last layer's output.
    """
    return _decoder_steps(x, pos, n_cond, kernel_threads(), layers)


def matmul(x: np.ndarray, w: Weight) -> np.ndarray:
    """x (M, I) float32 @ the stored weight's float value (O, I).T -> (M, O), by :func:`_matmul`."""
    out = np.empty((x.shape[0], w.scale.shape[0]), dtype=np.float32)
    _mm(np.ascontiguousarray(x), w, out, kernel_threads())
    return out


def kernel_threads() -> int:
    """Threads for the kernels: torch's intra-op count (``torch.set_num_threads``,
    ``OMP_NUM_THREADS``), at most numba's pool; numba's count is set to it.

    Numba's OpenMP threading layer, when it starts, sets OpenMP's count to its whole pool, which
    torch reads as its own; torch's count is put back. Numba's count is per calling thread and
    asking for it costs ~10 us, so what was last set is remembered per thread.
    """
    wanted = torch.get_num_threads()
    if getattr(_threads_set, "wanted", None) == wanted:
        return _threads_set.threads
    threads = max(1, min(wanted, NUMBA_NUM_THREADS))
    if get_num_threads() != threads:
        set_num_threads(threads)
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
    _threads_set.wanted, _threads_set.threads = wanted, threads
    return threads


_threads_set = threading.local()  # per thread: torch's count last seen and numba's count set


def kernel_available() -> bool:
    """Whether numba is installed (else :class:`LinearKernel` always runs torch)."""
    return njit is not None


class LinearKernel:
    """Serves a model's ``nn.Linear`` layers at inference, with weights stored as ``weights`` says.

    Every linear weight is stored once, here (:func:`quantize`, then :func:`pack`: a copy, also for
    ``fp32``), so that a decoding step pays only the kernel call. With ``use_numba`` and an input
    the kernels handle (:meth:`handles`), :func:`_matmul` runs, at any number of rows (with a prompt
    or the text keys, hundreds: at or above BLAS's rate here); otherwise torch runs, on the float
    value of the stored weight (the layer itself for ``fp32``). A layer created after this object
    runs itself.

    Layers the kernels do not serve (a model on CUDA, or ``use_numba=False``) run torch on a
    weight made once here, :meth:`torch_weight`: the stored weight's float value in
    ``compute_dtype`` (the autocast dtype of the decoding, e.g. fp16 on CUDA) or float32, and the
    bias likewise; a decoding step then reads each weight in that dtype and casts nothing (under
    autocast with its cache off, as a CUDA graph needs, a float32 layer would be cast to fp16 at
    every step: 4 bytes read and 2 written per parameter on top of the 2 the matmul reads).
    ``fp32`` weights with no ``compute_dtype`` run the layers themselves.

    Args:
        model: the module whose ``nn.Linear`` layers to serve.
        weights: one of :data:`WEIGHT_TYPES`.
        use_numba: False always runs torch (e.g. to test the torch path with stored weights).
        compute_dtype: the dtype of the torch path's matmuls (the autocast dtype the decoding
            runs under), or None for float32.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        weights: str = "fp32",
        use_numba: bool = True,
        compute_dtype: torch.dtype | None = None,
    ):
        if weights not in WEIGHT_TYPES:
            raise ValueError(f"unknown weight type '{weights}'; choose one of {WEIGHT_TYPES}")
        self.weights, self.compute_dtype = weights, compute_dtype
        self.use_numba = use_numba and kernel_available()
        self._stored: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._torch: dict[int, tuple[torch.Tensor, torch.Tensor | None]] = {}
        for layer in model.modules():
            if isinstance(layer, torch.nn.Linear) and layer.weight.dtype == torch.float32:
                self._stored[id(layer)] = quantize(layer.weight, weights)
        # packed back to back in the modules' order (a layer's projections in the order a step
        # reads them, then the next layer's)
        served = [key for key, (data, _) in self._stored.items() if data.device.type == "cpu"]
        served = served if self.use_numba else []
        packed = kernel_weights([self._stored[key] for key in served])
        self._arrays: dict[int, Weight] = dict(zip(served, packed, strict=True))
        if weights != "fp32" or compute_dtype is not None:
            for layer in model.modules():
                key = id(layer)
                if key in self._stored and key not in self._arrays:
                    self._torch[key] = self.torch_weight(layer)
                    if weights != "fp32":  # on CUDA the float value alone is read
                        del self._stored[key]

    def torch_weight(self, layer: torch.nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The weight (O, I) and bias (O,) that the torch path multiplies by, made once: the
        stored weight's float value in ``compute_dtype`` (or float32)."""
        dtype = self.compute_dtype or torch.float32
        weight = dequantize(*self._stored[id(layer)]).to(dtype)
        bias = None if layer.bias is None else layer.bias.detach().to(dtype)
        return weight, bias

    def arrays(self) -> list[Weight]:
        """Every weight the kernels serve (their plans: :mod:`musicgen.kernel_plans`)."""
        return list(self._arrays.values())

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
        key = id(layer)
        if self.weights == "fp32" and torch.is_grad_enabled():
            return layer(x)
        if key in self._torch:  # weights made once in the dtype the matmul reads
            weight, bias = self._torch[key]
            return F.linear(x.to(weight.dtype), weight, bias)
        stored = self._stored.get(key)
        if stored is None:
            return layer(x)
        n_in = x.shape[-1]
        rows = x.numel() // n_in if n_in else 0
        weight = self._arrays.get(key)
        if weight is None or rows == 0 or not self.handles(x):
            if self.weights == "fp32":
                return layer(x)
            return F.linear(x, dequantize(*stored).to(x.dtype), layer.bias)
        y = torch.from_numpy(matmul(x.reshape(rows, n_in).numpy(), weight))
        if layer.bias is not None:
            y += layer.bias
        return y.view(*x.shape[:-1], weight.scale.shape[0])
