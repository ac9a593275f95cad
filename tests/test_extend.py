"""Long generation (``musicgen.extend``): sliding windows past the LM's window, on codes."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch

from musicgen.extend import Span, Windowing, WindowPools, generate_long, iter_windows, plan
from musicgen.generate import SamplingConfig, generate
from musicgen.lm import LM, LMConfig
from musicgen.patterns import PATTERNS

SAMPLED = SamplingConfig(cfg_coef=3.0, top_k=20, temperature=1.0)
GREEDY_CFG = SamplingConfig(cfg_coef=3.0, temperature=0)
FRAME_RATE = 5  # a scaled-down codec: 5 frames/s keeps 60 s at 300 frames


def tiny(pattern="delay"):
    torch.manual_seed(0)
    cfg = LMConfig(d_model=32, n_heads=4, n_layers=2, ffn_dim=64, card=64, text_dim=16)
    cfg.pattern = pattern
    return LM(cfg).eval()


def condition(B=2, seed=3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[1, 3:] = False
    return torch.randn(B, 5, 16, generator=g), mask


def collect(windows, generator) -> tuple[list, list]:
    """The windows of an ``iter_windows`` iterator and the state of its generator before each."""
    states, out = [], []
    while True:
        states.append(generator.get_state())
        try:
            out.append(next(windows))
        except StopIteration:
            return out, states[:-1]


def test_plan_of_60_s_from_a_5_s_window_moves_on_by_the_stride():
    w = Windowing.from_seconds(FRAME_RATE, 5.0, 3.0)  # 25 frames, stride 15: 10 of prompt
    spans = plan(60 * FRAME_RATE, w)
    assert spans[0] == Span(0, 0, 25)
    assert spans[1] == Span(15, 10, 25)
    assert all(b.start == a.end - w.overlap and b.keep == w.overlap for a, b in pairwise(spans))
    assert all(s.length == w.window for s in spans[:-1]) and spans[-1].end == 300
    assert len(spans) == 1 + -(-(300 - 25) // 15)  # 19 more windows
    # a short prompt is the first window's prompt as it is, a long one its last W - S frames
    assert plan(40, w, n_prompt=7)[0] == Span(0, 7, 25)
    assert plan(80, w, n_prompt=30)[0] == Span(20, 10, 25)
    assert plan(30, w, n_prompt=30) == []
    assert plan(20, w) == [Span(0, 0, 20)]  # within the window: one plain generation


def test_windowing_refuses_a_stride_outside_the_window():
    assert Windowing.from_seconds(50, 30.0) == Windowing(1500, 900)  # audiocraft's 18 of 30 s
    for stride in (0, 25, 30):
        with pytest.raises(ValueError, match="stride"):
            Windowing(25, stride)
    with pytest.raises(ValueError, match="frames after a prompt"):
        plan(5, Windowing(25, 15), n_prompt=6)


def test_60_s_from_a_5_s_window_first_window_is_plain_generation():
    """A model trained on 5 s windows asked for 60 s gives 60 s of codes; the first window is
    what plain generation of 5 s draws with the same seed."""
    model, (cond, mask) = tiny(), condition()
    w = Windowing.from_seconds(FRAME_RATE, 5.0, 3.0)
    codes = generate_long(
        model, cond, mask, 60 * FRAME_RATE, SAMPLED, w, torch.Generator().manual_seed(11)
    )
    assert codes.shape == (2, 4, 60 * FRAME_RATE)
    plain = generate(model, cond, mask, w.window, SAMPLED, torch.Generator().manual_seed(11))
    assert torch.equal(codes[:, :, : w.window], plain)
    assert not torch.equal(codes[:, :, w.window : 2 * w.window], plain)  # it goes on, new draws


@pytest.mark.parametrize("pattern", PATTERNS)
def test_each_later_window_continues_the_previous_outputs_last_part(pattern):
    """Each window after the first starts with the previous output's last W - S frames, and is
    what ``generate`` makes from that prompt (the full recompute: the cached path with a prompt in
    the pattern is checked too), with the text kept."""
    model, (cond, mask) = tiny(pattern), condition()
    w = Windowing(10, 6)
    g = torch.Generator().manual_seed(4)
    windows, states = collect(iter_windows(model, cond, mask, 33, GREEDY_CFG, w, g), g)
    codes = torch.cat([windows[0].codes] + [x.new for x in windows[1:]], dim=2)
    assert codes.shape == (2, 4, 33) and [x.span.length for x in windows] == [10, 10, 10, 10, 9]
    for (before, window), state in zip(pairwise(windows), states[1:], strict=True):
        head = window.codes[:, :, : w.overlap]
        assert torch.equal(head, before.codes[:, :, -w.overlap :])
        assert torch.equal(head, codes[:, :, window.span.start : window.span.start + w.overlap])
        again = generate(
            model,
            cond,
            mask,
            window.span.length,
            GREEDY_CFG,
            torch.Generator().set_state(state),
            prompt=head,
            use_cache=False,
        )
        assert torch.equal(window.codes, again)


def test_a_prompt_starts_the_output_and_sampling_is_seeded():
    model, (cond, mask) = tiny(), condition()
    w = Windowing(10, 6)
    prompt = torch.randint(0, 64, (2, 4, 4), generator=torch.Generator().manual_seed(1))
    runs = [
        generate_long(model, cond, mask, 30, SAMPLED, w, torch.Generator().manual_seed(s), prompt)
        for s in (2, 2, 3)
    ]
    assert runs[0].shape == (2, 4, 30) and torch.equal(runs[0][:, :, :4], prompt)
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    plain = generate(
        model, cond, mask, 10, SAMPLED, torch.Generator().manual_seed(2), prompt=prompt
    )
    assert torch.equal(runs[0][:, :, :10], plain)


@pytest.mark.parametrize("static_step", [False, True])
def test_kept_decoders_and_the_static_step_give_the_fresh_windows(static_step):
    """Windows through :class:`WindowPools` (restarted decoders, prompts in a kept cache; the
    static step that CUDA captures in a graph) are those of fresh decoders; the full windows of
    two batches share one decoder, the shorter last windows another."""
    model, w, pools = tiny(), Windowing(10, 6), WindowPools()
    for seed in (3, 4):  # two batches: other texts of the same shape
        cond, mask = condition(seed=seed)
        kw = {"pools": pools, "static_step": static_step}
        kept = generate_long(model, cond, mask, 27, GREEDY_CFG, w, **kw)
        fresh = generate_long(model, cond, mask, 27, GREEDY_CFG, w)
        assert torch.equal(kept, fresh)
    assert (pools.full.built, pools.last.built) == (1, 1)


def test_the_generate_stage_takes_its_window_from_the_training_clips():
    """``generate.seconds`` / ``window_s`` / ``extend_stride_s``: null keeps one plain window of
    the test clips' length; 60 s from 5 s training clips slides a 5 s window by 3 s."""
    from musicgen.pipeline.generation import clip_frames

    params = {"seconds": None, "window_s": None, "extend_stride_s": None}
    n_frames, windowing = clip_frames(params, 250, 50.0)
    assert (n_frames, windowing) == (250, Windowing(250, 150))
    assert len(plan(n_frames, windowing)) == 1
    n_frames, windowing = clip_frames({**params, "seconds": 60.0}, 250, 50.0)
    assert (n_frames, windowing) == (3000, Windowing(250, 150))
    assert clip_frames({"seconds": 8, "window_s": 4, "extend_stride_s": 1}, 250, 50.0) == (
        400,
        Windowing(200, 50),
    )
