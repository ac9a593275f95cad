"""Stages text_model and encode_text: the text encoder, as a DVC output, and caption states."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from musicgen.data.store import save_table
from musicgen.device import inference_dtype, pick_device
from musicgen.io import atomic_path
from musicgen.pipeline.common import read_metadata, read_split, used_ids


def text_model(params: dict, raw_dir: Path, split_dir: Path, out_dir: Path) -> None:
    """The text-model stage: a tokenizer and a T5 encoder in ``out_dir``.

    ``text.source: tiny`` builds a word-level tokenizer from the training captions and builds a small
    random T5 encoder; anything else is a hub id (e.g. ``t5-base``) or a directory, or a MusicGen's
    (``facebook/musicgen-small``), whose own T5 encoder and tokenizer are taken
    (:func:`musicgen.text.load_text_encoder`).
    """
    from musicgen import text as T

    if params["source"] == "tiny":
        metadata = read_metadata(raw_dir).set_index("ytid")
        captions = metadata.loc[read_split(split_dir, "train"), "caption"].tolist()
        cfg = T.TinyT5Config(**params["tiny"])
        tokenizer = T.train_tokenizer(captions, cfg.vocab_size)
        model = T.build_tiny_t5(cfg, len(tokenizer))
    else:
        tokenizer, model = T.load_text_encoder(params["source"])
    T.save_text_encoder(tokenizer, model, out_dir)


def encode_text(
    params: dict,
    raw_dir: Path,
    split_dir: Path,
    model_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> None:
    """The encode_text stage: T5 states of each caption and its word-dropout variants (float16).

    T5 runs on ``encode_text.device`` in ``encode_text.precision``: ``auto`` is bf16 autocast on
    CUDA (T5 overflows fp16, which is refused); without autocast (``auto`` or ``fp32`` on the CPU)
    it computes in float64 on the CPU, so the float16 states are the same bytes on every CPU
    (:func:`musicgen.text.encode_batches`), and in float32 on CUDA.
    """
    from musicgen import text as T

    device = pick_device(params["device"])
    dtype = inference_dtype(params["precision"], device, fp16_safe=False)
    tokenizer, model = T.load_text_encoder(model_dir)
    model = model.to(device)
    metadata = read_metadata(raw_dir).set_index("ytid")
    ids = used_ids(split_dir)
    texts = [
        variant
        for y in ids
        for variant in T.caption_variants(
            y,
            str(metadata.at[y, "caption"]),
            params["n_variants"],
            params["word_dropout"],
            params["max_words"],
            params["seed"],
        )
    ]
    lengths = T.token_lengths(tokenizer, texts)
    batches = T.encode_batches(
        tokenizer, model, texts, params["batch_size"], progress=progress, dtype=dtype
    )
    write_text_states(out_dir, ids, params["n_variants"], lengths, model.config.d_model, batches)


def write_text_states(
    out_dir: Path,
    ids: list[str],
    n_variants: int,
    lengths: np.ndarray,
    dim: int,
    batches: Iterable[list[np.ndarray]],
) -> None:
    """Writes text states in :func:`musicgen.data.store.save_text`'s layout, batch by batch.

    ``embeddings.npy`` (sum of lengths, dim) float16 is written as the batches come (its header
    first, from the lengths known in advance), so one batch of states is in memory at a time,
    not the whole set (about 2 GB for MusicCaps' captions and variants with t5-base).

    Args:
        out_dir: the output folder.
        ids: the clips; the states are ordered id-major, variant-minor.
        n_variants: variants per clip.
        lengths: (len(ids) * n_variants,) rows of each text's states.
        dim: the states' width.
        batches: lists of (L_i, dim) states, in order.

    Raises:
        ValueError: if the states' lengths or count differ from ``lengths``.
    """
    header = {
        "descr": np.lib.format.dtype_to_descr(np.dtype(np.float16)),
        "fortran_order": False,
        "shape": (int(lengths.sum()), int(dim)),
    }
    n = 0
    with atomic_path(out_dir / "embeddings.npy") as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)  # np.save's header, byte for byte
        for states in (s for batch in batches for s in batch):
            if n >= len(lengths) or states.shape != (lengths[n], dim):
                raise ValueError(f"text {n}: states {states.shape}, expected ({lengths[n]}, {dim})")
            f.write(np.ascontiguousarray(states, dtype=np.float16).tobytes())
            n += 1
        if n != len(lengths):
            raise ValueError(f"{n} texts encoded, {len(lengths)} expected")
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    index = pd.DataFrame(
        {
            "ytid": np.repeat(ids, n_variants),
            "variant": np.tile(np.arange(n_variants), len(ids)),
            "offset": offsets,
            "length": lengths,
        }
    )
    save_table(out_dir / "index.csv", index)
