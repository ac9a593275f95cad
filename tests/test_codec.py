"""Behaviour of musicgen.codec: tiny EnCodec, residual k-means fit, encode/decode, save/load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from musicgen.codec import (
    TinyCodecConfig,
    build_tiny_codec,
    codebook_usage,
    decode,
    encode,
    fit_codebooks,
    load_codec,
    n_frames,
    save_codec,
)

SR = 32000
HOP = 640


def make_audio(n_clips: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A drone and random harmonic tones plus noise bursts, (n_clips, samples) float32."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    out = np.zeros((n_clips, n), np.float32)
    for i in range(n_clips):
        y = np.zeros(n)
        for j in range(rng.integers(2, 5)):
            f0 = 440.0 * 2 ** rng.uniform(-3, 2)
            start, stop = (0.0, seconds) if j == 0 else np.sort(rng.uniform(0, seconds, 2))
            decay = np.exp(-rng.uniform(0, 3) * np.clip(t - start, 0, None))
            env = ((t >= start) & (t < stop)) * decay
            for h in range(1, rng.integers(2, 6)):
                phase = rng.uniform(0, 6)
                y += rng.uniform(0.05, 0.3) / h * env * np.sin(2 * np.pi * f0 * h * t + phase)
        for _ in range(rng.integers(1, 4)):
            length = int(rng.integers(SR // 50, SR // 5))
            s0 = int(rng.integers(0, n - length))
            burst = rng.normal(0, rng.uniform(0.02, 0.2), length) * np.hanning(length)
            y[s0 : s0 + length] += burst
        out[i] = y
    return out


def tiny_cfg(codebook_size: int = 64) -> TinyCodecConfig:
    return TinyCodecConfig(codebook_size=codebook_size)


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    return make_audio(6, 2.0)  # 6 x 100 frames


@pytest.fixture(scope="module")
def fitted(audio: np.ndarray):
    model = build_tiny_codec(tiny_cfg(64))
    stats = fit_codebooks(model, audio, n_iter=5, progress=False, batch_size=2)
    return model, stats


def codebook_buffers(model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("quantizer.")}


def test_n_frames() -> None:
    assert n_frames(320000) == 500
    assert n_frames(320001) == 501
    assert n_frames(640) == 1
    assert n_frames(641) == 2
    assert n_frames(1, hop=320) == 1


def test_fresh_codec_maps_everything_to_token_zero(audio: np.ndarray) -> None:
    # Why fit_codebooks exists: HF initialises the codebooks to zeros.
    model = build_tiny_codec(tiny_cfg(2048))
    codes = encode(model, audio[:2])
    assert codes.shape == (2, 4, 100)
    assert torch.all(codes == 0)


def test_build_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = build_tiny_codec(tiny_cfg())
    after = torch.rand(3)
    b = build_tiny_codec(tiny_cfg())
    c = build_tiny_codec(TinyCodecConfig(codebook_size=64, seed=1))
    assert torch.equal(after, expected)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not a.training


def test_silence_encodes_to_a_constant_latent(fitted) -> None:
    model, _ = fitted
    codes = encode(model, np.zeros((2, 6400), np.float32))
    assert torch.all(codes == codes[:, :, :1])


def latents(model, audio: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.encoder(torch.from_numpy(audio)[:, None, :])  # (N, D, T)


def test_encoder_is_sign_invariant_and_silence_gives_zero() -> None:
    model = build_tiny_codec(tiny_cfg())
    x = make_audio(2, 1.0, seed=3)
    assert torch.equal(latents(model, x), latents(model, -x))
    assert torch.count_nonzero(latents(model, np.zeros((1, 6400), np.float32))) == 0


def test_held_tone_latent_does_not_depend_on_its_phase() -> None:
    # A held note must give (nearly) the same frames whatever its phase, or an LM sees noise.
    model = build_tiny_codec(tiny_cfg())
    t = np.arange(SR) / SR
    tones = np.stack(
        [0.3 * np.sin(2 * np.pi * 330.0 * t + phase) for phase in (0.0, 1.0, 2.5)]
    ).astype(np.float32)
    z = latents(model, tones)[:, :, 5:-5]  # (3, D, T) away from the edges
    spread = (z - z[:1]).abs().max() / z.abs().max()
    assert spread < 0.05
    louder = latents(model, 2 * tones[:1])[:, :, 5:-5]
    assert (louder - z[:1]).abs().max() / z.abs().max() > 0.5  # level still matters


def test_fit_with_fewer_frames_than_codes() -> None:
    model = build_tiny_codec(tiny_cfg(2048))
    audio = make_audio(2, 0.5)  # 2 x 25 frames for 2048 codes
    fit_codebooks(model, audio, n_iter=2, progress=False)
    codes = encode(model, audio)
    assert codes.shape == (2, 4, 25) and codes.max() < 2048
    assert len(torch.unique(codes[:, 0])) > 1


def test_odd_num_filters_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_filters"):
        build_tiny_codec(TinyCodecConfig(num_filters=7))


@pytest.mark.parametrize("codebook_size", [64, 128])
def test_fit_uses_many_codes_in_every_codebook(audio: np.ndarray, codebook_size: int) -> None:
    model = build_tiny_codec(tiny_cfg(codebook_size))
    stats = fit_codebooks(model, audio, n_iter=5, progress=False, batch_size=2)
    assert stats["frames"] == 6 * 100
    for i in range(4):
        assert stats[f"codebook_{i}_distinct"] >= 0.75 * codebook_size, stats
        # 600 frames for k codes: later residual codebooks spread less evenly
        assert stats[f"codebook_{i}_entropy_bits"] > 0.6 * math.log2(codebook_size), stats
    # the stats describe what encode() now produces
    codes = encode(model, audio, batch_size=2)
    assert codebook_usage(codes.numpy(), codebook_size) == stats


def test_fit_subsamples_to_max_frames(audio: np.ndarray) -> None:
    model = build_tiny_codec(tiny_cfg(64))
    stats = fit_codebooks(model, audio, n_iter=2, max_frames=150, progress=False)
    assert stats["frames"] == 600  # stats are over all frames, not the subsample
    counts = model.quantizer.layers[0].codebook.cluster_size
    assert counts.sum().item() == 150  # the fit saw max_frames frames
    assert stats["codebook_0_distinct"] > 32


def test_residual_quantization_error_decreases_codebook_after_codebook(fitted, audio) -> None:
    model, _ = fitted
    with torch.inference_mode():
        latent = model.encoder(torch.from_numpy(audio)[:, None, :])  # (N, D, T)
        codes = model.quantizer.encode(latent)  # (K, N, T)
        errors = [latent.pow(2).mean().item()]
        for i in range(1, codes.shape[0] + 1):
            approx = model.quantizer.decode(codes[:i])  # (N, D, T)
            errors.append((latent - approx).pow(2).mean().item())
    assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False)), errors
    assert errors[-1] < 0.5 * errors[1], errors


def test_fit_writes_consistent_codebook_buffers(fitted) -> None:
    model, _ = fitted
    for layer in model.quantizer.layers:
        cb = layer.codebook
        assert cb.inited.item() == 1.0
        assert cb.cluster_size.sum().item() == 600
        torch.testing.assert_close(cb.embed_avg, cb.embed * cb.cluster_size[:, None])
        assert torch.unique(cb.embed, dim=0).shape[0] == cb.embed.shape[0]  # distinct codewords


def test_fit_is_deterministic(audio: np.ndarray) -> None:
    runs = []
    for batch_size in (1, 3):  # the batching must not matter either (see _batch_invariant)
        model = build_tiny_codec(tiny_cfg(64))
        stats = fit_codebooks(
            model, audio[:3], n_iter=3, seed=7, batch_size=batch_size, progress=False
        )
        runs.append((codebook_buffers(model), stats))
    (a, stats_a), (b, stats_b) = runs
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert stats_a == stats_b
    other = build_tiny_codec(tiny_cfg(64))
    fit_codebooks(other, audio[:3], n_iter=3, seed=8, progress=False)
    embed = "quantizer.layers.0.codebook.embed"
    assert not torch.equal(codebook_buffers(other)[embed], a[embed])


def test_save_load_round_trip(fitted, audio: np.ndarray, tmp_path: Path) -> None:
    model, _ = fitted
    out = tmp_path / "codec"
    save_codec(model, out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    loaded = load_codec(str(out))
    assert not loaded.training
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    codes = encode(model, audio[:2])
    assert torch.equal(encode(loaded, audio[:2]), codes)
    assert torch.equal(decode(loaded, codes), decode(model, codes))


def test_load_codec_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_codec(str(tmp_path / "nope"))


@pytest.mark.parametrize("n_samples", [640, 641, 12345, 32001, 320000])
def test_encode_decode_shapes(fitted, n_samples: int) -> None:
    model, _ = fitted
    audio = torch.randn(3, n_samples) * 0.1
    codes = encode(model, audio, batch_size=2)
    t = math.ceil(n_samples / HOP)
    assert codes.shape == (3, 4, t) and codes.dtype == torch.int64
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    wave = decode(model, codes)
    assert wave.shape == (3, t * HOP) and wave.dtype == torch.float32
    assert torch.isfinite(wave).all()


def test_encode_does_not_depend_on_batching(fitted, audio: np.ndarray) -> None:
    model, _ = fitted
    one_by_one = torch.cat([encode(model, audio[i : i + 1]) for i in range(len(audio))])
    for batch_size in (1, 2, 4, 8):
        assert torch.equal(encode(model, audio, batch_size=batch_size), one_by_one)


def test_encode_accepts_numpy_and_fewer_codebooks(fitted, audio: np.ndarray) -> None:
    model, _ = fitted
    full = encode(model, audio[:2])
    two = encode(model, torch.from_numpy(audio[:2]), n_codebooks=2)
    assert torch.equal(two, full[:, :2])  # residual codes are sequential
    assert decode(model, two).shape == (2, 100 * HOP)
    with pytest.raises(ValueError):
        encode(model, audio[:2], n_codebooks=5)
    with pytest.raises(ValueError):
        encode(model, audio[0])  # (S,) is not (B, S)


def test_codebook_usage_entropy() -> None:
    k = 64
    uniform = np.tile(np.arange(k), 3).reshape(1, 1, -1).repeat(2, axis=1)  # (1, 2, 192)
    stats = codebook_usage(uniform, k)
    assert stats["codebook_0_distinct"] == k and stats["codebook_1_distinct"] == k
    assert stats["codebook_0_entropy_bits"] == pytest.approx(math.log2(k))
    assert stats["entropy_bits_mean"] == pytest.approx(math.log2(k))
    assert stats["frames"] == 192
    constant = np.full((4, 3, 10), 5)
    stats = codebook_usage(constant, k)
    assert stats["codebook_2_entropy_bits"] == 0.0
    assert stats["distinct_mean"] == 1.0
    assert stats["frames"] == 40
    assert set(stats) == {
        *(f"codebook_{i}_{s}" for i in range(3) for s in ("distinct", "entropy_bits")),
        "distinct_mean",
        "entropy_bits_mean",
        "frames",
    }


def test_codes_used_limits_the_codes_and_spare_entries_repeat_fitted_ones():
    rng = np.random.default_rng(0)
    t = np.arange(32000) / 32000
    audio = np.stack(
        [0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) for _ in range(8)]
    ).astype(np.float32)
    model = build_tiny_codec(TinyCodecConfig(codebook_size=64))
    stats = fit_codebooks(model, audio, n_iter=3, max_frames=2000, progress=False, codes_used=16)
    assert all(stats[f"codebook_{i}_distinct"] <= 16 for i in range(4))
    assert int(encode(model, audio).max()) < 16
    embed = model.quantizer.layers[0].codebook.embed
    assert torch.equal(embed[16:32], embed[:16])
    with pytest.raises(ValueError, match="codes_used"):
        fit_codebooks(model, audio, n_iter=1, progress=False, codes_used=65)


@pytest.fixture(scope="module")
def musicgen_dirs(tmp_path_factory) -> dict[str, Path]:
    """A small random MusicGen saved in one file and in shards of 20 KB (as musicgen-large is)."""
    from hf_musicgen import save_musicgen

    root = tmp_path_factory.mktemp("musicgen")
    captions = ["calm piano with soft strings", "fast drums and a loud bass"]
    return {
        "one file": save_musicgen(root / "one", captions),
        "sharded": save_musicgen(root / "sharded", captions, max_shard_size="20KB"),
    }


@pytest.mark.parametrize("kind", ["one file", "sharded"])
def test_a_musicgen_gives_its_audio_encoder(musicgen_dirs, audio, kind, tmp_path) -> None:
    """``codec.source`` = a MusicgenForConditionalGeneration: the stage saves its EnCodec, the
    weights (codebooks included) and codes of the one Hugging Face's composite model holds."""
    from transformers import MusicgenForConditionalGeneration

    from musicgen.pipeline.codes import codec_model

    src = musicgen_dirs[kind]
    params = {"source": str(src), "n_codebooks": 4}
    codec_model(params, SR, tmp_path / "no-audio", tmp_path / "no-split", tmp_path / "codec")
    loaded = load_codec(str(tmp_path / "codec"))  # the stage's output, a plain EnCodec directory
    expected = MusicgenForConditionalGeneration.from_pretrained(src).audio_encoder.eval()
    want, got = expected.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    codes = encode(loaded, audio[:2])
    assert torch.equal(codes, encode(expected, audio[:2]))
    assert torch.equal(decode(loaded, codes), decode(expected, codes))


def test_only_the_shards_that_hold_the_part_are_read(musicgen_dirs, monkeypatch) -> None:
    import json

    import safetensors

    from musicgen import hf_parts

    src = musicgen_dirs["sharded"]
    weight_map = json.loads((src / hf_parts.INDEX).read_text())["weight_map"]
    holding = {f for k, f in weight_map.items() if k.startswith("audio_encoder.")}
    assert len(set(weight_map.values())) > len(holding) > 1
    opened = []
    real_open = safetensors.safe_open
    monkeypatch.setattr(
        safetensors,
        "safe_open",
        lambda path, **kw: opened.append(Path(path).name) or real_open(path, **kw),
    )
    tensors = hf_parts.part_state_dict(str(src), "audio_encoder")
    assert sorted(opened) == sorted(holding)
    assert set(tensors) == {
        k.removeprefix("audio_encoder.") for k in weight_map if k.startswith("audio_encoder.")
    }


def test_a_part_that_does_not_fit_is_refused(musicgen_dirs) -> None:
    from transformers import EncodecModel, MusicgenConfig

    from musicgen.hf_parts import load_part

    src = str(musicgen_dirs["one file"])
    config = MusicgenConfig.from_pretrained(src)
    config.audio_encoder.num_lstm_layers = 3  # a layer the checkpoint has no weights for
    with pytest.raises(ValueError, match="do not fit EncodecModel"):
        load_part(src, "audio_encoder", EncodecModel, config)
