"""The eval_models stage's loading paths and the evaluate stage's helpers."""

import json
import re

import numpy as np
import pytest
import torch

from musicgen.metrics import embedders as E
from musicgen.metrics import passt as P
from musicgen.metrics import vggish as V
from musicgen.metrics.kl import kl_scores, per_clip_kl
from musicgen.pipeline.evaluation import headline_keys, loudness_normalised, score_kl
from musicgen.pipeline.references import eval_models


def models_params(source: str, embedders=("vggish",)) -> dict:
    return {
        "embedders": list(embedders),
        "models": {"vggish": {"source": source, "seed": 3}, "clap": {"source": "tiny", "tiny": {}}},
    }


def test_a_torchvggish_pth_goes_through_eval_models(tmp_path):
    torchvggish = pytest.importorskip("torchvggish")
    torch.manual_seed(0)
    theirs = torchvggish.torchvggish._vgg(postprocess=False)
    pth = tmp_path / "vggish-test.pth"
    torch.save(theirs.state_dict(), pth)
    out = tmp_path / "eval"
    eval_models(models_params(str(pth)), out)
    sources = json.loads((out / E.SOURCES).read_text())
    assert sources["vggish"] == f"vggish-test.pth sha256:{V.file_sha256(pth)}"
    embedder = E.build_embedder("vggish", out, torch.device("cpu"), 8)
    for k, v in theirs.state_dict().items():
        assert torch.equal(embedder.model.state_dict()[k], v), k
    assert E.weights_source("vggish", out) == sources["vggish"]


def test_random_vggish_is_named_as_such(tmp_path):
    eval_models(models_params("random"), tmp_path)
    assert E.read_sources(tmp_path) == {"vggish": "random(seed=3)"}
    with pytest.raises(ValueError, match="no 'clap' model"):
        E.build_embedder("clap", tmp_path, torch.device("cpu"), 8)


def test_bad_sources_and_names_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'random'"):
        eval_models(models_params(str(tmp_path / "missing.pth")), tmp_path / "a")
    with pytest.raises(ValueError, match="evaluate.embedders: unknown \\['pann'\\]"):
        eval_models(models_params("random", ("vggish", "pann")), tmp_path / "b")


def test_loudness_normalisation_of_generated_clips():
    rng = np.random.default_rng(0)
    clips = np.stack([0.01 * rng.normal(size=16000), np.zeros(16000)]).astype(np.float32)
    out = loudness_normalised(clips, -14.0, -1.0)
    rms_db = 20 * np.log10(np.sqrt(np.mean(out[0].astype(np.float64) ** 2)))
    peak_db = 20 * np.log10(np.abs(out[0]).max())
    assert rms_db == pytest.approx(-14.0, abs=0.01) or peak_db == pytest.approx(-1.0, abs=0.01)
    assert peak_db <= -1.0 + 1e-3
    np.testing.assert_array_equal(out[1], 0)  # a silent clip is left as it is


def passt_params(source: str, depth: int = 1, seed: int = 4) -> dict:
    return {
        "embedders": ["passt"],
        "models": {"passt": {"source": source, "seed": seed, "depth": depth}},
    }


def test_eval_models_writes_a_seeded_passt_named_with_its_depth(tmp_path):
    eval_models(passt_params("random"), tmp_path)
    assert E.read_sources(tmp_path) == {"passt": "random(seed=4, depth=1)"}
    embedder = E.build_embedder("passt", tmp_path, torch.device("cpu"), 4)
    ours = P.random_passt(P.PasstConfig(depth=1), seed=4).state_dict()
    theirs = embedder.model.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # the embedded default's 5 s clips: one segment of 5 s (no padding to 10 s)
    assert embedder.segments(5 * P.SAMPLE_RATE) == [(0, 5 * P.SAMPLE_RATE)]


def test_a_passt_file_of_another_depth_says_which_depth_the_release_needs(tmp_path):
    pt = tmp_path / "passt-test.pt"
    torch.save(P.random_passt(P.PasstConfig(depth=1), seed=0).state_dict(), pt)
    eval_models(passt_params(str(pt), depth=1), tmp_path / "ok")
    assert E.read_sources(tmp_path / "ok")["passt"] == f"passt-test.pt sha256:{V.file_sha256(pt)}"
    with pytest.raises(ValueError, match="depth is 2; the release weights .* need 12"):
        eval_models(passt_params(str(pt), depth=2), tmp_path / "bad")


def test_files_give_passt_probabilities_and_embeddings_read_by_read(tmp_path):
    """embed_files_with_probs reads 2 clips at a time: the numbers of one call on all clips."""
    from musicgen.data.audio import write_wav

    rng = np.random.default_rng(0)
    clips = (0.1 * rng.standard_normal((5, P.SAMPLE_RATE))).astype(np.float32)
    for i, clip in enumerate(clips):
        write_wav(tmp_path / f"c{i}.wav", clip, P.SAMPLE_RATE, subtype="FLOAT")
    cfg = P.PasstConfig(embed_dim=32, depth=1, num_heads=2)
    embedder = P.PasstEmbedder(P.random_passt(cfg, 0), torch.device("cpu"), batch_size=3)
    ids = [f"c{i}" for i in range(5)]
    got = E.embed_files_with_probs(embedder, tmp_path, ids, P.SAMPLE_RATE, clips_per_read=2)
    whole = embedder.outputs(clips, P.SAMPLE_RATE)
    assert got.probs.shape == (5, 1, P.N_CLASSES) and got.embeddings.shape == (5, 1, 32)
    np.testing.assert_allclose(got.probs, whole.probs, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got.embeddings, whole.embeddings, rtol=1e-6, atol=1e-9)
    assert E.embed_files(embedder, tmp_path, ids, P.SAMPLE_RATE, 2).shape == (5, 1, 32)
    assert E.embed_files_with_probs(E.MelEmbedder(), tmp_path, ids, P.SAMPLE_RATE, 2).probs is None


def test_kl_pairs_each_generated_clip_with_its_reference_by_id():
    rng = np.random.default_rng(3)
    ref = rng.dirichlet(np.ones(6), size=(4, 2))  # 4 reference clips, 2 segments each
    gen = rng.dirichlet(np.ones(6), size=(2, 2))
    reference = {"ids": np.array(["a", "b", "c", "d"]), "probs": ref}
    metrics, per_clip = score_kl(reference, gen, ["d", "b"])
    expected = kl_scores(ref[[3, 1]], gen)
    assert metrics == {
        "kl_passt": expected.kld,
        "kl_passt_qp": expected.kld_qp,
        "kl_passt_both": expected.kld_both,
        "n_segments": 4,
        "segments_per_clip": 2,
    }
    np.testing.assert_allclose(per_clip, per_clip_kl(ref[[3, 1]], gen))
    assert per_clip.mean() == pytest.approx(metrics["kl_passt"])
    itself, _ = score_kl(reference, ref[[2]], ["c"])
    assert abs(itself["kl_passt"]) < 6 * 1e-6  # a clip against itself: 0 up to the epsilon


def test_kl_of_clips_longer_or_shorter_than_their_references_pairs_the_segments_both_have():
    """generate.seconds past the references' length (sliding windows) or short of it: the first
    segments of each pair are compared, as audiocraft pairs the i-th segments."""
    rng = np.random.default_rng(4)
    ref = rng.dirichlet(np.ones(6), size=(3, 1))  # 10 s references: one segment
    longer = rng.dirichlet(np.ones(6), size=(2, 3))  # 30 s generated clips: three
    reference = {"ids": np.array(["a", "b", "c"]), "probs": ref}
    metrics, per_clip = score_kl(reference, longer, ["c", "a"])
    expected = kl_scores(ref[[2, 0]], longer[:, :1])
    assert metrics["kl_passt"] == expected.kld and metrics["kl_passt_qp"] == expected.kld_qp
    assert metrics["n_segments"] == 2 and metrics["segments_per_clip"] == 1
    np.testing.assert_allclose(per_clip, per_clip_kl(ref[[2, 0]], longer[:, :1]))
    shorter, _ = score_kl({"ids": reference["ids"], "probs": longer}, ref[[1]], ["b"])
    assert shorter["kl_passt"] == kl_scores(longer[[1], :1], ref[[1]]).kld


def test_the_dvc_metrics_are_the_headline_numbers_only():
    keys = headline_keys(["mel", "vggish", "clap", "passt"])
    assert len(keys) == 2 + 4 * 3 + 3 + 2
    assert {"valid_ce", "fad_inf_passt", "kad_mel", "kl_passt_both", "clap_score"} <= set(keys)
    assert not [
        k for k in keys if re.search(r"ppl|_cb\d|slope|_r2|bandwidth|(^|_)n_|dim|weights", k)
    ]
    assert headline_keys(["vggish"]) == [
        "valid_ce",
        "test_ce",
        "fad_vggish",
        "fad_inf_vggish",
        "kad_vggish",
    ]
