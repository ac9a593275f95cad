"""Caption variants drawn per sample, and word dropout applied on the fly with the frozen T5."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from musicgen.data.store import CodesAndText, save_text, save_tokens


@pytest.fixture
def cached(tmp_path):
    """8 clips with 3 cached variants each; variant v of clip i is a 1-token state [i, v]."""
    n, n_variants = 8, 3
    ids = [f"clip{i:07d}xx" for i in range(n)]
    save_tokens(tmp_path / "tokens", ids, np.zeros((n, 4, 5), dtype=np.int16))
    states = [np.array([[i, v]], dtype=np.float16) for i in range(n) for v in range(n_variants)]
    save_text(tmp_path / "text", ids, n_variants, states)
    return CodesAndText(tmp_path / "tokens", tmp_path / "text", ids)


def drawn_variants(batch) -> np.ndarray:
    return batch.cond[:, 0, 1].numpy().astype(int)


def test_sample_batch_draws_every_variant_including_the_clean_caption(cached):
    rows = np.arange(64) % len(cached)
    variants = drawn_variants(cached.sample_batch(rows, np.arange(64), seed=0))
    assert set(variants) == {0, 1, 2}
    assert drawn_variants(cached.sample_batch(rows, np.arange(64), seed=1)).tolist() != (
        variants.tolist()
    )


def test_sample_batch_does_not_depend_on_sharding(cached):
    rows = np.array([3, 1, 4, 1, 5, 2, 6, 5, 3, 5, 0, 7])
    ids = np.arange(100, 112)
    whole = cached.sample_batch(rows, ids, seed=7)
    halves = [cached.sample_batch(rows[s], ids[s], seed=7) for s in (slice(0, 6), slice(6, 12))]
    strided = [cached.sample_batch(rows[r::2], ids[r::2], seed=7) for r in (0, 1)]
    assert np.array_equal(
        drawn_variants(whole), np.concatenate([drawn_variants(b) for b in halves])
    )
    interleaved = np.empty(12, dtype=int)
    interleaved[0::2], interleaved[1::2] = (drawn_variants(b) for b in strided)
    assert np.array_equal(drawn_variants(whole), interleaved)
    assert np.array_equal(whole.cond[:, 0, 0].numpy(), rows)  # the clips asked for


CAPTIONS = [
    "a calm piano melody with soft strings",
    "fast drums and a distorted electric guitar",
    "an upbeat pop song with female vocals",
    "slow ambient pads",
    "a jazz trio with walking bass and brushed drums",
    "noise",
]


@pytest.fixture(scope="module")
def on_the_fly(tmp_path_factory):
    """A tiny T5 saved and loaded back, the clean captions cached by it, and a factory of
    ``CodesAndCaptions`` at a given word dropout."""
    from musicgen import text as T
    from musicgen.data.captions import CodesAndCaptions

    tmp = tmp_path_factory.mktemp("otf")
    cfg = T.TinyT5Config(vocab_size=60, d_model=16, d_ff=32, n_layers=1, n_heads=2)
    tokenizer = T.train_tokenizer(CAPTIONS, cfg.vocab_size)
    T.save_text_encoder(tokenizer, T.build_tiny_t5(cfg, len(tokenizer)), tmp / "t5")
    tokenizer, encoder = T.load_text_encoder(tmp / "t5")
    ids = [f"clip{i:07d}xx" for i in range(len(CAPTIONS))]
    rng = np.random.default_rng(0)
    save_tokens(tmp / "tokens", ids, rng.integers(0, 32, (len(ids), 4, 6)))
    save_text(tmp / "text", ids, 1, T.encode_texts(tokenizer, encoder, CAPTIONS, progress=False))

    def make(p: float, max_words: int = 250) -> CodesAndCaptions:
        return CodesAndCaptions(
            tmp / "tokens", tmp / "text", ids, CAPTIONS, tokenizer, encoder, p, max_words
        )

    return make


def test_no_dropout_gives_the_cached_clean_captions(on_the_fly):
    data = on_the_fly(0.0)
    rows = np.array([0, 3, 5, 1, 4, 2])
    live, cached = data.sample_batch(rows, np.arange(6), seed=0), data.batch(rows)
    assert torch.equal(live.cond, cached.cond) and torch.equal(live.cond_mask, cached.cond_mask)
    assert torch.equal(live.codes, cached.codes)


def test_every_word_dropped_is_the_null_condition(on_the_fly):
    from musicgen.lm import LM, LMConfig, drop_condition

    data = on_the_fly(1.0)
    rows = np.arange(len(data))
    live, clean = data.sample_batch(rows, np.arange(len(data)), seed=3), data.batch(rows)
    assert not live.cond_mask.any() and not live.cond.any()
    torch.manual_seed(0)
    lm = LM(LMConfig(d_model=16, n_heads=2, n_layers=1, ffn_dim=32, card=32, text_dim=16)).eval()
    null_cond, null_mask = drop_condition(clean.cond, clean.cond_mask, torch.ones(6, dtype=bool))
    with torch.no_grad():
        logits_live, _ = lm(live.codes, live.cond, live.cond_mask)
        logits_null, _ = lm(clean.codes, null_cond, null_mask)
    assert torch.equal(logits_live, logits_null)


def test_dropout_is_fresh_per_sample_and_independent_of_sharding(on_the_fly):
    data = on_the_fly(0.5, max_words=5)
    rows = np.array([4, 4, 4, 4, 1, 1, 1, 1, 0, 2, 3, 5])
    ids = np.arange(40, 52)
    texts = data.captions_for(rows, ids, seed=1)
    assert all(len(t.split()) <= 5 for t in texts)
    assert len(set(texts[:4])) > 1  # the same clip, other samples: other words dropped
    assert "" in texts  # some captions drop entirely
    whole = data.sample_batch(rows, ids, seed=1)
    for i, t in enumerate(texts):
        assert whole.cond_mask[i].any() == bool(t)
    halves = [data.sample_batch(rows[s], ids[s], seed=1) for s in (slice(0, 7), slice(7, 12))]
    assert [
        t for s in (slice(0, 7), slice(7, 12)) for t in data.captions_for(rows[s], ids[s], 1)
    ] == (texts)
    for part, s in zip(halves, (slice(0, 7), slice(7, 12)), strict=True):
        L = part.cond.shape[1]
        assert torch.equal(part.cond_mask, whole.cond_mask[s, :L])
        assert torch.allclose(part.cond, whole.cond[s, :L], atol=1e-3)
        assert not whole.cond_mask[s, L:].any()
