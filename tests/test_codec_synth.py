"""The tiny spectral codec (musicgen.codec_synth through musicgen.codec's encode/decode/save/load) and
the weight-free music features it is measured with (musicgen.metrics.music_features)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from musicgen import codec_synth as S
from musicgen.codec import (
    TinyCodecConfig,
    attach_spectral_part,
    build_spectral_codec,
    build_tiny_codec,
    decode,
    encode,
    fit_spectral_codec,
    load_codec,
    save_codec,
    spectral_part,
)
from musicgen.metrics import music_features as M

SR, HOP = 32000, 640
# C, F, G, Am, Dm, Em triads (MIDI) over a bass an octave below the root
CHORDS = [(60, 64, 67), (65, 69, 72), (67, 71, 74), (69, 72, 76), (62, 65, 69), (64, 67, 71)]


def tone(midi: float, n: int, rng: np.random.Generator, amp: float = 0.1) -> np.ndarray:
    """A decaying harmonic tone with a random phase: (n,)."""
    t = np.arange(n) / SR
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    env = np.exp(-1.5 * t) * np.minimum(1.0, t * 200)
    y = sum(np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6)) / h for h in range(1, 6))
    return amp * env * y


def progression(order: list[int], seed: int, beat_s: float = 0.5) -> np.ndarray:
    """Chords from CHORDS in ``order``, one per beat, each with its bass and a melody note."""
    rng = np.random.default_rng(seed)
    n = int(beat_s * SR)
    parts = []
    for i in order:
        notes = CHORDS[i]
        y = sum(tone(m, n, rng) for m in notes) + tone(notes[0] - 24, n, rng, 0.15)
        parts.append(y + tone(notes[int(rng.integers(3))] + 12, n, rng, 0.08))
    return np.concatenate(parts).astype(np.float32)


def training_set() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([progression(list(rng.integers(0, 6, 4)), seed) for seed in range(12)])


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    """Two clips with orders and phases the fit never saw: (2, 2 s)."""
    return np.stack([progression([0, 3, 1, 2], 100), progression([5, 4, 2, 0], 101)])


@pytest.fixture(scope="module")
def fitted():
    model = build_spectral_codec(
        TinyCodecConfig(codebook_size=256), S.SpectralCodecConfig(gl_iters=16)
    )
    fit_spectral_codec(model, training_set(), n_iter=6, progress=False)
    return model


def test_the_bands_resolve_semitones_and_the_latent_is_their_width():
    cfg = S.SpectralCodecConfig()
    centres = S.band_centres(cfg)
    assert np.all(np.diff(centres) > 0) and centres[-1] < cfg.fmax
    semi = centres[(centres >= cfg.semitone_fmin) & (centres <= cfg.semitone_fmax)]
    np.testing.assert_allclose(np.diff(np.log2(semi)), 1 / 12)
    fb = S.band_filters(cfg)
    assert fb.shape == (len(centres), cfg.n_fft // 2 + 1) and np.all(fb.sum(axis=1) > 0)
    model = build_spectral_codec(TinyCodecConfig(codebook_size=16), cfg)
    assert model.config.codebook_dim == S.n_bands(cfg) == len(centres)


def test_a_chord_progression_keeps_its_chroma_and_a_random_decoder_does_not(fitted, held_out):
    # A centred chroma cosine of ~0.6 is what two triads sharing two notes score (C vs Am), ~0 is
    # chance: a round trip above 0.85 keeps the chords (measured 0.99), one below 0.5 has lost
    # them (the random decoder: 0.28; its audio still follows the codes' loudness).
    codes = encode(fitted, held_out)
    round_trip = M.music_similarity(held_out, decode(fitted, codes).numpy(), SR)
    random_decoder = build_tiny_codec(TinyCodecConfig(codebook_size=256, hidden_size=75))
    random_decoder.quantizer.load_state_dict(fitted.quantizer.state_dict())
    with torch.inference_mode():  # the same codewords through a random, HF-initialised decoder
        random = random_decoder.decode(codes[None], [None]).audio_values[:, 0].numpy()
    baseline = M.music_similarity(held_out, random, SR)
    assert round_trip["chroma_similarity"] > 0.85, round_trip
    assert baseline["chroma_similarity"] < 0.5, baseline
    assert round_trip["logmel_db"] < baseline["logmel_db"] - 5
    assert round_trip["onset_correlation"] > baseline["onset_correlation"] + 0.3


@pytest.mark.parametrize("n_samples", [HOP * 10, HOP * 10 + 1, 1000])
def test_decode_of_encode_has_the_codec_frames(fitted, n_samples):
    x = np.random.default_rng(0).normal(0, 0.1, (3, n_samples)).astype(np.float32)
    codes = encode(fitted, x, n_codebooks=4)
    t = -(-n_samples // HOP)
    assert codes.shape == (3, 4, t) and codes.dtype == torch.int64
    audio = decode(fitted, codes, batch_size=2)
    assert audio.shape == (3, t * HOP) and audio.dtype == torch.float32
    assert torch.isfinite(audio).all()
    assert torch.equal(encode(fitted, x, n_codebooks=2), codes[:, :2])
    assert decode(fitted, codes[:, :2]).shape == (3, t * HOP)


def test_codes_do_not_depend_on_the_batch_or_on_the_phase(fitted, held_out):
    codes = encode(fitted, held_out)
    assert torch.equal(encode(fitted, held_out[1:]), codes[1:])
    t = np.arange(SR) / SR
    tones = [np.sin(2 * np.pi * 330 * t + p) for p in (0.0, 1.0)]
    held = encode(fitted, 0.2 * np.stack(tones).astype(np.float32))[:, :, 5:-5]
    assert torch.equal(held[0], held[1])  # a held note: the same codes whatever its phase


def test_save_and_load_give_the_same_codes_and_audio(fitted, held_out, tmp_path: Path):
    save_codec(fitted, tmp_path)
    assert {"spectral.json", "spectral.safetensors", "model.safetensors"} <= {
        p.name for p in tmp_path.iterdir()
    }
    loaded = load_codec(str(tmp_path))
    assert spectral_part(loaded).config == spectral_part(fitted).config
    codes = encode(fitted, held_out)
    assert torch.equal(encode(loaded, held_out), codes)
    assert torch.equal(decode(loaded, codes), decode(fitted, codes))


def test_the_fit_is_seeded_to_the_byte(held_out):
    def fit(seed: int) -> dict[str, torch.Tensor]:
        model = build_spectral_codec(TinyCodecConfig(codebook_size=32), S.SpectralCodecConfig())
        fit_spectral_codec(model, training_set()[:4], n_iter=3, seed=seed, progress=False)
        state = {k: v for k, v in model.state_dict().items() if k.startswith("quantizer.")}
        return {**state, "decoder": spectral_part(model).weights}

    a, b, c = fit(0), fit(0), fit(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    grid = spectral_part(build_spectral_codec(TinyCodecConfig(), S.SpectralCodecConfig())).config
    embed = a["quantizer.layers.0.codebook.embed"] * grid.grid
    assert torch.equal(embed, embed.round())  # codewords on the fixed-point grid
    assert torch.equal(a["decoder"] * 2**16, (a["decoder"] * 2**16).round())


def test_the_decoder_holds_no_negative_zeros(fitted):
    # the solve's last bits follow the CPU's BLAS kernels; a weight that rounds to zero must have
    # one byte pattern on every CPU, or the saved codec's hash differs between machines
    w = spectral_part(fitted).weights
    zeros = w == 0
    assert zeros.any()  # the fit does round some weights to zero: the case this guards
    assert not (zeros & torch.signbit(w)).any()


def test_the_nearest_codeword_is_exact_and_ties_go_to_the_first():
    centroids = torch.tensor([[0, 0], [2, 0], [0, 2], [2, 0]], dtype=torch.int64)
    x = torch.tensor([[1, 0], [2, 1], [3, 0], [1, 1]], dtype=torch.int64)
    idx, dist = S.nearest_fixed(x, centroids)
    assert idx.tolist() == [0, 1, 1, 0] and dist.tolist() == [1, 1, 1, 2]
    big = torch.tensor([[2**19, -(2**19)]], dtype=torch.int64)  # far from float32's exact range
    idx, dist = S.nearest_fixed(big, torch.cat([big + 1, big]))
    assert idx.tolist() == [1] and dist.tolist() == [0]


def test_a_part_of_another_width_is_refused():
    model = build_spectral_codec(TinyCodecConfig(codebook_size=16), S.SpectralCodecConfig())
    narrow = S.SpectralCodecConfig(semitone_fmax=1000.0)
    with pytest.raises(ValueError, match="bands"):
        attach_spectral_part(model, S.SpectralPart(narrow, torch.zeros(S.n_bands(narrow) + 1, 4)))


def test_music_features_find_pitch_class_tempo_and_identity():
    t = np.arange(4 * SR) / SR
    a440 = 0.3 * np.sin(2 * np.pi * 440 * t)
    assert np.argmax(M.chroma(a440, SR).mean(axis=1)) == 9  # A
    clicks = np.zeros_like(t)
    for start in range(0, len(t), SR // 2):  # 120 BPM
        clicks[start : start + 200] = np.hanning(200)
    assert M.tempo(M.onset_envelope(clicks, SR), SR / HOP) == pytest.approx(120.0)
    x = np.stack([a440 + clicks, clicks])
    same = M.music_similarity(x, x, SR)
    assert same == {
        "logmel_db": 0.0,
        "chroma_similarity": pytest.approx(1.0),
        "onset_correlation": pytest.approx(1.0),
        "tempo_match": 1.0,
    }
    noise = np.random.default_rng(0).normal(0, 0.1, x.shape)
    scores = M.clip_scores(x, noise, SR)
    assert scores["chroma_similarity"][0] < 0.3 and scores["logmel_db"].min() > 10
