"""Runs a Python script in this process and writes its peak memory, host and CUDA, as JSON.

    python -m musicgen.peak OUT.json stages/tokenize_audio.py --audio data/audio ...

The script runs as ``python SCRIPT ARGS`` would run it (``__main__``, its folder first on
``sys.path``, ``sys.argv`` = ``[SCRIPT, *ARGS]``); nothing in it changes. When it ends (also by an
exception or ``SystemExit``), ``OUT.json`` gets this process's peak resident set size and that of
its largest finished child (torchrun's ranks, for one), in MB, and, if the script used CUDA,
``torch.cuda.max_memory_allocated`` and ``max_memory_reserved`` of each GPU it touched, in MB.
``scripts/gpu_check.py`` puts it in front of each stage's command in a copy of ``dvc.yaml``.
"""

from __future__ import annotations

import json
import resource
import runpy
import sys
from pathlib import Path

MB = 1024 * 1024


def peak_memory() -> dict:
    """This process's peak memory so far: host RSS (self, largest child) and CUDA per GPU, in MB.

    ``ru_maxrss`` is in KiB on Linux. CUDA figures are there only when the process has
    initialised CUDA (``torch`` is not imported for them otherwise).
    """
    out = {
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB,
        "children_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / MB,
        "cuda": {},
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        for i in range(torch.cuda.device_count()):
            allocated = torch.cuda.max_memory_allocated(i) / MB
            if allocated > 0:
                out["cuda"][f"cuda:{i}"] = {
                    "max_allocated_mb": allocated,
                    "max_reserved_mb": torch.cuda.max_memory_reserved(i) / MB,
                }
    return out


def run_measured(out: Path, script: str, args: list[str]) -> None:
    """Runs ``script`` with ``args`` as ``__main__`` here, then writes :func:`peak_memory` to
    ``out`` (also when the script raises)."""
    sys.argv = [script, *args]
    sys.path[0] = str(Path(script).resolve().parent)
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(peak_memory(), indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    run_measured(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])
