"""Caption variants drawn per sample, and word dropout applied on the fly with the frozen T5."""

from __future__ import annotations

import numpy as np
import pytest

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
