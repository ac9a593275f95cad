"""The codec round trip of the test clips the gallery shows (the reference_stats stage).

Each clip is encoded to tokens and decoded again, decode(encode(clip)), through
:func:`musicgen.codec.encode` and :func:`musicgen.codec.decode`: the tiny codec of the embedded
default or EnCodec alike. The gallery plays it between the reference and the generated clip, so a
listener tells what the codec loses from what the LM gets wrong. It is data-side: it depends on
the test clips and the codec only, so it is computed once, not in every training experiment.

Written to ``data/reference/roundtrip/<id>.wav`` (:data:`musicgen.pipeline.references.ROUNDTRIP`)
at the codec's rate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicgen.data.audio import load_clips, resample, write_wav
from musicgen.device import pick_device
from musicgen.pipeline.common import read_split
from musicgen.pipeline.references import ROUNDTRIP


def gallery_ids(test_ids: list[str], gallery_items: int) -> list[str]:
    """The test clips the gallery shows: the first ``gallery_items`` (0: all). The generate stage
    takes the test split in its order, and the gallery the first generated clips."""
    return test_ids[:gallery_items] if gallery_items else list(test_ids)


def codec_round_trip(
    codec_dir: Path,
    audio_dir: Path,
    ids: list[str],
    sample_rate: int,
    n_codebooks: int,
    out_dir: Path,
    device: str = "cpu",
    batch_size: int = 8,
) -> None:
    """Writes ``out_dir/<id>.wav``: each clip encoded to ``n_codebooks`` codebooks and decoded.

    The clips (mono, ``sample_rate``) are read ``batch_size`` at a time, resampled to the codec's
    rate if it differs, and encoded and decoded in fp32 (as the tokenize stage encodes) through
    :func:`musicgen.codec.encode` / :func:`musicgen.codec.decode` on ``device`` (a name for
    :func:`musicgen.device.pick_device`); each decoded clip (``T * hop`` samples) is cut to its
    input's length (S samples at the codec's rate) and written at the codec's rate.
    """
    from musicgen import codec as C

    model = C.load_codec(str(codec_dir)).to(pick_device(device))
    rate = model.config.sampling_rate
    out_dir.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(ids), batch_size):
        batch = ids[start : start + batch_size]
        audio = load_clips(audio_dir, batch, sample_rate)  # (b, S)
        if rate != sample_rate:
            audio = np.stack([resample(clip, sample_rate, rate) for clip in audio])
        codes = C.encode(model, audio, n_codebooks=n_codebooks, batch_size=batch_size)
        decoded = C.decode(model, codes, batch_size=batch_size).numpy()[:, : audio.shape[1]]
        for clip_id, clip in zip(batch, decoded, strict=True):
            write_wav(out_dir / f"{clip_id}.wav", clip, rate)


def reference_round_trips(
    all_params: dict, audio_dir: Path, split_dir: Path, codec_dir: Path, out_dir: Path
) -> list[str]:
    """The reference_stats stage's round trips: ``out_dir/roundtrip/<id>.wav`` of the first
    ``evaluate.gallery_items`` test clips, with ``codec.n_codebooks`` codebooks, on
    ``evaluate.device``, ``evaluate.embed_batch_size`` clips at a time (``all_params``: the
    whole params.yaml).

    Returns:
        the ids round-tripped.
    """
    params = all_params["evaluate"]
    ids = gallery_ids(read_split(split_dir, "test"), params["gallery_items"])
    codec_round_trip(
        codec_dir,
        audio_dir,
        ids,
        all_params["resample"]["sample_rate"],
        all_params["codec"]["n_codebooks"],
        out_dir / ROUNDTRIP,
        params["device"],
        params["embed_batch_size"],
    )
    return ids
