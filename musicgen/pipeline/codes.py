"""Stages codec_model and tokenize: the codec, as a DVC output, and the codes of every clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from musicgen.data.audio import load_clips
from musicgen.data.store import save_tokens
from musicgen.params import write_json
from musicgen.pipeline.common import read_split, used_ids


def codec_model(
    params: dict,
    sample_rate: int,
    audio_dir: Path,
    split_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    progress: bool = True,
) -> None:
    """The codec stage: a codec in ``out_dir`` (``save_pretrained`` format) and its code usage.

    ``codec.source: tiny`` builds a small random EnCodec and fits its codebooks by residual k-means on
    the training audio; anything else is a hub id or a directory, loaded and saved as it is.
    """
    from musicgen import codec as C

    train_audio = load_clips(audio_dir, read_split(split_dir, "train"), sample_rate)
    if params["source"] == "tiny":
        cfg = C.TinyCodecConfig(
            sample_rate=sample_rate, n_codebooks=params["n_codebooks"], **params["tiny"]
        )
        model = C.build_tiny_codec(cfg)
        fit = params["fit"]
        C.fit_codebooks(
            model,
            train_audio,
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
    codes = C.encode(model, train_audio, n_codebooks=params["n_codebooks"]).numpy()
    write_json(
        metrics_path,
        {"source": params["source"], **C.codebook_usage(codes, model.config.codebook_size)},
    )


def tokenize(
    params: dict,
    sample_rate: int,
    n_codebooks: int,
    audio_dir: Path,
    codec_dir: Path,
    split_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> None:
    """The tokenize stage: codes (N, K, T) int16 of every clip in a split."""
    from tqdm import tqdm

    from musicgen import codec as C

    model = C.load_codec(str(codec_dir))
    ids = used_ids(split_dir)
    chunks, bs = [], params["batch_size"]
    for i in tqdm(range(0, len(ids), bs), desc="tokenize", disable=not progress):
        audio = load_clips(audio_dir, ids[i : i + bs], sample_rate)
        chunks.append(C.encode(model, audio, n_codebooks=n_codebooks, batch_size=bs).numpy())
    save_tokens(out_dir, ids, np.concatenate(chunks))
