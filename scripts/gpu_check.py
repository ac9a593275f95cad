"""Checks every CUDA path of the pipeline on this machine's GPU: one command, no network.

Run it on a GPU machine before a real run (README, "Checking a GPU machine"); CI runs its CPU
mode (``--device cpu``, ``tests/test_gpu_check.py``), where the same functions run eagerly.

    a  the pipeline through ``dvc repro`` in a temporary copy of the project, every compute stage
       (tokenize, encode_text, train, generate, evaluate) on the device, against the CPU reference
       within the README's tolerance table (``musicgen.reproducibility``)
    b  generate's static step (a CUDA graph on CUDA) against the eager step: greedy codes, and the
       logits teacher-forced under autocast, on cuda:0 and cuda:1 when present
    c  EnCodec (facebook/encodec_32khz's configuration) codes under fp16 autocast vs fp32, the
       share that agrees per codebook
    d  T5 (t5-base's configuration) states under bf16 autocast vs fp32: max abs / relative error
    e  training with ``train.nproc_per_node`` = the GPUs (CPU: 2 gloo processes) through torchrun,
       killed after its first checkpoint and resumed: the state of an uninterrupted run
    f  peak memory of each stage of (a): host RSS and ``torch.cuda.max_memory_allocated``
    g  benchmarks/bench_lm.py on the device against Hugging Face (a short case)

Models of (b), (c), (d) have random weights (the real configurations are built offline:
``musicgen.hub_configs``), so (c) and (d) measure the arithmetic, not a trained model's margins.
Each check is isolated: an error becomes a FAIL row. The table goes to stdout and, as JSON, to
``--json``; the exit code is 1 when a check fails.

Usage:
    python3 scripts/gpu_check.py                        # on the GPU (cuda), a few minutes
    python3 scripts/gpu_check.py --device cpu           # the CPU mode CI runs, ~3 min on 2 cores
    python3 scripts/gpu_check.py --only b,c,d --json /tmp/check.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from musicgen.reproducibility import (
    PROJECT_ROOT,
    SMALL,
    committed_metrics,
    copy_project,
    cpu_model,
    flatten,
    kill_after_checkpoint,
    load_reference,
    out_of_tolerance,
    workspace_metrics,
)

COMPUTE_STAGES = ("tokenize", "encode_text", "train", "generate", "evaluate")
STATIC_STEP_FRAMES = 50  # b: one second of codes
STATIC_LOGITS_RTOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
CODEC_SIZE = {  # c: clips, seconds each, codebook entries fitted by k-means (8 frames per entry)
    "cuda": (4, 10, 256),
    "cpu": (2, 3, 32),  # the fit and the encoder run on the CPU: CI keeps it small
}
CODEC_MIN_AGREEMENT = 0.5  # c: below it a codebook's codes are noise (overflow, a wrong cast)
T5_CAPTIONS = 16
T5_MAX_RELATIVE = 0.05  # d: bf16 keeps 8 bits; 12 layers' rounding stays well below 5 %
RESUME_STEPS = {"steps": 12, "warmup_steps": 2}  # e: the small run's, whatever --pipeline
RESUME_ATOL = {"cpu": 0.0, "cuda": 1e-4}  # e: CUDA's atomic-add kernels sum in any order
BENCH = ["--batches", "4", "--frames", "50", "--weights", "fp32", "--repeats", "1", "--no-floor"]
BENCH_PRESET = {"cpu": "tiny", "cuda": "seed1"}  # g: tiny keeps CI short
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}  # no network


@dataclass
class Row:
    """One line of the table."""

    check: str  # its letter
    name: str  # what it checks
    result: str  # what was measured
    value: str  # the measurement
    ok: bool
    seconds: float = 0.0

    @property
    def status(self) -> str:
        return "PASS" if self.ok else "FAIL"


@dataclass
class Context:
    """What the checks share: the device, a scratch folder, the project copy of (a), (e), (f)."""

    device: torch.device
    device_param: str  # the value given to the stages' `device` keys
    tmp: Path
    pipeline: str  # small | default
    _workspace: Workspace | None = field(default=None, repr=False)

    @property
    def workspace(self) -> Workspace:
        if self._workspace is None:
            self._workspace = Workspace(self.tmp / "project", self.device_param, self.pipeline)
        return self._workspace


class Workspace:
    """A temporary copy of the project whose compute stages run on the device, each stage's
    command prefixed with ``python -m musicgen.peak`` (its peak memory, check f)."""

    def __init__(self, root: Path, device_param: str, pipeline: str):
        from ruamel.yaml import YAML

        root.mkdir(parents=True)
        params = dict(SMALL) if pipeline == "small" else {}
        params |= {(stage, "device"): device_param for stage in COMPUTE_STAGES}
        self.root = copy_project(root, params)
        self.peak_dir = root.parent / "peak"
        yaml = YAML()
        dvc_yaml = yaml.load(root / "dvc.yaml")
        self.commands = {name: str(s["cmd"]) for name, s in dvc_yaml["stages"].items()}
        for name, stage in dvc_yaml["stages"].items():
            stage["cmd"] = measured_command(self.commands[name], self.peak_dir / f"{name}.json")
        yaml.dump(dvc_yaml, root / "dvc.yaml")
        self.result: str | Exception | None = None

    def repro(self, *targets: str) -> str:
        """``dvc repro [targets]``; its output. Raises RuntimeError when it fails."""
        return run_command(["dvc", "repro", *targets], self.root)

    def reproduced(self) -> str:
        """The output of a whole ``dvc repro``, run once (its error, raised again, if it failed)."""
        if self.result is None:
            try:
                self.result = self.repro()
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                self.result = err
        if isinstance(self.result, Exception):
            raise RuntimeError(f"dvc repro failed: {self.result}")
        return self.result


def measured_command(cmd: str, out: Path) -> str:
    """A stage's ``python stages/x.py ...`` run through ``python -m musicgen.peak OUT``."""
    args = shlex.split(cmd)
    if args[0] != "python":
        raise ValueError(f"not a python stage command: {cmd}")
    return shlex.join(["python", "-m", "musicgen.peak", str(out), *args[1:]])


def run_command(args: list[str], cwd: Path, timeout: float = 1200) -> str:
    """Runs ``args`` offline; its output (stdout and stderr). Raises RuntimeError on failure."""
    out = subprocess.run(
        args, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout, check=False
    )
    text = out.stdout + out.stderr
    if out.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} exited with {out.returncode}:\n{text[-2000:]}")
    return text


# ---------------------------------------------------------------------------------------------
# a: the pipeline on the device against the CPU reference


def check_pipeline(ctx: Context) -> list[Row]:
    """(a) ``dvc repro`` with every compute stage on the device; metrics vs the CPU reference."""
    ws = ctx.workspace
    ws.reproduced()
    measured = workspace_metrics(ws.root)
    if ctx.pipeline == "small":
        reference, source = load_reference(), "tests/reference/small_metrics.json"
    else:
        reference, source = committed_metrics(PROJECT_ROOT), "the committed metrics/*.json"
    problems = out_of_tolerance(measured, reference)
    got = {(f, k): v for f, m in measured.items() for k, v in flatten(m).items()}
    want = {(f, k): v for f, m in reference.items() for k, v in flatten(m).items()}
    equal = sum(want.get(key) == v for key, v in got.items())
    value = f"{len(got)} metrics within tolerance ({equal} equal)"
    if problems:
        value = f"{len(problems)} of {len(got)} beyond: " + "; ".join(problems[:3])
    name = f"dvc repro ({ctx.pipeline} params), stages on {ctx.device_param}"
    return [
        Row("a", name, "metrics vs CPU reference", f"{value}; reference {source}", not problems)
    ]


# ---------------------------------------------------------------------------------------------
# b: generate's static step (CUDA graph) against the eager step


def static_step_devices(device: torch.device) -> list[torch.device]:
    """cuda:0 and cuda:1 when present on a CUDA machine; else the device itself."""
    if device.type != "cuda":
        return [device]
    return [torch.device("cuda", i) for i in range(min(2, torch.cuda.device_count()))]


def check_static_step(ctx: Context) -> list[Row]:
    """(b) one row per device: greedy codes of ``generate(static_step=True)`` equal those of the
    eager cached step (fp32), and the teacher-forced logits under the stage's autocast agree."""
    return [static_step_row(device) for device in static_step_devices(ctx.device)]


def random_lm(device: torch.device, text_dim: int = 64):
    """The embedded default's LM (preset tiny) with seeded random weights, on ``device``."""
    from musicgen.lm import LM, LMConfig

    torch.manual_seed(0)
    return LM(LMConfig.from_preset("tiny", text_dim=text_dim)).to(device).eval()


def random_condition(device: torch.device, batch: int = 2, length: int = 8, dim: int = 64):
    """Seeded text states (B, L, D) and a mask (B, L) whose second row is half padding."""
    g = torch.Generator().manual_seed(1)
    states = torch.randn(batch, length, dim, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[1:, length // 2 :] = False
    return states.to(device), mask.to(device)


def static_step_row(device: torch.device) -> Row:
    from musicgen.generate import SamplingConfig, generate

    model = random_lm(device)
    cond, mask = random_condition(device)
    greedy = SamplingConfig(cfg_coef=3.0, temperature=0)
    static = generate(model, cond, mask, STATIC_STEP_FRAMES, greedy, static_step=True)
    eager = generate(model, cond, mask, STATIC_STEP_FRAMES, greedy, static_step=False)
    share = (static == eager).double().mean().item()
    dtype, note = static_step_dtype(device)
    error = teacher_forced_logit_error(model, cond, mask, dtype)
    ok = share == 1.0 and error <= STATIC_LOGITS_RTOL[dtype]
    value = (
        f"greedy codes equal {100 * share:.1f}% of {static.numel()} (fp32); "
        f"teacher-forced logits under {dtype_name(dtype)}{note}: max |diff| / max |logit| "
        f"{error:.1e} (<= {STATIC_LOGITS_RTOL[dtype]:.0e})"
    )
    return Row("b", f"static step vs eager step, {device}", "greedy codes; logits", value, ok)


def static_step_dtype(device: torch.device) -> tuple[torch.dtype, str]:
    """The generate stage's autocast dtype on ``device`` (``precision: auto``); on the CPU, whose
    stage runs fp32, bf16, so that autocast itself is exercised."""
    from musicgen.device import inference_dtype

    dtype = inference_dtype("auto", device)
    if dtype is None:
        return torch.bfloat16, " (the CPU stage runs fp32; bf16 exercises autocast)"
    return dtype, ""


def dtype_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[
        dtype
    ]


@torch.no_grad()
def teacher_forced_logit_error(model, cond, mask, dtype: torch.dtype) -> float:
    """Max |static - eager| / max |eager| over the logits of every step, both decoders fed the
    same seeded random tokens under autocast to ``dtype`` (the static step as the generate stage
    runs it: autocast's weight cache off around a CUDA graph).

    Teacher forcing keeps one rounding difference from changing all later inputs, so an empty or
    stale graph (the same logits at every step) shows as an error of order 1.
    """
    from musicgen.device import autocast
    from musicgen.generate import StepDecoder
    from musicgen.lm import null_condition

    device = cond.device
    memory, memory_mask = model.condition(cond, mask)
    null, null_mask = model.condition(*null_condition(cond, mask))
    memory, memory_mask = torch.cat([memory, null]), torch.cat([memory_mask, null_mask])
    n_steps = model.pattern(STATIC_STEP_FRAMES).n_steps
    rows, K = memory.shape[0], model.cfg.n_codebooks
    g = torch.Generator().manual_seed(2)
    inputs = torch.randint(0, model.cfg.card, (n_steps, rows, K, 1), generator=g).to(device)
    inputs[0] = model.special
    logits = {}
    for static in (True, False):
        with autocast(device, dtype, cache_enabled=not static):
            decoder = StepDecoder(
                model, memory, memory_mask, n_steps, n_cond=cond.shape[0], static_step=static
            )
            logits[static] = torch.stack([decoder(step).float() for step in inputs])
    eager = logits[False]
    return ((logits[True] - eager).abs().max() / eager.abs().max()).item()


# ---------------------------------------------------------------------------------------------
# c: EnCodec fp16 vs fp32 codes


def synthetic_clips(n_clips: int, seconds: float, sample_rate: int) -> np.ndarray:
    """The synthetic set's first clips rendered at ``sample_rate``, mono: (N, S) float32."""
    from musicgen.data.synthetic import SyntheticConfig, make_clip

    cfg = SyntheticConfig(n_clips=n_clips, duration_s=seconds, sample_rate=sample_rate, channels=1)
    clips = [make_clip(np.random.default_rng([cfg.seed, i]), cfg)[0][0] for i in range(n_clips)]
    return np.stack(clips).astype(np.float32)


def synthetic_captions(n: int) -> list[str]:
    """Captions of the synthetic set's kind (their attributes drawn, no audio rendered)."""
    from musicgen.data.synthetic import SyntheticConfig, caption_for, sample_attributes

    cfg, captions = SyntheticConfig(), []
    for i in range(n):
        rng = np.random.default_rng([cfg.seed, i])
        captions.append(caption_for(sample_attributes(rng, cfg), rng))
    return captions


def check_codec(ctx: Context) -> list[Row]:
    """(c) facebook/encodec_32khz's configuration (random weights, codebooks fitted by k-means on
    synthetic music): the share of codes equal under half-precision autocast and fp32."""
    from transformers import EncodecConfig, EncodecModel

    from musicgen import codec as C
    from musicgen.hub_configs import ENCODEC_32KHZ

    n_clips, seconds, n_codes = CODEC_SIZE[ctx.device.type]
    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(**ENCODEC_32KHZ)).eval()
    audio = synthetic_clips(n_clips, seconds, ENCODEC_32KHZ["sampling_rate"])
    C.fit_codebooks(model, audio, n_iter=5, progress=False, codes_used=n_codes)  # on the CPU
    model.to(ctx.device)
    fp32 = C.encode(model, audio, 4, batch_size=n_clips)
    dtype, note = torch.float16, ""
    if ctx.device.type == "cpu":  # fp16 autocast runs there, 4x slower than bf16 (measured)
        dtype, note = torch.bfloat16, "; bf16 on the CPU, where fp16 autocast is ~4x slower"
    half = C.encode(model, audio, 4, batch_size=n_clips, dtype=dtype)
    agree = (fp32 == half).double().mean(dim=(0, 2)).tolist()  # (K,)
    shares = ", ".join(f"cb{k} {100 * a:.1f}%" for k, a in enumerate(agree))
    value = (
        f"{shares} of {fp32.shape[0] * fp32.shape[2]} frames, {n_codes} codes fitted "
        f"(each >= {CODEC_MIN_AGREEMENT:.0%}){note}"
    )
    ok = min(agree) >= CODEC_MIN_AGREEMENT
    name = f"EnCodec 32 kHz, {dtype_name(dtype)} autocast vs fp32"
    return [Row("c", name, "codes equal per codebook", value, ok)]


# ---------------------------------------------------------------------------------------------
# d: T5 bf16 vs fp32 states


def check_text(ctx: Context) -> list[Row]:
    """(d) t5-base's configuration (random weights): the states of synthetic captions under bf16
    autocast vs fp32, and what ``encode_text.precision: auto`` picks on the device."""
    from transformers import T5Config, T5EncoderModel

    from musicgen.device import inference_dtype
    from musicgen.hub_configs import T5_BASE
    from musicgen.text import encode_texts, train_tokenizer

    captions = synthetic_captions(T5_CAPTIONS)
    tokenizer = train_tokenizer(captions, T5_BASE["vocab_size"])
    torch.manual_seed(0)
    model = T5EncoderModel(T5Config(**T5_BASE)).eval().to(ctx.device)
    fp32 = np.concatenate(encode_texts(tokenizer, model, captions, progress=False))
    bf16 = encode_texts(tokenizer, model, captions, progress=False, dtype=torch.bfloat16)
    bf16 = np.concatenate(bf16)
    finite = bool(np.isfinite(bf16).all())
    diff = np.abs(bf16.astype(np.float64) - fp32)
    relative = float(diff.max() / np.abs(fp32).max())
    auto = dtype_name(inference_dtype("auto", ctx.device, fp16_safe=False))
    value = (
        f"max |diff| {diff.max():.3g}, relative {relative:.2e} (<= {T5_MAX_RELATIVE}), "
        f"{'finite' if finite else 'NOT finite'}; precision auto here: {auto}"
    )
    ok = finite and relative <= T5_MAX_RELATIVE
    return [Row("d", "T5 (t5-base config) states, bf16 vs fp32", "state error", value, ok)]


# ---------------------------------------------------------------------------------------------
# e: DDP through torchrun, killed and resumed


def check_resume(ctx: Context) -> list[Row]:
    """(e) the train stage with ``nproc_per_node`` processes, one run uninterrupted and one killed
    (SIGKILL to torchrun and its ranks) after its first checkpoint, then rerun: the final states
    (weights, EMA, AdamW moments) agree."""
    from ruamel.yaml import YAML
    from safetensors.torch import load_file

    ws = ctx.workspace
    ws.repro("tokenize", "encode_text")  # nothing to do after (a)
    cuda = ctx.device.type == "cuda"
    nproc = torch.cuda.device_count() if cuda else 2
    yaml = YAML()
    params = yaml.load(ws.root / "params.yaml")
    params["train"].update(  # a checkpoint every step: time for the kill to land mid-run
        nproc_per_node=nproc, device=ctx.device_param, checkpoint_every=1, **RESUME_STEPS
    )
    yaml.dump(params, ws.root / "resume_params.yaml")
    runs = {}
    for run in ("whole", "killed"):
        args = train_command(ws, run)
        if run == "killed":
            killed_at = kill_after_checkpoint(args, ws.root / f"{run}/checkpoint", ws.root, ENV)
            output = run_command(args, ws.root)
            if "resuming from step" not in output:
                raise RuntimeError(f"the rerun did not resume:\n{output[-2000:]}")
        else:
            run_command(args, ws.root)
        runs[run] = load_file(str(ws.root / f"{run}/checkpoint/state.safetensors"))
    whole, resumed = runs["whole"], runs["killed"]
    if whole.keys() != resumed.keys():
        raise RuntimeError("the two checkpoints hold other tensors")
    worst = max((whole[k].double() - resumed[k].double()).abs().max().item() for k in whole)
    atol = RESUME_ATOL[ctx.device.type]
    layout = f"{nproc} {'NCCL' if cuda else 'gloo'} process{'es' if nproc > 1 else ''}"
    if nproc == 1:
        layout += " (one GPU: no DDP, no torchrun)"
    value = (
        f"{layout}; killed after step {killed_at}; max |diff| {worst:.2e} over "
        f"{len(whole)} tensors (<= {atol:g})"
    )
    name = "train: torchrun, SIGKILL after a checkpoint, resumed"
    return [Row("e", name, "final state vs uninterrupted run", value, worst <= atol)]


def train_command(ws: Workspace, run: str) -> list[str]:
    """The train stage's command with ``resume_params.yaml`` and its outputs under ``run/``."""
    args = shlex.split(ws.commands["train"])
    args[0] = sys.executable
    moved = {"--out": "lm", "--checkpoint": "checkpoint", "--metrics": "train.json"}
    moved["--plots"] = "plots"
    for i, arg in enumerate(args[:-1]):
        if arg in moved:
            args[i + 1] = f"{run}/{moved[arg]}"
    return [*args, "--params", "resume_params.yaml"]


# ---------------------------------------------------------------------------------------------
# f: peak memory per stage


def check_memory(ctx: Context) -> list[Row]:
    """(f) each stage's peak host RSS and, on CUDA, ``max_memory_allocated`` (from (a)'s run; on
    CUDA every compute stage must have allocated on the GPU, else it ran on the CPU)."""
    ws = ctx.workspace
    ws.reproduced()
    rows = []
    for stage in ws.commands:
        path = ws.peak_dir / f"{stage}.json"
        if not path.is_file():
            rows.append(Row("f", f"peak memory: {stage}", "not measured", "-", False))
            continue
        peak = json.loads(path.read_text())
        value = f"RSS {peak['rss_mb']:.0f} MB"
        if peak["children_rss_mb"] > peak["rss_mb"]:  # torchrun's ranks (a fork counts as big)
            value += f", largest child process {peak['children_rss_mb']:.0f} MB"
        for gpu, mem in peak["cuda"].items():
            value += (
                f"; {gpu} {mem['max_allocated_mb']:.0f} MB allocated, "
                f"{mem['max_reserved_mb']:.0f} MB reserved"
            )
        on_gpu = ctx.device.type != "cuda" or stage not in COMPUTE_STAGES or bool(peak["cuda"])
        if not on_gpu:
            value += "; no CUDA allocation: it ran on the CPU"
        rows.append(Row("f", f"peak memory: {stage}", "host RSS; CUDA", value, on_gpu))
    return rows


# ---------------------------------------------------------------------------------------------
# g: the LM benchmark against Hugging Face


def check_benchmark(ctx: Context) -> list[Row]:
    """(g) ``benchmarks/bench_lm.py`` with a short case on the device; its ms/step lines."""
    preset = BENCH_PRESET[ctx.device.type]
    args = [sys.executable, "benchmarks/bench_lm.py", "--presets", preset, *BENCH]
    args += ["--device", str(ctx.device)]
    output = run_command(args, PROJECT_ROOT, timeout=600)
    pattern = r"ours\s+([\d.]+) ms/step, HF(?: \w+)?\s+([\d.]+) ms/step"
    found = re.findall(pattern, output)
    if not found:
        raise RuntimeError(f"no 'ours ... HF ... ms/step' line in its output:\n{output[-1500:]}")
    ours, hf = (float(x) for x in found[0])
    value = f"{preset} batch 4, 50 frames: ours {ours:.1f} ms/step, HF {hf:.1f} ms/step"
    return [Row("g", "bench_lm vs Hugging Face", "ms per decoding step", value, True)]


# ---------------------------------------------------------------------------------------------

CHECKS: dict[str, tuple[str, Callable[[Context], list[Row]]]] = {
    "a": ("dvc repro vs the CPU reference", check_pipeline),
    "b": ("static step vs eager step", check_static_step),
    "c": ("EnCodec half vs fp32 codes", check_codec),
    "d": ("T5 bf16 vs fp32 states", check_text),
    "e": ("torchrun kill and resume", check_resume),
    "f": ("peak memory per stage", check_memory),
    "g": ("bench_lm vs Hugging Face", check_benchmark),
}


def run_check(letter: str, ctx: Context) -> list[Row]:
    """The rows of one check; an exception becomes a FAIL row with its message."""
    name, fn = CHECKS[letter]
    started = time.perf_counter()
    print(f"[{letter}] {name} ...", file=sys.stderr, flush=True)
    try:
        rows = fn(ctx)
    except Exception as err:  # noqa: BLE001 - isolated: a failing check is a row, not a crash
        traceback.print_exc(file=sys.stderr)
        message = " ".join(f"{type(err).__name__}: {err}".split())[:400]
        rows = [Row(letter, name, "error", message, False)]
    seconds = time.perf_counter() - started
    for row in rows:
        row.seconds = seconds / len(rows)
    print(f"[{letter}] {seconds:.0f} s", file=sys.stderr, flush=True)
    return rows


def device_name(device: torch.device) -> str:
    """The GPU's name and count, or the CPU's model and core count."""
    if device.type == "cuda":
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x {names[0]}" if len(set(names)) == 1 else " + ".join(names)
    return f"{cpu_model()}, {os.cpu_count()} cores"


def table(header: str, rows: list[Row]) -> str:
    """The rows as a plain-text table under ``header``."""
    cells = [("check", "result", "value", "status")]
    cells += [(f"{r.check}. {r.name}", r.result, r.value, r.status) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = [header]
    for c in cells:
        lines.append("  ".join(text.ljust(w) for text, w in zip(c, widths, strict=True)).rstrip())
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    doc = __doc__ or ""
    ap = argparse.ArgumentParser(
        description=doc.split("\n")[0],
        epilog=doc[doc.index("Usage:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", type=Path, default=PROJECT_ROOT / "reports" / "gpu_check.json")
    ap.add_argument("--only", default=",".join(CHECKS), help="checks to run, e.g. a,b (all)")
    ap.add_argument(
        "--pipeline",
        choices=("small", "default"),
        default="small",
        help="(a) small: tests/pipeline_repo.py's params vs tests/reference/small_metrics.json; "
        "default: params.yaml as it is vs the committed metrics/*.json",
    )
    ap.add_argument("--workdir", type=Path, help="keep the project copy here (default: a temp dir)")
    args = ap.parse_args(argv)
    letters = [c.strip() for c in args.only.split(",") if c.strip()]
    if unknown := [c for c in letters if c not in CHECKS]:
        ap.error(f"unknown checks {unknown}; choose from {','.join(CHECKS)}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("CUDA is not available here: use --device cpu")
    header = f"gpu_check on {device_name(device)} (torch {torch.__version__}"
    header += f", CUDA {torch.version.cuda})" if device.type == "cuda" else ")"
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        ctx = Context(device, args.device, work, args.pipeline)
        rows = [row for letter in letters for row in run_check(letter, ctx)]
    passed = all(r.ok for r in rows)
    seconds = time.perf_counter() - started
    print(table(header, rows))
    print(
        f"{'PASS' if passed else 'FAIL'}: {sum(r.ok for r in rows)} of {len(rows)} rows, {seconds:.0f} s"
    )
    report = {
        "header": header,
        "device": args.device,
        "device_name": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pipeline": args.pipeline,
        "seconds": seconds,
        "passed": passed,
        "checks": [{**asdict(r), "status": r.status} for r in rows],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
