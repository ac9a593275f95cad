"""Generation speed of our LM vs. Hugging Face's ``MusicgenForCausalLM``, and this machine's floor.

Both run in this process with the same weights: a random Hugging Face decoder is built from the
preset's sizes, saved with ``save_pretrained`` and converted with
:func:`musicgen.convert.convert_hf`. Conditioning is the same random text states (already in the
decoder's width, so the converted ``text_proj`` is the identity) with a padding mask.

Generation: classifier-free guidance 3.0 (conditional and null rows in one batch on both sides),
top-k 250, temperature 1.0, ``frames`` codec frames (+3 steps of the delay pattern). Hugging Face is
called with what transformers 5.x needs to be correct (explicit encoder-decoder cache, all-ones
decoder mask, a GenerationConfig with the special ids, encoder states doubled as [cond; zeros]), in
float32 always; ours with its weights stored as each of ``--weights`` (``musicgen.kernels``).
Our and Hugging Face's runs alternate (one warm-up each, then ``--repeats`` rounds); each figure is
the fastest round, which is the least disturbed one on a shared machine.

The floor. Before the cases the script measures, on this machine and with ``--threads`` threads:
the read bandwidth (the fastest of a torch sum, a numpy dot and our kernel over 512 MB) and the
GEMM rate at each case's row count (the fastest of BLAS and our kernel on (rows x 1024) @
(1024 x 4096) with the weight in cache, and of a 2048^3 sgemm). A step's floor is the larger of its bytes (every linear weight in its stored type,
plus the KV cache it reads, on average over the run) over the bandwidth and its FLOPs over that
rate. Each case prints the floor and our and Hugging Face's distance to it (time / floor).

At the end, the speed aims of issues 12 and 19 (:data:`AIMS`: fp32 batch 1 within 1.15x of the
floor; from batch 4, at least 2x Hugging Face and within 1.5x of the floor; bf16 batch 1 at least
2x Hugging Face's fp32; no row slower than torch+BLAS) are checked against this run's ``seed1``
and ``small`` rows, each with the rows that miss it, so that one run on a new machine says where
it stands.

The per-step peer. On the CPU each case also times our own model with the numba step off
(``generate(fast_kernel=False)``: the same layers in torch, every linear layer on torch's BLAS),
printed as "torch+BLAS" with its time over ours, and then how each weight shape was multiplied at
the case's rows (:mod:`musicgen.kernel_plans`: block sizes, one thread, or BLAS, measured on this
machine and kept per CPU). The first line names the CPU, its ISA flags, numba's target and layout.

Quality of fewer bytes: for each ``--weights`` other than fp32, the greedy tokens (batch 1) are
compared with fp32's over the whole run. Held-out cross-entropy of a trained model with each type:
``benchmarks/weights_quality.py`` (a run of the pipeline) and
``tests/test_kernels.py::test_bf16_and_int8_logit_error_and_held_out_ce``.

On CUDA (when present, or ``--device cuda``) both run on the GPU: ours with its static step in a
CUDA graph (``generate(static_step=True)``), captured once per case in the warm-up call and reused
by the timed calls (a :class:`musicgen.generate.DecoderPool`); Hugging Face with its fastest documented settings
(:func:`hf_settings`: a static cache for self-attention and one for cross-attention, kept across the
case's calls, and transformers' own ``torch.compile`` of the decoding step, "reduce-overhead").
``tests/test_bench_hf.py`` runs that same Hugging Face call on the CPU (uncompiled; compiled in
its slow variant) against Hugging Face's greedy tokens, and the reuse of our decoder against fresh
calls; the GPU run itself is untested here (no GPU on the project's machine). Training speed:
``benchmarks/bench_train.py``.

Usage:
    OMP_NUM_THREADS=1 python3 benchmarks/bench_lm.py                # the README's figures
    OMP_NUM_THREADS=1 python3 benchmarks/bench_lm.py --presets seed1 --batches 1 4 16 \\
        --weights fp32 bf16 --frames 50                              # the quick subset, ~5 min
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import GenerationConfig, MusicgenDecoderConfig, MusicgenForCausalLM
from transformers.cache_utils import DynamicCache, EncoderDecoderCache, StaticCache
from transformers.generation import CompileConfig

from musicgen.convert import convert_hf
from musicgen.generate import DecoderPool, SamplingConfig, generate
from musicgen.kernel_plans import cache_path, cpu_key
from musicgen.kernels import (
    BLAS,
    ONE_THREAD,
    OURS,
    PANEL,
    PLAN_ROWS,
    WEIGHT_TYPES,
    kernel_weight,
    matmul,
    quantize,
)
from musicgen.lm import LM, PRESETS, load_lm
from musicgen.machine import cpu_flags, cpu_id, cpu_model

K, CARD, TEXT_LEN = 4, 2048, 24
BYTES = {"fp32": 4, "bf16": 2, "int8": 1}  # per stored weight element


def build_pair(preset: str, tmp: Path) -> tuple[MusicgenForCausalLM, LM]:
    """A random Hugging Face decoder of the preset's sizes and our LM converted from it."""
    sizes = PRESETS[preset]
    config = MusicgenDecoderConfig(
        vocab_size=CARD,
        num_codebooks=K,
        hidden_size=sizes["d_model"],
        num_attention_heads=sizes["n_heads"],
        num_hidden_layers=sizes["n_layers"],
        ffn_dim=sizes["ffn_dim"],
        pad_token_id=CARD,
        bos_token_id=CARD,
        dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        layerdrop=0.0,
    )
    torch.manual_seed(0)
    hf = MusicgenForCausalLM(config).eval()
    hf.save_pretrained(tmp / "hf")
    convert_hf(str(tmp / "hf"), tmp / "ours")
    return hf, load_lm(tmp / "ours")


def conditioning(batch: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random text states (B, L, D) and a mask (B, L) with the last rows padded."""
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(batch, TEXT_LEN, dim, generator=gen)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.long)
    for b in range(1, batch):
        mask[b, TEXT_LEN - 3 * b :] = 0
    return states, mask


def machine(device: torch.device, threads: int) -> str:
    """The GPU's name, or the CPU's model, its vector instruction sets and the thread count."""
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    flags = cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "asimd", "sve")
    isa = " ".join(f for f in wanted if f in flags) or "?"
    family = f" {cpu_id()}" if cpu_id() else ""
    return (
        f"CPU {cpu_model()}{family} ({platform.machine()}; {isa}), {threads} thread(s), "
        f"{os.cpu_count()} cores\n"
        f"kernels: {cpu_key()} (numba's target; panels of {PANEL} outputs), plans measured per "
        f"shape and rows in {cache_path()}"
    )


def fastest(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls of ``fn``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class Machine:
    """What this machine reaches, measured in this run."""

    bandwidth: float  # bytes/s, reading a large array
    gemm: dict[int, float]  # rows -> FLOP/s of (rows x 1024) @ (1024 x 4096) (or sgemm, if more)


def measure_bandwidth(repeats: int) -> float:
    """Bytes/s of the fastest of three reads of a 512 MB array: torch sum, numpy dot, our kernel."""
    big = torch.ones(128 * 2**20)
    flat, x = big.numpy(), np.ones((1, 1024), dtype=np.float32)
    stored = kernel_weight(*quantize(big.view(-1, 1024), "fp32"))
    matmul(x, stored)  # compile
    reads = (big.sum, lambda: np.dot(flat, flat), lambda: matmul(x, stored))
    return flat.nbytes / min(fastest(read, repeats) for read in reads)


def measure_machine(rows: list[int], repeats: int = 5) -> Machine:
    """Read bandwidth and GEMM rates with torch's current thread count (see :class:`Machine`)."""
    bandwidth = measure_bandwidth(repeats)
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    sgemm = 2 * n**3 / fastest(lambda: a @ b, repeats)
    w = torch.randn(4096, 1024)
    stored = kernel_weight(*quantize(w, "fp32"))
    gemm = {}
    for r in rows:
        x = torch.randn(r, 1024)
        flops = 2 * r * 1024 * 4096
        blas = flops / fastest(lambda x=x: F.linear(x, w), 10 * repeats)
        matmul(x.numpy(), stored)  # compile
        ours = flops / fastest(lambda x=x: matmul(x.numpy(), stored), 10 * repeats)
        gemm[r] = max(blas, ours, sgemm)
        print(
            f"  GEMM ({r:3d} x 1024) @ (1024 x 4096), weight in cache: BLAS {blas / 1e9:5.1f}, "
            f"ours {ours / 1e9:5.1f} GFLOP/s",
            flush=True,
        )
    print(
        f"  read bandwidth {bandwidth / 1e9:.1f} GB/s (512 MB), "
        f"sgemm 2048^3 {sgemm / 1e9:.1f} GFLOP/s",
        flush=True,
    )
    return Machine(bandwidth, gemm)


def step_cost(model: LM, batch: int, n_steps: int, weights: str) -> tuple[float, float]:
    """Bytes read and FLOPs of an average decoding step with guidance (2 * batch rows).

    Bytes: every linear weight of the layers and heads in its stored type, plus the self-attention
    KV cache at the run's mean length and the text keys and values (float32). FLOPs: 2 per
    multiply-add of the projections (cross-attention only for the conditioned rows), the heads and
    the attention scores and sums.
    """
    c = model.cfg
    D, Fd, L = c.d_model, c.ffn_dim, c.n_layers
    rows, length = 2 * batch, (n_steps + 1) / 2
    self_params, cross_params, head_params = 4 * D * D + 2 * D * Fd, 2 * D * D, K * c.card * D
    weight_bytes = (L * (self_params + cross_params) + head_params) * BYTES[weights]
    cache_bytes = 4 * L * 2 * D * (rows * length + batch * TEXT_LEN)
    flops = 2 * (L * (rows * self_params + batch * cross_params) + rows * head_params)
    flops += 2 * L * 2 * D * (rows * length + batch * TEXT_LEN)
    return weight_bytes + cache_bytes, flops


def step_floor(model: LM, batch: int, n_steps: int, weights: str, m: Machine) -> float:
    """Seconds: the larger of the step's bytes / bandwidth and its FLOPs / GEMM rate."""
    bytes_read, flops = step_cost(model, batch, n_steps, weights)
    return max(bytes_read / m.bandwidth, flops / m.gemm[2 * batch])


@dataclass(frozen=True)
class HFSettings:
    """How Hugging Face's ``generate`` is called (see :func:`hf_settings`)."""

    static_cache: bool  # two StaticCaches (self- and cross-attention), else two DynamicCaches
    compile: bool  # transformers compiles the decoding step (torch.compile, "reduce-overhead")


def hf_settings(device: torch.device) -> HFSettings:
    """Hugging Face's fastest documented settings on CUDA (static cache, compiled decoding step);
    its default dynamic cache elsewhere (on the CPU a static cache attends over all its steps)."""
    on_gpu = device.type == "cuda"
    return HFSettings(static_cache=on_gpu, compile=on_gpu)


def hf_cache(
    config: MusicgenDecoderConfig, settings: HFSettings, n_steps: int, text_len: int
) -> EncoderDecoderCache:
    """Hugging Face's cache for one case, kept across its calls: self-attention and cross-attention
    in separate caches (``MusicgenForCausalLM`` alone would share one between them).

    A static self-attention cache holds the ``n_steps`` fed steps and a static cross-attention
    cache the ``text_len`` text keys; kept across calls, their tensors keep their addresses, so
    the compiled step's CUDA graphs are recorded once.
    """
    if not settings.static_cache:
        return EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
    return EncoderDecoderCache(
        StaticCache(config=config, max_cache_len=n_steps),
        StaticCache(config=config, max_cache_len=text_len),
    )


def hf_generation_config(sampling: SamplingConfig, n_steps: int, compile: bool) -> GenerationConfig:
    """Our sampling settings as Hugging Face's (``temperature`` 0: greedy), with the special ids.

    ``compile``: transformers' own compilation of the decoding step, which it applies with a
    static cache on CUDA; also on other devices here (its ``_compile_all_devices`` flag).
    """
    greedy = sampling.temperature == 0
    config = GenerationConfig(
        decoder_start_token_id=CARD,
        pad_token_id=CARD,
        bos_token_id=CARD,
        eos_token_id=None,
        max_new_tokens=n_steps,
        num_beams=1,
        num_return_sequences=1,
        do_sample=not greedy,
        top_k=None if greedy else sampling.top_k or None,
        top_p=None if greedy else sampling.top_p or None,
        temperature=None if greedy else sampling.temperature,
        guidance_scale=sampling.cfg_coef,
        use_cache=True,
        disable_compile=not compile,
    )
    if compile:
        config.compile_config = CompileConfig()
        config.compile_config._compile_all_devices = True
    return config


class HFGenerate:
    """One case of Hugging Face's generation: its config, inputs and cache, built once.

    Each call resets the cache and runs ``generate`` from the special token, conditioned on the
    text states doubled as [cond; zeros] (the null rows of classifier-free guidance) with an
    all-ones decoder mask. Float32 always.

    Args:
        hf: the decoder, on the device of ``states``.
        states: (B, L, D) text states; mask: (B, L) int64.
        n_steps: steps of the pattern (frames + K - 1) to generate.
        sampling: guidance and sampling (``temperature`` 0: greedy).
        settings: cache and compilation (:func:`hf_settings` of the device).
    """

    def __init__(
        self,
        hf: MusicgenForCausalLM,
        states: torch.Tensor,
        mask: torch.Tensor,
        n_steps: int,
        sampling: SamplingConfig,
        settings: HFSettings,
    ):
        self.hf, self.rows = hf, states.shape[0] * K
        self.config = hf_generation_config(sampling, n_steps, settings.compile)
        self.cache = hf_cache(hf.config, settings, n_steps, states.shape[1])
        self.states = torch.cat([states, torch.zeros_like(states)])
        self.mask = torch.cat([mask, torch.zeros_like(mask)])

    @torch.no_grad()
    def __call__(self) -> torch.Tensor:
        """Codes (B, K, T) as Hugging Face reverts its delay pattern."""
        self.cache.reset()
        device = self.states.device
        return self.hf.generate(
            torch.full((self.rows, 1), CARD, device=device),
            generation_config=self.config,
            attention_mask=torch.ones(self.rows, 1, dtype=torch.long, device=device),
            encoder_hidden_states=self.states,
            encoder_attention_mask=self.mask,
            cache=self.cache,
        )


def synchronized(fn, device: torch.device):
    """``fn`` followed by a CUDA synchronisation on a GPU (so that timings include the work)."""

    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return run


def time_batch(
    hf: MusicgenForCausalLM, ours: LM, batch: int, weights: list[str], args
) -> dict[str, float]:
    """The fastest seconds of a whole generation of ours with each stored type and of HF's.

    Runs alternate: one warm-up round (it also compiles and captures), then ``args.repeats``
    timed rounds. Ours reuses its decoder (on CUDA its CUDA graph) across the rounds through a
    :class:`DecoderPool`, as the generate stage does across batches and as Hugging Face reuses its
    static cache and compiled graphs (:class:`HFGenerate`).
    """
    device = torch.device(args.device)
    n_steps = ours.pattern(args.frames).n_steps
    sampling = SamplingConfig(cfg_coef=3.0, top_k=250, temperature=1.0)
    states, mask = conditioning(batch, ours.cfg.d_model)
    states, mask = states.to(device), mask.to(device)
    gen = torch.Generator(device).manual_seed(0)
    on_gpu = device.type == "cuda"  # ours: the static step in a CUDA graph
    pool = DecoderPool()

    def ours_run(w):
        def run():
            generate(
                ours,
                states,
                mask.bool(),
                args.frames,
                sampling,
                gen,
                weights=w,
                static_step=on_gpu,
                decoders=pool,
            )

        return run

    runs = {w: synchronized(ours_run(w), device) for w in weights}
    if not on_gpu:  # the same step in torch, its linear layers on BLAS (the peer per step)

        def blas_run():
            generate(ours, states, mask.bool(), args.frames, sampling, gen, fast_kernel=False)

        runs["BLAS"] = blas_run
    hf_run = HFGenerate(hf, states, mask, n_steps, sampling, hf_settings(device))
    runs["HF"] = synchronized(hf_run, device)
    best = dict.fromkeys(runs, float("inf"))
    for round_ in range(1 + args.repeats):
        for name, run in runs.items():
            seconds = fastest(run, 1)
            if round_:
                best[name] = min(best[name], seconds)
    if pool.built > len(weights):
        print(f"  note: ours built {pool.built} decoders for {len(weights)} cases", flush=True)
    return best


@dataclass
class Row:
    """One case's figures, ms per step (floor and torch+BLAS: None where not measured)."""

    preset: str
    batch: int
    weights: str
    ours: float
    hf: float
    floor: float | None = None
    blas: float | None = None


# The speed aims (issues 12 and 19), each: its text, the rows it covers (those where what it
# compares was measured) and the test of a row.
AIMS = (
    ("fp32 at batch 1: ours <= 1.15x floor",
     lambda r: r.weights == "fp32" and r.batch == 1 and r.floor is not None,
     lambda r: r.ours <= 1.15 * r.floor),
    ("batch 4 and more: HF fp32 / ours >= 2.0x", lambda r: r.batch >= 4,
     lambda r: r.hf >= 2.0 * r.ours),
    ("batch 4 and more: ours <= 1.5x floor", lambda r: r.batch >= 4 and r.floor is not None,
     lambda r: r.ours <= 1.5 * r.floor),
    ("bf16 at batch 1: HF fp32 / ours >= 2.0x", lambda r: r.weights == "bf16" and r.batch == 1,
     lambda r: r.hf >= 2.0 * r.ours),
    ("every row: ours no slower than torch+BLAS", lambda r: r.blas is not None,
     lambda r: r.ours <= r.blas),
)  # fmt: skip


AIM_PRESETS = ("seed1", "small")  # the sizes the aims are stated for (tiny is all overhead)


def check_aims(rows: list[Row]) -> list[str]:
    """A line per aim: how many of the rows it covers meet it, and the ones that miss (rows of
    :data:`AIM_PRESETS` only)."""
    rows = [r for r in rows if r.preset in AIM_PRESETS]
    if not rows:
        return [f"  none: the aims are stated for {' and '.join(AIM_PRESETS)}"]
    lines = []
    for text, covers, holds in AIMS:
        covered = [r for r in rows if covers(r)]
        if not covered:
            continue
        missed = [f"{r.preset} b{r.batch} {r.weights}" for r in covered if not holds(r)]
        verdict = "met" if not missed else "MISSED by " + ", ".join(missed)
        lines.append(f"  {text}: {len(covered) - len(missed)} of {len(covered)} rows, {verdict}")
    return lines


def bench_generation(
    preset: str, batches: list[int], weights: list[str], args, m: Machine | None
) -> list[Row]:
    """Times every batch and stored type of ``preset``, prints a line per case, returns them."""
    device = torch.device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = build_pair(preset, Path(tmp))
    hf, ours = hf.to(device), ours.to(device)
    n_steps = ours.pattern(args.frames).n_steps
    for batch in batches:
        best = time_batch(hf, ours, batch, weights, args)
        hf_ms = 1000 * best["HF"] / n_steps
        for w in weights:
            ms = 1000 * best[w] / n_steps
            rows.append(Row(preset, batch, w, ms, hf_ms))
            line = (
                f"generate {preset:6s} batch {batch:2d} {w:4s}: ours {ms:7.1f} ms/step, "
                f"HF fp32 {hf_ms:7.1f} ms/step, ratio {hf_ms / ms:5.2f}x"
            )
            if m is not None:
                floor = rows[-1].floor = 1000 * step_floor(ours, batch, n_steps, w, m)
                line += f" | floor {floor:6.1f} ms: ours {ms / floor:4.2f}x"
                if w == "fp32":
                    line += f", HF {hf_ms / floor:4.2f}x"
            if "BLAS" in best:
                blas_ms = rows[-1].blas = 1000 * best["BLAS"] / n_steps
                line += f" | torch+BLAS {blas_ms:6.1f} ms: {blas_ms / ms:4.2f}x ours"
            print(line, flush=True)
        if device.type == "cpu":
            print(f"  plans at {2 * batch} rows: {plan_summary(ours, weights, 2 * batch)}")
    if device.type == "cpu":
        greedy_agreement(ours, weights, args.frames)
    return rows


def plan_summary(model: LM, weights: list[str], rows: int) -> str:
    """How each weight shape and type was multiplied at ``rows`` rows (kernel_plans' choices)."""
    names = {OURS: "kernel", ONE_THREAD: "kernel 1 thread", BLAS: "BLAS"}
    seen = {}
    for w in weights:
        for array in model.decoding_kernel(w, True).arrays():
            method, k_block, row_block, ahead = (int(v) for v in array.plan[min(rows, PLAN_ROWS)])
            sizes = f" (pass {k_block}, {row_block} rows, prefetch {ahead // 1024} KB)"
            how = names[method] + ("" if method == BLAS else sizes)
            seen[f"{w} {len(array.scale)}x{array.data.shape[1]}"] = how
    return "; ".join(f"{case} {how}" for case, how in seen.items())


@torch.no_grad()
def greedy_agreement(model: LM, weights: list[str], frames: int) -> None:
    """The share of greedy tokens (batch 1, guidance 3.0) that each stored type shares with fp32."""
    states, mask = conditioning(1, model.cfg.d_model)
    greedy = SamplingConfig(cfg_coef=3.0, temperature=0)
    reference = generate(model, states, mask.bool(), frames, greedy)
    for w in weights:
        if w != "fp32":
            codes = generate(model, states, mask.bool(), frames, greedy, weights=w)
            agree = (codes == reference).double().mean().item()
            first = (codes != reference).any(dim=1)[0].nonzero()
            diverge = int(first[0]) if len(first) else frames
            print(
                f"  greedy {w} vs fp32: {100 * agree:5.1f}% of {reference.numel()} tokens equal, "
                f"first difference at frame {diverge}",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__[__doc__.index("Usage:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--presets", "--gen-presets", nargs="*", default=["seed1", "small"])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 4, 16])
    parser.add_argument("--weights", nargs="*", default=list(WEIGHT_TYPES), choices=WEIGHT_TYPES)
    parser.add_argument("--frames", type=int, default=100, help="codec frames (50 per second)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds after a warm-up")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (ours: numba threads too)"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-floor", action="store_true", help="skip measuring the machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, numpy {np.__version__}", flush=True)
    print(machine(device, args.threads), flush=True)
    m = None
    if device.type == "cpu" and not args.no_floor:
        m = measure_machine(sorted({2 * b for b in args.batches}))
    rows = []
    for preset in args.presets:
        rows += bench_generation(preset, args.batches, args.weights, args, m)
    print("speed aims (issues 12 and 19), on this machine in this run:")  # see AIMS
    print("\n".join(check_aims(rows)), flush=True)


if __name__ == "__main__":
    main()
