"""Fully sharded data parallel training (``train.sharding: fsdp``) with torch's own FSDP2.

``torch.distributed.fsdp.fully_shard`` on each transformer block and on the LM (the root unit:
embeddings, text projection, final norm and heads): every rank holds ``1 / world`` of the weights,
their gradients, AdamW's moments and the EMA, and a unit's weights are all-gathered for its
forward and backward and freed after. Mixed precision as audiocraft uses it: the weights are
all-gathered and computed in the autocast dtype (``train.precision``: bf16, or fp16 with a
:class:`ShardedGradScaler` whose inf check is all-reduced) while the sharded master weights, the
gradient reduce-scatter and the optimizer stay fp32; with fp32 everything is fp32.

Checkpoints are sharded: ``torch.distributed.checkpoint`` (DCP) writes each rank's shards of the
weights, optimizer state and EMA (no pickles) into ``sharded-<step>/`` in the checkpoint
directory, and ``meta.json`` names it, written last, so a kill never leaves a half-written
checkpoint in use. DCP reshards on load: a run may resume with another process count.

The EMA is kept sharded like the weights (a ``DTensor`` per weight, updated where it lives) and
gathered into whole tensors once, at the end (:func:`gathered`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from musicgen.lm import LM

SHARDINGS = ("none", "fsdp")
STATE_PREFIX = "sharded-"  # the DCP directory of a checkpoint: sharded-<step>


def check_world(sharding: str, world: int) -> None:
    """Refuses FSDP in one process: there is nothing to shard over.

    Raises:
        ValueError: with what to set instead.
    """
    if sharding == "fsdp" and world < 2:
        raise ValueError(
            "train.sharding fsdp shards the model over processes, and this run has one: set "
            "train.nproc_per_node (or train.nnodes) so that there are at least 2, or "
            "train.sharding none"
        )


def mixed_precision(amp: torch.dtype | None) -> MixedPrecisionPolicy:
    """Weights all-gathered in ``amp`` (fp32 when None), gradients reduced in fp32."""
    return MixedPrecisionPolicy(param_dtype=amp or torch.float32, reduce_dtype=torch.float32)


def shard(model: LM, amp: torch.dtype | None) -> LM:
    """Shards ``model`` in place over the default process group: one unit per transformer block,
    then the root (embeddings, text projection, norm, heads).

    Args:
        model: the LM, on this rank's device, before the optimizer is made.
        amp: the autocast dtype, or None (fp32).

    Returns:
        ``model`` itself (now also an ``FSDPModule``).
    """
    policy = mixed_precision(amp)
    for block in model.layers:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def grad_scaler(device: torch.device, amp: torch.dtype | None, sharded: bool):
    """The loss scaler (a no-op unless fp16); sharded, its inf check is all-reduced so that every
    rank skips the same steps."""
    enabled = amp == torch.float16
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type, enabled=enabled)
    return torch.amp.GradScaler(device.type, enabled=enabled)


def whole(x: torch.Tensor) -> torch.Tensor:
    """A sharded tensor all-gathered (a collective: every rank calls it); others as they are."""
    return x.full_tensor() if isinstance(x, DTensor) else x


def gathered(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` as whole tensors on the CPU (every rank calls it: sharded tensors are gathered
    one at a time)."""
    return {k: whole(v).cpu() for k, v in state.items()}


def with_weights(model: LM, weights: dict[str, torch.Tensor]) -> LM:
    """``model`` with ``weights`` loaded; a sharded one is replaced by a whole LM of its config
    (built on the meta device, its tensors then those of ``weights``)."""
    if not isinstance(model, FSDPModule):
        model.load_state_dict(weights)
        return model
    with torch.device("meta"):
        whole_model = LM(model.cfg)
    whole_model.load_state_dict(weights, assign=True)
    return whole_model


def _state(model: LM, ema: dict, optimizer: torch.optim.Optimizer) -> dict:
    """What DCP saves and loads: the weights, the optimizer's state and the EMA, sharded."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state, "ema": ema}


def save(
    ckpt_dir: Path,
    model: LM,
    ema: dict,
    optimizer: torch.optim.Optimizer,
    scaler,
    meta: dict,
) -> None:
    """Writes a sharded checkpoint (every rank calls it): the DCP directory
    ``sharded-<step>``, then (rank 0) ``meta.json`` naming it and the GradScaler's state, then
    the older DCP directories (and a whole-model ``state.safetensors``) are removed."""
    import torch.distributed.checkpoint as dcp

    from musicgen.train import write_meta

    name = f"{STATE_PREFIX}{meta['step']:08d}"
    main = dist.get_rank() == 0
    if main:
        shutil.rmtree(ckpt_dir / name, ignore_errors=True)  # a killed save's leftovers
    dist.barrier()
    dcp.save(_state(model, ema, optimizer), checkpoint_id=ckpt_dir / name)
    dist.barrier()  # every rank's shards are written
    if main:
        write_meta(ckpt_dir, {**meta, "sharded": name, "scaler": scaler.state_dict()})
        for old in ckpt_dir.glob(f"{STATE_PREFIX}*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        (ckpt_dir / "state.safetensors").unlink(missing_ok=True)
    dist.barrier()


def state_dir(ckpt_dir: Path, meta: dict) -> Path | None:
    """The DCP directory ``meta`` names, or None (a whole-model checkpoint, or shards gone)."""
    name = meta.get("sharded")
    if not name or not (ckpt_dir / name / ".metadata").exists():
        return None
    return ckpt_dir / name


def restore(
    path: Path,
    meta: dict,
    model: LM,
    ema: dict,
    optimizer: torch.optim.Optimizer,
    scaler,
) -> None:
    """Loads a sharded checkpoint (``path``: its DCP directory) into the sharded model, its
    optimizer and EMA, and the GradScaler; every rank calls it, with any process count."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _state(model, ema, optimizer)
    dcp.load(state, checkpoint_id=path)  # in place, each rank its shards; the EMA's too
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
    )
    if meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
