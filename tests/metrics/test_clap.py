"""The tiny CLAP: save_pretrained and back through the loader the real run uses; the CLAP score."""

import numpy as np
import pytest
import torch

from musicgen.metrics import clap as C


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("clap")
    C.save_tiny_clap(C.TinyClapConfig(), out)
    return out


def test_byte_tokenizer_round_trips_any_text():
    tok = C.byte_tokenizer()
    text = "a calm <script>alert(1)</script> piano, café ♪"
    ids = tok(text).input_ids
    assert ids[0] == tok.bos_token_id == 0 and ids[-1] == tok.eos_token_id == 2
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_tiny_clap_round_trip_and_embeddings(clap_dir):
    from transformers import ClapModel

    embedder = C.ClapEmbedder(clap_dir, torch.device("cpu"), batch_size=2)
    reloaded = ClapModel.from_pretrained(str(clap_dir))
    fresh_dir = clap_dir.parent / "again"
    C.save_tiny_clap(C.TinyClapConfig(), fresh_dir)  # same seed, same weights
    again = ClapModel.from_pretrained(str(fresh_dir))
    for k, v in reloaded.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
    rng = np.random.default_rng(0)
    clips = (0.1 * rng.normal(size=(3, 32000 * 2))).astype(np.float32)
    audio = embedder.embed_clips(clips, 32000)
    assert audio.shape == (3, 1, embedder.dim) and audio.dtype == np.float64
    np.testing.assert_allclose(np.linalg.norm(audio, axis=-1), 1.0, atol=1e-6)
    text = embedder.embed_texts(["a calm piano", "loud drums and bass", "x" * 2000])
    assert text.shape == (3, embedder.dim)
    # batching does not change the numbers
    one = C.ClapEmbedder(clap_dir, torch.device("cpu"), batch_size=1).embed_clips(clips, 32000)
    np.testing.assert_allclose(one, audio, atol=1e-5)


def test_clap_scores_are_cosines():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = np.array([[2.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    np.testing.assert_allclose(C.clap_scores(a, t), [1.0, 0.0, -1.0], atol=1e-12)


def test_a_clap_directory_is_copied_through_the_hub_path(clap_dir, tmp_path):
    """The real run's path (from_pretrained of a source, save_pretrained into the eval models)."""
    described = C.save_hub_clap(str(clap_dir), tmp_path / "copy")
    assert described == str(clap_dir)  # a local directory has no hub commit
    clips = (0.1 * np.random.default_rng(1).normal(size=(2, 48000))).astype(np.float32)
    a = C.ClapEmbedder(clap_dir, torch.device("cpu")).embed_clips(clips, 48000)
    b = C.ClapEmbedder(tmp_path / "copy", torch.device("cpu")).embed_clips(clips, 48000)
    np.testing.assert_array_equal(a, b)
