"""The training loop: gradient accumulation, cosine schedule, EMA, CFG dropout, resumable checkpoints."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from musicgen.data.store import CodesAndText
from musicgen.io import atomic_path
from musicgen.lm import LM, drop_condition

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    steps: int = 300  # optimizer steps
    batch_size: int = 16  # clips per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1.0e-3  # peak learning rate
    warmup_steps: int = 30  # linear warm-up, then cosine decay
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW, as MusicGen
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    ema_decay: float = 0.99  # EMA weights are the ones used for inference
    cfg_dropout: float = 0.3  # probability of training on the null condition (CFG)
    cfg_dropout_per_sample: bool = False  # False: the whole batch at once, as audiocraft
    eval_every: int = 50  # steps between validation passes
    eval_batch_size: int = 16
    checkpoint_every: int = 50  # steps between resumable checkpoints
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (fp16 autocast on CUDA, fp32 on CPU) | fp32 | fp16 | bf16

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.steps, train.batch_size and train.grad_accum must be >= 1")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ValueError(f"train.cfg_dropout must be in [0, 1], got {self.cfg_dropout}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(
                f"train.precision must be auto, fp32, fp16 or bf16, got {self.precision}"
            )


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` then cosine decay to ``cfg.lr * cfg.min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n_items: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_items)


def batch_rows(first_sample: int, batch_size: int, n_items: int, seed: int) -> np.ndarray:
    """Rows for samples ``first_sample ..`` of a stream of seeded per-epoch permutations.

    Computed from the sample count alone, so a resumed run sees the batches of an uninterrupted one.
    """
    samples = np.arange(first_sample, first_sample + batch_size)
    return np.array(
        [_epoch_order(seed, int(g) // n_items, n_items)[int(g) % n_items] for g in samples]
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else None
    return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, p in model.state_dict().items():
        if p.dtype.is_floating_point:
            ema[name].lerp_(p, 1.0 - decay)
        else:
            ema[name].copy_(p)


@torch.no_grad()
def validation_ce(
    model: LM, data: CodesAndText, batch_size: int, device: torch.device
) -> np.ndarray:
    """Cross-entropy (nats) per codebook over every frame of ``data``, with the clean captions.

    Returns:
        (K,) float64.
    """
    was_training = model.training
    model.eval()
    total = np.zeros(model.cfg.n_codebooks)
    for start in range(0, len(data), batch_size):
        rows = np.arange(start, min(start + batch_size, len(data)))
        b = data.batch(rows)
        _, ce = model(b.codes.to(device), b.cond.to(device), b.cond_mask.to(device))
        total += ce.double().cpu().numpy() * len(rows)
    model.train(was_training)
    return total / max(1, len(data))


def token_entropy(codes: np.ndarray, card: int) -> np.ndarray:
    """Entropy (nats) of each codebook's token distribution: the CE of a frequency-only model.

    Args:
        codes: (N, K, T).

    Returns:
        (K,) float64.
    """
    out = []
    for k in range(codes.shape[1]):
        p = np.bincount(codes[:, k].ravel().astype(np.int64), minlength=card) / codes[:, k].size
        p = p[p > 0]
        out.append(float(-(p * np.log(p)).sum()))
    return np.array(out)


def save_checkpoint(
    ckpt_dir: Path, model: LM, ema: dict, optimizer: torch.optim.Optimizer, meta: dict
) -> None:
    """Writes weights, EMA, optimizer moments (safetensors) and ``meta`` (JSON), atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    with atomic_path(ckpt_dir / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {**meta, "param_groups": opt["param_groups"]}
    write_meta(ckpt_dir, meta)


def load_checkpoint(ckpt_dir: Path, run_hash: str) -> tuple[dict, dict] | None:
    """The tensors and meta of an unfinished run with the same config hash, else None.

    A checkpoint of another config is never resumed: it is reported and ignored (the run starts over).
    """
    meta_path = ckpt_dir / "meta.json"
    if not meta_path.exists() or not (ckpt_dir / "state.safetensors").exists():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("run_hash") != run_hash:
        log.warning(
            "checkpoint in %s is from another config (%s != %s); starting over",
            ckpt_dir,
            meta.get("run_hash"),
            run_hash,
        )
        return None
    if meta.get("complete"):
        return None
    return load_file(str(ckpt_dir / "state.safetensors")), meta


def restore(
    tensors: dict, meta: dict, model: LM, ema: dict, optimizer: torch.optim.Optimizer
) -> None:
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def write_meta(ckpt_dir: Path, meta: dict) -> None:
    """Writes the checkpoint's ``meta.json``, atomically."""
    with atomic_path(ckpt_dir / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=float))


def mark_complete(ckpt_dir: Path, meta: dict) -> None:
    """Drops the resumable state of a finished run, keeping a record that it finished."""
    (ckpt_dir / "state.safetensors").unlink(missing_ok=True)
    write_meta(ckpt_dir, {**meta, "complete": True})


def make_optimizer(model: LM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("embed") else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def train(
    model: LM,
    train_data: CodesAndText,
    valid_data: CodesAndText,
    cfg: TrainConfig,
    ckpt_dir: Path,
    run_hash: str,
    progress: bool = True,
) -> dict:
    """Trains ``model`` in place and returns the EMA weights and the history.

    Args:
        model: the LM, freshly built with the seed.
        train_data: training clips.
        valid_data: validation clips.
        cfg: the knobs.
        ckpt_dir: where the resumable state lives.
        run_hash: identifies the config; only a checkpoint with the same hash is resumed.

    Returns:
        ``{"ema": state dict, "history": [...], "val_ce_init": (K,), "val_ce_final_raw": (K,)}``
    """
    device = pick_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    model.to(device).train()
    optimizer = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    history: list[dict] = []
    start = 0
    resumed = load_checkpoint(ckpt_dir, run_hash)
    if resumed is not None:
        tensors, meta = resumed
        restore(tensors, meta, model, ema, optimizer)
        start, history, val_ce_init = meta["step"], meta["history"], np.array(meta["val_ce_init"])
        log.info("resuming from step %d", start)
    else:
        val_ce_init = validation_ce(model, valid_data, cfg.eval_batch_size, device)
        history.append({"step": 0, "val_ce": float(val_ce_init.mean())})
    rng_variants = train_data.n_variants > 1
    bar = tqdm(
        range(start, cfg.steps), desc="train", disable=not progress, initial=start, total=cfg.steps
    )
    for step in bar:
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout masks depend on the step only
        rng = np.random.default_rng([cfg.seed, step])
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for micro in range(cfg.grad_accum):
            first = (step * cfg.grad_accum + micro) * cfg.batch_size
            rows = batch_rows(first, cfg.batch_size, len(train_data), cfg.seed)
            variants = rng.integers(1, train_data.n_variants, len(rows)) if rng_variants else None
            b = train_data.batch(rows, variants)
            n_drop = len(rows) if cfg.cfg_dropout_per_sample else 1
            drop = torch.from_numpy(rng.random(n_drop) < cfg.cfg_dropout).expand(len(rows))
            cond, cond_mask = drop_condition(b.cond, b.cond_mask, drop)
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                _, ce = model(b.codes.to(device), cond.to(device), cond_mask.to(device))
                loss = ce.mean() / cfg.grad_accum
            scaler.scale(loss).backward()
            loss_sum += float(loss.detach())
        scaler.unscale_(optimizer)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        update_ema(ema, model, cfg.ema_decay)
        record = {"step": step + 1, "train_loss": loss_sum, "lr": lr, "grad_norm": grad_norm}
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            record["val_ce"] = float(
                validation_ce(model, valid_data, cfg.eval_batch_size, device).mean()
            )
        history.append(record)
        bar.set_postfix(loss=f"{loss_sum:.3f}", lr=f"{lr:.2e}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(
                ckpt_dir,
                model,
                ema,
                optimizer,
                {
                    "run_hash": run_hash,
                    "step": step + 1,
                    "history": history,
                    "val_ce_init": val_ce_init.tolist(),
                },
            )
    val_ce_final_raw = validation_ce(model, valid_data, cfg.eval_batch_size, device)
    mark_complete(ckpt_dir, {"run_hash": run_hash, "step": cfg.steps})
    return {
        "ema": {k: v.cpu() for k, v in ema.items()},
        "history": history,
        "val_ce_init": val_ce_init,
        "val_ce_final_raw": val_ce_final_raw,
        "config": asdict(cfg),
    }
