"""Training memory per LM preset and batch: counted from the code, and measured on the CPU.

Counted (any preset; a forward of 1 and 2 blocks at batch 1 and 2 on the CPU, extrapolated):

- state: fp32 weights, gradients, AdamW's two moments and the EMA copy = 20 bytes per parameter;
- activations: the storages autograd saves for the backward pass during the train step's forward
  (the LM's forward and loss as :func:`musicgen.train.forward_backward` runs them, under autocast
  for fp16), caught with ``torch.autograd.graph.saved_tensors_hooks``, each storage once, the
  parameters left out (they are in the state). This includes autocast's fp16 copies of the weights
  and the logits (B, K, T, card). The bytes are linear in the blocks and the batch, so 4 small
  forwards give any depth and batch. With ``train.grad_checkpointing`` a block keeps only its input
  (B, S, d_model) fp32 and one block's activations are recomputed at a time.
- LoRA (:data:`LORA`: r 16 on self-, cross-attention and feed-forward, peft through
  :mod:`musicgen.lora`): the frozen fp32 base is 4 bytes per parameter, the adapters (counted with
  peft on the meta device) 20; the activations are counted the same way, with the adapters
  attached and the base frozen (autograd then saves what the adapters' gradients need).
- FSDP over N GPUs (:mod:`musicgen.sharding`, fp16 mixed precision): the 20 bytes per parameter
  divided by N, plus the units all-gathered at a time, an estimate: the root (embeddings, text
  projection, norm, heads, kept gathered from forward to backward) and two blocks (one prefetched)
  in fp16, their fp16 gradients and the fp32 copy reduce-scattered (8 bytes per parameter); the
  activations without autocast's weight copies (the weights are gathered in fp16 and freed).

Left out: the backward's transient buffers (a block's gradients while they are computed, the
gradient of the logits), the CUDA context and the allocator's slack (~0.5-1 GiB on a GPU). The
CPU's attention (PyTorch SDPA) saves no T x T matrix, like CUDA's flash / memory-efficient kernels.

Measured (``--measure``, CPU, fp32): the peak resident memory of a fresh process that builds the LM
and runs two real train steps (the loop's own :func:`musicgen.train.forward_backward`,
:func:`musicgen.train.optimizer_update` and :func:`musicgen.train.update_ema`), minus the process's
memory before the LM was built (Linux's VmHWM), with and without LoRA. It checks the count where
the CPU can run the step.

Usage:
    python benchmarks/train_memory.py                     # the README's counted table
    python benchmarks/train_memory.py --measure --presets tiny seed1 --batches 1 4   # CPU check
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from pathlib import Path

import torch

from musicgen.lm import LM, LMConfig
from musicgen.lora import LoraSettings, attach

CARD, K, TEXT_DIM, TEXT_LEN = 2048, 4, 768, 64  # EnCodec 32 kHz, t5-base, a long caption
GIB = 2**30
# the LoRA columns: r 16 on attention and feed-forward, as the Hugging Face dreambooth recipe
LORA = LoraSettings(r=16, alpha=16, dropout=0.05, targets=["self_attn", "cross_attn", "ffn"])


def lm_config(preset: str) -> LMConfig:
    return LMConfig.from_preset(preset, card=CARD, n_codebooks=K, text_dim=TEXT_DIM)


def batch(b: int, frames: int, device: str):
    codes = torch.randint(0, CARD, (b, K, frames), device=device)
    cond = torch.randn(b, TEXT_LEN, TEXT_DIM, device=device)
    return codes, cond, torch.ones(b, TEXT_LEN, dtype=torch.bool, device=device)


def model(cfg: LMConfig, lora: bool) -> LM:
    """The LM in training mode, with :data:`LORA`'s adapters when ``lora`` (the base frozen)."""
    torch.manual_seed(0)
    lm = LM(cfg).train()
    if lora:
        attach(lm, LORA)
    return lm


def saved_bytes(cfg: LMConfig, b: int, frames: int, amp: torch.dtype | None, lora: bool) -> int:
    """Bytes of the storages autograd saves in one forward of the train step on the CPU."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    lm = model(cfg, lora)
    weights = {p.untyped_storage().data_ptr() for p in lm.parameters()}  # in the state
    codes, cond, mask = batch(b, frames, "cpu")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            _, ce = lm(codes, cond, mask)
            ce.mean()
    return sum(n for ptr, n in storages.items() if ptr not in weights)


@functools.lru_cache
def saved_parts(preset: str, frames: int, precision: str, lora: bool) -> dict[str, int]:
    """The saved bytes of the preset's train step, split into per block and outside the blocks,
    each fixed (autocast's cast weights) and per sample.

    Saved bytes are linear in the layers and the batch: counted with 1 and 2 layers at batch 1 and
    2 of the preset's width, they give any depth and batch (exactly, up to the cached weight
    casts, which do not grow with the batch). Half precision is counted with bf16 autocast, whose
    saved bytes equal fp16's (the CPU's autocast casts the same ops; fp16 matmuls are ~3x slower
    there).
    """
    cfg = lm_config(preset)
    amp = torch.bfloat16 if precision == "fp16" else None
    c = {
        (n, b): saved_bytes(LMConfig(**{**cfg.to_dict(), "n_layers": n}), b, frames, amp, lora)
        for n in (1, 2)
        for b in (1, 2)
    }
    block_sample = (c[2, 2] - c[1, 2]) - (c[2, 1] - c[1, 1])  # grows with the batch
    block_fixed = (c[2, 1] - c[1, 1]) - block_sample  # cast weights of one block
    outside_sample = (c[1, 2] - c[1, 1]) - block_sample
    outside_fixed = c[1, 1] - outside_sample - block_fixed - block_sample
    return {
        "block_sample": block_sample,
        "block_fixed": block_fixed,
        "outside_sample": outside_sample,
        "outside_fixed": outside_fixed,
    }


def activations(
    cfg: LMConfig, parts: dict, b: int, frames: int, checkpointing: bool, casts: bool = True
) -> int:
    """Saved bytes of one train step at micro-batch ``b`` (``casts``: with autocast's weight
    copies; FSDP's half-precision weights need none). With grad checkpointing a block keeps only
    its input (B, S, d_model) fp32 and one block's activations are recomputed at a time."""
    fixed = (parts["outside_fixed"] + cfg.n_layers * parts["block_fixed"]) if casts else 0
    if checkpointing:
        steps = frames + max(cfg.delays)  # the delay pattern's sequence length
        blocks = b * (cfg.n_layers * steps * cfg.d_model * 4 + parts["block_sample"])
    else:
        blocks = b * cfg.n_layers * parts["block_sample"]
    return fixed + b * parts["outside_sample"] + blocks


@functools.lru_cache
def parameters(preset: str) -> dict[str, int]:
    """The preset's parameters, its root's (what is not in a block: embeddings, text projection,
    final norm, heads), one block's and :data:`LORA`'s adapters', counted on the meta device."""
    cfg = lm_config(preset)
    with torch.device("meta"):  # sizes only: no memory
        lm = LM(cfg)
        block = sum(p.numel() for p in lm.layers[0].parameters())
        total = sum(p.numel() for p in lm.parameters())
        attach(lm, LORA)
    adapters = sum(p.numel() for p in lm.parameters() if p.requires_grad)
    return {"all": total, "root": total - cfg.n_layers * block, "block": block, "lora": adapters}


def count(
    preset: str,
    b: int,
    frames: int,
    precision: str,
    checkpointing: bool,
    mode: str = "full",
    world: int = 1,
) -> dict:
    """The counted memory of one train step on one GPU (see the module's docstring), in bytes.

    Args:
        preset: the LM preset.
        b: the micro-batch of this process.
        frames: codec frames per clip.
        precision: fp32 | fp16 (autocast).
        checkpointing: ``train.grad_checkpointing``.
        mode: ``full`` (one whole copy, as DDP), ``lora`` (:data:`LORA`: the base frozen, 4
            bytes per base parameter, 20 per adapter parameter) or ``fsdp`` (``world`` GPUs).
        world: the FSDP processes.
    """
    cfg, n = lm_config(preset), parameters(preset)
    parts = saved_parts(preset, frames, precision, mode == "lora")
    if mode == "lora":
        state = 4 * n["all"] + 20 * n["lora"]
    elif mode == "fsdp":  # the shards, plus the gathered root and two blocks (one prefetched)
        half = 2 if precision == "fp16" else 4
        gathered = (n["root"] + 2 * n["block"]) * (2 * half + 4)  # weights, grads, fp32 grads
        state = 20 * n["all"] // world + gathered
    else:
        state = 20 * n["all"]
    acts = activations(cfg, parts, b, frames, checkpointing, casts=mode != "fsdp")
    return {"params": n["all"], "lora_params": n["lora"], "state": state, "activations": acts}


def peak_rss() -> int:
    """This process's peak resident memory (bytes): Linux's VmHWM, which starts over when a
    process execs a program (``ru_maxrss`` does not: a child started by a large parent reads the parent's peak)."""
    status = Path("/proc/self/status").read_text()
    return (
        int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))
        * 1024
    )


def measure(preset: str, b: int, frames: int, mode: str) -> int:
    """Peak RSS growth (bytes) of two fp32 train steps on the CPU, in a fresh process
    (``mode``: ``full`` or ``lora``)."""
    cmd = [sys.executable, __file__, "--measure-one", preset, str(b), str(frames), mode]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def measure_here(preset: str, b: int, frames: int, lora: bool) -> int:
    """What :func:`measure` runs in its fresh process."""
    from musicgen.train import (
        TrainConfig,
        forward_backward,
        make_optimizer,
        optimizer_update,
        trainable_state,
        update_ema,
    )

    codes, cond, mask = batch(b, frames, "cpu")
    base = peak_rss()
    lm = model(lm_config(preset), lora)
    optimizer = make_optimizer(lm, TrainConfig())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ema = {k: v.detach().clone() for k, v in trainable_state(lm).items()}
    for _ in range(2):
        forward_backward(lm, codes, cond, mask, None, scaler, 1.0)
        optimizer_update(lm, optimizer, scaler, 1.0)
        update_ema(ema, lm, 0.99)
    return peak_rss() - base


# (header, precision, grad checkpointing, mode, FSDP processes): the README's columns
COLUMNS = (
    ("fp32", "fp32", False, "full", 1),
    ("fp32 + ckpt", "fp32", True, "full", 1),
    ("fp16", "fp16", False, "full", 1),
    ("fp16 + ckpt", "fp16", True, "full", 1),
    ("LoRA", "fp16", False, "lora", 1),
    ("LoRA + ckpt", "fp16", True, "lora", 1),
    ("FSDP 2", "fp16", False, "fsdp", 2),
    ("FSDP 8", "fp16", False, "fsdp", 8),
    ("FSDP 8 + ckpt", "fp16", True, "fsdp", 8),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "seed1", "small", "medium", "large"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--frames", type=int, default=500, help="codec frames (500: 10 s at 50 Hz)")
    parser.add_argument("--measure", action="store_true", help="also measure fp32 on the CPU")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure-one", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        preset, b, frames, mode = args.measure_one
        print(measure_here(preset, int(b), int(frames), mode == "lora"))
        return
    extra = ["LoRA fp32 (counted)", "measured fp32 (CPU)", "measured LoRA fp32 (CPU)"]
    headers = [c[0] for c in COLUMNS] + (extra if args.measure else [])
    print("| preset | params | batch | " + " | ".join(headers) + " |")
    print("|---|---|---|" + "---|" * len(headers))
    rows = []
    for preset in args.presets:
        for b in args.batches:
            row = {"preset": preset, "batch": b, "frames": args.frames}
            cells = []
            for header, precision, ckpt, mode, world in COLUMNS:
                c = count(preset, b, args.frames, precision, ckpt, mode, world)
                row |= {"params": c["params"], "lora_params": c["lora_params"]}
                row[header] = round((c["state"] + c["activations"]) / GIB, 2)
                cells.append(f"{row[header]:.1f}")
            if args.measure:
                c = count(preset, b, args.frames, "fp32", False, "lora")
                row[extra[0]] = round((c["state"] + c["activations"]) / GIB, 2)
                row[extra[1]] = round(measure(preset, b, args.frames, "full") / GIB, 2)
                row[extra[2]] = round(measure(preset, b, args.frames, "lora") / GIB, 2)
                cells += [f"{row[h]:.1f}" for h in extra]
            name = f"| {preset} | {row['params'] / 1e6:.0f} M | {b} | "
            print(name + " | ".join(cells) + " |", flush=True)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
