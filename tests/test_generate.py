import pytest
import torch

from musicgen.generate import SamplingConfig, generate, sample_next
from musicgen.lm import LM, LMConfig
from musicgen.patterns import PATTERNS


def tiny(pattern="delay"):
    torch.manual_seed(0)
    return LM(
        LMConfig(
            d_model=32, n_heads=4, n_layers=2, ffn_dim=64, card=64, text_dim=16, pattern=pattern
        )
    ).eval()


def condition(B=2):
    g = torch.Generator().manual_seed(3)
    return torch.randn(B, 5, 16, generator=g), torch.ones(B, 5, dtype=torch.bool)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_greedy_generation_is_the_argmax_of_the_teacher_forced_pass(pattern):
    """Each greedy token is the argmax of the full (uncached) forward on the generated codes."""
    model = tiny(pattern)
    cond, mask = condition()
    codes = generate(model, cond, mask, 6, SamplingConfig(cfg_coef=1.0, temperature=0))
    assert codes.shape == (2, 4, 6)
    logits, _ = model(codes, cond, mask)
    assert torch.equal(logits.argmax(-1), codes)


def test_cfg_combines_conditional_and_null_logits():
    model = tiny("parallel")
    cond, mask = condition(1)
    coef = 2.5
    codes = generate(model, cond, mask, 4, SamplingConfig(cfg_coef=coef, temperature=0))
    null = torch.zeros_like(cond)
    null_mask = torch.zeros_like(mask)
    null_mask[:, 0] = True
    lc, _ = model(codes, cond, mask)
    lu, _ = model(codes, null, null_mask)
    assert torch.equal((lu + (lc - lu) * coef).argmax(-1), codes)


def test_sampling_is_seeded():
    model = tiny()
    cond, mask = condition()
    cfg = SamplingConfig(cfg_coef=3.0, top_k=10, temperature=1.0)
    a = generate(model, cond, mask, 5, cfg, torch.Generator().manual_seed(7))
    b = generate(model, cond, mask, 5, cfg, torch.Generator().manual_seed(7))
    c = generate(model, cond, mask, 5, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, -1)
    g = torch.Generator().manual_seed(0)
    k2 = sample_next(logits, SamplingConfig(top_k=2), g)
    assert set(k2.tolist()) == {0, 1}
    p = sample_next(logits, SamplingConfig(top_k=0, top_p=0.6), g)
    assert set(p.tolist()) == {0, 1}  # 0.5 < 0.6, so the second token is still needed
    assert torch.all(sample_next(logits, SamplingConfig(temperature=0), g) == 0)
