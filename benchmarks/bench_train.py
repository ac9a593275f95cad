"""Training throughput of the train stage's step vs. Hugging Face's ``MusicgenForCausalLM``.

Both models have the same random weights (a Hugging Face decoder of the preset's sizes, saved with
``save_pretrained`` and converted by :func:`musicgen.convert.convert_hf`; see ``bench_lm.py``), the
same batch of codes (B, K, T) through the delay pattern and the same text states, the same
precision (``torch.autocast`` to the dtype of ``--precision``, with a GradScaler for fp16) and the
same attention backend (PyTorch's ``scaled_dot_product_attention``; Hugging Face with
``attn_implementation="sdpa"``).

One step is what the train stage does per optimizer step with one micro-batch: forward and
backward under autocast, unscale, clip the gradient norm to 1.0, AdamW (the stage's parameter
groups for ours), GradScaler update. Ours runs the loop's own functions
(:func:`musicgen.train.forward_backward`, :func:`musicgen.train.optimizer_update`). Hugging Face
gets the delayed sequence with the special id as start token and its loss (mean over codebooks of
the cross-entropy over non-pad labels). tokens/s counts B * K * T codec tokens per step. Each
figure is the median of ``--repeats`` timed steps after ``--warmup`` steps.

It runs on CUDA when present (else the CPU) and prints the device: the GPU's name, or the CPU's
model, instruction set and thread count; on CUDA also each model's peak memory allocated (weights,
gradients, AdamW state, activations). ``--grad-checkpointing`` turns on activation checkpointing
in both (``train.grad_checkpointing``; Hugging Face's ``activation_checkpointing_enable``).

Usage:
    python benchmarks/bench_train.py                                  # tiny and seed1
    python benchmarks/bench_train.py --presets small --batch 8 --precision bf16   # on a GPU
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_lm import CARD, K, build_pair, conditioning

from musicgen.device import autocast, autocast_dtype, pick_device
from musicgen.train import TrainConfig, forward_backward, make_optimizer, optimizer_update


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model, its instruction set as PyTorch uses it and threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    isa = torch.backends.cpu.get_cpu_capability()
    return f"CPU {model}, {isa}, {torch.get_num_threads()} thread(s)"


def time_steps(step, device: torch.device, warmup: int, repeats: int) -> tuple[float, str]:
    """Median seconds of ``step()`` over ``repeats`` calls after ``warmup`` calls, and on CUDA
    the peak memory allocated (weights, gradients, optimizer state and activations)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = ""
    if device.type == "cuda":
        peak = f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
    return statistics.median(times), peak


def bench(preset: str, batch: int, frames: int, precision: str, args, device) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(preset, Path(tmp))
    hf.config._attn_implementation = "sdpa"
    ours.grad_checkpointing = args.grad_checkpointing
    if args.grad_checkpointing:
        enable = getattr(hf, "activation_checkpointing_enable", None)  # transformers >= 5.x
        (enable or hf.gradient_checkpointing_enable)()
    hf.to(device).train()
    ours.to(device).train()
    amp = autocast_dtype(precision, device)
    gen = torch.Generator().manual_seed(2)
    codes = torch.randint(0, CARD, (batch, K, frames), generator=gen).to(device)  # (B, K, T)
    states, mask = (x.to(device) for x in conditioning(batch, ours.cfg.d_model))
    seq = ours.pattern(frames).build(codes, CARD)  # (B, K, S), the special id where invalid
    start = torch.full((batch, K, 1), CARD, device=device)
    hf_inputs = torch.cat([start, seq[:, :, :-1]], dim=2).reshape(batch * K, -1)  # (B*K, S)
    hf_labels = seq.transpose(1, 2)  # (B, S, K); the special (= pad) id is ignored
    cfg = TrainConfig(lr=1e-4)
    opt_ours, opt_hf = make_optimizer(ours, cfg), torch.optim.AdamW(hf.parameters(), lr=1e-4)
    scalers = [torch.amp.GradScaler(device.type, enabled=amp == torch.float16) for _ in "ab"]

    def step_ours():
        forward_backward(ours, codes, states, mask.bool(), amp, scalers[0], 1.0)
        optimizer_update(ours, opt_ours, scalers[0], cfg.grad_clip)

    def step_hf():
        with autocast(device, amp):
            out = hf(
                input_ids=hf_inputs,
                encoder_hidden_states=states,
                encoder_attention_mask=mask,
                labels=hf_labels,
                use_cache=False,
            )
        scalers[1].scale(out.loss).backward()
        optimizer_update(hf, opt_hf, scalers[1], cfg.grad_clip)

    t_ours, mem_ours = time_steps(step_ours, device, args.warmup, args.repeats)
    opt_ours.state.clear()  # HF's peak memory without ours' state on the device
    ours.cpu()
    t_hf, mem_hf = time_steps(step_hf, device, args.warmup, args.repeats)
    tokens = batch * K * frames
    print(
        f"train {preset:6s} batch {batch:3d}  {frames} frames  {precision}: "
        f"ours {tokens / t_ours:9.0f} tokens/s ({1000 * t_ours:7.1f} ms/step{mem_ours})  "
        f"HF {tokens / t_hf:9.0f} tokens/s ({1000 * t_hf:7.1f} ms/step{mem_hf})  "
        f"ratio {t_hf / t_ours:5.2f}x",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="*", default=None, help="CPU: tiny seed1; CUDA: small")
    parser.add_argument("--batch", type=int, default=None, help="CPU: 4; CUDA: 16")
    parser.add_argument("--frames", type=int, default=250, help="codec frames (50 per second)")
    parser.add_argument("--precision", default="auto", help="auto | fp32 | fp16 | bf16")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument(
        "--grad-checkpointing", action="store_true", help="activation checkpointing, both models"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    presets = args.presets or (["small"] if cuda else ["tiny", "seed1"])
    batch = args.batch or (16 if cuda else 4)
    precision = "fp16" if args.precision == "auto" and cuda else args.precision
    precision = "fp32" if precision == "auto" else precision
    print(f"torch {torch.__version__}, {device_name(device)}, sdpa attention", flush=True)
    for preset in presets:
        bench(preset, batch, args.frames, precision, args, device)


if __name__ == "__main__":
    main()
