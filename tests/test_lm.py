import pytest
import torch

from musicgen.lm import (
    LM,
    PRESETS,
    LMConfig,
    drop_condition,
    masked_codebook_ce,
    null_condition,
)
from musicgen.patterns import PATTERNS


def tiny(pattern="delay", **kw):
    torch.manual_seed(0)
    return LM(
        LMConfig(
            d_model=32,
            n_heads=4,
            n_layers=2,
            ffn_dim=64,
            card=64,
            text_dim=16,
            pattern=pattern,
            **kw,
        )
    ).eval()


def inputs(B=2, T=9, L=5, card=64):
    g = torch.Generator().manual_seed(1)
    codes = torch.randint(0, card, (B, 4, T), generator=g)
    cond = torch.randn(B, L, 16, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[-1, 3:] = False
    return codes, cond, mask


@pytest.mark.parametrize("pattern", PATTERNS)
def test_forward_shapes_and_initial_loss_near_uniform(pattern):
    model = tiny(pattern)
    codes, cond, mask = inputs()
    logits, ce = model(codes, cond, mask)
    assert logits.shape == (2, 4, 9, 64)
    assert ce.shape == (4,)
    assert torch.allclose(ce, torch.full((4,), torch.log(torch.tensor(64.0))), atol=0.3)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_predictions_do_not_see_their_targets(pattern):
    """Changing the code of (k, t) must not change the logits that predict (k, t)."""
    model = tiny(pattern)
    codes, cond, mask = inputs(B=1)
    logits, _ = model(codes, cond, mask)
    changed = codes.clone()
    changed[0, 2, 4] = (changed[0, 2, 4] + 1) % 64
    logits2, _ = model(changed, cond, mask)
    assert torch.allclose(logits[0, 2, 4], logits2[0, 2, 4], atol=1e-5)
    # ... while it does change some later prediction
    assert not torch.allclose(logits, logits2, atol=1e-5)


def test_padding_of_the_text_is_ignored():
    model = tiny()
    codes, cond, mask = inputs()
    other = cond.clone()
    other[1, 3:] = 100.0  # behind the mask
    a, _ = model(codes, cond, mask)
    b, _ = model(codes, other, mask)
    assert torch.allclose(a, b, atol=1e-5)


def test_kv_cache_matches_full_pass():
    model = tiny()
    codes, cond, mask = inputs()
    pattern = model.pattern(9)
    seq = pattern.build(codes, model.special)
    seq_in = torch.cat([torch.full_like(seq[:, :, :1], model.special), seq[:, :, :-1]], dim=2)
    memory, mask = model.condition(cond, mask)
    full = model.decode_steps(seq_in, memory, mask)
    cache = model.new_cache(2, seq_in.shape[2], torch.device("cpu"), torch.float32)
    parts = [model.decode_steps(seq_in[:, :, :4], memory, mask, cache)]
    parts += [
        model.decode_steps(seq_in[:, :, s : s + 1], memory, mask, cache)
        for s in range(4, seq_in.shape[2])
    ]
    assert torch.allclose(torch.cat(parts, dim=2), full, atol=1e-5)


def test_masked_ce_ignores_padded_frames():
    logits = torch.randn(2, 4, 6, 10)
    codes = torch.randint(0, 10, (2, 4, 6))
    frame_mask = torch.ones(2, 6, dtype=torch.bool)
    frame_mask[1, 3:] = False
    ce = masked_codebook_ce(logits, codes, frame_mask)
    garbage = logits.clone()
    garbage[1, :, 3:] = 50 * torch.randn_like(garbage[1, :, 3:])
    assert torch.allclose(ce, masked_codebook_ce(garbage, codes, frame_mask))
    assert not torch.allclose(ce, masked_codebook_ce(logits, codes))


def test_drop_condition_replaces_only_dropped_rows():
    _, cond, mask = inputs()
    new, new_mask = drop_condition(cond, mask, torch.tensor([True, False]))
    assert torch.all(new[0] == 0) and not new_mask[0].any()
    assert torch.equal(new[1], cond[1]) and torch.equal(new_mask[1], mask[1])


def test_condition_zeroes_padding_after_the_projection():
    model = tiny()
    torch.nn.init.normal_(model.text_proj.bias)
    _, cond, mask = inputs()
    memory, memory_mask = model.condition(cond, mask)
    assert torch.equal(memory_mask, mask)
    assert torch.all(memory[1, 3:] == 0) and torch.all(memory[0] != 0)
    assert torch.allclose(memory[1, :3], model.text_proj(cond[1, :3]))


def test_null_condition_contributes_nothing_through_cross_attention():
    """The null rows' logits equal those of the same LM with its cross-attention removed."""
    model = tiny()
    torch.nn.init.normal_(model.text_proj.bias)  # the projection of zeros is not zero
    codes, cond, mask = inputs()
    null, null_mask = null_condition(cond, mask)
    memory, memory_mask = model.condition(null, null_mask)
    assert torch.all(memory == 0) and memory_mask.all()  # attends to zeros only
    logits, _ = model(codes, null, null_mask)
    for layer in model.layers:
        layer.cross_attn.out_proj.weight.data.zero_()
    without_cross, _ = model(codes, cond, mask)
    assert torch.allclose(logits, without_cross, atol=1e-6)


def test_presets():
    assert set(PRESETS) >= {"tiny", "seed1", "seed2", "small", "medium", "large"}
    small = LMConfig.from_preset("small")
    assert (small.d_model, small.n_heads, small.n_layers, small.ffn_dim) == (1024, 16, 24, 4096)
    with pytest.raises(ValueError, match="unknown LM preset"):
        LMConfig.from_preset("huge")
