"""The machine a stage ran on: what decides which kernels computed its numbers.

The training data (tokens, text states) are the same bytes on every CPU; the LM's training and the
evaluation are not (float32 sums in the order of the CPU's kernels), so the run's metrics record
the machine that made them (``reports/machine.json``, written by the train stage):
:func:`machine`.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

ISA_FLAGS = ("avx2", "avx512f", "fma", "neon")  # the instruction sets that pick kernels


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``: x86 ``flags``, arm64 ``Features``; empty
    where there is none). arm64's ``asimd`` is reported as ``neon`` too."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    found = re.search(r"^(flags|Features)\s*:(.*)$", text, re.MULTILINE)
    flags = set(found.group(2).split()) if found else set()
    return flags | {"neon"} if "asimd" in flags else flags


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def cpu_id() -> str | None:
    """x86's vendor, family, model and stepping (``AuthenticAMD 25/17/1`` is a Zen 4), which
    name the generation where a virtual machine's model name does not; None elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    fields = [
        re.search(rf"^{name}\s*:\s*(\S+)", text, re.MULTILINE)
        for name in ("vendor_id", "cpu family", "model", "stepping")
    ]
    if not all(fields):
        return None
    vendor, *numbers = (f.group(1) for f in fields)
    return f"{vendor} {'/'.join(numbers)}"


def torch_build() -> dict[str, str | None]:
    """torch's version and build: its git commit, CUDA version (None: a CPU build), BLAS, oneDNN
    version and the ATen kernels it chose on this CPU."""
    import torch

    config = torch.__config__.show()
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    onednn = re.search(r"(?:MKL-DNN|oneDNN) v([\d.]+)", config)
    return {
        "version": torch.__version__,
        "git": torch.version.git_version,
        "cuda": torch.version.cuda,
        "blas": blas.group(1) if blas else None,
        "onednn": onednn.group(1) if onednn else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def machine() -> dict:
    """What made this process's numbers: the CPU (model, x86 family/model/stepping, architecture,
    cores, the instruction
    sets of :data:`ISA_FLAGS`), torch's threads, version and build, numba's and numpy's versions,
    Python's."""
    import numba
    import numpy as np
    import torch

    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cpu_id": cpu_id(),
        "arch": platform.machine(),
        "cores": os.cpu_count(),
        "isa": {flag: flag in flags for flag in ISA_FLAGS},
        "torch_threads": torch.get_num_threads(),
        "torch": torch_build(),
        "numba": numba.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
