import pytest
import torch

from musicgen.generate import (
    DecoderPool,
    SamplingConfig,
    StaticStep,
    draw,
    generate,
    pad_text,
    sample_next,
)
from musicgen.lm import LM, LMConfig, null_condition
from musicgen.patterns import PATTERNS

GREEDY_CFG = SamplingConfig(cfg_coef=3.0, temperature=0)


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
    null, null_mask = null_condition(cond, mask)
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


def prompt_codes(B=2, Tp=3, card=64):
    return torch.randint(0, card, (B, 4, Tp), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_cached_generation_equals_full_recompute(pattern):
    model = tiny(pattern)
    cond, mask = condition()
    cached = generate(model, cond, mask, 6, GREEDY_CFG)
    assert torch.equal(cached, generate(model, cond, mask, 6, GREEDY_CFG, use_cache=False))
    sampled = SamplingConfig(cfg_coef=3.0, top_k=20, top_p=0.9, temperature=1.2)
    a = generate(model, cond, mask, 6, sampled, torch.Generator().manual_seed(1))
    b = generate(model, cond, mask, 6, sampled, torch.Generator().manual_seed(1), use_cache=False)
    assert torch.equal(a, b)


def test_cfg_one_runs_the_conditional_rows_only(monkeypatch):
    model = tiny()
    cond, mask = condition()
    batches = []
    hidden_steps = model.hidden_steps
    monkeypatch.setattr(
        model, "hidden_steps", lambda seq, *a: batches.append(seq.shape[0]) or hidden_steps(seq, *a)
    )
    generate(model, cond, mask, 4, SamplingConfig(cfg_coef=1.0, temperature=0))
    assert set(batches) == {2}
    batches.clear()
    generate(model, cond, mask, 4, GREEDY_CFG)
    assert set(batches) == {4}


def test_batch_rows_are_generated_independently():
    model = tiny()
    cond, mask = condition()
    mask[1, 2:] = False
    both = generate(model, cond, mask, 5, GREEDY_CFG)
    for i in range(2):
        alone = generate(model, cond[i : i + 1], mask[i : i + 1], 5, GREEDY_CFG)
        assert torch.equal(both[i : i + 1], alone)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_continuation_keeps_the_prompt_and_continues_it_greedily(pattern):
    model = tiny(pattern)
    cond, mask = condition()
    prompt = prompt_codes()
    sampling = SamplingConfig(cfg_coef=1.0, temperature=0)
    codes = generate(model, cond, mask, 7, sampling, prompt=prompt)
    assert codes.shape == (2, 4, 7) and torch.equal(codes[:, :, :3], prompt)
    logits, _ = model(codes, cond, mask)  # the teacher-forced pass over prompt + continuation
    assert torch.equal(logits.argmax(-1)[:, :, 3:], codes[:, :, 3:])
    assert torch.equal(
        codes, generate(model, cond, mask, 7, sampling, prompt=prompt, use_cache=False)
    )


def test_continuation_with_guidance_equals_full_recompute_and_a_full_prompt_is_returned():
    model = tiny()
    cond, mask = condition()
    prompt = prompt_codes()
    codes = generate(model, cond, mask, 6, GREEDY_CFG, prompt=prompt)
    assert torch.equal(codes[:, :, :3], prompt)
    assert torch.equal(
        codes, generate(model, cond, mask, 6, GREEDY_CFG, prompt=prompt, use_cache=False)
    )
    assert torch.equal(generate(model, cond, mask, 3, GREEDY_CFG, prompt=prompt), prompt)
    with pytest.raises(ValueError, match="does not fit"):
        generate(model, cond, mask, 2, GREEDY_CFG, prompt=prompt)


def test_sampled_continuation_is_seeded():
    model = tiny()
    cond, mask = condition()
    prompt = prompt_codes()
    cfg = SamplingConfig(cfg_coef=3.0, top_k=10, temperature=1.0)
    a = generate(model, cond, mask, 6, cfg, torch.Generator().manual_seed(7), prompt=prompt)
    b = generate(model, cond, mask, 6, cfg, torch.Generator().manual_seed(7), prompt=prompt)
    c = generate(model, cond, mask, 6, cfg, torch.Generator().manual_seed(8), prompt=prompt)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, :, :3], prompt) and torch.equal(c[:, :, :3], prompt)


@pytest.mark.parametrize("top_k, temperature", [(50, 0.8), (0, 1.0), (1, 1.0)])
def test_numba_sampling_draws_what_torch_draws(top_k, temperature):
    """The CPU sampler (numba) and the torch path draw the same tokens from the same generator."""
    logits = 3 * torch.randn(600, 2048, generator=torch.Generator().manual_seed(1))
    cfg = SamplingConfig(top_k=top_k, temperature=temperature)
    ours = sample_next(logits, cfg, torch.Generator().manual_seed(2))
    ref = sample_next(logits, cfg, torch.Generator().manual_seed(2), use_numba=False)
    assert ours.dtype == ref.dtype == torch.int64
    assert torch.equal(ours, ref)
    if top_k:
        kth = torch.topk(logits, top_k).values[:, -1]
        assert torch.all(logits.gather(1, ours[:, None])[:, 0] >= kth)


def test_draw_follows_the_probabilities():
    probs = torch.tensor([[0.1, 0.0, 0.2, 0.7]]).expand(20000, -1)
    tokens = draw(probs, torch.Generator().manual_seed(0))
    freqs = torch.bincount(tokens, minlength=4).double() / len(tokens)
    assert freqs[1] == 0 and torch.allclose(freqs, probs[0].double(), atol=0.015)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_static_step_equals_the_dynamic_cache(pattern, monkeypatch):
    """The step at a tensor position (the CUDA-graph path, eager on the CPU) changes nothing."""
    model = tiny(pattern)
    cond, mask = condition()
    runs = []
    run = StaticStep.run
    monkeypatch.setattr(StaticStep, "run", lambda self: runs.append(1) or run(self))
    n_steps = model.pattern(6).n_steps
    static = generate(model, cond, mask, 6, GREEDY_CFG, static_step=True)
    assert len(runs) == n_steps - 1  # every step after the first
    assert torch.equal(static, generate(model, cond, mask, 6, GREEDY_CFG))
    sampled = SamplingConfig(cfg_coef=3.0, top_k=20, temperature=1.2)
    a = generate(model, cond, mask, 6, sampled, torch.Generator().manual_seed(1), static_step=True)
    b = generate(model, cond, mask, 6, sampled, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    prompt = prompt_codes()
    assert torch.equal(
        generate(model, cond, mask, 7, GREEDY_CFG, prompt=prompt, static_step=True),
        generate(model, cond, mask, 7, GREEDY_CFG, prompt=prompt),
    )


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_stored_weights_generate_the_same_in_numba_torch_and_static_paths(weights):
    model = tiny()
    cond, mask = condition()
    fast = generate(model, cond, mask, 6, GREEDY_CFG, weights=weights)
    assert torch.equal(
        fast, generate(model, cond, mask, 6, GREEDY_CFG, weights=weights, fast_kernel=False)
    )
    assert torch.equal(
        fast, generate(model, cond, mask, 6, GREEDY_CFG, weights=weights, static_step=True)
    )


class WeightCasts(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts dtype conversions of tensors shaped like one of ``shapes`` (the linear weights)."""

    def __init__(self, shapes):
        super().__init__()
        self.shapes, self.casts = set(shapes), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype):
            if isinstance(args[0], torch.Tensor) and tuple(args[0].shape) in self.shapes:
                self.casts += 1
        return func(*args, **kwargs)


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
def test_half_precision_decoding_casts_each_weight_once_not_at_every_step(weights):
    """Under autocast with its cache off (the CUDA graph's setting) the static step reads weights
    made once in the autocast dtype: the casts do not grow with the number of steps."""
    model = tiny()
    cond, mask = condition()
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def casts(n_frames):
        model._kernel_memo = None  # the stored weights are made anew in each run
        with WeightCasts(shapes) as mode:
            with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
                codes = generate(
                    model, cond, mask, n_frames, GREEDY_CFG, weights=weights, static_step=True
                )
        return mode.casts, codes

    short, _ = casts(4)
    long, codes = casts(12)
    assert long == short  # nothing per step
    # a few conversions per weight, once: quantised, its float value, the compute dtype
    assert short <= 3 * len(shapes) + 2
    assert codes.shape == (2, 4, 12)
    # and with the autocast cache off, a plain float32 layer is cast at every step
    with WeightCasts(shapes) as mode:
        with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
            x = torch.randn(1, 32)
            for _ in range(3):
                model.layers[0].fc1(x)
    assert mode.casts == 3


@pytest.mark.parametrize("static_step", [False, True])
def test_a_decoder_pool_restarts_one_decoder_for_batches_of_one_shape(static_step):
    """Kept decoders (their cache, stored weights and static step: the CUDA graph on CUDA) give
    what fresh ones give, for other texts of the same shape."""
    model = tiny()
    g = torch.Generator().manual_seed(5)
    texts = [torch.randn(2, 5, 16, generator=g) for _ in range(3)]
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    sampled = SamplingConfig(cfg_coef=3.0, top_k=20, temperature=1.0)
    pool = DecoderPool()
    for i, cond in enumerate([*texts, texts[0]]):
        for cfg in (GREEDY_CFG, sampled):
            kw = {"static_step": static_step}
            fresh = generate(model, cond, mask, 6, cfg, torch.Generator().manual_seed(i), **kw)
            kept = generate(
                model, cond, mask, 6, cfg, torch.Generator().manual_seed(i), decoders=pool, **kw
            )
            assert torch.equal(kept, fresh)
    assert pool.built == 1
    generate(model, texts[0][:1], mask[:1], 6, GREEDY_CFG, decoders=pool, static_step=static_step)
    assert pool.built == 2 and len(pool.kept) == 1  # another shape: another decoder, one kept
    # texts padded to one length share the decoder and give the unpadded texts' codes
    short = texts[1][:, :3], mask[:, :3]
    padded = pad_text(*short, 5)
    assert padded[0].shape == (2, 5, 16) and not padded[1][:, 3:].any()
    fresh = generate(model, *short, 6, GREEDY_CFG, static_step=static_step)
    generate(model, *texts[2:3], mask, 6, GREEDY_CFG, decoders=pool, static_step=static_step)
    built = pool.built
    kept = generate(model, *padded, 6, GREEDY_CFG, decoders=pool, static_step=static_step)
    assert torch.equal(kept, fresh) and pool.built == built
