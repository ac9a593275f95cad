"""KL with PaSST: audiocraft's formula, its segmenting, and a clip against itself."""

import math

import numpy as np
import pytest
import torch

from musicgen.metrics import kl as K
from musicgen.metrics import passt as P

SR = P.SAMPLE_RATE


def test_kl_equals_the_formula_on_hand_made_distributions():
    p = np.array([[0.5, 0.5, 0.0], [0.7, 0.2, 0.1]])
    q = np.array([[0.25, 0.25, 0.5], [0.1, 0.2, 0.7]])
    eps = K.EPSILON
    pq = [
        2 * 0.5 * math.log(0.5 / (0.25 + eps)),  # the zero of p adds nothing (0 log 0 = 0)
        0.7 * math.log(0.7 / (0.1 + eps))
        + 0.2 * math.log(0.2 / (0.2 + eps))
        + 0.1 * math.log(0.1 / (0.7 + eps)),
    ]
    qp = [
        2 * 0.25 * math.log(0.25 / (0.5 + eps)) + 0.5 * math.log(0.5 / (0.0 + eps)),
        0.1 * math.log(0.1 / (0.7 + eps))
        + 0.2 * math.log(0.2 / (0.2 + eps))
        + 0.7 * math.log(0.7 / (0.1 + eps)),
    ]
    np.testing.assert_allclose(K.kl_divergence(p, q), pq, rtol=1e-12)
    scores = K.kl_scores(p, q)  # p: reference, q: generated
    assert scores.n_segments == 2
    assert scores.kld == pytest.approx(np.mean(pq), rel=1e-12)
    assert scores.kld_qp == pytest.approx(np.mean(qp), rel=1e-12)
    assert scores.kld_both == pytest.approx(np.mean(pq) + np.mean(qp), rel=1e-12)
    assert scores.kld_qp > scores.kld  # q's mass where p has none costs log(q / 1e-6)


def test_kl_is_audiocrafts_kl_div_expression():
    """audiocraft: ``F.kl_div((pred + 1e-6).log(), target, reduction="none").sum(-1)``."""
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.full(527, 0.05), size=6)
    q = rng.dirichlet(np.full(527, 0.05), size=6)
    p[0, :100] = 0.0
    p[0] /= p[0].sum()  # exact zeros on the reference side
    expected = torch.nn.functional.kl_div(
        (torch.from_numpy(q) + 1e-6).log(), torch.from_numpy(p), reduction="none"
    ).sum(-1)
    np.testing.assert_allclose(K.kl_divergence(p, q), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_means_are_over_segments_and_per_clip_kl_averages_each_clip():
    rng = np.random.default_rng(1)
    ref = rng.dirichlet(np.ones(5), size=(3, 2))  # 3 clips, 2 segments each
    gen = rng.dirichlet(np.ones(5), size=(3, 2))
    flat = K.kl_divergence(ref.reshape(-1, 5), gen.reshape(-1, 5))
    scores = K.kl_scores(ref, gen)
    assert scores.n_segments == 6 and scores.kld == pytest.approx(flat.mean())
    np.testing.assert_allclose(K.per_clip_kl(ref, gen), flat.reshape(3, 2).mean(-1))


def test_unpaired_segments_are_an_error():
    with pytest.raises(ValueError, match="paired segments"):
        K.kl_scores(np.full((2, 3), 1 / 3), np.full((3, 3), 1 / 3))


def audiocraft_split(n_samples: int) -> list[tuple[int, int]]:
    """audiocraft's ``_process_audio``: ``torch.split`` by 10 s, keep sizes above int(0.15 * sr)."""
    max_frames, min_frames = int(10 * SR), int(0.15 * SR)
    out, start = [], 0
    for s in torch.split(torch.arange(n_samples), max_frames):
        if s.numel() > min_frames:
            out.append((start, start + s.numel()))
        start += s.numel()
    return out


@pytest.mark.parametrize(
    "seconds, expected",
    [
        (4.9, [(0, 156800)]),
        (10.0, [(0, 320000)]),
        (10.1, [(0, 320000)]),  # the 0.1 s rest is dropped
        (25.0, [(0, 320000), (320000, 640000), (640000, 800000)]),  # the 5 s rest is kept
    ],
)
def test_segments_follow_audiocraft(seconds, expected):
    n = round(seconds * SR)
    assert K.segment_bounds(n, SR) == expected == audiocraft_split(n)


def test_the_shortest_kept_segment_is_just_over_0_15_s():
    assert K.segment_bounds(320000 + 4800, SR) == [(0, 320000)]
    assert K.segment_bounds(320000 + 4801, SR) == [(0, 320000), (320000, 324801)]
    assert K.segment_bounds(4800, SR) == []


@pytest.fixture(scope="module")
def tiny_embedder():
    cfg = P.PasstConfig(embed_dim=32, depth=1, num_heads=2)
    return P.PasstEmbedder(P.random_passt(cfg, seed=0), torch.device("cpu"), batch_size=2)


def test_a_clip_against_itself_gives_zero(tiny_embedder):
    rng = np.random.default_rng(2)
    t = np.arange(round(12.5 * SR)) / SR
    noise = 0.1 * rng.normal(size=(2, len(t)))
    tone = 0.3 * np.sin(2 * np.pi * 440 * t)
    clips = np.concatenate([noise, tone[None]]).astype(np.float32)
    out = tiny_embedder.outputs(clips, SR)
    assert out.probs.shape == (3, 2, P.N_CLASSES)  # 10 s + 2.5 s
    scores = K.kl_scores(out.probs, out.probs)
    # sum p log(p / (p + eps)) is 0 up to the epsilon: between -C * eps and 0
    bound = P.N_CLASSES * K.EPSILON
    assert -bound <= scores.kld <= 0 and -bound <= scores.kld_qp <= 0
    tone_vs_noise = K.kl_scores(out.probs[2:], out.probs[:1])
    assert tone_vs_noise.kld > bound and tone_vs_noise.kld_qp > bound
