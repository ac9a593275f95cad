"""Stage train: the LM on tokens and text states; EMA weights, metrics and curves."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd
import torch

from musicgen.data.store import CodesAndText, save_table
from musicgen.lm import LM, LMConfig, save_lm
from musicgen.params import config_hash, write_json
from musicgen.pipeline.common import read_split

log = logging.getLogger(__name__)


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
