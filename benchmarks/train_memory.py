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

Left out: the backward's transient buffers (a block's gradients while they are computed, the
gradient of the logits), the CUDA context and the allocator's slack (~0.5-1 GiB on a GPU). The
CPU's attention (PyTorch SDPA) saves no T x T matrix, like CUDA's flash / memory-efficient kernels.

Measured (``--measure``, CPU, fp32): the peak resident memory of a fresh process that builds the LM
and runs two real train steps (the loop's own :func:`musicgen.train.forward_backward`,
:func:`musicgen.train.optimizer_update` and :func:`musicgen.train.update_ema`), minus the process's
memory before the LM was built. It checks the count where the CPU can run the step.

Usage:
    python benchmarks/train_memory.py                     # the README's counted table
    python benchmarks/train_memory.py --measure --presets tiny seed1 --batches 1 4   # CPU check
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys

import torch

from musicgen.lm import LM, LMConfig

CARD, K, TEXT_DIM, TEXT_LEN = 2048, 4, 768, 64  # EnCodec 32 kHz, t5-base, a long caption
GIB = 2**30


def lm_config(preset: str) -> LMConfig:
    return LMConfig.from_preset(preset, card=CARD, n_codebooks=K, text_dim=TEXT_DIM)


def batch(b: int, frames: int, device: str):
    codes = torch.randint(0, CARD, (b, K, frames), device=device)
    cond = torch.randn(b, TEXT_LEN, TEXT_DIM, device=device)
    return codes, cond, torch.ones(b, TEXT_LEN, dtype=torch.bool, device=device)


def saved_bytes(cfg: LMConfig, b: int, frames: int, amp: torch.dtype | None) -> int:
    """Bytes of the storages autograd saves in one forward of the train step on the CPU."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    torch.manual_seed(0)
    model = LM(cfg).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}  # in the state
    codes, cond, mask = batch(b, frames, "cpu")
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            _, ce = model(codes, cond, mask)
            ce.mean()
    return sum(n for ptr, n in storages.items() if ptr not in weights)


@functools.lru_cache
def saved_by_layers_and_batch(preset: str, frames: int, precision: str) -> dict:
    """Saved bytes with (1 or 2 layers, batch 1 or 2) of the preset's width."""
    cfg = lm_config(preset)
    amp = torch.float16 if precision == "fp16" else None
    return {
        (n, b): saved_bytes(LMConfig(**{**cfg.to_dict(), "n_layers": n}), b, frames, amp)
        for n in (1, 2)
        for b in (1, 2)
    }


def count(preset: str, b: int, frames: int, precision: str, checkpointing: bool) -> dict:
    """The counted memory of one train step (see the module's docstring), in bytes.

    Saved bytes are linear in the layers and the batch: they are counted with 1 and 2 layers at
    batch 1 and 2 of the preset's width, and extrapolated (exactly, up to the cached weight casts,
    which do not grow with the batch).
    """
    cfg = lm_config(preset)
    with torch.device("meta"):  # sizes only: no memory
        params = sum(p.numel() for p in LM(cfg).parameters())
    c = saved_by_layers_and_batch(preset, frames, precision)
    per_block_sample = (c[2, 2] - c[1, 2]) - (c[2, 1] - c[1, 1])  # grows with the batch
    per_block_fixed = (c[2, 1] - c[1, 1]) - per_block_sample  # cast weights of one block
    outside_sample = (c[1, 2] - c[1, 1]) - per_block_sample
    outside_fixed = c[1, 1] - outside_sample - per_block_fixed - per_block_sample
    blocks = cfg.n_layers * per_block_fixed
    if checkpointing:  # block inputs kept, one block's activations recomputed at a time
        steps = frames + max(cfg.delays)  # the delay pattern's sequence length
        blocks += b * (cfg.n_layers * steps * cfg.d_model * 4 + per_block_sample)
    else:
        blocks += b * cfg.n_layers * per_block_sample
    activations = outside_fixed + b * outside_sample + blocks
    return {"params": params, "state": 20 * params, "activations": int(activations)}


def measure(preset: str, b: int, frames: int) -> int:
    """Peak RSS growth (bytes) of two fp32 train steps on the CPU, in a fresh process."""
    cmd = [sys.executable, __file__, "--measure-one", preset, str(b), str(frames)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


def measure_here(preset: str, b: int, frames: int) -> int:
    """What :func:`measure` runs in its fresh process."""
    from musicgen.train import (
        TrainConfig,
        forward_backward,
        make_optimizer,
        optimizer_update,
        update_ema,
    )

    codes, cond, mask = batch(b, frames, "cpu")
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.manual_seed(0)
    model = LM(lm_config(preset)).train()
    optimizer = make_optimizer(model, TrainConfig())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ema = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(2):
        forward_backward(model, codes, cond, mask, None, scaler, 1.0)
        optimizer_update(model, optimizer, scaler, 1.0)
        update_ema(ema, model, 0.99)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--presets", nargs="+", default=["tiny", "seed1", "small", "medium", "large"]
    )
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 32])
    parser.add_argument("--frames", type=int, default=500, help="codec frames (500: 10 s at 50 Hz)")
    parser.add_argument("--measure", action="store_true", help="also measure fp32 on the CPU")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--measure-one", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        preset, b, frames = args.measure_one
        print(measure_here(preset, int(b), int(frames)))
        return
    rows = []
    print(
        "| preset | params | batch | fp32 | fp32 + ckpt | fp16 | fp16 + ckpt |"
        + (" measured fp32 (CPU) |" if args.measure else "")
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if args.measure else ""))
    for preset in args.presets:
        for b in args.batches:
            cells, row = [], {"preset": preset, "batch": b, "frames": args.frames}
            for precision in ("fp32", "fp16"):
                for ckpt in (False, True):
                    c = count(preset, b, args.frames, precision, ckpt)
                    total = (c["state"] + c["activations"]) / GIB
                    row[f"{precision}{'_ckpt' if ckpt else ''}_gib"] = round(total, 2)
                    row["params"] = c["params"]
                    cells.append(f"{total:.1f}")
            line = f"| {preset} | {row['params'] / 1e6:.0f} M | {b} | " + " | ".join(cells) + " |"
            if args.measure:
                row["measured_fp32_gib"] = round(measure(preset, b, args.frames) / GIB, 2)
                line += f" {row['measured_fp32_gib']:.1f} |"
            print(line, flush=True)
            rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
