"""What the measured kernel plans buy on this machine: generation with the fixed block sizes against
generation with the plans of ``musicgen/kernel_plans.py``, in one process, alternating.

The fixed sizes are the ones the kernels used before plans existed (passes of ``K_BLOCK`` inputs,
blocks of ``ROW_BLOCK`` rows, the default prefetch, every thread, no BLAS). Each variant reads its own choices file (a
temporary ``XDG_CACHE_HOME``): the measured one is made by the first, untimed call of each case;
the fixed one holds the same cases with the fixed plan. A random model of each preset decodes
``--frames`` frames with CFG 3.0 and top-k 250 (``generate``, fp32 or ``--weights``); each figure
is the fastest of ``--repeats`` rounds.

Usage:
    OMP_NUM_THREADS=1 python3 benchmarks/bench_plans.py                      # seed1 and small
    OMP_NUM_THREADS=1 python3 benchmarks/bench_plans.py --presets seed1 --batches 16
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from musicgen.generate import SamplingConfig, generate
from musicgen.kernel_plans import cache_path, cpu_key
from musicgen.kernels import K_BLOCK, OURS, ROW_BLOCK, WEIGHT_TYPES, default_ahead
from musicgen.lm import LM, PRESETS, LMConfig

TEXT_LEN = 24


def one_generation(model: LM, batch: int, frames: int, weights: str) -> float:
    """Seconds of one ``generate`` call (random text states, the same seed every time)."""
    g = torch.Generator().manual_seed(0)
    states = torch.randn(batch, TEXT_LEN, model.cfg.text_dim, generator=g)
    mask = torch.ones(batch, TEXT_LEN, dtype=torch.bool)
    sampling = SamplingConfig(cfg_coef=3.0, top_k=250, temperature=1.0)
    start = time.perf_counter()
    generate(model, states, mask, frames, sampling, g, weights=weights)
    return time.perf_counter() - start


def fixed_choices(measured: Path, fixed: Path) -> None:
    """The measured file's cases, each with the fixed plan."""
    cases = json.loads(measured.read_text())
    fixed.parent.mkdir(parents=True, exist_ok=True)
    fixed.write_text(json.dumps({case: fixed_plan(case) for case in cases}))


def fixed_plan(case: str) -> list[int]:
    """The fixed plan of a case of the choices file (``... rows R threads T``)."""
    rows = int(case.split(" rows ")[1].split()[0])
    return [OURS, K_BLOCK, ROW_BLOCK, default_ahead(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog=__doc__[__doc__.index("Usage:") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--presets", nargs="*", default=["seed1", "small"])
    parser.add_argument("--batches", nargs="*", type=int, default=[1, 4, 16])
    parser.add_argument("--weights", default="fp32", choices=WEIGHT_TYPES)
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{cpu_key()}, {args.threads} thread(s), {args.weights}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        homes = {"fixed": Path(tmp) / "fixed", "measured": Path(tmp) / "measured"}
        for preset in args.presets:
            torch.manual_seed(0)
            cfg = LMConfig(**PRESETS[preset], card=2048, text_dim=PRESETS[preset]["d_model"])
            model = LM(cfg).eval()
            for batch in args.batches:
                os.environ["XDG_CACHE_HOME"] = str(homes["measured"])
                one_generation(model, batch, args.frames, args.weights)  # measures the plans
                fixed_choices(cache_path(), homes["fixed"] / "musicgen" / "matmul_plans.json")
                best = dict.fromkeys(homes, float("inf"))
                for _ in range(args.repeats):
                    for name, home in homes.items():
                        os.environ["XDG_CACHE_HOME"] = str(home)
                        seconds = one_generation(model, batch, args.frames, args.weights)
                        best[name] = min(best[name], seconds)
                steps = model.pattern(args.frames).n_steps
                fixed, measured = (1000 * best[n] / steps for n in ("fixed", "measured"))
                print(
                    f"{preset:6s} batch {batch:2d}: fixed sizes {fixed:7.1f} ms/step, measured "
                    f"plans {measured:7.1f} ms/step, fixed / measured {fixed / measured:4.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
