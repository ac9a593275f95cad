"""``benchmarks/bench_lm.py`` on the CPU: the Hugging Face call of its CUDA branch, and the reuse of
our decoder (and so of its CUDA graph) across its timed calls.

The CUDA branch calls Hugging Face with a static cache (one per attention) and its compiled
decoding step (:func:`bench_lm.hf_settings`); here the same :class:`bench_lm.HFGenerate` runs on
the CPU, uncompiled in the fast test (torch.compile on the CPU takes about 45 s here) and compiled
in the slow one, and gives Hugging Face's own greedy tokens.
"""

import dataclasses
import sys
from pathlib import Path

import pytest
import torch
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_lm  # noqa: E402

from musicgen.generate import SamplingConfig  # noqa: E402

GREEDY = SamplingConfig(cfg_coef=3.0, temperature=0)
FRAMES = 6


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random Hugging Face decoder of the ``tiny`` preset and our LM converted from it."""
    return bench_lm.build_pair("tiny", tmp_path_factory.mktemp("pair"))


def hf_greedy(hf, states, mask, n_steps: int, use_cache: bool) -> torch.Tensor:
    """Hugging Face's greedy tokens (CFG 3.0, null rows [cond; zeros]), called directly: without a
    cache, or with the dynamic caches ``MusicgenDecoder`` builds when given none."""
    rows, card = states.shape[0] * bench_lm.K, bench_lm.CARD
    cache = EncoderDecoderCache(DynamicCache(), DynamicCache()) if use_cache else None
    return hf.generate(
        torch.full((rows, 1), card),
        do_sample=False,
        num_beams=1,
        num_return_sequences=1,
        guidance_scale=3.0,
        max_new_tokens=n_steps,
        decoder_start_token_id=card,
        pad_token_id=card,
        bos_token_id=card,
        eos_token_id=None,
        use_cache=use_cache,
        cache=cache,
        attention_mask=torch.ones(rows, 1, dtype=torch.long),
        encoder_hidden_states=torch.cat([states, torch.zeros_like(states)]),
        encoder_attention_mask=torch.cat([mask, torch.zeros_like(mask)]),
    )


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cuda_branch_settings_give_hugging_faces_greedy_tokens(pair, compiled):
    """The CUDA branch's call (static caches kept across calls), on the CPU, twice: Hugging Face's
    greedy tokens both times."""
    hf, ours = pair
    settings = bench_lm.hf_settings(torch.device("cuda"))
    assert settings == bench_lm.HFSettings(static_cache=True, compile=True)
    settings = dataclasses.replace(settings, compile=compiled)
    states, mask = bench_lm.conditioning(2, ours.cfg.d_model)  # the second row padded
    n_steps = ours.pattern(FRAMES).n_steps
    with torch.no_grad():
        reference = hf_greedy(hf, states, mask, n_steps, use_cache=True)
        assert torch.equal(reference, hf_greedy(hf, states, mask, n_steps, use_cache=False))
    run = bench_lm.HFGenerate(hf, states, mask, n_steps, GREEDY, settings)
    first, second = run(), run()
    assert reference.shape == (2, bench_lm.K, FRAMES)
    assert torch.equal(first, reference) and torch.equal(second, reference)
