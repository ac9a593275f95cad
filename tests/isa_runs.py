"""The stages that make training data, under one instruction set per process.

ATen (``ATEN_CPU_CAPABILITY``), oneDNN (``ONEDNN_MAX_CPU_ISA``), MKL (``MKL_ENABLE_INSTRUCTIONS``,
``MKL_CBWR``), numba (``NUMBA_CPU_NAME`` with ``NUMBA_CPU_FEATURES``), numpy's own loops
(``NPY_DISABLE_CPU_FEATURES``), the OpenBLAS numpy carries (``OPENBLAS_CORETYPE``: it picks its
kernels per CPU, Haswell's on an AMD Zen 5, SkylakeX's on an Intel Xeon with AVX-512) and the
thread count read their choice once, at import, so each choice needs a fresh process:
:func:`isa_runs` lists the environments that reach every level of each library this CPU has, and
running this file as a script runs text_model, codec_model, tokenize and encode_text in one of
them (the functions the stage scripts call) and writes what each library used to
``<out>/kernels.json``.

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
# numpy's dispatch targets (numpy 2.4's names) above each level: a CPU of that level lacks them
NUMPY_ABOVE_V2 = ("X86_V3", "X86_V4", "AVX512_ICL", "AVX512_SPR")
NUMPY_ABOVE_V3 = NUMPY_ABOVE_V2[1:]
NUMPY_ABOVE_V4 = NUMPY_ABOVE_V2[2:]
TIERS = [  # a CPU of each generation: (cpuinfo flags it needs, ATen, oneDNN, MKL, numba,
    #        OpenBLAS, numpy targets it lacks)
    (("sse4_1", "sse4_2"), "default", "SSE41", "SSE4_2", "generic", "Nehalem", NUMPY_ABOVE_V2),
    (("avx",), "default", "AVX", "AVX", "x86-64-v2", "Sandybridge", NUMPY_ABOVE_V2),
    (("avx2", "fma", "bmi2"), "avx2", "AVX2", "AVX2", "x86-64-v3", "Haswell", NUMPY_ABOVE_V3),
    (
        ("avx2", "fma", "bmi2", "avx_vnni"),
        *("avx2", "AVX2_VNNI", "AVX2", "x86-64-v3", "Haswell", NUMPY_ABOVE_V3),
    ),
    (AVX512, "avx512", "AVX512_CORE", "AVX512", "x86-64-v4", "SkylakeX", NUMPY_ABOVE_V4),
    (
        (*AVX512, "avx512_vnni"),
        *("avx512", "AVX512_CORE_VNNI", "AVX512", "x86-64-v4", "SkylakeX", NUMPY_ABOVE_V4),
    ),
    (  # Zen 4 and 5: Ice Lake's AVX-512 extensions, no fp16
        (*AVX512, "avx512_bf16"),
        *("avx512", "AVX512_CORE_BF16", "AVX512", "x86-64-v4", "SkylakeX", ("AVX512_SPR",)),
    ),
    ((*AVX512, "avx512_fp16"), "avx512", "AVX512_CORE_FP16", "AVX512", "x86-64-v4", "SkylakeX", ()),
    (
        (*AVX512, "amx_tile", "amx_bf16"),
        *("avx512", "AVX512_CORE_AMX", "AVX512", "x86-64-v4", "SkylakeX", ()),
    ),
]
THREADS = [1, 3, 2]  # other machines split parallel loops (and sums) among other thread counts
VARIABLES = (  # what a run sets; the native run has none of them
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "NUMBA_CPU_NAME",
    "NUMBA_CPU_FEATURES",
    "OPENBLAS_CORETYPE",
    "NPY_DISABLE_CPU_FEATURES",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
)


def numpy_targets() -> list[str]:
    """numpy's dispatch targets that this process uses (those this CPU has, less any that
    ``NPY_DISABLE_CPU_FEATURES`` switched off)."""
    from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

    return [name for name in __cpu_dispatch__ if __cpu_features__.get(name)]


def openblas_core() -> str | None:
    """The kernel family of the OpenBLAS loaded in this process (``Haswell``, ``SkylakeX``, ...),
    as it names it; None without one."""
    import ctypes

    import numpy  # noqa: F401 - loads numpy's OpenBLAS

    maps = Path("/proc/self/maps")
    paths = {line.split()[-1] for line in maps.read_text().splitlines() if "openblas" in line}
    symbols = (
        "scipy_openblas_get_corename64_",
        "openblas_get_corename64_",
        "openblas_get_corename",
    )
    for path in sorted(paths):
        lib = ctypes.CDLL(path)
        for symbol in symbols:
            if hasattr(lib, symbol):
                getter = getattr(lib, symbol)
                getter.restype = ctypes.c_char_p
                return getter().decode()
    return None


def isa_runs(flags: set[str], numpy_found: list[str] | None = None) -> list[dict[str, str]]:
    """Environments that, between them, select every level of each library that ``flags`` allow.

    One run per CPU generation this CPU can stand in for (:data:`TIERS`, lowest first), each
    library at that generation's level, as a real CPU of it would run them (numpy's targets that
    generation lacks switched off, where ``numpy_found``, by default :func:`numpy_targets`, has
    them); the thread count cycles through :data:`THREADS`; the lowest run also takes MKL's
    compatible code path. Without x86 flags (arm64, or no ``/proc/cpuinfo``): ATen's default
    kernels and numba's generic target, with one and with three threads.

    Returns:
        One dict of environment variables per run; the native choice (none of them set) is not
        among them.
    """
    tiers = [t[1:] for t in TIERS if set(t[0]) <= flags]
    found = set(numpy_targets() if numpy_found is None else numpy_found)
    runs = []
    for aten, onednn, mkl, numba, openblas, lacks in tiers:
        env = {
            "ATEN_CPU_CAPABILITY": aten,
            "ONEDNN_MAX_CPU_ISA": onednn,
            "MKL_ENABLE_INSTRUCTIONS": mkl,
            "NUMBA_CPU_NAME": numba,
            "OPENBLAS_CORETYPE": openblas,
        }
        if off := [t for t in lacks if t in found]:
            env["NPY_DISABLE_CPU_FEATURES"] = " ".join(off)
        runs.append(env)
    if tiers:
        runs[0]["MKL_CBWR"] = "COMPATIBLE"
    else:
        runs = [{"ATEN_CPU_CAPABILITY": "default", "NUMBA_CPU_NAME": "generic"} for _ in range(2)]
    for i, env in enumerate(runs):
        threads = str(THREADS[i % len(THREADS)])
        env.update(
            NUMBA_CPU_FEATURES="",  # the named CPU's own features, not this one's
            OMP_NUM_THREADS=threads,
            MKL_NUM_THREADS=threads,
            NUMBA_NUM_THREADS=threads,
            OPENBLAS_NUM_THREADS=threads,
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
        "openblas": openblas_core(),
        "numpy_targets": numpy_targets(),
        "env": {k: v for k, v in os.environ.items() if k in VARIABLES},
    }
    (args.out / "kernels.json").write_text(json.dumps(kernels, indent=2) + "\n")


if __name__ == "__main__":
    main()
