"""Stage train: the LM on tokens and text states; EMA weights, metrics and curves."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from musicgen import lora as L
from musicgen.data.store import CodesAndText
from musicgen.finetune import CodecSpec, InitCheckpoint
from musicgen.io import atomic_path, content_hash
from musicgen.lm import LM, LMConfig, save_lm
from musicgen.params import config_hash, write_json
from musicgen.pipeline.common import read_metadata, read_split
from musicgen.sharding import with_weights

log = logging.getLogger(__name__)

# train keys read here (not by the loop): where the weights start, and how the text is made
STAGE_KEYS = {"init_from": None, "text_on_the_fly": False, "lora": None}
RUN_KEYS = "run_keys.json"  # in the checkpoint dir: the parts of each recent run's resume key


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


def input_hashes(
    tokens_dir: Path, text_dir: Path, split_dir: Path, captions: dict | None
) -> dict[str, str]:
    """Content hashes of what the run reads: tokens, text states, the train/valid lists, and for
    on-the-fly text the captions, the text model and the dropout knobs (``captions``)."""
    hashes = {
        "tokens": content_hash([tokens_dir / "codes.npy", tokens_dir / "index.csv"]),
        "text": content_hash([text_dir / "embeddings.npy", text_dir / "index.csv"]),
        "split": content_hash([split_dir / "train.txt", split_dir / "valid.txt"]),
    }
    if captions is not None:
        hashes["text_on_the_fly"] = config_hash(
            {**captions, "text_model": content_hash([captions["text_model"]])}
        )
    return hashes


def resume_key(
    lm_cfg: LMConfig,
    identity: dict,
    inputs: dict[str, str],
    init: InitCheckpoint | None,
    lora: dict | None = None,
) -> tuple[str, dict[str, str]]:
    """The run's hash and its parts: the LM config, the training knobs that define the run
    (``musicgen.train.run_identity``), the inputs' content hashes, the init checkpoint's and the
    LoRA settings (``musicgen.lora.LoraSettings.identity``; None: off).

    Returns:
        (run hash, {part: hash of the part}).
    """
    parts = {
        "lm config": config_hash(lm_cfg.to_dict()),
        "train knobs": config_hash(identity),
        **inputs,
        "init_from checkpoint": init.digest if init is not None else "none",
        "lora": config_hash(lora) if lora is not None else "none",
    }
    return config_hash(parts), parts


def report_restart(ckpt_dir: Path, run_hash: str, parts: dict[str, str]) -> None:
    """Says which parts of the resume key changed when the checkpoint is another run's, then
    records this run's parts (``run_keys.json``, the last few runs)."""
    meta_path, keys_path = ckpt_dir / "meta.json", ckpt_dir / RUN_KEYS
    known = json.loads(keys_path.read_text()) if keys_path.exists() else {}
    old = json.loads(meta_path.read_text()).get("run_hash") if meta_path.exists() else None
    if old is not None and old != run_hash:
        before = known.get(old, {})
        changed = [k for k in parts if before.get(k) != parts[k]] if before else ["its inputs"]
        log.warning(
            "the checkpoint in %s is another run (%s changed); this run starts over",
            ckpt_dir,
            ", ".join(changed),
        )
    known = {k: v for k, v in known.items() if k != run_hash}
    known = dict(list(known.items())[-7:]) | {run_hash: parts}
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(keys_path) as tmp:
        tmp.write_text(json.dumps(known, indent=2) + "\n")


def training_data(
    tokens_dir: Path,
    text_dir: Path,
    ids: list[str],
    captions: dict | None,
    device_name: str,
    raw_dir: Path | None,
) -> CodesAndText:
    """The training clips: cached caption variants, or word dropout on the fly (``captions``:
    the text model dir, ``word_dropout``, ``max_words`` and ``precision``)."""
    if captions is None:
        return CodesAndText(tokens_dir, text_dir, ids)
    from musicgen.data.captions import CodesAndCaptions
    from musicgen.device import inference_dtype
    from musicgen.text import load_text_encoder

    if raw_dir is None:
        raise ValueError("train.text_on_the_fly needs the captions: pass --raw (data/raw)")
    device = local_device(device_name)
    tokenizer, encoder = load_text_encoder(captions["text_model"])
    metadata = read_metadata(raw_dir).set_index("ytid")
    return CodesAndCaptions(
        tokens_dir,
        text_dir,
        ids,
        [str(c) for c in metadata.loc[ids, "caption"]],
        tokenizer,
        encoder.to(device),
        captions["word_dropout"],
        captions["max_words"],
        inference_dtype(captions["precision"], device, fp16_safe=False),
    )


def local_device(device_name: str) -> torch.device:
    """This process's device: under torchrun on CUDA, the GPU of its local rank."""
    from musicgen.device import pick_device

    device = pick_device(device_name)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def relaunched_under_torchrun(train_params: dict) -> bool:
    """Runs this very command under torchrun when ``train.nproc_per_node`` or ``train.nnodes``
    asks for more than one process and this is a plain process; True once all ranks finished.

    So ``dvc repro`` scales out with no other change. Inside torchrun (``WORLD_SIZE`` set) it
    returns False and the stage trains as one of the ranks.
    """
    from musicgen import train as TR

    cmd = TR.torchrun_command(train_params, sys.argv)
    if cmd is None:
        return False
    log.info("relaunching under torchrun: %s", " ".join(cmd))
    code = subprocess.run(cmd).returncode
    if code != 0:
        raise SystemExit(f"torchrun exited with code {code}")
    return True


def untrained(
    model: LM, valid_data: CodesAndText, cfg, ckpt_dir: Path, plots_dir: Path | None
) -> dict:
    """What :func:`musicgen.train.train` returns, for ``train.steps = 0``: the model's own
    weights (as EMA and raw) and its validation CE, the step-0 point of the curves."""
    from musicgen import train as TR

    device = TR.pick_device(cfg.device)
    val_ce = TR.validation_ce(model.to(device).eval(), valid_data, cfg.eval_batch_size, device)
    history = [{"step": 0, "val_ce": float(val_ce.mean())}]
    ckpt_dir.mkdir(parents=True, exist_ok=True)  # nothing to resume: no step is trained
    if plots_dir is not None:
        TR.open_live(plots_dir, history).end()
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"ema": weights, "history": history, "val_ce_init": val_ce, "val_ce_final_raw": val_ce}


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
    raw_dir: Path | None = None,
    text_model_dir: Path | None = None,
    text_params: dict | None = None,
) -> None:
    """The train stage: EMA weights in ``out_dir``, metrics, and loss curves for ``dvc plots``.

    ``train.init_from`` starts from a checkpoint (see :mod:`musicgen.finetune`), converted into
    ``ckpt_dir/init_from``. ``train.text_on_the_fly`` encodes word-dropped captions (``raw_dir``)
    with the text model (``text_model_dir``) in the loop, with ``text_params`` (the ``encode_text``
    section: ``word_dropout``, ``max_words``, ``precision``). ``train.lora`` trains peft adapters
    on the frozen LM and writes the merged LM and the adapters (:mod:`musicgen.lora`). A checkpoint
    is resumed only when the resume key (:func:`resume_key`) is the same.
    """
    from musicgen import finetune as F
    from musicgen import train as TR

    knobs = {k: train_params.get(k, v) for k, v in STAGE_KEYS.items()}
    cfg = TR.TrainConfig(**{k: v for k, v in train_params.items() if k not in STAGE_KEYS})
    captions = None
    if knobs["text_on_the_fly"]:
        if text_model_dir is None or text_params is None:
            raise ValueError("train.text_on_the_fly needs the text model (--text-model)")
        captions = {k: text_params[k] for k in ("word_dropout", "max_words", "precision")}
        captions["text_model"] = str(text_model_dir)
    train_ids = read_split(split_dir, "train")
    train_data = training_data(tokens_dir, text_dir, train_ids, captions, cfg.device, raw_dir)
    valid_data = CodesAndText(tokens_dir, text_dir, read_split(split_dir, "valid"))
    codec = CodecSpec.from_encodec_config(json.loads((codec_dir / "config.json").read_text()))
    n_codebooks = train_data.codes.shape[1]
    init = None
    if knobs["init_from"]:
        init = F.resolve_init(str(knobs["init_from"]), ckpt_dir / "init_from")
        F.check_compatible(init, codec, n_codebooks, train_data.text_dim, lm_params)
        lm_cfg = F.init_lm_config(init, lm_params)
    else:
        lm_cfg = lm_config(lm_params, train_data.text_dim, codec.codebook_size, n_codebooks)
    torch.manual_seed(cfg.seed)
    model = LM(lm_cfg) if init is None else F.load_init_lm(init, lm_cfg)  # mapped, not copied
    lora = L.LoraSettings.from_params(knobs["lora"])
    tuner = L.prepare(model, lora, init.source if init else None, cfg.sharding)  # None: no LoRA
    adapted = {"lora_parameters": L.trainable_parameters(model)} if tuner is not None else {}
    if captions is not None:
        captions = {**captions, "captions": config_hash(train_data.words)}
    inputs = input_hashes(tokens_dir, text_dir, split_dir, captions)
    run_hash, parts = resume_key(lm_cfg, TR.run_identity(cfg), inputs, init, lora.identity())
    if TR.is_main_process():
        report_restart(ckpt_dir, run_hash, parts)
    started = time.perf_counter()
    if cfg.steps == 0:  # the initial model as it is (a published checkpoint, evaluated as a run)
        if not TR.is_main_process():
            return
        result = untrained(model, valid_data, cfg, ckpt_dir, plots_dir)
    else:
        result = TR.train(
            model, train_data, valid_data, cfg, ckpt_dir, run_hash, progress, plots_dir
        )
    if not TR.is_main_process():
        return  # under torchrun, rank 0 alone writes the outputs
    log.info("trained %d steps in %.1f s", cfg.steps, time.perf_counter() - started)
    base = {"init_from": init.source, "digest": init.digest} if init else {"seed": cfg.seed}
    weights = L.write_outputs(tuner, result["ema"], out_dir, base)  # LoRA: merged, + adapter/
    save_lm(out_dir, weights, lm_cfg)
    model = with_weights(model, weights)  # fsdp: a whole LM, the trained one is sharded
    val_ce = TR.validation_ce(model, valid_data, cfg.eval_batch_size, TR.pick_device(cfg.device))
    entropy = TR.token_entropy(train_data.codes, lm_cfg.card)
    history = result["history"]
    trained = {"train_loss_final": history[-1]["train_loss"]} if cfg.steps else {}
    write_json(
        metrics_path,
        {
            "val_ce": float(val_ce.mean()),  # EMA weights, nats, mean over codebooks
            "val_ce_init": float(result["val_ce_init"].mean()),  # the same at step 0
            "val_ce_raw": float(result["val_ce_final_raw"].mean()),  # the raw (non-EMA) weights
            "train_token_entropy": float(entropy.mean()),  # CE of a token-frequency model
            **trained,
            "steps": cfg.steps,
            "tokens_seen": cfg.steps
            * cfg.batch_size
            * cfg.grad_accum
            * train_data.n_frames
            * lm_cfg.n_codebooks,
            "parameters": sum(p.numel() for p in model.parameters()),
            **adapted,  # LoRA: the adapters' parameters, the only trained ones
        },
    )
