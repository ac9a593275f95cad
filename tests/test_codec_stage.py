"""The codec_model stage reads only what it needs: none of the audio for a hub or directory codec,
at most ``codec.fit.max_frames`` frames of it for the tiny codec's k-means fit."""

import numpy as np
import pytest
from stage_runner import project_params

from musicgen.data.audio import write_wav
from musicgen.pipeline import codes
from musicgen.pipeline.codes import fit_clips

IDS = [f"clip{i:02d}" for i in range(20)]


def test_fit_clips_is_a_seeded_subset_within_the_budget():
    chosen = fit_clips(IDS, frames_per_clip=10, max_frames=45, seed=0)
    assert len(chosen) == 5  # ceil(45 / 10)
    assert chosen == sorted(chosen) and set(chosen) <= set(IDS)
    assert chosen == fit_clips(IDS, 10, 45, 0) and chosen != fit_clips(IDS, 10, 45, 1)
    assert fit_clips(IDS, 10, 200, 0) == IDS  # the whole set fits the budget


@pytest.fixture
def clips(tmp_path):
    """20 clips of 0.2 s (10 codec frames) of noise, all in the training split."""
    rng = np.random.default_rng(0)
    for y in IDS:
        write_wav(tmp_path / "audio" / f"{y}.wav", 0.3 * rng.standard_normal(6400), 32000)
    (tmp_path / "split").mkdir()
    (tmp_path / "split" / "train.txt").write_text("\n".join(IDS) + "\n")
    return tmp_path


def test_the_tiny_codec_reads_at_most_max_frames_of_audio(clips, monkeypatch):
    read: list[str] = []
    real = codes.load_clips
    monkeypatch.setattr(
        codes, "load_clips", lambda d, ids, sr: read.extend(ids) or real(d, ids, sr)
    )
    params = project_params(
        {
            ("codec", "fit", "max_frames"): 30,
            ("codec", "fit", "n_iter"): 1,
            ("codec", "fit", "codes_used"): 8,
        }
    )
    codes.codec_model(
        params["codec"], 32000, clips / "audio", clips / "split", clips / "codec", progress=False
    )
    assert len(read) <= 1 + 3  # one clip for its length, then ceil(30 / 10) clips for the fit
    assert (clips / "codec" / "model.safetensors").is_file()


def test_a_directory_codec_reads_no_audio(clips):
    params = project_params({("codec", "fit", "n_iter"): 1, ("codec", "fit", "codes_used"): 8})
    codes.codec_model(
        params["codec"], 32000, clips / "audio", clips / "split", clips / "tiny", progress=False
    )
    missing = clips / "nothing-here"
    codes.codec_model(
        {**params["codec"], "source": str(clips / "tiny")}, 32000, missing, missing, clips / "copy"
    )
    assert (clips / "copy" / "config.json").read_text() == (
        clips / "tiny" / "config.json"
    ).read_text()
