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

    ``codec.source: tiny`` builds a small random EnCodec and fits its codebooks by residual k-means
    on (at most ``codec.fit.max_frames`` frames of) the training audio; anything else is a hub id
    or a directory, loaded and saved as it is, without reading any audio: an EnCodec
    (``facebook/encodec_32khz``) or a MusicGen (``facebook/musicgen-small``), whose own EnCodec is
    taken (:func:`musicgen.codec.load_codec`). Code usage is measured by tokenize, which encodes
    every clip anyway.
    """
    from musicgen import codec as C

    if params["source"] == "tiny":
        cfg = C.TinyCodecConfig(
            sample_rate=sample_rate, n_codebooks=params["n_codebooks"], **params["tiny"]
        )
        model = C.build_tiny_codec(cfg)
        fit = params["fit"]
        ids = read_split(split_dir, "train")
        if not ids:
            raise ValueError(f"{split_dir / 'train.txt'} lists no clips to fit the codec on")
        clip = load_clips(audio_dir, ids[:1], sample_rate)  # (1, S): every clip has S samples
        frames = C.n_frames(clip.shape[1], model.config.hop_length)
        ids = fit_clips(ids, frames, fit["max_frames"], fit["seed"])
        C.fit_codebooks(
            model,
            load_clips(audio_dir, ids, sample_rate),
            n_iter=fit["n_iter"],
            max_frames=fit["max_frames"],
            seed=fit["seed"],
            codes_used=fit["codes_used"],
            batch_size=fit["batch_size"],
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
) -> None:
    """The tokenize stage: codes (N, K, T) int16 of every clip in a split, and their usage.

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
