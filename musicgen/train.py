"""The training loop: accumulation, DDP, schedules, EMA, CFG dropout, resumable checkpoints.

One process or many: under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) each rank takes
its slice of every step's global batch, gradients are averaged by DDP (NCCL on CUDA, gloo on the
CPU), and the result is that of one process with the same global batch (up to float rounding).
Every random draw but dropout's depends on the step or on the sample's global index, never on
the sharding: the batch rows (:func:`batch_rows`), the caption variant
(``CodesAndText.sample_batch``) and the CFG dropout (:func:`cfg_drop`). Dropout masks depend on the
step and the rank (:func:`dropout_seed`). Rank 0 alone writes checkpoints, curves and logs; before
anything else the ranks check that they start the same run from the same step
(:func:`agree_on_start`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from musicgen import sharding as SH
from musicgen.data.store import CodesAndText
from musicgen.device import autocast, autocast_dtype, pick_device
from musicgen.io import atomic_path
from musicgen.lm import LM, drop_condition

__all__ = ["autocast_dtype", "pick_device"]  # re-exported for older callers

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant", "wsd")
# Knobs that do not change the trained weights: left out of the run's identity (resume key).
NOT_IN_IDENTITY = (
    "eval_every",
    "eval_batch_size",
    "checkpoint_every",
    "device",
    "nproc_per_node",
    "nnodes",
    "rdzv_endpoint",
    "dist_timeout_min",
)


@dataclass
class TrainConfig:
    steps: int = 300  # optimizer steps
    batch_size: int = 16  # clips per micro-batch, over all processes (each takes its slice)
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1.0e-3  # peak learning rate
    schedule: str = "cosine"  # cosine (horizon: steps) | constant | wsd (horizon: schedule_steps)
    schedule_steps: int = 0  # wsd: the step where the decay ends (its own param: runs extend)
    wsd_decay_frac: float = 0.2  # wsd: the last fraction of schedule_steps decays linearly
    warmup_steps: int = 30  # linear warm-up, then the schedule
    min_lr_ratio: float = 0.1  # cosine and wsd end at lr * min_lr_ratio
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])  # AdamW, as MusicGen
    weight_decay: float = 0.1
    weight_decay_on: str = "matrices"  # matrices (not norms, biases, embeddings) | all (audiocraft)
    grad_clip: float = 1.0
    ema_decay: float = 0.99  # EMA weights are the ones used for inference
    ema_every: int = 1  # steps between EMA updates (audiocraft: 10)
    cfg_dropout: float = 0.3  # probability of training on the null condition (CFG)
    cfg_dropout_per_sample: bool = False  # False: the whole batch at once, as audiocraft
    grad_checkpointing: bool = False  # recompute each block's activations in the backward pass
    eval_every: int = 50  # steps between validation passes
    eval_batch_size: int = 16
    checkpoint_every: int = 50  # steps between resumable checkpoints
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (fp16 autocast on CUDA, fp32 on CPU) | fp32 | fp16 | bf16
    nproc_per_node: int = 1  # > 1: the train stage relaunches itself through torchrun
    nnodes: int = 1  # machines; > 1 needs rdzv_endpoint (see README, training at scale)
    rdzv_endpoint: str = ""  # host:port of the rendezvous (multi-node)
    dist_timeout_min: float = 60.0  # how long a rank waits in a collective (rank 0 saving) first
    sharding: str = "none"  # none (DDP: a whole copy per process) | fsdp (musicgen.sharding)

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(
                f"train.steps must be >= 0 (0: the initial model as it is), got {self.steps}"
            )
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("train.batch_size and train.grad_accum must be >= 1")
        if not 0.0 <= self.cfg_dropout <= 1.0:
            raise ValueError(f"train.cfg_dropout must be in [0, 1], got {self.cfg_dropout}")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(
                f"train.precision must be auto, fp32, fp16 or bf16, got {self.precision}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.schedule == "wsd" and self.schedule_steps <= self.warmup_steps:
            raise ValueError(
                "train.schedule wsd needs train.schedule_steps > train.warmup_steps, got "
                f"{self.schedule_steps}"
            )
        if self.weight_decay_on not in ("matrices", "all"):
            raise ValueError(
                f"train.weight_decay_on must be matrices or all, got {self.weight_decay_on!r}"
            )
        if self.ema_every < 1 or self.nproc_per_node < 1 or self.nnodes < 1:
            raise ValueError("train.ema_every, train.nproc_per_node and train.nnodes must be >= 1")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("train.nnodes > 1 needs train.rdzv_endpoint (host:port)")
        if self.sharding not in SH.SHARDINGS:
            raise ValueError(f"train.sharding must be one of {SH.SHARDINGS}, got {self.sharding!r}")
        if not self.dist_timeout_min > 0:
            raise ValueError(f"train.dist_timeout_min must be > 0, got {self.dist_timeout_min}")


def extensible(cfg: TrainConfig) -> bool:
    """Whether the schedule's horizon is independent of ``steps``, so a run can be extended."""
    return cfg.schedule in ("constant", "wsd")


def run_identity(cfg: TrainConfig) -> dict:
    """The knobs that define the trained weights: the training part of the resume key.

    Left out: evaluation and checkpoint cadence, the device and the process layout; ``steps`` when
    the schedule allows extension (a finished run then continues when it is raised); the wsd knobs
    unless the schedule is wsd.
    """
    identity = {k: v for k, v in asdict(cfg).items() if k not in NOT_IN_IDENTITY}
    if extensible(cfg):
        del identity["steps"]
    if cfg.schedule != "wsd":
        del identity["schedule_steps"], identity["wsd_decay_frac"]
    if cfg.sharding == "none":  # fsdp: another checkpoint format and mixed-precision rounding
        del identity["sharding"]
    return identity


def get_lr(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr``, then the schedule.

    ``cosine``: down to ``lr * min_lr_ratio`` at ``steps``. ``constant``: ``lr``. ``wsd``
    (warmup-stable-decay): ``lr`` until the last ``wsd_decay_frac`` of ``schedule_steps``, then
    linear down to ``lr * min_lr_ratio`` at ``schedule_steps``, and constant after it.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "wsd":
        decay_steps = max(1, round(cfg.wsd_decay_frac * cfg.schedule_steps))
        decay_start = max(cfg.warmup_steps, cfg.schedule_steps - decay_steps)
        progress = min(1.0, max(0, step - decay_start) / max(1, cfg.schedule_steps - decay_start))
        return cfg.lr + (floor - cfg.lr) * progress
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return floor + (cfg.lr - floor) * cosine


@lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n_items: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n_items)


def batch_rows(first_sample: int, batch_size: int, n_items: int, seed: int) -> np.ndarray:
    """Rows for samples ``first_sample ..`` of a stream of seeded per-epoch permutations.

    Computed from the sample count alone, so a resumed run sees the batches of an uninterrupted one
    and each process of a distributed run takes its slice of the same stream.
    """
    samples = np.arange(first_sample, first_sample + batch_size)
    return np.array(
        [_epoch_order(seed, int(g) // n_items, n_items)[int(g) % n_items] for g in samples]
    )


def cfg_drop(cfg: TrainConfig, step: int, sample_ids: np.ndarray) -> torch.Tensor:
    """Which samples train on the null condition: (B,) bool.

    Per step (the whole global batch at once, from ``[seed, 2, step]``) or per sample (from
    ``[seed, 3, sample_id]``); either way independent of how the batch is sharded.
    """
    if cfg.cfg_dropout_per_sample:
        draws = [np.random.default_rng([cfg.seed, 3, int(s)]).random() for s in sample_ids]
        return torch.tensor(np.array(draws) < cfg.cfg_dropout)
    drop = np.random.default_rng([cfg.seed, 2, step]).random() < cfg.cfg_dropout
    return torch.full((len(sample_ids),), bool(drop))


@dataclass(frozen=True)
class Ranks:
    """This process's place in a distributed run (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main_process() -> bool:
    """True on rank 0 of a ``torchrun`` launch, and in a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def distributed(device_name: str, timeout_min: float = 60.0):
    """Yields ``(Ranks, device)``; under torchrun it joins (and then leaves) the process group.

    NCCL with one GPU per local rank on CUDA, gloo on the CPU, where the cores are shared out among
    the node's ranks (``torch.set_num_threads``).

    Args:
        device_name: ``train.device``.
        timeout_min: how long a collective waits for every rank before it fails
            (``train.dist_timeout_min``): the ranks wait in one while rank 0 writes a checkpoint,
            tens of GB for the large presets, longer than the backends' defaults (NCCL 10 min)
            allow on a slow shared filesystem.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(device_name)
    if world == 1:
        yield Ranks(), device
        return
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"train.nproc_per_node asks for GPU {local_rank} on this node, which has "
                f"{torch.cuda.device_count()}: one process per GPU"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if rank > 0:  # rank 0 alone logs progress; the others only warnings and errors
        logging.getLogger("musicgen").setLevel(logging.WARNING)
    owner = not dist.is_initialized()
    if owner:
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(minutes=timeout_min),
        )
    try:
        yield Ranks(rank, world), device
    finally:
        if owner:
            dist.destroy_process_group()


def all_mean(x: torch.Tensor, ranks: Ranks) -> torch.Tensor:
    """The mean of ``x`` over the ranks (``x`` itself in one process)."""
    if ranks.world > 1:
        dist.all_reduce(x)
        x /= ranks.world
    return x


def torchrun_command(
    train_params: dict, argv: list[str], env: dict[str, str] | None = None
) -> list[str] | None:
    """The command that reruns ``argv`` (a Python script and its arguments) under torchrun, or
    None when one process is asked for or this already is a torchrun rank.

    One node: ``--standalone`` (a free local port). Several: c10d rendezvous at
    ``train.rdzv_endpoint``; every node runs the same command. Any other torchrun option can be
    given by its environment variable (``PET_RDZV_ID``, ``PET_MAX_RESTARTS``, ...).
    """
    env = os.environ if env is None else env
    nproc = int(train_params.get("nproc_per_node", 1))
    nnodes = int(train_params.get("nnodes", 1))
    if (nproc == 1 and nnodes == 1) or "WORLD_SIZE" in env or "LOCAL_RANK" in env:
        return None
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        cmd.append("--standalone")
    else:
        endpoint = train_params.get("rdzv_endpoint") or ""
        if not endpoint:
            raise ValueError("train.nnodes > 1 needs train.rdzv_endpoint (host:port)")
        cmd += [f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}"]
    return cmd + list(argv)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the optimizer updates, by name: all of them, but the adapters alone in a
    LoRA run (:mod:`musicgen.lora` freezes the rest). EMA, optimizer state and checkpoints hold
    these."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """``ema <- decay * ema + (1 - decay) * weights`` for the weights ``ema`` holds; integer
    buffers are copied."""
    state = model.state_dict()
    for name, e in ema.items():
        if e.dtype.is_floating_point:
            e.lerp_(state[name], 1.0 - decay)
        else:
            e.copy_(state[name])


@torch.no_grad()
def validation_ce(
    model: LM,
    data: CodesAndText,
    batch_size: int,
    device: torch.device,
    ranks: Ranks | None = None,
) -> np.ndarray:
    """Cross-entropy (nats) per codebook over every frame of ``data``, with the clean captions.

    In a distributed run each rank evaluates every ``world``-th batch and the sums are reduced.

    Returns:
        (K,) float64.
    """
    ranks = ranks or Ranks()
    was_training = model.training
    model.eval()
    total = torch.zeros(model.cfg.n_codebooks, dtype=torch.float64, device=device)
    for start in range(ranks.rank * batch_size, len(data), batch_size * ranks.world):
        rows = np.arange(start, min(start + batch_size, len(data)))
        b = data.batch(rows)
        _, ce = model(b.codes.to(device), b.cond.to(device), b.cond_mask.to(device))
        total += ce.double() * len(rows)
    if ranks.world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return total.cpu().numpy() / max(1, len(data))


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
    ckpt_dir: Path,
    model: LM,
    ema: dict,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    meta: dict,
) -> None:
    """Writes the trainable weights (:func:`trainable_state`; frozen ones come from the run's
    init), EMA, optimizer moments (safetensors) and ``meta`` with the GradScaler's state (JSON),
    atomically."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    trained = trainable_state(model).items()
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in trained}
    tensors |= {f"ema.{k}": v.cpu().contiguous() for k, v in ema.items()}
    opt = optimizer.state_dict()
    for idx, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value).cpu().contiguous()
    with atomic_path(ckpt_dir / "state.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {**meta, "param_groups": opt["param_groups"], "scaler": scaler.state_dict()}
    write_meta(ckpt_dir, meta)


def write_meta(ckpt_dir: Path, meta: dict) -> None:
    """Writes the checkpoint's ``meta.json``, atomically."""
    with atomic_path(ckpt_dir / "meta.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, default=float))


def load_checkpoint(
    ckpt_dir: Path, run_hash: str, cfg: TrainConfig
) -> tuple[dict | Path, dict] | None:
    """The tensors (sharded: their DCP directory) and meta of the same run (same ``run_hash``)
    that can go on to ``cfg.steps``.

    That is an unfinished run, or a finished one whose schedule's horizon does not depend on
    ``steps`` (``run_hash`` then leaves ``steps`` out, see :func:`run_identity`). Anything else is
    reported, with the reason, and ignored: the run starts over.
    """
    meta_path = ckpt_dir / "meta.json"
    whole = cfg.sharding == "none"
    if not meta_path.exists() or (whole and not (ckpt_dir / "state.safetensors").exists()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("run_hash") != run_hash:
        log.warning("checkpoint in %s is another run; starting over: %s", ckpt_dir, why(meta, cfg))
        return None
    if meta.get("code") != code_hash():
        log.warning("checkpoint in %s was written by other training code; starting over", ckpt_dir)
        return None
    if meta["step"] > cfg.steps:
        log.warning(
            "checkpoint in %s is at step %d, past train.steps = %d; starting over",
            ckpt_dir,
            meta["step"],
            cfg.steps,
        )
        return None
    if meta.get("complete") and meta["step"] < cfg.steps:
        log.info(
            "continuing the finished run from step %d to %d (%s schedule)",
            meta["step"],
            cfg.steps,
            cfg.schedule,
        )
    if not whole:
        path = SH.state_dir(ckpt_dir, meta)
        return None if path is None else (path, meta)
    return load_file(str(ckpt_dir / "state.safetensors")), meta


def why(meta: dict, cfg: TrainConfig) -> str:
    """Why a checkpoint's run differs from ``cfg``'s, in words."""
    old, new = meta.get("identity") or {}, run_identity(cfg)
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    if not changed:
        return "its inputs (data, text, split, init) or the LM config changed"
    text = "train." + ", train.".join(changed) + " changed"
    if "steps" in changed and not extensible(cfg):
        text += (
            f" (the {cfg.schedule} schedule's horizon is train.steps, so more steps is another "
            "run; schedule constant or wsd lets a finished run be extended)"
        )
    return text


def restore(
    tensors: dict,
    meta: dict,
    model: LM,
    ema: dict,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> None:
    """Loads a checkpoint's state into the model (its trainable weights), EMA, optimizer and
    GradScaler."""
    saved = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    params = trainable_state(model)
    if saved.keys() != params.keys():
        raise RuntimeError("the checkpoint holds other trainable weights than the model has")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(saved[name])
    for k in ema:
        ema[k].copy_(tensors[f"ema.{k}"])
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])


def make_optimizer(model: LM, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on every parameter (``all``, as audiocraft) or on matrices only
    (``matrices``: not on norms, biases or embeddings)."""
    decay, no_decay = [], []
    for name, p in trainable_state(model).items():
        matrix = p.dim() >= 2 and not name.startswith("embed")
        (decay if matrix or cfg.weight_decay_on == "all" else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def forward_backward(
    model: torch.nn.Module,
    codes: torch.Tensor,
    cond: torch.Tensor,
    cond_mask: torch.Tensor,
    amp: torch.dtype | None,
    scaler: torch.amp.GradScaler,
    scale: float,
) -> torch.Tensor:
    """One micro-batch: forward under autocast, backward of ``scale`` x the mean CE.

    Args:
        model: the LM (or its DDP wrapper), on its device.
        codes: (B, K, T) codes; cond (B, L, text_dim) and cond_mask (B, L) their conditions.
        amp: the autocast dtype, or None.
        scaler: the GradScaler (a no-op unless fp16).
        scale: 1 / micro-batches per step.

    Returns:
        (K,) the micro-batch's per-codebook CE, detached, float32.
    """
    device = next(model.parameters()).device
    with autocast(device, amp):
        _, ce = model(codes.to(device), cond.to(device), cond_mask.to(device))
        loss = ce.mean() * scale
    scaler.scale(loss).backward()
    return ce.detach().float()


def optimizer_update(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
) -> torch.Tensor:
    """Unscales, clips to ``grad_clip``, steps and zeroes the gradients; returns the norm."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


LIVE_NAMES = {  # history key -> dvclive metric name
    "train_loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "val_ce": "val/ce",
}


def open_live(live_dir: Path, history: list[dict]):
    """A dvclive logger in ``live_dir`` (emptied), with ``history`` (a resumed run's) replayed."""
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    class StageLive(Live):
        """dvclive inside a stage: its git integration is optional. dvclive 3.x reads HEAD before
        it checks that the repository has a commit, and fails in a fresh ``git init``; the curves
        need no git, so that is logged, not raised."""

        def _init_dvc(self) -> None:
            self._dvc_file = None
            try:
                super()._init_dvc()
            except SCMError as err:
                log.info("dvclive without its git integration: %s", err)

    live = StageLive(str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None)
    for record in history:
        log_live(live, record)
    return live


def log_live(live, record: dict) -> None:
    """One history record to dvclive: its metrics at its step, then the summary (``step``)."""
    live.step = record["step"]
    for key, name in LIVE_NAMES.items():
        if key in record:
            live.log_metric(name, record[key])
    for k, ce in enumerate(record.get("train_ce", [])):
        live.log_metric(f"train/ce_cb{k}", ce)
    live.next_step()


def read_live_curves(live_dir: Path) -> pd.DataFrame:
    """dvclive's per-step curves in ``live_dir`` as one table: ``step`` and a column per metric
    (``train/loss``, ``val/ce``, ...; NaN at steps where one was not logged)."""
    root = Path(live_dir) / "plots" / "metrics"
    table = pd.DataFrame({"step": pd.Series(dtype=np.int64)})
    for tsv in sorted(root.rglob("*.tsv")):
        name = tsv.relative_to(root).with_suffix("").as_posix()
        curve = pd.read_csv(tsv, sep="\t")[["step", tsv.stem]].rename(columns={tsv.stem: name})
        table = table.merge(curve, on="step", how="outer")
    return table.sort_values("step", ignore_index=True)


def train(
    model: LM,
    train_data: CodesAndText,
    valid_data: CodesAndText,
    cfg: TrainConfig,
    ckpt_dir: Path,
    run_hash: str,
    progress: bool = True,
    live_dir: Path | None = None,
) -> dict:
    """Trains ``model`` in place and returns the EMA weights and the history.

    In a ``torchrun`` launch every rank calls this with the same arguments.

    Args:
        model: the LM, freshly built with the seed.
        train_data: training clips.
        valid_data: validation clips.
        cfg: the knobs.
        ckpt_dir: where the resumable state lives.
        run_hash: identifies the run; only a checkpoint with the same hash is resumed.
        progress: a progress bar (rank 0).
        live_dir: dvclive's directory for live curves (rank 0), or None.

    Returns:
        ``{"ema": state dict, "history": [...], "val_ce_init": (K,), "val_ce_final_raw": (K,),
        "config": dict}``; the EMA of the trainable weights (:func:`trainable_state`: all but
        frozen ones, e.g. a LoRA run's base).
    """
    with distributed(cfg.device, cfg.dist_timeout_min) as (ranks, device):
        return _train(
            model,
            train_data,
            valid_data,
            cfg,
            ckpt_dir,
            run_hash,
            progress,
            live_dir,
            ranks,
            device,
        )


def _train(
    model, train_data, valid_data, cfg, ckpt_dir, run_hash, progress, live_dir, ranks, device
):
    """:func:`train` in this process, as rank ``ranks.rank`` on ``device``."""
    if cfg.batch_size % ranks.world:
        raise ValueError(
            f"train.batch_size = {cfg.batch_size} is not divisible by the {ranks.world} processes"
        )
    SH.check_world(cfg.sharding, ranks.world)
    sharded = cfg.sharding == "fsdp"
    amp = autocast_dtype(cfg.precision, device)
    model.to(device).train()
    model.grad_checkpointing = cfg.grad_checkpointing
    if sharded:
        SH.shard(model, amp)  # in place, before the optimizer and the EMA take its weights
    optimizer = make_optimizer(model, cfg)
    scaler = SH.grad_scaler(device, amp, sharded)
    # a sharded forward is collective: every rank validates every batch (ranks differ in count)
    eval_ranks = Ranks() if sharded else ranks
    ema = {k: v.detach().clone() for k, v in trainable_state(model).items()}
    resumed = load_checkpoint(ckpt_dir, run_hash, cfg)
    start = resumed[1]["step"] if resumed is not None else 0
    agree_on_start(start, run_hash, ckpt_dir, ranks, device)  # before any other collective
    if resumed is not None:
        meta = resumed[1]
        (SH.restore if sharded else restore)(*resumed, model, ema, optimizer, scaler)
        history, val_ce_init = meta["history"], np.array(meta["val_ce_init"])
        del resumed  # the checkpoint's mapped tensors
        log.info("resuming from step %d", start)
    else:
        val_ce_init = validation_ce(model, valid_data, cfg.eval_batch_size, device, eval_ranks)
        history = [{"step": 0, "val_ce": float(val_ce_init.mean())}]
    net = model
    if ranks.world > 1 and not sharded:
        ids = [device.index] if device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    live = open_live(live_dir, history) if live_dir is not None and ranks.main else None
    local = cfg.batch_size // ranks.world  # this rank's slice of each micro-batch
    tokens_per_step = cfg.batch_size * cfg.grad_accum * train_data.n_frames * model.cfg.n_codebooks
    bar = tqdm(
        range(start, cfg.steps),
        desc="train",
        disable=not (progress and ranks.main),
        initial=start,
        total=cfg.steps,
    )
    for step in bar:
        began = time.perf_counter()
        torch.manual_seed(dropout_seed(cfg.seed, step, ranks.rank))
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        ce_sum = torch.zeros(model.cfg.n_codebooks, device=device)
        for micro in range(cfg.grad_accum):
            first = (step * cfg.grad_accum + micro) * cfg.batch_size + ranks.rank * local
            sample_ids = np.arange(first, first + local, dtype=np.int64)
            rows = batch_rows(first, local, len(train_data), cfg.seed)
            b = train_data.sample_batch(rows, sample_ids, cfg.seed)
            cond, cond_mask = drop_condition(b.cond, b.cond_mask, cfg_drop(cfg, step, sample_ids))
            last = micro == cfg.grad_accum - 1
            with contextlib.nullcontext() if last or net is model else net.no_sync():
                ce_sum += forward_backward(
                    net, b.codes, cond, cond_mask, amp, scaler, 1.0 / cfg.grad_accum
                )
        grad_norm = optimizer_update(model, optimizer, scaler, cfg.grad_clip)
        if (step + 1) % cfg.ema_every == 0:
            update_ema(ema, model, cfg.ema_decay)
        train_ce = all_mean(ce_sum / cfg.grad_accum, ranks).tolist()
        record = {
            "step": step + 1,
            "train_loss": float(np.mean(train_ce)),
            "train_ce": train_ce,
            "lr": lr,
            "grad_norm": float(SH.whole(grad_norm)),
            "tokens_per_s": tokens_per_step / (time.perf_counter() - began),
        }
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            val_ce = validation_ce(model, valid_data, cfg.eval_batch_size, device, eval_ranks)
            record["val_ce"] = float(val_ce.mean())
        history.append(record)
        if live is not None:
            log_live(live, record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", lr=f"{lr:.2e}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            meta = {"step": step + 1, "history": history, "val_ce_init": val_ce_init.tolist()}
            write_checkpoint(ckpt_dir, model, ema, optimizer, scaler, meta, run_hash, cfg, ranks)
    val_ce_final_raw = validation_ce(model, valid_data, cfg.eval_batch_size, device, eval_ranks)
    meta = {
        "step": cfg.steps,
        "history": history,
        "val_ce_init": val_ce_init.tolist(),
        "complete": True,  # kept whole: a schedule that allows it continues from here
    }
    write_checkpoint(ckpt_dir, model, ema, optimizer, scaler, meta, run_hash, cfg, ranks)
    if live is not None:
        live.end()
    return {
        "ema": SH.gathered(ema),  # sharded: gathered on every rank
        "history": history,
        "val_ce_init": val_ce_init,
        "val_ce_final_raw": val_ce_final_raw,
        "config": asdict(cfg),
    }


def write_checkpoint(
    ckpt_dir: Path,
    model: LM,
    ema: dict,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    meta: dict,
    run_hash: str,
    cfg: TrainConfig,
    ranks: Ranks,
) -> None:
    """The run's checkpoint at ``meta["step"]``: rank 0 writes the whole state
    (:func:`save_checkpoint`), or under FSDP every rank its shards (:func:`musicgen.sharding.save`).
    """
    meta = run_meta(meta, run_hash, cfg)
    if cfg.sharding == "fsdp":
        SH.save(ckpt_dir, model, ema, optimizer, scaler, meta)
    elif ranks.main:
        save_checkpoint(ckpt_dir, model, ema, optimizer, scaler, meta)


def run_meta(meta: dict, run_hash: str, cfg: TrainConfig) -> dict:
    """A checkpoint's meta with what identifies its run."""
    return {"run_hash": run_hash, "identity": run_identity(cfg), "code": code_hash(), **meta}


LOOP_MODULES = (
    "musicgen.train",
    "musicgen.lm",
    "musicgen.patterns",
    "musicgen.data.store",
    "musicgen.lora",
    "musicgen.sharding",
)


def code_hash() -> str:
    """A hash of the training code's source (``LOOP_MODULES``): a checkpoint written by other code
    is another run, even when the run's params and inputs are the same."""
    h = hashlib.sha256()
    for name in LOOP_MODULES:
        h.update(Path(importlib.import_module(name).__file__).read_bytes())
    return h.hexdigest()[:16]


def dropout_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of a step's dropout masks on ``rank``.

    Each rank draws its own masks for its own slice of the batch (the same seed would give every
    rank's slice the same masks); rank 0's seed, the one of a single process, is that of the step
    alone, so a one-process run does not depend on this. The rank moves the seed by multiples of
    2**22 (4.2 M steps): the CPU generator (mt19937) keeps only a seed's low 32 bits, in which
    ranks < 1024 of a run shorter than that never share a seed.
    """
    return seed * 1_000_003 + step + rank * 2**22


def _int64_digest(text: str) -> int:
    """``text`` hashed to a signed 64-bit integer, for a collective."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little", signed=True)


def _rank_list(group: list[int]) -> str:
    return ("rank " if len(group) == 1 else "ranks ") + ", ".join(map(str, group))


def _groups(values: list) -> list[list[int]]:
    """The ranks grouped by their value, in order of first appearance."""
    groups: dict = {}
    for rank, value in enumerate(values):
        groups.setdefault(value, []).append(rank)
    return list(groups.values())


def start_disagreement(
    starts: list[int], runs: list[int], codes: list[int], ckpt_dir: Path
) -> str | None:
    """What the ranks disagree on, in words, or None.

    Args:
        starts: each rank's start step (0: it found no checkpoint).
        runs: each rank's run key (hashed).
        codes: each rank's training code hash (hashed).
        ckpt_dir: the checkpoint directory (this rank's path to it).
    """
    problems = []
    if len(set(codes)) > 1:
        problems.append(
            " and ".join(map(_rank_list, _groups(codes)))
            + " run different training code (musicgen/train.py, lm.py, patterns.py, "
            "lora.py, data/store.py): every node must run the same checkout"
        )
    if len(set(runs)) > 1:
        problems.append(
            " and ".join(map(_rank_list, _groups(runs)))
            + " train different runs (their resume keys differ: data, params, init_from "
            "checkpoint or LM config)"
        )
    if len(set(starts)) > 1:
        by_start = sorted(_groups(starts), key=lambda g: -starts[g[0]])
        said = []
        for group in by_start:
            step, many = starts[group[0]], len(group) > 1
            verb = ("resume" if many else "resumes") + f" from step {step}"
            said.append(f"{_rank_list(group)} {verb if step else 'found no checkpoint'}")
        problems.append(
            " but ".join(said)
            + f": the checkpoint directory ({ckpt_dir}) must be on a filesystem shared by every node"
        )
    return "; ".join(problems) or None


def agree_on_start(
    start: int, run_hash: str, ckpt_dir: Path, ranks: Ranks, device: torch.device
) -> None:
    """Refuses, on every rank, a distributed run whose ranks would start differently.

    One all_gather of (start step, run key, code hash), the first collective of the run, which
    every rank calls whether it resumed or not: a rank that found no checkpoint (a checkpoint
    directory not shared by every node) or ran other code would otherwise enter another collective
    than its peers (the step-0 validation), and hang or read garbage.

    Raises:
        RuntimeError: naming the ranks and what differs.
    """
    if ranks.world == 1:
        return
    mine = torch.tensor(
        [start, _int64_digest(run_hash), _int64_digest(code_hash())],
        dtype=torch.int64,
        device=device,
    )
    gathered = [torch.empty_like(mine) for _ in range(ranks.world)]
    dist.all_gather(gathered, mine)
    starts, runs, codes = torch.stack(gathered).T.cpu().tolist()
    problem = start_disagreement(starts, runs, codes, ckpt_dir)
    if problem is not None:
        raise RuntimeError(f"the ranks cannot start together: {problem}")
