"""One function per DVC stage: read inputs, call the library, write outputs and metrics.

Stage scripts in ``stages/`` only parse paths and params and call one of these, so the whole pipeline
is importable and testable without DVC.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from musicgen.data.audio import ResampleConfig, load_clips, resample_clips, write_wav
from musicgen.data.splits import SPLITS, SplitConfig, filter_clips, make_splits
from musicgen.data.store import CodesAndText, load_tokens, save_table, save_text, save_tokens
from musicgen.lm import LM, LMConfig
from musicgen.params import config_hash, write_json

log = logging.getLogger(__name__)

METADATA = "metadata.csv"  # MusicCaps columns, one row per clip
STATUS = "status.csv"  # ytid, status, reason, duration, bytes (musiccaps: and attempts)
AUDIO = "audio"


# ---------------------------------------------------------------------------------------- data
def download(params: dict, out_dir: Path, store_dir: Path, progress: bool = True) -> None:
    """The download stage: clips in ``out_dir/audio``, ``metadata.csv`` and ``status.csv``.

    ``metadata.csv`` lists every clip of the source with the MusicCaps columns; ``status.csv`` says
    what became of each (``ok`` or why not); only ``ok`` clips have a file. ``store_dir`` is the
    persistent store of downloads (a ``persist`` output), which outlives the stage's reruns.

    Args:
        params: the ``data`` section: ``source`` is ``synthetic``, ``musiccaps`` or ``folder``.
    """
    source, audio_dir = params["source"], out_dir / AUDIO
    shutil.rmtree(audio_dir, ignore_errors=True)
    store_dir.mkdir(parents=True, exist_ok=True)
    if source == "synthetic":
        metadata, status = synthetic_source(params["synthetic"], audio_dir, progress)
    elif source == "musiccaps":
        from musicgen.data.musiccaps import MusicCapsConfig, fetch_musiccaps

        cfg = MusicCapsConfig(**params["musiccaps"])
        metadata, status = fetch_musiccaps(cfg, store_dir / "musiccaps", audio_dir, progress)
    elif source == "folder":
        from musicgen.data.folder import FolderConfig, import_folder

        metadata, status = import_folder(FolderConfig(**params["folder"]), audio_dir, progress)
    else:
        raise ValueError(f"data.source must be synthetic, musiccaps or folder, not {source!r}")
    save_table(out_dir / METADATA, metadata)
    save_table(out_dir / STATUS, status)
    log.info("download: %s", status["status"].value_counts().to_dict())


def synthetic_source(
    params: dict, audio_dir: Path, progress: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The synthetic set: its metadata, and a status table in which every clip is ``ok``."""
    from musicgen.data.synthetic import SyntheticConfig, make_synthetic_dataset

    metadata = make_synthetic_dataset(audio_dir, SyntheticConfig(**params), progress=progress)
    sizes = [(audio_dir / f"{y}.wav").stat().st_size for y in metadata["ytid"]]
    status = pd.DataFrame(
        {
            "ytid": metadata["ytid"],
            "status": "ok",
            "reason": "",
            "duration": metadata["end_s"] - metadata["start_s"],
            "bytes": sizes,
        }
    )
    return metadata, status


def read_metadata(raw_dir: Path) -> pd.DataFrame:
    return pd.read_csv(raw_dir / METADATA, dtype={"ytid": str})


def resample(params: dict, raw_dir: Path, out_dir: Path, progress: bool = True) -> None:
    """The resample stage: ``out_dir/<ytid>.wav`` mono at the codec rate and ``manifest.csv``.

    Args:
        params: the ``resample`` section.
    """
    status = pd.read_csv(raw_dir / STATUS, dtype={"ytid": str})
    ids = status.loc[status["status"] == "ok", "ytid"].tolist()
    manifest = resample_clips(ids, raw_dir / AUDIO, out_dir, ResampleConfig(**params), progress)
    save_table(out_dir / "manifest.csv", manifest)


def read_split(split_dir: Path, name: str) -> list[str]:
    return (split_dir / f"{name}.txt").read_text().split()


def split(params: dict, raw_dir: Path, audio_dir: Path, out_dir: Path, metrics_path: Path) -> None:
    """The split stage: ``train.txt``, ``valid.txt``, ``test.txt``; counts as metrics.

    The metrics count the listed, usable (downloaded and resampled) and kept clips, what each
    filter removed, and each split.

    Args:
        params: the ``split`` section.
    """
    cfg = SplitConfig(**params)
    metadata = read_metadata(raw_dir)
    manifest = pd.read_csv(audio_dir / "manifest.csv", dtype={"ytid": str})
    ok = manifest[manifest["status"] == "ok"]
    durations = dict(zip(ok["ytid"], ok["orig_samples"] / ok["orig_rate"], strict=True))
    kept, filtered = filter_clips(metadata, durations, cfg)
    splits = make_splits(kept, cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, ids in splits.items():
        (out_dir / f"{name}.txt").write_text("".join(f"{y}\n" for y in ids))
    write_json(
        metrics_path,
        {
            "clips_listed": len(metadata),
            "clips_usable": len(durations),
            "clips_kept": len(kept),
            **filtered,
            **{f"clips_{name}": len(ids) for name, ids in splits.items()},
        },
    )


# ---------------------------------------------------------------------------------------- models
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


# ---------------------------------------------------------------------------------------- features
def used_ids(split_dir: Path) -> list[str]:
    """Every id in any split, in split order."""
    return [y for name in SPLITS for y in read_split(split_dir, name)]


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


def encode_text(
    params: dict,
    raw_dir: Path,
    split_dir: Path,
    model_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> None:
    """The encode_text stage: T5 states of each caption and its word-dropout variants (float16)."""
    from musicgen import text as T

    tokenizer, model = T.load_text_encoder(model_dir)
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
    states = T.encode_texts(tokenizer, model, texts, params["batch_size"], progress=progress)
    save_text(out_dir, ids, params["n_variants"], states)


# ---------------------------------------------------------------------------------------- LM
def lm_config(params: dict, text_dim: int, card: int, n_codebooks: int) -> LMConfig:
    """The LM config from the ``lm`` section: a preset, overrides, and the data's dimensions."""
    overrides = dict(params.get("overrides") or {})
    return LMConfig.from_preset(
        params["preset"],
        pattern=params["pattern"],
        delays=list(params["delays"]),
        dropout=params["dropout"],
        text_dim=text_dim,
        card=card,
        n_codebooks=n_codebooks,
        **overrides,
    )


def save_lm(out_dir: Path, weights: dict[str, torch.Tensor], cfg: LMConfig) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n")


def load_lm(lm_dir: Path, device: torch.device | str = "cpu") -> LM:
    cfg = LMConfig(**json.loads((lm_dir / "config.json").read_text()))
    model = LM(cfg)
    model.load_state_dict(load_file(str(lm_dir / "model.safetensors")))
    return model.to(device).eval()


def train(
    lm_params: dict,
    train_params: dict,
    tokens_dir: Path,
    text_dir: Path,
    split_dir: Path,
    codec_dir: Path,
    out_dir: Path,
    ckpt_dir: Path,
    metrics_path: Path,
    plots_dir: Path,
    progress: bool = True,
) -> None:
    """The train stage: EMA weights in ``out_dir``, metrics, and loss curves for ``dvc plots``."""
    from musicgen import train as TR

    cfg = TR.TrainConfig(**train_params)
    train_data = CodesAndText(tokens_dir, text_dir, read_split(split_dir, "train"))
    valid_data = CodesAndText(tokens_dir, text_dir, read_split(split_dir, "valid"))
    card = json.loads((codec_dir / "config.json").read_text())["codebook_size"]
    lm_cfg = lm_config(lm_params, train_data.text_dim, card, train_data.codes.shape[1])
    torch.manual_seed(cfg.seed)
    model = LM(lm_cfg)
    run_hash = config_hash({"lm": lm_cfg.to_dict(), "train": train_params})
    started = time.perf_counter()
    result = TR.train(model, train_data, valid_data, cfg, ckpt_dir, run_hash, progress)
    log.info("trained %d steps in %.1f s", cfg.steps, time.perf_counter() - started)
    save_lm(out_dir, result["ema"], lm_cfg)
    model.load_state_dict(result["ema"])
    val_ce = TR.validation_ce(model, valid_data, cfg.eval_batch_size, TR.pick_device(cfg.device))
    entropy = TR.token_entropy(train_data.codes, card)
    history = result["history"]
    write_json(
        metrics_path,
        {
            "val_ce": float(val_ce.mean()),  # EMA weights, nats, mean over codebooks
            "val_ce_init": float(result["val_ce_init"].mean()),  # the same at step 0
            "val_ce_raw": float(result["val_ce_final_raw"].mean()),  # the raw (non-EMA) weights
            "train_token_entropy": float(entropy.mean()),  # CE of a token-frequency model
            "train_loss_final": history[-1]["train_loss"],
            "steps": cfg.steps,
            "tokens_seen": cfg.steps
            * cfg.batch_size
            * cfg.grad_accum
            * train_data.n_frames
            * lm_cfg.n_codebooks,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
    )
    plots_dir.mkdir(parents=True, exist_ok=True)
    rows = [h for h in history if "train_loss" in h]
    save_table(
        plots_dir / "loss.csv", pd.DataFrame(rows)[["step", "train_loss", "lr", "grad_norm"]]
    )
    save_table(
        plots_dir / "val_ce.csv",
        pd.DataFrame(
            [{"step": h["step"], "val_ce": h["val_ce"]} for h in history if "val_ce" in h]
        ),
    )


# ---------------------------------------------------------------------------------------- outputs
def generate(
    params: dict,
    lm_dir: Path,
    codec_dir: Path,
    text_dir: Path,
    tokens_dir: Path,
    split_dir: Path,
    out_dir: Path,
    progress: bool = True,
) -> None:
    """The generate stage: one wav per test caption in ``out_dir/audio`` and ``tokens/``."""
    from tqdm import tqdm

    from musicgen import codec as C
    from musicgen.generate import SamplingConfig, generate

    model = load_lm(lm_dir)
    codec = C.load_codec(str(codec_dir))
    test_ids = read_split(split_dir, "test")
    if params["max_items"]:
        test_ids = test_ids[: params["max_items"]]
    data = CodesAndText(tokens_dir, text_dir, test_ids)
    sampling = SamplingConfig(
        cfg_coef=params["cfg_coef"],
        top_k=params["top_k"],
        top_p=params["top_p"],
        temperature=params["temperature"],
    )
    n_frames = data.n_frames
    generator = torch.Generator().manual_seed(params["seed"])
    codes, bs = [], params["batch_size"]
    rate = codec.config.sampling_rate
    for i in tqdm(range(0, len(data), bs), desc="generate", disable=not progress):
        b = data.batch(np.arange(i, min(i + bs, len(data))))
        out = generate(model, b.cond, b.cond_mask, n_frames, sampling, generator)
        audio = C.decode(codec, out).numpy()
        for ytid, clip in zip(test_ids[i : i + bs], audio, strict=True):
            write_wav(out_dir / AUDIO / f"{ytid}.wav", clip, rate)
        codes.append(out.numpy())
    save_tokens(out_dir / "tokens", test_ids, np.concatenate(codes))


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
