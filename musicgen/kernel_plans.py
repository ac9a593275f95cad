"""How to multiply a decoding step's rows by each weight, measured on this machine.

The block kernel (:func:`musicgen.kernels._matmul`) has three settings that change its speed, never
its result (each output's sum runs over the inputs in order either way): the inputs per pass (how
much of a panel is reused from cache by every row block: 256 x 16 fp32 outputs fit a 32 KB L1, 1024
x 32 need L2), the rows per register block (4 or 6 on AVX2's 16 registers, 8 on AVX-512's 32) and
how far ahead it prefetches the weight (none, or :data:`AHEADS`: whether software prefetch helps
the hardware's, and at which distance, differs from one core to the next); with several threads, a
small weight may also go faster on one (no fork and join). Which is fastest depends on the
machine's caches, registers and prefetchers, and BLAS can beat all of them on some machines
(e.g. at 32 rows on an AVX2 Zen 3, or on tiny weights where a call's overhead dominates). So, for each weight shape, stored type, row count and
thread count of a decoding step, :func:`plan_weights` times every candidate on the model's own
weights (passes over enough of them to leave the caches, as a step does) and writes the fastest
into each weight's ``plan`` (see :class:`musicgen.kernels.Weight`). The candidates are searched in
two rounds: every pass and row block with the default prefetch (:func:`candidates`), then the
other prefetch distances for the fastest block plan of the first (:func:`prefetch_candidates`).
A block plan other than the default (:func:`default_for`) is taken only when it takes at most
:data:`DEFAULT_MARGIN` of the default's time: one case's timings move by a few percent from run to
run, and a choice made on that moves the whole step by as much the other way.

BLAS is a candidate for fp32 weights only (bf16 and int8 would need a float32 copy: the bytes they
save) and is chosen only when it takes at most :data:`BLAS_MARGIN` of the best block time: its sums
round differently (~1e-6 relative), so a choice made on noise would change the sampled tokens from
one run to the next. Choices are kept in a JSON file per user (:func:`cache_path`), keyed by the CPU,
shape, type, rows and threads, so that a machine measures each case once and then decodes the same
way, with the same bytes, in every later run (delete the file to measure again). A process that
finds cases missing measures them under a lock beside the file (``.lock``), so that processes started
together (``dvc queue start -j 2``) measure once and decode alike.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections import defaultdict
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import numpy as np

from musicgen.kernels import (
    BLAS,
    K_BLOCK,
    ONE_THREAD,
    OURS,
    PANEL,
    PLAN_ROWS,
    PREFETCH,
    ROW_BLOCK,
    Weight,
    _blas,
    _matmul,
    _matmul_threads,
    default_ahead,
)
from musicgen.machine import cpu_id, cpu_model

PASSES = (256, 512, 1024)  # inputs per pass tried
ROW_BLOCKS = (4, 6, 8)  # rows per register block tried (the block kernel takes 1 to 8)
AHEADS = (0, PREFETCH // 8, PREFETCH)  # prefetch distances tried (bytes; 0: none), see PREFETCH
BLAS_MARGIN = 0.9  # BLAS is chosen only at <= 90 % of the best block kernel's time
DEFAULT_MARGIN = 0.95  # another block plan than the default only at <= 95 % of its time (timings
# of one case move by a few % between runs: a choice made on that would cost as much as it saves)
MEASURE_BYTES = 48 << 20  # stored bytes each timed pass streams (more than most L3 slices)
REPEATS = 4  # timed passes per candidate after a warm-up; the fastest counts

Plan = tuple[int, int, int, int]  # (method, inputs per pass, rows per block, prefetch bytes
# ahead): a row of Weight.plan


def cache_path() -> Path:
    """The choices file: ``$XDG_CACHE_HOME/musicgen/matmul_plans.json`` (else ``~/.cache``)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "musicgen" / "matmul_plans.json"


@lru_cache(maxsize=1)
def cpu_key() -> str:
    """What the choices depend on besides the case: the CPU model and, on x86, its vendor, family,
    model and stepping, the ISA that numba compiles for and the packed layout (e.g.
    ``x86_64 | AMD EPYC (AuthenticAMD 26/2/1) | znver5 | panel 32``). The same for a whole process
    (numba reads its target once, at import), so it is worked out once."""
    name = cpu_model() + (f" ({cpu_id()})" if cpu_id() else "")
    try:
        from llvmlite.binding import get_host_cpu_name
        from numba.core.config import CPU_NAME

        target = CPU_NAME if CPU_NAME not in (None, "", "host") else get_host_cpu_name()
    except ImportError:  # pragma: no cover - numba is a dependency
        target = "?"
    return f"{platform.machine()} | {name} | {target} | panel {PANEL}"


def case_key(weight: Weight, rows: int, threads: int) -> str:
    """The key of one case in the choices file (after :func:`cpu_key`)."""
    n_out, n_in = len(weight.scale), weight.data.shape[1]
    return f"{n_out}x{n_in} {weight.data.dtype} rows {rows} threads {threads}"


def candidates(weight: Weight, rows: int, threads: int = 1) -> list[Plan]:
    """The first round's distinct plans for ``rows`` rows, each with the default prefetch: block
    sizes past the rows or the inputs collapse into one (the same loops); with several threads
    the default sizes on one thread join (a small weight loses more to the threads' start than it
    gains), and BLAS for fp32 weights."""
    n_in, ahead = weight.data.shape[1], default_ahead(rows)
    seen = {(OURS, min(K_BLOCK, n_in), min(ROW_BLOCK, rows)): default_for(rows)}  # the default's
    for k in PASSES:  # own sizes stand for the loops they run, so that choose() finds them
        for r in ROW_BLOCKS:
            seen.setdefault((OURS, min(k, n_in), min(r, rows)), (OURS, k, r, ahead))
    plans = sorted(seen.values())
    if threads > 1:
        plans.append((ONE_THREAD, K_BLOCK, ROW_BLOCK, ahead))
    if weight.dense.shape[0] == len(weight.scale):
        plans.append((BLAS, K_BLOCK, ROW_BLOCK, 0))
    return plans


def default_for(rows: int) -> Plan:
    """The plan the kernels take at ``rows`` rows unless measured (:func:`default_plan`)."""
    return (OURS, K_BLOCK, ROW_BLOCK, default_ahead(rows))


def prefetch_candidates(best: Plan) -> list[Plan]:
    """The second round: block plan ``best`` with each other prefetch distance of :data:`AHEADS`
    (none for BLAS, which does not take one)."""
    if best[0] == BLAS:
        return []
    return [(*best[:3], ahead) for ahead in AHEADS if ahead != best[3]]


def fastest_block(seconds: dict[Plan, float]) -> Plan:
    """The fastest block-kernel plan (on any threads) of ``seconds``."""
    ours = {plan: s for plan, s in seconds.items() if plan[0] != BLAS}
    return min(ours, key=ours.get)


def choose(
    seconds: dict[Plan, float],
    default: Plan | None = None,
    margin: float = BLAS_MARGIN,
    default_margin: float = DEFAULT_MARGIN,
) -> Plan:
    """The fastest plan of ``seconds``, with two margins against noise: another block plan than
    ``default`` only at ``default_margin`` or less of the default's time, and BLAS only at
    ``margin`` or less of the best block time."""
    best = fastest_block(seconds)
    if default in seconds and seconds[best] > default_margin * seconds[default]:
        best = default
    blas = [(s, plan) for plan, s in seconds.items() if plan[0] == BLAS]
    fastest = min(s for plan, s in seconds.items() if plan[0] != BLAS)
    if blas and min(blas)[0] <= margin * fastest:
        return min(blas)[1]
    return best


def time_plans(weights: list[Weight], rows: int, threads: int) -> dict[Plan, float]:
    """Seconds per pass over ``weights`` (one shape and type) at ``rows`` rows, per candidate of
    both rounds (:func:`candidates`, then :func:`prefetch_candidates` of the first's fastest).

    The weights are cycled until a pass streams :data:`MEASURE_BYTES`, so that, as in a decoding
    step, each one comes from memory rather than from a cache warmed by the previous call.
    """
    w0 = weights[0]
    n_out, n_in = len(w0.scale), w0.data.shape[1]
    per_pass = max(1, MEASURE_BYTES // max(1, w0.data.nbytes))
    order = [weights[i % len(weights)] for i in range(min(per_pass, 4 * len(weights) + 64))]
    x = np.random.default_rng(0).standard_normal((rows, n_in)).astype(np.float32)
    out = np.empty((rows, n_out), dtype=np.float32)
    seconds: dict[Plan, float] = {}

    def time_plan(plan: Plan) -> None:
        method, k_block, row_block, ahead = plan
        block = _matmul_threads if threads > 1 and method == OURS else _matmul
        best = float("inf")
        for repeat in range(REPEATS + 1):
            start = time.perf_counter()
            for w in order:
                if method == BLAS:
                    _blas(x, w.dense, out)
                else:
                    block(x, w, out, k_block, row_block, ahead)
            if repeat:  # the first pass compiles and warms up
                best = min(best, time.perf_counter() - start)
        seconds[plan] = best

    for plan in candidates(w0, rows, threads):
        time_plan(plan)
    for plan in prefetch_candidates(fastest_block(seconds)):
        time_plan(plan)
    return seconds


def valid(choice) -> bool:
    """Whether a saved choice is a plan of today's form (an older file's 3 numbers, before the
    prefetch distance was measured, or anything else is measured again)."""
    return (
        isinstance(choice, list)
        and len(choice) == len(Plan.__args__)
        and all(isinstance(v, int) for v in choice)
    )


def load_choices(path: Path) -> dict[str, list[int]]:
    """The choices file's entries, or none if it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_choices(path: Path, choices: dict[str, list[int]]) -> None:
    """Writes the choices file whole (a temporary file renamed over it); a home that cannot be
    written only costs the measurement again next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    except OSError:
        pass


def plan_weights(
    weights: list[Weight], rows: list[int], threads: int, path: Path | None = None
) -> dict[str, Plan]:
    """Writes into every weight's ``plan`` the fastest way to multiply each of ``rows``.

    Weights are grouped by shape and stored type; each case (CPU, shape, type, rows, threads)
    is measured once (:func:`time_plans`, :func:`choose`) and then read from the choices file.

    Args:
        weights: the kernels' weights (e.g. every linear layer of a model).
        rows: the row counts a step multiplies them by (e.g. 2 x batch, and batch for the
            conditioned rows' cross-attention).
        threads: the kernels' thread count (:func:`musicgen.kernels.kernel_threads`).
        path: the choices file (None: :func:`cache_path`).

    Returns:
        The plan of each case, by its key (:func:`case_key`).
    """
    path = cache_path() if path is None else path
    cpu = cpu_key()
    groups: dict[tuple, list[Weight]] = defaultdict(list)
    for w in weights:
        groups[(len(w.scale), w.data.shape[1], w.data.dtype.str)].append(w)
    cases = [  # (weights, rows, the case's key, its name in the file)
        (group, r, case_key(group[0], r, threads), f"{cpu} | {case_key(group[0], r, threads)}")
        for group in groups.values()
        for r in sorted({min(r, PLAN_ROWS) for r in rows if r > 0})
    ]
    saved = load_choices(path)
    if any(not valid(saved.get(name)) for *_, name in cases):
        # one process measures at a time: another one that needs the same cases (a queue of
        # experiments, say) waits, then reads them, so that both decode the same way
        with choices_lock(path):
            saved = load_choices(path)
            missing = [case for case in cases if not valid(saved.get(case[3]))]
            for group, r, _, name in missing:
                saved[name] = list(choose(time_plans(group, r, threads), default_for(r)))
            if missing:
                save_choices(path, saved)
    chosen: dict[str, Plan] = {}
    for group, r, key, name in cases:
        chosen[key] = tuple(int(v) for v in saved[name])
        for w in group:
            w.plan[r] = chosen[key]
            if r == PLAN_ROWS:  # larger counts read the last entry
                w.plan[PLAN_ROWS:] = chosen[key]
    return chosen


@contextmanager
def choices_lock(path: Path):
    """An exclusive lock beside the choices file (``.lock``), for as long as the block runs;
    none where the folder cannot be written or the platform has no ``fcntl``."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_name(path.name + ".lock"), "w")  # noqa: SIM115 - held open
    except (ImportError, OSError):
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
