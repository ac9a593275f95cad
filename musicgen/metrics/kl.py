"""KL divergence of classifier label distributions (KL with PaSST), as audiocraft computes it.

MusicGen's paper reports the KL divergence between the AudioSet label distributions that PaSST
(:mod:`musicgen.metrics.passt`) gives a reference clip and the clip generated from its caption. This
module holds the metric's arithmetic; the classifier and its segments live in ``passt``.

The definition implemented is audiocraft's ``audiocraft/metrics/kld.py`` after its PR #213
("Update KLD with PaSST to reproduce MusicGen results", August 2023), the code that produced the
model card's current numbers (musicgen-small: KL 1.42; the 1.28 of the first model card came from
the earlier code):

- both clips at 32 kHz mono are cut into consecutive segments of the classifier's length (10 s for
  ``passt_s_swa_p16_128_ap476``) with ``torch.split``: no padding, the last segment keeps what is
  left, and a segment of ``int(0.15 * 32000)`` = 4800 samples or fewer is dropped (PaSST cannot
  embed it). Before PR #213 every segment was zero-padded to 10 s and each clip's probabilities
  were averaged over its segments, so the padding entered the distribution;
- each segment's distribution is the softmax over PaSST's 527 logits (not the sigmoid PaSST was
  trained with);
- per pair of segments (the i-th segment of the reference with the i-th of the generated clip),
  ``F.kl_div((p_gen + 1e-6).log(), p_ref, reduction="none").sum(-1)``, i.e.
  ``KL(ref || gen) = sum_c p_ref[c] * (log p_ref[c] - log(p_gen[c] + 1e-6))`` with
  ``0 * log 0 = 0`` (torch's ``kl_div`` uses ``xlogy``) and no epsilon on the reference side;
- ``kld``: the mean of that over all segment pairs (not over clips); ``kld_qp``: the same with the
  roles swapped (``sum p_gen * (log p_gen - log(p_ref + 1e-6))``); ``kld_both``: their sum.

This is why we implement it and no other: it is what the published numbers are, and it is defined
per segment, so clips longer than the classifier's window count every part of them. We compute in
float64 (audiocraft in float32; the difference is far below the metric's run-to-run spread).

Which PaSST: audiocraft's MusicGen solver config sets ``metrics.kld.passt.pretrained_length: 20``,
which loads hear21passt's ``base20sec`` (the 20 s variant, 20 s segments); without it (and for
AudioGen) the 10 s ``base``. The segment length is a parameter here (``segment_s``), the 20 s
weights :data:`musicgen.metrics.passt.PASST_20S_URL`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import xlogy

EPSILON = 1e-6  # added to the second distribution inside the log, as audiocraft's kl_divergence
SEGMENT_S = 10.0  # passt_s_swa_p16_128_ap476 was trained on 10 s clips
MIN_SEGMENT_S = 0.15  # segments of this length or shorter are dropped


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = EPSILON) -> np.ndarray:
    """Row-wise ``sum_c p log(p / (q + eps))``, with ``0 log 0 = 0``.

    Args:
        p: (M, C) distributions (the first argument of KL(p || q)).
        q: (M, C) distributions.

    Returns:
        (M,) float64.
    """
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise ValueError(f"expected two (M, C) arrays of one shape, got {p.shape} and {q.shape}")
    return (xlogy(p, p) - p * np.log(q + eps)).sum(-1)


@dataclass(frozen=True)
class KLScores:
    """KL with PaSST over paired segments.

    Attributes:
        kld: mean KL(reference || generated), audiocraft's ``kld`` (the paper's KL).
        kld_qp: mean KL(generated || reference).
        kld_both: ``kld + kld_qp``.
        n_segments: segment pairs averaged over.
    """

    kld: float
    kld_qp: float
    kld_both: float
    n_segments: int


def kl_scores(ref_probs: np.ndarray, gen_probs: np.ndarray) -> KLScores:
    """audiocraft's ``kld``, ``kld_qp`` and ``kld_both`` from paired segment distributions.

    Args:
        ref_probs: (..., C) class probabilities of the reference segments, e.g. (N clips,
            E segments, 527) as :meth:`musicgen.metrics.passt.PasstEmbedder.outputs` gives them.
        gen_probs: the generated segments' probabilities, the same shape: row i pairs with row i.

    Returns:
        the means over the M segment pairs.
    """
    ref, gen = np.asarray(ref_probs), np.asarray(gen_probs)
    if ref.shape != gen.shape or ref.ndim < 2 or ref.size == 0:
        raise ValueError(
            f"KL needs paired segments of one non-empty shape (..., C): got {ref.shape} and "
            f"{gen.shape} (cut the reference and generated clips to one length)"
        )
    ref, gen = ref.reshape(-1, ref.shape[-1]), gen.reshape(-1, gen.shape[-1])
    pq, qp = kl_divergence(ref, gen).mean(), kl_divergence(gen, ref).mean()
    return KLScores(float(pq), float(qp), float(pq + qp), len(ref))


def per_clip_kl(ref_probs: np.ndarray, gen_probs: np.ndarray) -> np.ndarray:
    """KL(reference || generated) per clip: the mean over each clip's segments.

    Args:
        ref_probs: (N, E, C) reference segment probabilities.
        gen_probs: (N, E, C) generated segment probabilities.

    Returns:
        (N,) float64; their mean is :func:`kl_scores`' ``kld`` (every clip has E segments).
    """
    ref, gen = np.asarray(ref_probs), np.asarray(gen_probs)
    if ref.shape != gen.shape or ref.ndim != 3:
        raise ValueError(
            f"expected two (N, E, C) arrays of one shape, got {ref.shape}, {gen.shape}"
        )
    n, e, c = ref.shape
    return kl_divergence(ref.reshape(-1, c), gen.reshape(-1, c)).reshape(n, e).mean(-1)


def segment_bounds(
    n_samples: int,
    sample_rate: int,
    segment_s: float = SEGMENT_S,
    min_segment_s: float = MIN_SEGMENT_S,
) -> list[tuple[int, int]]:
    """Where audiocraft cuts a clip for PaSST: ``torch.split`` into segments, short ones dropped.

    Args:
        n_samples: the clip's length at ``sample_rate``.
        sample_rate: the classifier's rate (32 kHz for PaSST).
        segment_s: the classifier's input length.
        min_segment_s: segments of ``int(min_segment_s * sample_rate)`` samples or fewer are left
            out (audiocraft keeps ``size > min_input_frames``).

    Returns:
        [(start, end)] sample ranges, in order; empty if the clip is too short.
    """
    seg, shortest = int(segment_s * sample_rate), int(min_segment_s * sample_rate)
    if seg <= 0:
        raise ValueError(f"segment_s * sample_rate must be at least one sample, got {seg}")
    bounds = [(s, min(s + seg, n_samples)) for s in range(0, n_samples, seg)]
    return [(s, e) for s, e in bounds if e - s > shortest]
