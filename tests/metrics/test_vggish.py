"""VGGish: parity with PyPI torchvggish (network, weights layout, framing).

The .pth -> safetensors conversion through the eval_models stage: tests/metrics/test_eval_stages.py.
"""

import numpy as np
import pytest
import torch

from musicgen.metrics import vggish as V

torchvggish = pytest.importorskip("torchvggish")  # the dev extra


@pytest.fixture(scope="module")
def theirs():
    """torchvggish's network with its (seeded) random initialisation, final ReLU removed."""
    torch.manual_seed(1)
    model = torchvggish.torchvggish._vgg(postprocess=False).eval()
    model.embeddings = model.embeddings[:-1]  # as frechet-audio-distance and fadtk do
    return model


def audio_16k(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * V.SAMPLE_RATE)) / V.SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t * (1 + t))
    return (tone + 0.05 * rng.normal(size=t.shape)).astype(np.float32)


@pytest.mark.parametrize("seconds", [1.0, 3.2, 5.0])
def test_framing_equals_waveform_to_examples(seconds):
    x = audio_16k(seconds)
    expected = torchvggish.vggish_input.waveform_to_examples(x, V.SAMPLE_RATE).detach()
    ours = V.examples(torch.from_numpy(x)[None])[0]  # (E, 96, 64)
    assert ours.shape == expected[:, 0].shape
    np.testing.assert_allclose(ours.numpy(), expected[:, 0].double().numpy(), atol=1e-5)


def test_too_short_clip_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 15600 samples"):
        V.examples(torch.zeros(1, 15000))


def test_their_state_dict_loads_into_ours_and_embeddings_match(theirs):
    ours = V.VGGish()
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = audio_16k(5.0)
    inputs = torchvggish.vggish_input.waveform_to_examples(x, V.SAMPLE_RATE).detach()
    with torch.no_grad():
        expected = theirs(inputs)
    embedder = V.VGGishEmbedder(ours, torch.device("cpu"), batch_size=2)
    got = embedder.embed_clips(x[None], V.SAMPLE_RATE)[0]  # (E, 128)
    assert got.shape == (5, V.EMBEDDING_DIM)
    assert (expected < 0).any()  # the final ReLU is gone on both sides
    np.testing.assert_allclose(got, expected.double().numpy(), atol=1e-4, rtol=0)


def test_a_foreign_state_dict_is_refused_with_its_keys(tmp_path):
    pth = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(3)}, pth)
    with pytest.raises(ValueError, match="not a torchvggish VGGish state dict"):
        V.read_torchvggish(pth)


def test_resampling_other_rates_keeps_the_example_count():
    model = V.random_vggish(seed=0)
    embedder = V.VGGishEmbedder(model, torch.device("cpu"))
    clips = np.random.default_rng(0).normal(size=(2, 32000 * 2)).astype(np.float32) * 0.1
    out = embedder.embed_clips(clips, 32000)
    assert out.shape == (2, 2, V.EMBEDDING_DIM) and out.dtype == np.float64
    # the same seed gives the same weights
    again = V.VGGishEmbedder(V.random_vggish(seed=0), torch.device("cpu")).embed_clips(clips, 32000)
    np.testing.assert_array_equal(out, again)


def test_clips_go_through_the_front_end_a_few_at_a_time_with_the_same_numbers(tmp_path):
    from musicgen.data.audio import write_wav
    from musicgen.metrics.embedders import embed_files

    model = V.random_vggish(seed=0)
    clips = np.random.default_rng(1).normal(size=(5, 32000 * 3)).astype(np.float32) * 0.1
    small = V.VGGishEmbedder(model, torch.device("cpu"), batch_size=4)  # 3 examples per clip
    sizes = []
    embed = small._embed
    small._embed = lambda c, sr: sizes.append(len(c)) or embed(c, sr)
    got = small.embed_clips(clips, 32000)
    assert sizes == [1] * 5  # 4 examples per call fit one clip's 3
    whole = V.VGGishEmbedder(model, torch.device("cpu"), batch_size=64).embed_clips(clips, 32000)
    np.testing.assert_allclose(got, whole, rtol=0, atol=1e-6)
    for i, clip in enumerate(clips):
        write_wav(tmp_path / f"c{i}.wav", clip, 32000, subtype="FLOAT")
    ids = [f"c{i}" for i in range(5)]
    from_files = embed_files(
        V.VGGishEmbedder(model, torch.device("cpu"), 4), tmp_path, ids, 32000, 2
    )
    np.testing.assert_array_equal(from_files, got)
