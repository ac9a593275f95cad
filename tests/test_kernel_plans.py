"""The measured choice of block sizes or BLAS per shape and row count (musicgen/kernel_plans.py)."""

import json

import numpy as np
import pytest
import torch
from test_kernels import cached_steps, guided_inputs, tiny

from musicgen import kernel_plans
from musicgen.kernel_plans import (
    AHEADS,
    candidates,
    case_key,
    choose,
    cpu_key,
    default_for,
    plan_weights,
    prefetch_candidates,
    time_plans,
)
from musicgen.kernels import (
    BLAS,
    K_BLOCK,
    ONE_THREAD,
    OURS,
    PLAN_ROWS,
    ROW_BLOCK,
    _matmul,
    _matmul_threads,
    default_plan,
    dequantize,
    kernel_available,
    kernel_weight,
    kernel_weights,
    matmul,
    quantize,
)

pytestmark = pytest.mark.skipif(not kernel_available(), reason="numba is not installed")


def random_weight(n_out, n_in, weights="fp32", seed=0):
    g = torch.Generator().manual_seed(seed)
    return quantize(torch.randn(n_out, n_in, generator=g), weights)


@pytest.mark.parametrize("weights", ["fp32", "bf16", "int8"])
@pytest.mark.parametrize("rows", [1, 5, 16, 33])
def test_block_sizes_change_the_speed_never_the_result(weights, rows):
    """Every candidate pass length, row block and prefetch distance (and the threaded kernel)
    gives the bits of the default plan: each output's sum runs over the inputs in the same
    order."""
    stored = random_weight(70, 700, weights)  # a ragged panel; 700 inputs: 1 to 3 passes
    w = kernel_weight(*stored)
    x = np.random.default_rng(rows).standard_normal((rows, 700)).astype(np.float32)
    reference = np.empty((rows, 70), dtype=np.float32)
    _matmul(x, w, reference, K_BLOCK, ROW_BLOCK, 0)
    want = (torch.from_numpy(x) @ dequantize(*stored).T).numpy()
    assert np.allclose(reference, want, atol=1e-4)
    plans = [p for p in candidates(w, rows) if p[0] == OURS]
    for plan in plans + [q for p in plans for q in prefetch_candidates(p)]:
        for kernel in (_matmul, _matmul_threads):
            out = np.full((rows, 70), np.nan, dtype=np.float32)
            kernel(x, w, out, *plan[1:])
            assert np.array_equal(out, reference), (kernel, plan)


def test_a_blas_plan_multiplies_by_the_float_weight_and_only_fp32_has_one():
    stored = random_weight(40, 96)
    w = kernel_weight(*stored)
    x = np.random.default_rng(0).standard_normal((9, 96)).astype(np.float32)
    assert (BLAS, K_BLOCK, ROW_BLOCK, 0) in candidates(w, 9)
    w.plan[9] = (BLAS, K_BLOCK, ROW_BLOCK, 0)
    assert np.allclose(matmul(x, w), x @ stored[0].numpy().T, atol=1e-5)
    assert not np.array_equal(w.plan[8], w.plan[9])  # other row counts keep the block kernel
    for weights in ("bf16", "int8"):  # a float32 copy would cost the bytes they save
        low = kernel_weight(*random_weight(40, 96, weights))
        assert low.dense.shape == (0, 96)
        assert all(plan[0] == OURS for plan in candidates(low, 9))
        low.plan[9] = (BLAS, K_BLOCK, ROW_BLOCK, 0)  # e.g. a stale plan: the kernel still serves it
        want = x @ dequantize(*random_weight(40, 96, weights)).numpy().T
        assert np.allclose(matmul(x, low), want, atol=1e-4)


def test_choose_takes_blas_only_when_clearly_faster():
    ours_fast, ours_slow = (OURS, 256, 8, 0), (OURS, 1024, 4, 0)
    blas = (BLAS, K_BLOCK, ROW_BLOCK, 0)
    assert choose({ours_fast: 1.0, ours_slow: 1.2}) == ours_fast
    assert choose({ours_fast: 1.0, ours_slow: 1.2, blas: 0.95}) == ours_fast  # within the margin
    assert choose({ours_fast: 1.0, ours_slow: 1.2, blas: 0.85}) == blas
    assert choose({ours_fast: 1.0, blas: 0.95}, margin=1.0) == blas


def test_choose_leaves_the_default_plan_only_when_another_is_clearly_faster():
    default, other = (OURS, K_BLOCK, ROW_BLOCK, 0), (OURS, 256, 6, 0)
    blas = (BLAS, K_BLOCK, ROW_BLOCK, 0)
    assert choose({default: 1.0, other: 0.97}, default) == default  # within the noise margin
    assert choose({default: 1.0, other: 0.9}, default) == other
    assert choose({default: 1.0, other: 0.97}) == other  # no default given: the fastest
    # BLAS is held against the fastest block time, whichever block plan is kept
    assert choose({default: 1.0, other: 0.97, blas: 0.88}, default) == default
    assert choose({default: 1.0, other: 0.97, blas: 0.85}, default) == blas


@pytest.mark.parametrize("rows", [1, 2, 5, 32])
def test_the_default_plan_is_among_the_first_round_s_candidates(rows):
    """As itself (its sizes, not another plan that runs the same loops), so that choose() can
    hold the others against it."""
    for n_in in (200, 2048):
        w = kernel_weight(*random_weight(64, n_in))
        assert default_for(rows) in candidates(w, rows)
        assert tuple(default_plan()[rows]) == default_for(rows)


def test_candidates_collapse_sizes_past_the_rows_and_inputs():
    one_row = candidates(kernel_weight(*random_weight(64, 200)), 1)  # one pass, one row
    assert len([p for p in one_row if p[0] == OURS]) == 1
    two_passes = candidates(kernel_weight(*random_weight(64, 300)), 1)  # 256, or all 300
    assert sorted(min(k, 300) for m, k, *_ in two_passes if m == OURS) == [256, 300]
    many = candidates(kernel_weight(*random_weight(64, 2048)), 32)
    assert len([p for p in many if p[0] == OURS]) == 9 and many[-1][0] == BLAS


def test_the_second_round_tries_the_other_prefetch_distances_of_the_fastest_block_plan():
    """First round: every block plan with the default prefetch (none under 4 rows, one fp32 pass
    from 4 on); second round: the fastest block plan with each other distance; BLAS takes none."""
    w = kernel_weight(*random_weight(64, 2048))
    assert {p[3] for p in candidates(w, 2) if p[0] == OURS} == {0}
    assert {p[3] for p in candidates(w, 8) if p[0] == OURS} == {AHEADS[-1]}
    assert prefetch_candidates((OURS, 512, 6, 0)) == [(OURS, 512, 6, a) for a in AHEADS[1:]]
    assert prefetch_candidates((BLAS, K_BLOCK, ROW_BLOCK, 0)) == []
    seconds = time_plans([w], 8, threads=1)  # really timed: both rounds
    first = candidates(w, 8)
    best = min((p for p in first if p[0] != BLAS), key=seconds.get)
    assert set(seconds) == set(first) | set(prefetch_candidates(best))
    assert len(seconds) == len(first) + len(AHEADS) - 1


def test_choices_in_an_older_form_are_measured_again(tmp_path, monkeypatch):
    """A file written before the prefetch distance was part of a plan (3 numbers per case) is not
    read as a plan: the case is measured again and saved in today's form."""
    path = tmp_path / "plans.json"
    w = kernel_weight(*random_weight(32, 64))
    name = f"{cpu_key()} | {case_key(w, 4, 1)}"
    path.write_text(json.dumps({name: [OURS, 256, 4]}))
    monkeypatch.setattr(
        kernel_plans, "time_plans", lambda ws, rows, threads: {(OURS, 512, 8, 0): 1.0}
    )
    assert plan_weights([w], [4], threads=1, path=path) == {case_key(w, 4, 1): (OURS, 512, 8, 0)}
    assert json.loads(path.read_text())[name] == [OURS, 512, 8, 0]


def test_plans_are_measured_once_per_case_then_read_from_the_file(tmp_path, monkeypatch):
    """Each (shape, type, rows, threads) is timed once; the weights of that shape all get its
    plan at those rows; a second call (another process, say) reads the file and times nothing."""
    path = tmp_path / "plans.json"
    square = kernel_weights([random_weight(48, 48, seed=s) for s in range(3)])
    wide = kernel_weights([random_weight(96, 48)])
    timed = []

    def fake_timing(weights, rows, threads):
        timed.append((len(weights), weights[0].data.shape, rows, threads))
        plans = candidates(weights[0], rows)
        # the wide weight: BLAS far ahead; the square ones: the first block plan ahead
        wide_case = len(weights[0].scale) == 96
        return {
            p: (0.1 if p[0] == BLAS else 1.0) if wide_case else 1.0 + i for i, p in enumerate(plans)
        }

    monkeypatch.setattr(kernel_plans, "time_plans", fake_timing)
    chosen = plan_weights(square + wide, [6, 3, 6, 100], threads=1, path=path)
    assert sorted(timed) == sorted(
        [(3, square[0].data.shape, r, 1) for r in (3, 6, PLAN_ROWS)]
        + [(1, wide[0].data.shape, r, 1) for r in (3, 6, PLAN_ROWS)]
    )
    first = tuple(candidates(square[0], 6)[0])
    for w in square:
        assert tuple(w.plan[6]) == first and tuple(w.plan[5]) == tuple(default_plan()[5])
    assert tuple(wide[0].plan[3]) == (BLAS, K_BLOCK, ROW_BLOCK, 0)
    assert np.all(wide[0].plan[PLAN_ROWS:, 0] == BLAS)  # 100 rows: the last entry serves it
    saved = json.loads(path.read_text())
    assert f"{cpu_key()} | {case_key(wide[0], 3, 1)}" in saved and len(saved) == 6
    assert chosen[case_key(wide[0], 6, 1)] == (BLAS, K_BLOCK, ROW_BLOCK, 0)

    monkeypatch.setattr(kernel_plans, "time_plans", lambda *a: pytest.fail("timed again"))
    again = kernel_weights([random_weight(96, 48)])
    assert plan_weights(again, [3], threads=1, path=path) == {
        case_key(again[0], 3, 1): chosen[case_key(wide[0], 3, 1)]
    }
    assert tuple(again[0].plan[3]) == (BLAS, K_BLOCK, ROW_BLOCK, 0)


def test_an_unwritable_choices_file_only_costs_a_new_measurement(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    w = kernel_weight(*random_weight(32, 32))
    chosen = plan_weights([w], [2], threads=1, path=blocker / "plans.json")
    assert list(chosen) == [case_key(w, 2, 1)]
    assert tuple(w.plan[2]) == chosen[case_key(w, 2, 1)]


@torch.no_grad()
def test_a_model_decodes_with_its_plans_blas_included(tmp_path, monkeypatch):
    """new_cache plans the model's weights at the step's row counts (into the user's choices
    file); block-kernel plans of any sizes, threaded or not, give the same bits; BLAS for every
    case still equals the torch step."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = tmp_path / "musicgen" / "matmul_plans.json"
    model = tiny()
    seq, memory, memory_mask = guided_inputs(model, 3)  # 6 rows, 3 of them conditioned
    cached_steps(model, seq, memory, memory_mask, 3, True)
    saved = json.loads(path.read_text())
    assert {key.split(" rows ")[1].split(" threads ")[0] for key in saved} == {"3", "6"}
    reference, _ = cached_steps(model, seq, memory, memory_mask, 3, False)
    outputs = []
    plans = [OURS, K_BLOCK, ROW_BLOCK, 0], [OURS, 16, 3, 4096], [ONE_THREAD, 64, 5, 0]
    for plan in (*plans, [BLAS, 0, 0, 0]):
        path.write_text(json.dumps(dict.fromkeys(saved, plan)))
        model._kernel_memo = None  # weights stored again, plans read from the file
        out, cache = cached_steps(model, seq, memory, memory_mask, 3, True)
        assert cache.fused_steps > 0
        assert all(tuple(w.plan[6]) == tuple(plan) for w in cache.kernel.arrays())
        assert torch.allclose(out, reference, atol=1e-4)
        outputs.append(out)
    assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])


CONCURRENT = """
import sys, time
from pathlib import Path
import numpy as np, torch
from musicgen import kernel_plans
from musicgen.kernels import kernel_weight, quantize

log = Path(sys.argv[2])

def slow_timing(weights, rows, threads):  # a measurement that takes a while, and says so
    with log.open("a") as f:
        f.write("timed\\n")
    time.sleep(1.0)
    plans = kernel_plans.candidates(weights[0], rows)
    return {p: 1.0 + (i if sys.argv[3] == "first" else -i) for i, p in enumerate(plans)}

kernel_plans.time_plans = slow_timing
w = kernel_weight(*quantize(torch.ones(40, 40), "fp32"))
print(kernel_plans.plan_weights([w], [4], 1, Path(sys.argv[1])))
"""


def test_processes_started_together_measure_a_case_once_and_decode_alike(tmp_path):
    """The second process waits on the lock, then reads the first one's choice (their fake
    timings would choose differently)."""
    import subprocess
    import sys

    path, log = tmp_path / "plans.json", tmp_path / "timed.log"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(path), str(log), order],
            stdout=subprocess.PIPE,
            text=True,
        )
        for order in ("first", "second")
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert log.read_text().count("timed") == 1
    assert outputs[0] == outputs[1] and "rows 4 threads 1" in outputs[0]
