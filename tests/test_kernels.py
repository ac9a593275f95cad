import numpy as np
import pytest
import torch

from musicgen.generate import teacher_forced
from musicgen.kernels import (
    PANEL,
    WEIGHT_TYPES,
    LinearKernel,
    _erf,
    _gelu,
    dequantize,
    kernel_available,
    kernel_weight,
    matmul,
    quantize,
    unpack,
)
from musicgen.lm import LM, LMConfig, null_condition

pytestmark = pytest.mark.skipif(not kernel_available(), reason="numba is not installed")


def tiny():
    torch.manual_seed(0)
    model = LM(LMConfig(d_model=32, n_heads=4, n_layers=2, ffn_dim=64, card=64, text_dim=16)).eval()
    for layer in model.layers:  # non-trivial LayerNorms
        for norm in (layer.self_attn_layer_norm, layer.cross_attn_layer_norm):
            torch.nn.init.normal_(norm.weight, 1.0, 0.2)
            torch.nn.init.normal_(norm.bias, 0.0, 0.2)
    return model


@pytest.mark.parametrize("weights", WEIGHT_TYPES)
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 7, 8, 9, 17, 33])
@pytest.mark.parametrize("n_out, n_in", [(37, 300), (64, 70)])
def test_kernel_equals_matmul_with_the_stored_weight(rows, weights, n_out, n_in):
    """Any row count (full and partial row blocks of both layouts), inputs in one or two K_BLOCK
    passes, outputs filling their panels or ending in a ragged one, any stored type."""
    g = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, n_in, generator=g), torch.randn(n_out, n_in, generator=g)
    data, scale = quantize(w, weights)
    packed = kernel_weight(data, scale)
    assert packed.data.shape == (-(-n_out // PANEL), n_in, PANEL)
    stored = data.view(torch.int16).numpy().view(np.uint16) if weights == "bf16" else data.numpy()
    assert np.array_equal(unpack(packed), stored)
    out = matmul(x.numpy(), packed)
    assert torch.allclose(torch.from_numpy(out), x @ dequantize(data, scale).T, atol=1e-4)


def test_quantize_rounding_bounds():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 300, generator=g) * torch.logspace(-3, 1, 16)[:, None]
    w[3] = 0.0  # an all-zero channel
    data, scale = quantize(w, "fp32")
    assert data.data_ptr() == w.data_ptr() and torch.equal(scale, torch.ones(16))
    data, _ = quantize(w, "bf16")
    assert data.dtype == torch.bfloat16
    assert torch.all((dequantize(data, scale) - w).abs() <= w.abs() * 2.0**-8)
    data, scale = quantize(w, "int8")
    assert data.dtype == torch.int8 and data.abs().max() == 127 and scale[3] == 1
    assert torch.all((dequantize(data, scale) - w).abs() <= scale[:, None] / 2 + 1e-7)
    bits = unpack(kernel_weight(*quantize(w, "bf16")))
    assert bits.dtype == np.uint16 and np.array_equal(
        (bits.astype(np.uint32) << 16).view(np.float32), w.to(torch.bfloat16).float().numpy()
    )
    with pytest.raises(ValueError, match="unknown weight type 'fp8'"):
        quantize(w, "fp8")


def cached_steps(model, seq, memory, memory_mask, n_cond, fast_kernel, weights="fp32"):
    """Hidden states of a 2-step prompt chunk then single steps through a cache, and the cache."""
    cache = model.new_cache(
        seq.shape[0], seq.shape[2], torch.device("cpu"), torch.float32, fast_kernel, n_cond, weights
    )
    steps = [model.hidden_steps(seq[:, :, :2], memory, memory_mask, cache)]
    steps += [
        model.hidden_steps(seq[:, :, s : s + 1], memory, memory_mask, cache)
        for s in range(2, seq.shape[2])
    ]
    return torch.cat(steps, dim=1), cache


def guided_inputs(model, batch):
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(batch, 5, 16, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[-1, 2:] = False  # padded text
    memory, memory_mask = model.condition(cond, mask)
    null, null_mask = model.condition(*null_condition(cond, mask))
    memory, memory_mask = torch.cat([memory, null]), torch.cat([memory_mask, null_mask])
    seq = torch.randint(0, 65, (2 * batch, 4, 6), generator=g)
    return seq, memory, memory_mask


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 3, 8])  # 2, 6 and 16 rows with guidance
def test_fused_step_equals_the_torch_step(batch):
    """Cached steps through the numba layer step give the torch path's hidden states and logits."""
    model = tiny()
    seq, memory, memory_mask = guided_inputs(model, batch)
    fused, cache = cached_steps(model, seq, memory, memory_mask, batch, True)
    reference, torch_cache = cached_steps(model, seq, memory, memory_mask, batch, False)
    assert cache.fused_steps == 4 * len(model.layers) and torch_cache.fused_steps == 0
    assert torch.allclose(fused, reference, atol=1e-4)
    assert torch.allclose(model.logits(fused), model.logits(reference), atol=1e-4)
    for k, k_ref in zip(cache.k, torch_cache.k, strict=True):
        assert torch.allclose(k, k_ref, atol=1e-4)
    full = model.hidden_steps(seq, memory, memory_mask)  # no cache at all
    assert torch.allclose(fused, full, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_stored_weights_give_the_same_result_in_numba_and_torch(weights):
    """bf16 / int8: the fused numba step equals torch on the stored weights' float values."""
    model = tiny()
    seq, memory, memory_mask = guided_inputs(model, 2)
    fused, cache = cached_steps(model, seq, memory, memory_mask, 2, True, weights)
    reference, torch_cache = cached_steps(model, seq, memory, memory_mask, 2, False, weights)
    assert cache.fused_steps == 4 * len(model.layers) and torch_cache.fused_steps == 0
    assert torch.allclose(fused, reference, atol=1e-4)
    assert torch.allclose(
        model.logits(fused, cache), model.logits(reference, torch_cache), atol=1e-4
    )
    exact, _ = cached_steps(model, seq, memory, memory_mask, 2, True)
    assert not torch.allclose(fused, exact, atol=1e-6)  # the weights really are stored otherwise


def trained_tiny():
    """A tiny LM trained for a few hundred steps to predict a noisy periodic code sequence.

    Returns the model and held-out (codes, cond, mask) from the same process.
    """
    torch.manual_seed(0)
    model = LM(LMConfig(d_model=32, n_heads=4, n_layers=2, ffn_dim=64, card=64, text_dim=16))
    g = torch.Generator().manual_seed(0)

    def batch(n):
        start = torch.randint(0, 64, (n, 4, 1), generator=g)
        codes = (start + 3 * torch.arange(12)) % 64  # (n, K, T): each codebook steps by 3
        noise = torch.rand(codes.shape, generator=g) < 0.1
        codes = torch.where(noise, torch.randint(0, 64, codes.shape, generator=g), codes)
        return codes, torch.randn(n, 5, 16, generator=g), torch.ones(n, 5, dtype=torch.bool)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: thread start-up would cost more than the ops
    try:
        for _ in range(150):
            _, ce = model(*batch(16))
            ce.mean().backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    return model.eval(), batch(32)


def test_bf16_and_int8_logit_error_and_held_out_ce():
    """Fewer bytes, bounded change: logits and held-out CE of a trained tiny model vs fp32.

    Run with ``-s`` to see the CE of each weight type.
    """
    model, held_out = trained_tiny()
    with torch.no_grad():
        _, reference_ce = model(*held_out)
    logits32, ce32 = teacher_forced(model, *held_out, weights="fp32")
    assert ce32.mean() < 2.5 < np.log(64)  # the model did learn (log 64 = 4.16 nats)
    assert torch.allclose(ce32, reference_ce, atol=1e-4)  # the decoding path, fp32: same CE
    spread = logits32.std()
    for weights, logit_bound, ce_bound in (("bf16", 0.02, 0.01), ("int8", 0.05, 0.03)):
        logits, ce = teacher_forced(model, *held_out, weights=weights)
        error = (logits - logits32).abs().max() / spread
        change = float(ce.mean() - ce32.mean())
        print(f"{weights}: max logit error {error:.4f} of the logit std, CE change {change:+.5f}")
        assert error < logit_bound and abs(change) < ce_bound
        torch_logits, _ = teacher_forced(model, *held_out, weights=weights, fast_kernel=False)
        assert torch.allclose(logits, torch_logits, atol=1e-4)


@torch.no_grad()
def test_fused_step_is_not_used_with_autograd_or_in_training():
    model = tiny()
    memory, memory_mask = model.condition(torch.randn(1, 5, 16), torch.ones(1, 5, dtype=torch.bool))
    seq = torch.randint(0, 64, (1, 4, 1))
    cache = model.new_cache(1, 4, torch.device("cpu"), torch.float32, fast_kernel=True)
    with torch.enable_grad():
        model.hidden_steps(seq, memory, memory_mask, cache)
    assert cache.fused_steps == 0
    model.hidden_steps(seq, memory, memory_mask, cache)
    assert cache.fused_steps == len(model.layers)
    kernel = LinearKernel(model)
    assert kernel.handles(torch.zeros(1)) and not kernel.handles(torch.zeros(1).double())
    assert not LinearKernel(model, use_numba=False).handles(torch.zeros(1))
    with pytest.raises(ValueError, match="unknown weight type"):
        LinearKernel(model, "fp16")


@torch.no_grad()
def test_stored_weights_are_made_once_and_remade_when_the_model_changes():
    model = tiny()
    kernel = model.decoding_kernel("int8", True)
    assert model.decoding_kernel("int8", True) is kernel
    assert model.decoding_kernel("bf16", True) is not kernel
    cache = model.new_cache(1, 4, torch.device("cpu"), torch.float32, True, weights="bf16")
    assert cache.kernel is model.decoding_kernel("bf16", True)
    fc1 = model.layers[0].fc1
    before = cache.kernel.weight(fc1).data.copy()
    fc1.weight.mul_(2.0)  # e.g. a training step or load_state_dict
    kernel = model.decoding_kernel("bf16", True)
    assert kernel is not cache.kernel
    assert np.array_equal(
        unpack(kernel.weight(fc1)), unpack(kernel_weight(*quantize(fc1.weight, "bf16")))
    ) and not np.array_equal(kernel.weight(fc1).data, before)


def test_erf_is_within_half_a_float32_ulp_of_one():
    """The jitted, vectorised float32 erf (fastmath) against float64 math.erf: a dense float32
    grid on [-6, 6], every float32 around the clamp, tiny, huge and signed-zero inputs."""
    import math

    from numba import njit

    @njit(fastmath=True)
    def erf_all(x):
        for i in range(x.shape[0]):
            x[i] = _erf(x[i])

    grid = np.linspace(-6.0, 6.0, 400_001, dtype=np.float32)
    edge = np.arange(*np.array([3.85, 4.0], np.float32).view(np.int32), dtype=np.int32)
    edge = edge.view(np.float32)
    odd = np.array([0.0, -0.0, 1e-45, 1e-38, 1e-20, 1e-8, 1e4, 3e38, np.inf], np.float32)
    x = np.concatenate([grid, edge, -edge, odd, -odd])
    got = x.copy()
    erf_all(got)
    want = np.array([math.erf(v) for v in x.astype(np.float64)])
    assert np.max(np.abs(got.astype(np.float64) - want)) <= 1e-7  # 4.6e-8 measured
    assert np.all(np.abs(got) <= 1.0) and np.array_equal(np.signbit(got), np.signbit(x))


def test_gelu_matches_torch_exact_gelu():
    """In place on (M, F) float32; torch's float32 erf GELU is itself off by up to ~1e-6 where
    1 + erf cancels (x ~ -3.5), so the tight comparison is with torch in float64."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 2048, generator=g) * 3
    f = x.numpy().copy()
    _gelu(f)
    want = torch.nn.functional.gelu(x.double()).numpy()
    np.testing.assert_allclose(f, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(f, torch.nn.functional.gelu(x).numpy(), rtol=1e-6, atol=2e-6)


PORTABLE_CHECK = """
import numpy as np, torch
from musicgen import kernels as K
from musicgen.kernel_plans import AHEADS, candidates
assert (K.PANEL, K.ROW_BLOCK) == (16, 4), (K.PANEL, K.ROW_BLOCK)
g = torch.Generator().manual_seed(0)
for weights in K.WEIGHT_TYPES:
    for rows in (1, 3, 4, 5, 9, 33):
        x, w = torch.randn(rows, 300, generator=g), torch.randn(37, 300, generator=g)
        data, scale = K.quantize(w, weights)
        packed = K.kernel_weight(data, scale)
        out = K.matmul(x.numpy(), packed)
        want = x @ K.dequantize(data, scale).T
        assert torch.allclose(torch.from_numpy(out), want, atol=1e-4), (weights, rows)
        for method, k_block, row_block, _ in candidates(packed, rows, threads=2):
            if method != K.BLAS:  # every block plan of this layout, 6-row blocks included
                for ahead in AHEADS:
                    other = np.empty_like(out)
                    K._matmul(x.numpy(), packed, other, k_block, row_block, ahead)
                    assert np.array_equal(other, out), (weights, rows, k_block, row_block, ahead)
print("portable layout ok")
"""


def test_portable_layout_on_an_avx2_target(tmp_path):
    """Compiled for Haswell (AVX2 + FMA, 16 vector registers), the kernels take the portable layout
    (panels of 16 outputs, blocks of 4 rows) and still equal the float matmul, with the same bits
    under every block plan (:mod:`musicgen.kernel_plans`); the block kernel's vectors are split into
    that machine's registers by LLVM (AVX2 here, NEON on arm64)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", PORTABLE_CHECK], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "portable layout ok" in done.stdout


def test_kth_largest_is_the_value_topk_gives():
    from musicgen.kernels import _kth_largest

    g = torch.Generator().manual_seed(0)
    rows = [torch.randn(2048, generator=g) * 4, torch.randn(300, generator=g) - 50.0]
    rows.append(torch.tensor([1.0, -0.0, 0.0, -2.0, 1.0, 3.0, -1e-30, 1e-30]))  # ties, signed zeros
    rows.append(torch.full((64,), 7.0))
    for row in rows:
        for k in (1, 2, 5, len(row) // 2, len(row)):
            want = torch.topk(row, k).values[-1]
            assert _kth_largest(row.numpy(), k) == want, (len(row), k)
