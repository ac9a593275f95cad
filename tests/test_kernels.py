import numpy as np
import pytest
import torch

from musicgen.kernels import LinearKernel, _jitted, kernel_available
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


@pytest.mark.parametrize("rows", [1, 2, 3, 4])
def test_kernel_equals_matmul(rows):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(rows, 70, generator=g), torch.randn(37, 70, generator=g)
    out = np.empty((rows, 37), dtype=np.float32)
    _jitted(x.numpy(), w.numpy(), out)
    assert torch.allclose(torch.from_numpy(out), x @ w.T, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("batch", [1, 3])  # 2 and 6 rows with guidance (6: two kernel blocks)
def test_fused_step_equals_the_torch_step(batch):
    """Cached steps through the numba layer step give the torch path's hidden states and logits."""
    model = tiny()
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(batch, 5, 16, generator=g)
    mask = torch.ones(batch, 5, dtype=torch.bool)
    mask[-1, 2:] = False  # padded text
    memory, memory_mask = model.condition(cond, mask)
    null, null_mask = model.condition(*null_condition(cond, mask))
    memory, memory_mask = torch.cat([memory, null]), torch.cat([memory_mask, null_mask])
    seq = torch.randint(0, 65, (2 * batch, 4, 6), generator=g)

    def run(fast_kernel):
        cache = model.new_cache(
            2 * batch, 6, torch.device("cpu"), torch.float32, fast_kernel, batch
        )
        steps = [model.hidden_steps(seq[:, :, :2], memory, memory_mask, cache)]  # a prompt
        steps += [
            model.hidden_steps(seq[:, :, s : s + 1], memory, memory_mask, cache)
            for s in range(2, 6)
        ]
        return torch.cat(steps, dim=1), cache

    fused, cache = run(True)
    reference, torch_cache = run(False)
    assert cache.fused_steps == 4 * len(model.layers) and torch_cache.fused_steps == 0
    assert torch.allclose(fused, reference, atol=1e-4)
    assert torch.allclose(model.logits(fused), model.logits(reference), atol=1e-4)
    for k, k_ref in zip(cache.k, torch_cache.k, strict=True):
        assert torch.allclose(k, k_ref, atol=1e-4)
    full = model.hidden_steps(seq, memory, memory_mask)  # no cache at all
    assert torch.allclose(fused, full, atol=1e-4)


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
    assert LinearKernel.handles(torch.zeros(1)) and not LinearKernel.handles(
        torch.zeros(1).double()
    )
