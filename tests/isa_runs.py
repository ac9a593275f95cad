"""The stages that make training data, under one instruction set per process.

ATen (``ATEN_CPU_CAPABILITY``), oneDNN (``ONEDNN_MAX_CPU_ISA``), MKL (``MKL_ENABLE_INSTRUCTIONS``,
``MKL_CBWR``), numba (``NUMBA_CPU_NAME`` with ``NUMBA_CPU_FEATURES``) and the thread count read
their choice once, at import, so each choice needs a fresh process: :func:`isa_runs` lists the
environments that reach every level of each library this CPU has, and running this file as a
script runs text_model, codec_model, tokenize and encode_text in one of them (the functions the
stage scripts call) and writes what each library used to ``<out>/kernels.json``.

    python3 tests/isa_runs.py --data <folder with data/raw, data/audio, data/split> --out <folder>

with the small params (``musicgen.reproducibility.SMALL``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from musicgen.machine import cpu_flags  # noqa: F401 - the tests' name for it

AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512dq")
TIERS = [  # a CPU of each generation: (cpuinfo flags it needs, ATen, oneDNN, MKL, numba)
    (("sse4_1", "sse4_2"), "default", "SSE41", "SSE4_2", "generic"),
    (("avx",), "default", "AVX", "AVX", "x86-64-v2"),
    (("avx2", "fma", "bmi2"), "avx2", "AVX2", "AVX2", "x86-64-v3"),
    (("avx2", "fma", "bmi2", "avx_vnni"), "avx2", "AVX2_VNNI", "AVX2", "x86-64-v3"),
    (AVX512, "avx512", "AVX512_CORE", "AVX512", "x86-64-v4"),
    ((*AVX512, "avx512_vnni"), "avx512", "AVX512_CORE_VNNI", "AVX512", "x86-64-v4"),
    ((*AVX512, "avx512_bf16"), "avx512", "AVX512_CORE_BF16", "AVX512", "x86-64-v4"),
    ((*AVX512, "avx512_fp16"), "avx512", "AVX512_CORE_FP16", "AVX512", "x86-64-v4"),
    ((*AVX512, "amx_tile", "amx_bf16"), "avx512", "AVX512_CORE_AMX", "AVX512", "x86-64-v4"),
]
THREADS = [1, 3, 2]  # other machines split parallel loops (and sums) among other thread counts
VARIABLES = (  # what a run sets; the native run has none of them
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "NUMBA_CPU_NAME",
    "NUMBA_CPU_FEATURES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def isa_runs(flags: set[str]) -> list[dict[str, str]]:
    """Environments that, between them, select every level of each library that ``flags`` allow.

    One run per CPU generation this CPU can stand in for (:data:`TIERS`, lowest first), each
    library at that generation's level, as a real CPU of it would run them; the thread count
    cycles through :data:`THREADS`; the lowest run also takes MKL's compatible code path. Without
    x86 flags (arm64, or no ``/proc/cpuinfo``): ATen's default kernels and numba's generic target,
    with one and with three threads.

    Returns:
        One dict of environment variables per run; the native choice (none of them set) is not
        among them.
    """
    tiers = [t[1:] for t in TIERS if set(t[0]) <= flags]
    runs = [
        {
            "ATEN_CPU_CAPABILITY": aten,
            "ONEDNN_MAX_CPU_ISA": onednn,
            "MKL_ENABLE_INSTRUCTIONS": mkl,
            "NUMBA_CPU_NAME": numba,
        }
        for aten, onednn, mkl, numba in tiers
    ] or [{"ATEN_CPU_CAPABILITY": "default", "NUMBA_CPU_NAME": "generic"} for _ in range(2)]
    if tiers:
        runs[0]["MKL_CBWR"] = "COMPATIBLE"
    for i, env in enumerate(runs):
        threads = str(THREADS[i % len(THREADS)])
        env.update(
            NUMBA_CPU_FEATURES="",  # the named CPU's own features, not this one's
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            NUMBA_NUM_THREADS=threads,
        )
    return runs


def onednn_used(log: str) -> set[str]:
    """The primitives oneDNN says it made, in its log (``ONEDNN_VERBOSE=profile_create``), as
    ``op:implementation`` (``convolution:jit:avx2``)."""
    made = re.findall(r"^onednn_verbose,v1,primitive,create:[^,]+,cpu,([^,]+),([^,]+),", log, re.M)
    return {f"{op}:{impl}" for op, impl in made}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--data", type=Path, required=True, help="holds data/raw, data/audio, data/split"
    )
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    import numba
    import torch
    from stage_runner import Layout, build_models, encode_text, project_params, tokenize

    from musicgen.reproducibility import SMALL

    if "OMP_NUM_THREADS" in os.environ:  # torch caps the variable at the cores it sees
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    params = project_params(SMALL)
    d = Layout(args.out)
    for name in ("raw", "audio", "split"):  # the inputs, shared by every run
        getattr(d, name).parent.mkdir(parents=True, exist_ok=True)
        getattr(d, name).symlink_to(getattr(Layout(args.data), name).resolve())
    build_models(d, params)
    tokenize(d, params, d.tokens, d.metrics / "tokens.json")
    encode_text(d, params, d.text)
    kernels = {
        "aten": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "numba_cpu": numba.config.CPU_NAME,
        "numba_features": numba.config.CPU_FEATURES,
        "env": {k: v for k, v in os.environ.items() if k in VARIABLES},
    }
    (args.out / "kernels.json").write_text(json.dumps(kernels, indent=2) + "\n")


if __name__ == "__main__":
    main()
