"""The eval_models stage's loading paths and the evaluate stage's helpers."""

import json

import numpy as np
import pytest
import torch

from musicgen.metrics import embedders as E
from musicgen.metrics import vggish as V
from musicgen.pipeline.evaluation import loudness_normalised
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
