"""Stage evaluate: quality metrics of the generated audio and the LM's cross-entropy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from musicgen.data.audio import load_clips
from musicgen.data.store import CodesAndText, load_tokens
from musicgen.lm import load_lm
from musicgen.params import write_json
from musicgen.pipeline.common import AUDIO, read_split


def evaluate(
    params: dict,
    sample_rate: int,
    lm_dir: Path,
    tokens_dir: Path,
    text_dir: Path,
    split_dir: Path,
    audio_dir: Path,
    generated_dir: Path,
    metrics_path: Path,
) -> None:
    """The evaluate stage: Fréchet distance of embeddings, per-codebook CE and perplexity."""
    from musicgen.metrics.embedders import build_embedder, embed_clips
    from musicgen.metrics.frechet import embedding_fd
    from musicgen.train import validation_ce

    gen_ids, _ = load_tokens(generated_dir / "tokens")
    embedder = build_embedder(params["embedder"])
    reference = embed_clips(embedder, load_clips(audio_dir, gen_ids, sample_rate), sample_rate)
    generated = embed_clips(
        embedder, load_clips(generated_dir / AUDIO, gen_ids, sample_rate), sample_rate
    )
    model = load_lm(lm_dir)
    metrics: dict = {
        f"fd_{params['embedder']}": embedding_fd(reference, generated),
        "fd_clips": len(gen_ids),
        "fd_windows": int(len(reference)),
    }
    for name in ("valid", "test"):
        data = CodesAndText(tokens_dir, text_dir, read_split(split_dir, name))
        ce = validation_ce(model, data, params["batch_size"], torch.device("cpu"))
        metrics[f"{name}_ce"] = float(ce.mean())
        metrics[f"{name}_ppl"] = float(np.exp(ce.mean()))
        for k, v in enumerate(ce):
            metrics[f"{name}_ce_cb{k}"] = float(v)
            metrics[f"{name}_ppl_cb{k}"] = float(np.exp(v))
    write_json(metrics_path, metrics)
