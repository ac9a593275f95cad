"""Stages text_model and encode_text: the text encoder, as a DVC output, and caption states."""

from __future__ import annotations

from pathlib import Path

from musicgen.data.store import save_text
from musicgen.device import inference_dtype, pick_device
from musicgen.pipeline.common import read_metadata, read_split, used_ids


def text_model(params: dict, raw_dir: Path, split_dir: Path, out_dir: Path) -> None:
    """The text-model stage: a tokenizer and a T5 encoder in ``out_dir``.

    ``text.source: tiny`` builds a word-level tokenizer from the training captions and builds a small
    random T5 encoder; anything else is a hub id (e.g. ``t5-base``) or a directory.
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
    CUDA (T5 overflows fp16, which is refused) and fp32 on the CPU.
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
    states = T.encode_texts(
        tokenizer, model, texts, params["batch_size"], progress=progress, dtype=dtype
    )
    save_text(out_dir, ids, params["n_variants"], states)
