"""What holds across machines (README, Reproducibility).

The training data are the same bytes on every CPU: the small data stages (text_model,
codec_model, tokenize, encode_text) run natively and under every instruction set this CPU can
select in each numerical library (ATen's kernels, oneDNN's convolutions, MKL's code path, numba's
target, numpy's loops, the kernels of numpy's OpenBLAS; :mod:`isa_runs`), and other thread
counts, and their codecs, tokens, text models and text states are compared byte for byte. The
metrics of a whole run are within a tolerance of the reference (``tests/reference_metrics.py``;
the small run is compared with its reference in tests/test_pipeline.py, which shares that
module's run); here the tolerance itself, and the small run under another CPU's instruction sets.
"""

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from isa_runs import VARIABLES, cpu_flags, isa_runs, onednn_used
from pipeline_repo import SMALL, copy_project, run
from reference_metrics import (
    FLOOR,
    REFERENCE,
    SEED_SPREAD,
    SIGMAS,
    Bound,
    bound,
    committed_metrics,
    flatten,
    load_reference,
    out_of_tolerance,
)
from stage_runner import prepare_data, project_params

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ("data/models/codec", "data/tokens")  # the codec and the codes it gives
TEXT = ("data/models/text", "data/text")  # the text encoder and the caption states


@dataclass
class IsaRun:
    env: dict[str, str]  # the variables it set ({}: the native run)
    out: Path  # its data/ folders and kernels.json
    log: str  # its stdout and stderr (oneDNN's verbose log among them)

    @property
    def kernels(self) -> dict:
        return json.loads((self.out / "kernels.json").read_text())


@pytest.fixture(scope="module")
def isa_outputs(tmp_path_factory) -> list[IsaRun]:
    """The small data stages natively (first) and under each of :func:`isa_runs.isa_runs`, on
    the same raw audio, audio and split (about 5 s a run)."""
    root = tmp_path_factory.mktemp("isa")
    prepare_data(root, project_params(SMALL))
    clean = {k: v for k, v in os.environ.items() if k not in VARIABLES}
    runs = []
    for i, env in enumerate([{}, *isa_runs(cpu_flags())]):
        out = root / f"run{i}"
        proc = subprocess.run(
            [sys.executable, "tests/isa_runs.py", "--data", str(root), "--out", str(out)],
            cwd=ROOT,
            env={**clean, **env, "ONEDNN_VERBOSE": "profile_create", "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, f"{env}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        runs.append(IsaRun(env, out, proc.stdout + proc.stderr))
    return runs


def differences(a: Path, b: Path, folders: tuple[str, ...]) -> list[str]:
    """Each file of ``folders`` whose bytes differ between the run folders ``a`` and ``b``,
    with what differs in it."""
    problems = []
    for folder in folders:
        names = sorted(str(p.relative_to(a / folder)) for p in (a / folder).rglob("*"))
        others = sorted(str(p.relative_to(b / folder)) for p in (b / folder).rglob("*"))
        if names != others:
            problems.append(f"{folder}: files {names} vs {others}")
            continue
        for name in names:
            x, y = a / folder / name, b / folder / name
            if x.is_file() and x.read_bytes() != y.read_bytes():
                problems.append(f"{folder}/{name}: {what_differs(x, y)}")
    return problems


def what_differs(x: Path, y: Path) -> str:
    """What differs between two files of the same name: values of an array, tensors of a
    safetensors file, or just bytes."""
    if x.suffix == ".npy":
        a, b = np.load(x), np.load(y)
        if a.shape != b.shape:
            return f"shape {a.shape} vs {b.shape}"
        moved = a != b
        if a.ndim == 3:  # codes (N, K, T): per codebook
            return (
                f"{moved.sum()} of {a.size} codes, per codebook {moved.sum(axis=(0, 2)).tolist()}"
            )
        gap = np.abs(a.astype(np.float64) - b).max()
        return f"{moved.sum()} of {a.size} values, by up to {gap:.3g}"
    if x.suffix == ".safetensors":
        from safetensors.numpy import load_file

        a, b = load_file(x), load_file(y)
        return "tensors " + ", ".join(k for k in sorted(a) if a[k].tobytes() != b[k].tobytes())
    return "bytes differ"


def isa_differences(runs: list[IsaRun], folders: tuple[str, ...]) -> list[str]:
    """What differs from the native run (the first), per other run."""
    native = runs[0]
    return [f"{r.env}: {p}" for r in runs[1:] for p in differences(native.out, r.out, folders)]


@pytest.mark.slow
def test_the_tokens_are_the_same_bytes_under_every_instruction_set(isa_outputs):
    assert isa_differences(isa_outputs, TOKENS) == []


@pytest.mark.slow
def test_the_text_states_are_the_same_bytes_under_every_instruction_set(isa_outputs):
    assert isa_differences(isa_outputs, TEXT) == []


@pytest.mark.slow
def test_each_run_reached_the_kernels_it_asked_for(isa_outputs):
    """Each library ran at the level its variable asked for (a value it ignored would compare
    the native kernels with themselves): ATen's, numba's and OpenBLAS's own word, numpy's targets,
    the thread count, and the ISA of any oneDNN convolution the stages ran (its fp32 kernels:
    SSE4.1, AVX, AVX2, AVX-512)."""
    kernel_isa = {"SSE41": "sse41", "AVX": "avx", "AVX2": "avx2", "AVX2_VNNI": "avx2"}
    for r in isa_outputs[1:]:
        kernels = r.kernels
        assert kernels["aten"].lower() == r.env["ATEN_CPU_CAPABILITY"]
        assert kernels["torch_threads"] == int(r.env["OMP_NUM_THREADS"])
        assert kernels["numba_cpu"] == r.env["NUMBA_CPU_NAME"] and kernels["numba_features"] == ""
        if isa_outputs[0].kernels["openblas"] is not None:  # numpy carries an OpenBLAS
            assert kernels["openblas"] == r.env["OPENBLAS_CORETYPE"], r.env
        off = r.env.get("NPY_DISABLE_CPU_FEATURES", "").split()
        assert not set(off) & set(kernels["numpy_targets"]), r.env
        if "ONEDNN_MAX_CPU_ISA" in r.env:
            primitives = onednn_used(r.log)
            jit = {p.rsplit(":", 1)[1] for p in primitives if p.startswith("convolution:jit")}
            level = r.env["ONEDNN_MAX_CPU_ISA"]
            # the tiny codec of codec_synth runs no convolution; one that does must be at the level
            assert jit <= {kernel_isa.get(level, "avx512_core")}, f"{r.env}: {primitives}"


def test_an_avx2_cpu_runs_haswell_kernels_in_every_library():
    """The AVX2 generation (Haswell to Zen 3) asks each library for its AVX2 level, OpenBLAS's
    Haswell kernels among them, and switches off numpy's AVX-512 targets where numpy has them."""
    flags = {"sse4_1", "sse4_2", "avx", "avx2", "fma", "bmi2"}
    runs = isa_runs(flags, numpy_found=["X86_V3", "X86_V4", "AVX512_ICL"])
    assert [r["OPENBLAS_CORETYPE"] for r in runs] == ["Nehalem", "Sandybridge", "Haswell"]
    assert [r["NPY_DISABLE_CPU_FEATURES"] for r in runs] == [
        "X86_V3 X86_V4 AVX512_ICL",
        "X86_V3 X86_V4 AVX512_ICL",
        "X86_V4 AVX512_ICL",
    ]
    assert runs[2]["ATEN_CPU_CAPABILITY"] == "avx2" and runs[2]["NUMBA_CPU_NAME"] == "x86-64-v3"
    # a numpy without those targets (or an older one, other names): nothing of numpy's to switch
    assert all("NPY_DISABLE_CPU_FEATURES" not in r for r in isa_runs(flags, numpy_found=[]))
    assert {r["OPENBLAS_NUM_THREADS"] for r in runs} == {"1", "2", "3"}


def other_cpu() -> dict[str, str]:
    """The environment of a CPU of another generation: AVX2 when this one has it, else the
    lowest :func:`isa_runs.isa_runs` gives."""
    runs = isa_runs(cpu_flags())
    return next((r for r in runs if r["ATEN_CPU_CAPABILITY"] == "avx2"), runs[0])


# the embedded default on two CPUs, same code (issue 11): AMD EPYC (committed) vs Intel Xeon
EPYC = {"train.json": {"val_ce": 7.1350, "train_token_entropy": 7.4286, "steps": 300}}
XEON = {"train.json": {"val_ce": 7.1319, "train_token_entropy": 7.4294, "steps": 300}}


def test_the_measured_cross_cpu_differences_are_within_the_tolerance():
    assert out_of_tolerance(XEON, EPYC) == []


# a seed spread as benchmarks/seed_spread.py writes it (its "metrics")
SPREAD = {
    "train.json": {
        "val_ce": {"mean": 7.13, "std": 0.01, "values": [7.12, 7.13, 7.14]},
        "train_token_entropy": {"mean": 7.43, "std": 0.0, "values": [7.43, 7.43, 7.43]},
        "steps": {"mean": 300, "std": 0.0, "values": [300, 300, 300]},
    }
}


def test_what_the_tolerance_refuses():
    moved = {"train.json": {"val_ce": 7.1750, "train_token_entropy": 7.4286, "steps": 299}}
    problems = out_of_tolerance(moved, EPYC, SPREAD)
    assert [p.split(":")[0] for p in problems] == ["train.json steps", "train.json val_ce"]
    assert "allowed: ±0.04 (4 sigma, sigma 0.01)" in problems[1]
    assert "update_reference_metrics" in out_of_tolerance({"train.json": {}}, EPYC, SPREAD)[0]


def test_the_bounds_come_from_the_seed_spread():
    assert bound("val_ce", 7.13, "train.json", SPREAD) == Bound(SIGMAS * 0.01, 0.0, 0.01, "4 sigma")
    # inside 4 sigma, not beyond; a float no seed moved keeps the floor; a count is exact
    assert (
        out_of_tolerance(
            {"train.json": {"val_ce": 7.174}}, {"train.json": {"val_ce": 7.135}}, SPREAD
        )
        == []
    )
    assert out_of_tolerance(
        {"train.json": {"val_ce": 7.176}}, {"train.json": {"val_ce": 7.135}}, SPREAD
    )
    assert bound("train_token_entropy", 7.43, "train.json", SPREAD) == Bound(
        0.0, FLOOR, 0.0, "floor"
    )
    assert bound("steps", 300, "train.json", SPREAD).describe() == "exact"
    # a metric the spread does not hold: the reasoned table, said to be unmeasured
    assert bound("valid_ppl_cb0", 800.0, "eval.json", SPREAD) == Bound(
        0.0, 0.03, None, "not measured"
    )
    assert bound("clips_train", 36, "split.json", SPREAD).describe() == "exact"


def test_the_committed_seed_spread_holds_every_committed_metric():
    """benchmarks/seed_spread.json measured the committed default: each number of its committed
    metrics has a measured bound, none a reasoned one (metrics added since need a new spread:
    python3 benchmarks/seed_spread.py)."""
    spread = json.loads(SEED_SPREAD.read_text())
    assert spread["params"] == "params.yaml as committed" and len(spread["seeds"]) >= 5
    committed = committed_metrics(ROOT)
    unmeasured = [
        f"{file} {key}"
        for file, metrics in committed.items()
        for key, value in flatten(metrics).items()
        if not isinstance(value, bool | str)
        and bound(key, value, file, spread["metrics"]).source == "not measured"
    ]
    assert unmeasured == []


def test_the_reference_is_committed():
    reference = load_reference()
    assert REFERENCE.is_file() and {"train.json", "eval.json", "split.json"} <= set(reference)
    assert reference["train.json"]["val_ce"] < reference["train.json"]["val_ce_init"]


@pytest.mark.slow
def test_the_small_run_on_other_instruction_sets_is_within_the_tolerance(tmp_path, monkeypatch):
    for name, value in other_cpu().items():
        monkeypatch.setenv(name, value)
    repo = copy_project(tmp_path, SMALL)
    run(["dvc", "repro"], repo)
    measured = {p.name: json.loads(p.read_text()) for p in repo.glob("metrics/*.json")}
    reference = load_reference()
    assert out_of_tolerance(measured, reference) == []
    if measured == reference:  # e.g. a CPU whose own kernels are these
        pytest.skip("the other instruction sets gave the same numbers here: nothing was compared")
