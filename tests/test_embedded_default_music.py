"""On the session's short run of the small embedded default (``pipeline_repo``,
tests/conftest.py): the gallery's codec round trips are what ``musicgen.codec`` makes of the
references."""

from __future__ import annotations

import numpy as np
from pipeline_repo import restore_baseline

from musicgen import codec as C
from musicgen.data.audio import load_clips, read_audio
from musicgen.params import load_params
from musicgen.pipeline.common import AUDIO, read_split
from musicgen.pipeline.references import ROUNDTRIP


def test_the_gallery_round_trips_are_the_codec_round_trips_of_the_references(pipeline_repo):
    restore_baseline(pipeline_repo)
    params = load_params(pipeline_repo / "params.yaml")
    test_ids = read_split(pipeline_repo / "data/split", "test")
    shown = params["evaluate"]["gallery_items"] or len(test_ids)
    trip_dir = pipeline_repo / "data/reference" / ROUNDTRIP
    assert sorted(p.stem for p in trip_dir.glob("*.wav")) == sorted(test_ids[:shown])
    rate = params["resample"]["sample_rate"]
    reference = load_clips(pipeline_repo / "data/audio", test_ids[:2], rate)  # (2, S)
    codec = C.load_codec(str(pipeline_repo / "data/models/codec"))
    codes = C.encode(codec, reference, n_codebooks=params["codec"]["n_codebooks"])
    expected = np.clip(C.decode(codec, codes).numpy()[:, : reference.shape[1]], -1.0, 1.0)
    for clip_id, clip in zip(test_ids[:2], expected, strict=True):
        written, written_rate = read_audio(trip_dir / f"{clip_id}.wav")
        assert written_rate == codec.config.sampling_rate and written.shape == (1, len(clip))
        np.testing.assert_allclose(written[0], clip, rtol=0, atol=2e-4)  # PCM_16 and batching
    generated = len(list((pipeline_repo / "data/generated" / AUDIO).glob("*.wav")))
    html = (pipeline_repo / "reports/gallery/index.html").read_text(encoding="utf-8")
    assert html.count("_roundtrip.wav") == min(shown, generated)  # one player per gallery item
