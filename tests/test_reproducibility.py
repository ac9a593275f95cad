"""The cross-machine tolerance (README, Reproducibility; tests/reference_metrics.py).

The small pipeline run is compared with tests/reference/small_metrics.json in
tests/test_pipeline.py (it shares that module's run). Here: the tolerance itself, and the small run
on "another CPU": this one, told to use other instruction sets in each numerical library (ATen's
AVX2 kernels, oneDNN's AVX2 convolutions, MKL's compatible code path, and numba compiling the
decoding kernels for Haswell, which gives them their portable layout), which sums in other orders as
another CPU would.
"""

import json

import pytest
from pipeline_repo import SMALL, copy_project, run
from reference_metrics import REFERENCE, load_reference, out_of_tolerance, tolerance

OTHER_CPU = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "COMPATIBLE",
    "NUMBA_CPU_NAME": "haswell",
}

# the embedded default on two CPUs, same code (issue 11): AMD EPYC (committed) vs Intel Xeon
EPYC = {"train.json": {"val_ce": 7.1350, "train_token_entropy": 7.4286, "steps": 300}}
XEON = {"train.json": {"val_ce": 7.1319, "train_token_entropy": 7.4294, "steps": 300}}


def test_the_measured_cross_cpu_differences_are_within_the_tolerance():
    assert out_of_tolerance(XEON, EPYC) == []


def test_what_the_tolerance_refuses():
    moved = {"train.json": {"val_ce": 7.1750, "train_token_entropy": 7.4286, "steps": 299}}
    problems = out_of_tolerance(moved, EPYC)
    assert [p.split(":")[0] for p in problems] == ["train.json steps", "train.json val_ce"]
    assert "update_reference_metrics" in out_of_tolerance({"train.json": {}}, EPYC)[0]
    assert tolerance("clips_train") == (0.0, 0.0) and tolerance("valid_ppl_cb0")[1] == 0.03
    assert tolerance("fd_mel")[1] > tolerance("codebook_0_distinct")[1] > 0


def test_the_reference_is_committed():
    reference = load_reference()
    assert REFERENCE.is_file() and {"train.json", "eval.json", "split.json"} <= set(reference)
    assert reference["train.json"]["val_ce"] < reference["train.json"]["val_ce_init"]


@pytest.mark.slow
def test_the_small_run_on_other_instruction_sets_is_within_the_tolerance(tmp_path, monkeypatch):
    for name, value in OTHER_CPU.items():
        monkeypatch.setenv(name, value)
    repo = copy_project(tmp_path, SMALL)
    run(["dvc", "repro"], repo)
    measured = {p.name: json.loads(p.read_text()) for p in repo.glob("metrics/*.json")}
    reference = load_reference()
    assert out_of_tolerance(measured, reference) == []
    if measured == reference:  # e.g. a CPU whose own kernels are these
        pytest.skip("the other instruction sets gave the same numbers here: nothing was compared")
