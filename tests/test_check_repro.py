"""``musicgen check-repro``: a run's metrics against the reference, within the seed-spread bounds,
on fabricated metric folders."""

import json
import re

import pytest

from musicgen.cli import main
from musicgen.cli_repro import git_file
from musicgen.reproducibility import PROJECT_ROOT, committed_metrics

REFERENCE = {
    "train.json": {"val_ce": 7.1384, "val_ce_raw": 6.8557, "steps": 300},
    "eval.json": {"fad_mel": 12.5, "clap_score": 0.02, "fd_clips": 48, "weights": "random(seed=0)"},
}
SPREAD = {  # benchmarks/seed_spread.py's layout
    "seeds": [0, 1, 2, 3, 4],
    "metrics": {
        "train.json": {
            "val_ce": {"mean": 7.13, "std": 0.01, "values": [7.12, 7.13, 7.14, 7.12, 7.14]},
            "val_ce_raw": {"mean": 6.85, "std": 0.005, "values": [6.85] * 5},
            "steps": {"mean": 300, "std": 0.0, "values": [300] * 5},
        },
        "eval.json": {
            "fad_mel": {"mean": 12.0, "std": 1.0, "values": [11, 12, 13, 12, 12]},
            "clap_score": {"mean": 0.02, "std": 0.001, "values": [0.02] * 5},
            "fd_clips": {"mean": 48, "std": 0.0, "values": [48] * 5},
        },
    },
}


def write_run(folder, metrics):
    (folder / "metrics").mkdir(parents=True, exist_ok=True)
    for name, values in metrics.items():
        (folder / "metrics" / name).write_text(json.dumps(values))
    return folder


@pytest.fixture
def dirs(tmp_path):
    spread = tmp_path / "spread.json"
    spread.write_text(json.dumps(SPREAD))
    reference = write_run(tmp_path / "reference", REFERENCE)
    return tmp_path, reference, spread


def check(capsys, run, *options):
    """(exit status, stdout) of ``musicgen check-repro RUN OPTIONS``."""
    try:
        main(["check-repro", str(run), *map(str, options)])
        status = 0
    except SystemExit as exit_:
        status = exit_.code
    out = capsys.readouterr()
    return status, out.out + out.err


def test_the_same_metrics_pass(dirs, capsys):
    tmp, reference, spread = dirs
    run = write_run(tmp / "run", REFERENCE)
    status, out = check(capsys, run, "--reference", reference, "--spread", spread)
    assert status == 0
    assert "7 metrics: 7 identical, 0 moved within their bound, 0 out" in out
    assert "4 sigma of the spread over 5 training seeds" in out


def test_what_moved_is_printed_with_its_bound(dirs, capsys):
    tmp, reference, spread = dirs
    moved = json.loads(json.dumps(REFERENCE))
    moved["train.json"]["val_ce"] = 7.1006  # -0.0378: inside 4 x 0.01
    moved["eval.json"]["fad_mel"] = 16.0  # +3.5: inside 4 x 1.0
    status, out = check(
        capsys, write_run(tmp / "run", moved), "--reference", reference, "--spread", spread
    )
    assert status == 0
    lines = {
        line.split()[1]: line for line in out.splitlines() if line.startswith(("train", "eval"))
    }
    assert set(lines) == {"val_ce", "fad_mel"}  # only what moved
    assert "-0.0378" in lines["val_ce"] and "±0.04 (4 sigma, sigma 0.01)" in lines["val_ce"]
    assert "OUT" not in out and "2 moved within their bound" in out


def test_a_metric_beyond_its_bound_fails(dirs, capsys):
    tmp, reference, spread = dirs
    moved = json.loads(json.dumps(REFERENCE))
    moved["train.json"]["val_ce_raw"] = 6.8322  # -0.0235: beyond 4 x 0.005
    moved["eval.json"]["fd_clips"] = 47  # a count: exact
    run = write_run(tmp / "run", moved)
    status, out = check(capsys, run, "--reference", reference, "--spread", spread)
    assert status == 1
    out_lines = [line for line in out.splitlines() if line.endswith("OUT")]
    assert len(out_lines) == 2 and "exact" in out_lines[0] and "±0.02 (4 sigma" in out_lines[1]
    assert "2 out of it or missing" in out


def test_a_missing_metric_fails(dirs, capsys):
    tmp, reference, spread = dirs
    fewer = {"train.json": {k: v for k, v in REFERENCE["train.json"].items() if k != "steps"}}
    run = write_run(tmp / "run", {**REFERENCE, **fewer})
    status, out = check(capsys, run, "--reference", reference, "--spread", spread)
    assert status == 1 and "not in this run" in out


def test_the_default_reference_is_the_committed_default(tmp_path, capsys, monkeypatch):
    committed = committed_metrics(PROJECT_ROOT)
    run = write_run(tmp_path, committed)
    committed_params = git_file(PROJECT_ROOT, "params.yaml")
    (tmp_path / "params.yaml").write_text(committed_params)
    status, out = check(capsys, run)
    assert status == 0 and "committed at" in out and "identical" in out
    assert "params.yaml differs" not in out
    more_steps = re.sub(  # train.steps, the first `steps:` key of the file, one more
        r"^(\s+steps: )(\d+)",
        lambda m: f"{m[1]}{int(m[2]) + 1}",
        committed_params,
        count=1,
        flags=re.M,
    )
    assert more_steps != committed_params
    (tmp_path / "params.yaml").write_text(more_steps)
    assert "params.yaml differs from the committed one (train.steps)" in check(capsys, run)[1]


def test_a_folder_without_metrics_is_refused(tmp_path, capsys):
    status, out = check(capsys, tmp_path)
    assert status == 1 and "holds no metrics/*.json" in out
