"""Stages codec_model and tokenize: the codec, as a DVC output, and the codes of every clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicgen.data.audio import load_clips
from musicgen.data.store import save_tokens
from musicgen.device import encoding_dtype, pick_device
from musicgen.params import write_json
from musicgen.pipeline.common import read_split, used_ids


def fit_clips(ids: list[str], frames_per_clip: int, max_frames: int, seed: int) -> list[str]:
    """The training clips the k-means fit reads: enough for ``max_frames`` frames, no more.

    Args:
        ids: the training ids.
        frames_per_clip: codec frames of one clip (every clip has the same length).
        max_frames: the fit's frame budget (``codec.fit.max_frames``).
        seed: seed of the choice.

    Returns:
        Every id when they hold at most ``max_frames`` frames, else a seeded random subset of
        ``ceil(max_frames / frames_per_clip)`` of them, in their original order. Memory stays
        bounded by the budget, not by the size of the training set.
    """
    n = min(len(ids), -(-max_frames // max(1, frames_per_clip)))
    if n == len(ids):
        return list(ids)
    keep = np.sort(np.random.default_rng(seed).permutation(len(ids))[:n])
    return [ids[i] for i in keep]


def codec_model(
    params: dict,
    sample_rate: int,
    audio_dir: Path,
    split_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> None:
    """The codec stage: a codec in ``out_dir`` (``save_pretrained`` format).

    ``codec.source: tiny`` builds the offline spectral codec (:mod:`musicgen.codec_synth`) and fits
    its codebooks (fixed-point residual k-means) and decoder on (at most ``codec.fit.max_frames``
    frames of) the training audio; anything else is a hub id
    or a directory, loaded and saved as it is, without reading any audio: an EnCodec
    (``facebook/encodec_32khz``) or a MusicGen (``facebook/musicgen-small``), whose own EnCodec is
    taken (:func:`musicgen.codec.load_codec`). Code usage is measured by tokenize, which encodes
    every clip anyway.
    """
    from musicgen import codec as C
    from musicgen import codec_synth as S

    if params["source"] == "tiny":
        cfg = C.TinyCodecConfig(
            sample_rate=sample_rate, n_codebooks=params["n_codebooks"], seed=params["tiny"]["seed"]
        )
        spectral = S.SpectralCodecConfig(sample_rate=sample_rate, **params["tiny"])
        model = C.build_spectral_codec(cfg, spectral)
        fit = params["fit"]
        ids = read_split(split_dir, "train")
        if not ids:
            raise ValueError(f"{split_dir / 'train.txt'} lists no clips to fit the codec on")
        clip = load_clips(audio_dir, ids[:1], sample_rate)  # (1, S): every clip has S samples
        frames = C.n_frames(clip.shape[1], model.config.hop_length)
        ids = fit_clips(ids, frames, fit["max_frames"], fit["seed"])
        C.fit_spectral_codec(
            model,
            load_clips(audio_dir, ids, sample_rate),
            n_iter=fit["n_iter"],
            max_frames=fit["max_frames"],
            seed=fit["seed"],
            codes_used=fit["codes_used"],
            progress=progress,
        )
    else:
        model = C.load_codec(params["source"])
    if model.config.sampling_rate != sample_rate:
        raise ValueError(
            f"codec runs at {model.config.sampling_rate} Hz but resample.sample_rate "
            f"is {sample_rate}"
        )
    C.save_codec(model, out_dir)


def tokenize(
    params: dict,
    sample_rate: int,
    n_codebooks: int,
    audio_dir: Path,
    codec_dir: Path,
    split_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    progress: bool = True,
    codec_metrics_path: Path | None = None,
) -> None:
    """The tokenize stage: codes (N, K, T) int16 of every clip in a split, and their usage.

    With ``codec_metrics_path``, the codec's round trip (:func:`codec_round_trip`) of the first
    ``tokenize.roundtrip_clips`` test clips is written there. It is measured here, not in
    codec_model, because the codes of the held-out clips are made here anyway, and because
    codec_model reads no audio for a hub codec.

    The codec runs on ``tokenize.device`` in ``tokenize.precision`` (``auto``: fp32 on every device,
    :func:`musicgen.device.encoding_dtype`),
    ``tokenize.batch_size`` clips at a time (read from disk one batch at a time, the codes written
    into one preallocated int16 array). The metrics are
    :func:`musicgen.codec.codebook_usage` of the training clips' codes (what the LM learns from).
    """
    from tqdm import tqdm

    from musicgen import codec as C

    device = pick_device(params["device"])
    dtype = encoding_dtype(params["precision"], device)
    model = C.load_codec(str(codec_dir)).to(device)
    ids = used_ids(split_dir)
    codes, bs = None, params["batch_size"]
    for i in tqdm(range(0, len(ids), bs), desc="tokenize", disable=not progress):
        audio = load_clips(audio_dir, ids[i : i + bs], sample_rate)
        batch = C.encode(model, audio, n_codebooks=n_codebooks, batch_size=bs, dtype=dtype)
        if codes is None:  # every clip has the same length: (N, K, T) int16, filled batch by batch
            codes = np.empty((len(ids), *batch.shape[1:]), dtype=np.int16)
        codes[i : i + len(batch)] = batch.numpy()  # codes < codebook size (2048)
    save_tokens(out_dir, ids, codes)
    n_train = len(read_split(split_dir, "train"))  # used_ids lists the training clips first
    write_json(
        metrics_path,
        {"clips": n_train, **C.codebook_usage(codes[:n_train], model.config.codebook_size)},
    )
    if codec_metrics_path is not None:
        test = read_split(split_dir, "test")[: params["roundtrip_clips"]]
        rows = [ids.index(i) for i in test]
        scores = codec_round_trip(
            model, audio_dir, test, codes[rows], sample_rate, bs, dtype, progress
        )
        write_json(codec_metrics_path, scores)


def codec_round_trip(
    model,
    audio_dir: Path,
    ids: list[str],
    codes: np.ndarray,
    sample_rate: int,
    batch_size: int,
    dtype=None,
    progress: bool = True,
) -> dict:
    """How much of the music survives encode -> decode, on held-out clips.

    Args:
        model: the codec.
        audio_dir: the clips' directory.
        ids: the clips (the test split's, never the codec's training clips).
        codes: ``(len(ids), K, T)`` their codes.
        sample_rate: the audio rate.
        batch_size: clips per decoder call.
        dtype: the decoder's autocast dtype (None: float32).
        progress: show a progress bar.

    Returns:
        ``clips`` and the means over clips of
        :func:`musicgen.metrics.music_features.clip_scores` (``logmel_db``, ``chroma_similarity``,
        ``onset_correlation``, ``tempo_match``) of the decoded audio against the originals.
    """
    from tqdm import tqdm

    from musicgen import codec as C
    from musicgen.metrics.music_features import clip_scores

    scores: dict[str, list[float]] = {}
    for i in tqdm(range(0, len(ids), batch_size), desc="round trip", disable=not progress):
        reference = load_clips(audio_dir, ids[i : i + batch_size], sample_rate)
        decoded = C.decode(model, codes[i : i + batch_size], batch_size=batch_size, dtype=dtype)
        for key, values in clip_scores(reference, decoded.numpy(), sample_rate).items():
            scores.setdefault(key, []).extend(values.tolist())
    return {"clips": len(ids), **{k: float(np.mean(v)) for k, v in scores.items()}}
